"""``python -m safetune.eval`` / ``accelerate launch -m safetune.eval``: the ``safetune-eval`` entry point."""

from safetune.cli.eval import main

main()
