"""Module paths of earlier releases that still run, with a deprecation message naming the new one.

``python -m safetune.demo``, ``python -m safetune.sweep`` and ``python -m safetune.eval.evaluate`` (also under
``accelerate launch``) forward here; each is a three-line shim that names itself.
"""

from __future__ import annotations

import importlib
import warnings

# old module path -> (new module path, the entry point function in it)
MOVED = {
    "safetune.demo": ("safetune.cli.demo", "main"),
    "safetune.sweep": ("safetune.cli.sweep", "main"),
    "safetune.eval.evaluate": ("safetune.cli.eval", "main"),
}


def forward(old: str) -> None:
    """Warn that ``python -m <old>`` moved, then run the new entry point."""
    new, fn = MOVED[old]
    warnings.warn(
        f"`python -m {old}` is deprecated; use `python -m {new}` (it runs the same command).",
        FutureWarning,
        stacklevel=2,
    )
    getattr(importlib.import_module(new), fn)()
