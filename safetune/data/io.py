"""Reading raw rows from local files (with line numbers for errors) or the hub.

Locations: ``bundled://name`` is the preference data shipped in ``safetune/data/bundled``;
``suite://name`` is an evaluation suite shipped in ``safetune/eval/bundled`` (read here as plain
JSONL so the data layer never imports the evaluator); anything else is a local path/glob or a hub id.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from safetune.core.schema import SchemaError

BUNDLED_PREFIX = "bundled://"
SUITE_PREFIX = "suite://"


def bundled_dir() -> Path:
    return Path(str(resources.files("safetune") / "data" / "bundled"))


def suite_dir() -> Path:
    return Path(str(resources.files("safetune") / "eval" / "bundled"))


class Loaded(list):
    """A loader's result: the examples (a plain list) plus what was left out and why.

    ``skipped`` counts rows dropped on purpose (policy/filters) or because they could not be
    parsed (hh-rlhf transcripts); ``skipped_at`` keeps the first few locations per reason.
    ``errors`` holds ``(location, message)`` for invalid rows when a loader runs with
    ``on_error="collect"`` (validation), instead of raising on the first one.
    """

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.skipped: Counter[str] = Counter()
        self.skipped_at: dict[str, list[str]] = {}
        self.errors: list[tuple[str, str]] = []

    def skip(self, reason: str, where: str, keep: int = 5) -> None:
        self.skipped[reason] += 1
        locs = self.skipped_at.setdefault(reason, [])
        if len(locs) < keep:
            locs.append(where)


def text_field(row: dict[str, Any], key: str, where: str, *, what: str = "a string", needs: str = "") -> str:
    """``row[key]`` as non-empty text, else a :class:`SchemaError` naming the location, the field and what it got.

    ``what`` names the expected value ("a transcript string"), ``needs`` the fields a row of this source requires."""
    if key not in row:
        hint = f"; {needs}" if needs else ""
        raise SchemaError(f"{where}: missing field '{key}'{hint} (row has {sorted(row)}).")
    v = row[key]
    if not isinstance(v, str):
        raise SchemaError(f"{where}: field '{key}' must be {what}, got {type(v).__name__}.")
    if not v.strip():
        raise SchemaError(f"{where}: field '{key}' is an empty string; expected {what} with text.")
    return v


def check_on_error(on_error: str) -> str:
    if on_error not in ("raise", "collect"):
        raise ValueError(f"on_error={on_error!r}; expected 'raise' (stop at the first bad row) or 'collect'.")
    return on_error


def resolve_local(path: str) -> list[Path]:
    """Expand ``bundled://name`` (package data, a glob) or a local path/glob into files."""
    if path.startswith(SUITE_PREFIX):
        name = path[len(SUITE_PREFIX) :]
        f = suite_dir() / (name if name.endswith(".jsonl") else f"{name}.jsonl")
        if not f.is_file():
            avail = sorted(p.stem for p in suite_dir().glob("*.jsonl"))
            raise FileNotFoundError(f"No bundled evaluation suite {path!r} ({f}); available: {avail}.")
        return [f]
    if path.startswith(BUNDLED_PREFIX):
        pattern = path[len(BUNDLED_PREFIX) :]
        if any(c in pattern for c in "*?[") or pattern.endswith(".jsonl"):
            files = sorted(bundled_dir().glob(pattern))  # a glob or an exact file name
        else:
            files = sorted(bundled_dir().glob(f"{pattern}*.jsonl"))  # a prefix: bundled://safety_prefs
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
    return (
        path.startswith((BUNDLED_PREFIX, SUITE_PREFIX))
        or Path(path).expanduser().exists()
        or any(c in path for c in "*?[")
    )


def iter_file_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` where location is 'file:line' (JSONL/CSV) or 'file:row N'."""
    name = path.name
    suffixes = path.suffixes
    if suffixes[-1:] == [".gz"]:
        opener, suffix = gzip.open, suffixes[-2] if len(suffixes) > 1 else ".jsonl"
    else:
        opener, suffix = open, path.suffix
    if suffix == ".jsonl":
        with opener(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise SchemaError(
                        f"{path}:{lineno}: broken encoding (byte {e.start}: {e.reason}); expected UTF-8 text. "
                        "Re-save the file as UTF-8."
                    ) from e
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SchemaError(
                        f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line."
                    ) from e
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
        raise SchemaError(
            f"{path}: unsupported file type {suffix!r}; expected .jsonl, .json, .csv, .parquet (optionally .gz)."
        )


def iter_rows(
    path: str,
    *,
    split: str = "train",
    subset: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows from a local path (``bundled://``, file, dir, glob) or, otherwise, a hub dataset id."""
    if is_local(path):
        for f in resolve_local(path):
            yield from iter_file_rows(f)
        return
    from datasets import load_dataset

    ds = load_dataset(path, subset, data_dir=data_dir, split=split, revision=revision)
    for i, row in enumerate(ds):
        yield f"{path}[{split}]:row {i}", row
