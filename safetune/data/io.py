"""Reading raw rows from local files (with line numbers for errors) or the hub."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from safetune.schema import SchemaError

BUNDLED_PREFIX = "bundled://"


def bundled_dir() -> Path:
    return Path(str(resources.files("safetune") / "data" / "bundled"))


def resolve_local(path: str) -> list[Path]:
    """Expand ``bundled://name`` (package data, a glob) or a local path/glob into files."""
    if path.startswith(BUNDLED_PREFIX):
        pattern = path[len(BUNDLED_PREFIX) :]
        files = sorted(bundled_dir().glob(pattern if any(c in pattern for c in "*?[") else f"{pattern}*.jsonl"))
        if not files:
            raise FileNotFoundError(f"No bundled data matches {path!r} in {bundled_dir()}.")
        return files
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.is_absolute() else path))
        if not files:
            raise FileNotFoundError(f"No files match {path!r}.")
        return files
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in {".jsonl", ".json", ".csv", ".parquet", ".gz"})
        if not files:
            raise FileNotFoundError(f"Directory {p} has no .jsonl/.json/.csv/.parquet files.")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"Data file {p} does not exist.")
    return [p]


def is_local(path: str) -> bool:
    return path.startswith(BUNDLED_PREFIX) or Path(path).expanduser().exists() or any(c in path for c in "*?[")


def iter_file_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` where location is 'file:line' (JSONL/CSV) or 'file:row N'."""
    name = path.name
    suffixes = path.suffixes
    if suffixes[-1:] == [".gz"]:
        opener, suffix = gzip.open, suffixes[-2] if len(suffixes) > 1 else ".jsonl"
    else:
        opener, suffix = open, path.suffix
    if suffix == ".jsonl":
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError(f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line.") from e
                if not isinstance(row, dict):
                    raise SchemaError(f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}.")
                yield f"{name}:{lineno}", row
    elif suffix == ".json":
        with opener(path, "rt", encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{path}:{e.lineno}: malformed JSON ({e.msg}).") from e
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a JSON list of objects (or an object holding one).")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise SchemaError(f"{path}: item {i} is {type(row).__name__}, expected an object.")
            yield f"{name}:item {i}", row
    elif suffix == ".csv":
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                yield f"{name}:{reader.line_num}", dict(row)
    elif suffix == ".parquet":
        import pandas as pd

        for i, row in enumerate(pd.read_parquet(path).to_dict(orient="records")):
            yield f"{name}:row {i}", row
    else:
        raise SchemaError(f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json, .csv, .parquet (optionally .gz).")


def iter_rows(path: str, *, split: str = "train", subset: str | None = None, data_dir: str | None = None,
              revision: str | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows from a local path (``bundled://``, file, dir, glob) or, otherwise, a hub dataset id."""
    if is_local(path):
        for f in resolve_local(path):
            yield from iter_file_rows(f)
        return
    from datasets import load_dataset

    ds = load_dataset(path, subset, data_dir=data_dir, split=split, revision=revision)
    for i, row in enumerate(ds):
        yield f"{path}[{split}]:row {i}", row
