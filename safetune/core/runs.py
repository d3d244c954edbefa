"""Run directories: one per training/eval run, agreed on by every rank, written by rank 0 only."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

SECRET_KEY = re.compile(r"(token|secret|password|passwd|api[_-]?key|credential)", re.I)
RUN_INFO = "safetune_run.json"


def redact(obj: Any) -> Any:
    """Replace values under secret-looking keys with '***' (saved configs never hold secrets)."""
    if isinstance(obj, dict):
        return {
            k: ("***" if SECRET_KEY.search(str(k)) and v not in (None, "", False) else redact(v))
            for k, v in obj.items()
        }
    if isinstance(obj, list):
        return [redact(v) for v in obj]
    return obj


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
    """Atomic JSON write (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False, default=str))
    os.replace(tmp, path)


def read_run_info(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    p = Path(run_dir) / RUN_INFO
    return json.loads(p.read_text()) if p.is_file() else None
