"""Run directories: one per training/eval run, agreed on by every rank, written by rank 0 only."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from safetune.core.errors import MissingInputError, WorkExistsError

RUN_INFO = "safetune_run.json"
COMPLETE_MARKER = ".safetune_complete"  # written last into a trainer checkpoint: it is whole
NO_RESUME = (None, False, "", "none", "null")
# Whole key segments (split on . _ - and case) that name a secret; "max_new_tokens" is not "token".
SECRET_SEGMENTS = frozenset(
    {"token", "secret", "password", "passwd", "passphrase", "credential", "credentials", "apikey"}
)
SECRET_PAIRS = frozenset({"api_key", "access_key", "secret_key", "private_key", "auth_token", "client_secret"})
REDACTED = "***"


def is_secret_key(key: Any) -> bool:
    """Does a config key name a secret? Exact segments (``hub_token``, ``api_key``, ``model.token``), not substrings."""
    parts = [p for p in re.split(r"[._\-\s/]+", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(key)).lower()) if p]
    if any(p in SECRET_SEGMENTS for p in parts):
        return True
    return any(f"{a}_{b}" in SECRET_PAIRS for a, b in zip(parts, parts[1:]))


def redact(obj: Any) -> Any:
    """Replace values under secret-looking keys with '***' (nothing written to disk holds a secret)."""
    if isinstance(obj, dict):
        return {k: (REDACTED if is_secret_key(k) and v not in (None, "", False) else redact(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with the values of secret keys replaced (``+model.token=abc`` -> ``+model.token=***``)."""
    out = []
    for o in overrides:
        key, sep, value = o.partition("=")
        out.append(f"{key}={REDACTED}" if sep and value and is_secret_key(key.lstrip("+~")) else o)
    return out


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Atomic text write (temp file + rename): a reader never sees half a report."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def process_state():
    """The process group state, created so that several CPU processes form a gloo group too.

    ``PartialState()`` without ``cpu=True`` on a machine without CUDA ignores the ranks that
    ``accelerate launch --multi_gpu`` set up and reports a single process; every rank would then act as rank 0.
    """
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def agree_on_dir(proposed: str | os.PathLike[str]) -> Path:
    """Every rank returns rank 0's proposal (timestamps differ across ranks otherwise)."""
    from accelerate.utils import broadcast_object_list

    state = process_state()
    obj = [str(proposed)]
    if state.num_processes > 1:
        broadcast_object_list(obj, from_process=0)
    return Path(obj[0])


def broadcast_str(value: str) -> str:
    """Rank 0's ``value`` on every rank."""
    from accelerate.utils import broadcast_object_list

    obj = [value]
    if process_state().num_processes > 1:
        broadcast_object_list(obj, from_process=0)
    return obj[0]


def is_main_process() -> bool:
    return process_state().is_main_process


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Atomic JSON write (temp file + rename); values under secret keys are redacted."""
    write_text(path, json.dumps(redact(obj), indent=2, ensure_ascii=False, default=str))


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(run_dir) / RUN_INFO
    return json.loads(p.read_text()) if p.is_file() else None


def guard_run_dir(run_dir: Path, resume: Any, overwrite: bool) -> None:
    """Refuse to train into a finished run directory unless ``resume=auto`` (continue it) or ``overwrite=true``."""
    if overwrite or resume not in NO_RESUME or not (run_dir / RUN_INFO).is_file():
        return
    raise WorkExistsError(
        f"run_dir={run_dir} holds a finished run ({RUN_INFO}, adapter/, metrics.json); training into it would "
        "overwrite that work.",
        hint="pick another run_dir (or leave it unset for a new timestamped one), resume=auto to continue it, or "
        "overwrite=true to replace it",
    )


def is_complete(checkpoint_dir: Path) -> bool:
    """A trainer checkpoint that was fully written (the completion marker and ``trainer_state.json``)."""
    return (checkpoint_dir / COMPLETE_MARKER).is_file() and (checkpoint_dir / "trainer_state.json").is_file()


def check_resume_path(resume: Any) -> Path | None:
    """``resume=<path>`` must name a complete checkpoint; ``null``/``auto`` pass (``auto`` is decided later).

    Needs no heavy import, so ``safetune-train`` refuses a bad path in about a second, before any work."""
    if resume in NO_RESUME or resume == "auto":
        return None
    p = Path(str(resume)).expanduser()
    if is_complete(p):
        return p
    if not p.exists():
        got = "it does not exist"
    elif not p.is_dir():
        got = "it is a file, not a checkpoint directory"
    else:
        found = sorted(c.name for c in p.glob("checkpoint-*") if is_complete(c))
        got = (
            f"it is a directory holding complete checkpoints ({', '.join(found[-3:])}), not one of them"
            if found
            else "the directory has no trainer_state.json or no completion marker (an interrupted save)"
        )
    raise MissingInputError(
        f"resume={resume!r}: expected a complete trainer checkpoint (checkpoint-N with trainer_state.json and the "
        f"{COMPLETE_MARKER} marker), but {got}.",
        hint="pass <run_dir>/trainer/checkpoint-N, or resume=auto with run_dir=<the run> to continue from its newest "
        "complete checkpoint",
    )
