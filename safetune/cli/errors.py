"""The error boundary every entry point runs inside.

The project's own errors (:class:`~safetune.core.errors.SafetuneError`) and Hydra's / OmegaConf's config errors are
printed as ``error: <message>`` and a one-line ``hint:``, with exit status 2 and no traceback. ``--debug`` (removed
from the command line before Hydra parses it) or ``SAFETUNE_DEBUG=1`` re-raises them with their traceback.
Anything else is a bug: it keeps its traceback.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from hydra.errors import HydraException
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException
from rich.console import Console
from rich.markup import escape

from safetune.core.errors import SafetuneError

T = TypeVar("T")

# Third-party loggers that warn on every start about optional extras safetune does not use (bitsandbytes' CPU
# backend asks for the `kernels` package's hub kernels on AVX512-BF16 CPUs): quiet below ERROR.
for _name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.cextension"):
    logging.getLogger(_name).setLevel(logging.ERROR)
EXIT_USER_ERROR = 2
_stderr = Console(stderr=True, highlight=False, soft_wrap=True)

# A mistyped key that people often guess -> what to write instead.
_KEY_HINTS = {
    "data.path": "data sources are a list: data.sources.0.path=FILE (and data=triplets for your own triplets file)",
    "path": "name the stage's key in full, e.g. data.sources.0.path=FILE or checkpoint=RUN_DIR",
    "model": "model=<group option> picks a model config; model.name_or_path=<hub id or dir> sets the model",
    "judge": "eval/judge=<keyword|embedding|learned|...> picks the judge",
    "suite": "eval/suite=<bundled|xstest|demo|...> picks the prompts",
    "beta": "trainer.beta=0.1",
    "lr": "trainer.learning_rate=1e-4",
    "epochs": "trainer.num_train_epochs=1",
}


def debug_requested(argv: list[str] | None = None) -> bool:
    return os.environ.get("SAFETUNE_DEBUG", "") not in ("", "0") or "--debug" in (argv or [])


def strip_debug(argv: list[str]) -> list[str]:
    """Remove ``--debug`` (Hydra would reject it) and remember it in ``SAFETUNE_DEBUG``."""
    if "--debug" in argv:
        os.environ["SAFETUNE_DEBUG"] = "1"
    return [a for a in argv if a != "--debug"]


def _first_lines(text: str, n: int = 4) -> str:
    lines = [ln.rstrip() for ln in str(text).strip().splitlines() if ln.strip()]
    return "\n".join(lines[:n])


def _config_hint(message: str, known_keys: list[str] | None) -> str:
    m = re.search(r"(?:override|Key|at) '([^']+)'", message)
    key = m.group(1) if m else ""
    if "Could not append" in message:
        return "the key exists already: drop the leading '+' (or use '++' to add or override)"
    if key in _KEY_HINTS:
        return _KEY_HINTS[key]
    if key and known_keys:
        close = difflib.get_close_matches(key, known_keys, n=1, cutoff=0.6)
        if close:
            return f"did you mean {close[0]}? (`--cfg job` prints every key; `+{key}=...` adds a new one)"
    if "Could not override" in message or "not in struct" in message:
        return f"{key or 'this key'} is not in the config: check its spelling (`--cfg job` prints every key)"
    if "Missing mandatory value" in message:
        return "set it on the command line, e.g. key=value (the config marks it ??? = required)"
    if "Environment variable" in message:
        return "set that environment variable to a local file (or pass the path as an override)"
    missing = re.search(r"Could not find '([^']+)/([^'/]+)'", message)
    if missing and "Available options" in message:
        group, name = missing.groups()
        options = re.findall(r"^\s+(\S+)\s*$", message.split("Available options", 1)[1], flags=re.M)
        close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
        guess = f"did you mean {group}={close[0]}? " if close else ""
        return f"{guess}pick one of the options listed, or add conf/{group}/{name}.yaml (a config of your own)"
    return "run with --debug for the full traceback"


def fail(e: BaseException, known_keys: list[str] | None = None) -> NoReturn:
    """Print ``error:`` + ``hint:`` for ``e`` and exit 2."""
    print_error(e, known_keys)
    sys.exit(EXIT_USER_ERROR)


def print_error(e: BaseException, known_keys: list[str] | None = None) -> None:
    """``error: <message>`` and ``hint: <what to do>`` on stderr."""
    full_key = getattr(e, "full_key", None)
    if isinstance(e, SafetuneError):
        # e.hint: the raise site's own, else its class's default
        message, hint = e.message, e.hint or "run with --debug for the full traceback"
    elif isinstance(e, MissingMandatoryValue) and full_key:
        key = re.sub(r"\[(\d+)\]", r".\1", str(full_key))
        message = f"{key} has no value: the config marks it ??? (required)."
        hint = f"set it on the command line: {key}=..."
    else:
        text = str(e).split("\nConfig search path")[0]  # Hydra's search path says nothing a user can act on
        message = _first_lines(text, 40 if "Available options" in text else 4)
        hint = _config_hint(str(e), known_keys)
    _stderr.print(f"[bold red]error:[/] {escape(message)}")
    _stderr.print(f"[yellow]hint:[/] {escape(hint)}")


EXPECTED: tuple[type[BaseException], ...] = (SafetuneError, HydraException, OmegaConfBaseException)


def guarded(fn: Callable[[], T], *, known_keys: Callable[[], list[str]] | None = None) -> T:
    """Run ``fn`` inside the boundary: expected errors -> :func:`fail`, unless debugging."""
    try:
        return fn()
    except EXPECTED as e:
        if debug_requested():
            raise
        keys: list[str] | None = None
        if known_keys is not None and not isinstance(e, SafetuneError):
            try:
                keys = known_keys()
            except Exception:  # noqa: BLE001 - a hint is best effort
                keys = None
        fail(e, keys)


def flat_keys(node: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a plain config (for 'did you mean' hints)."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            out.append(path)
            out += flat_keys(v, path)
    return out
