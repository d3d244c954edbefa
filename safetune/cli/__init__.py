"""Entry points: every Hydra main, argparse parser and console print of safetune lives here.

``safetune-train`` (:mod:`.train`), ``safetune-eval`` (:mod:`.eval`), ``safetune-compare`` (:mod:`.compare`),
``safetune-export`` (:mod:`.export`), ``safetune-data`` (:mod:`.data`, incl. the chat-template preflight),
``safetune-demo`` (:mod:`.demo`) and ``python -m safetune.cli.sweep`` (:mod:`.sweep`). Each composes a config,
checks it, calls one library function returning ``(metrics, artifacts)`` and prints the result.
"""

from safetune.core.memory import bound_onednn_cache as _bound_onednn_cache

# before any command touches a tensor: a long run's matmul shapes would otherwise fill 1,024 cached oneDNN primitives
_bound_onednn_cache()
