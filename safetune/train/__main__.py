"""``python -m safetune.train`` / ``accelerate launch -m safetune.train``: the ``safetune-train`` entry point."""

from safetune.cli.train import main

main()
