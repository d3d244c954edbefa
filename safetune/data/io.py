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

from safetune.core.errors import EnvironmentProblem, MissingInputError
from safetune.core.hub import looks_local, require_hub
from safetune.core.schema import SchemaError

BUNDLED_PREFIX = "bundled://"
SUITE_PREFIX = "suite://"
POOL_PREFIX = "pools://"


def bundled_dir() -> Path:
    return Path(str(resources.files("safetune") / "data" / "bundled"))


def suite_dir() -> Path:
    return Path(str(resources.files("safetune") / "eval" / "bundled"))


def pool_dir() -> Path:
    """Project-written prompt pools for on-policy preference synthesis (``pools://<name or glob>``)."""
    return Path(str(resources.files("safetune") / "data" / "pools"))


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
            raise MissingInputError(f"No bundled evaluation suite {path!r} ({f}); available: {avail}.")
        return [f]
    for prefix, root in ((BUNDLED_PREFIX, bundled_dir()), (POOL_PREFIX, pool_dir())):
        if not path.startswith(prefix):
            continue
        pattern = path[len(prefix) :]
        if any(c in pattern for c in "*?[") or pattern.endswith(".jsonl"):
            files = sorted(root.glob(pattern))  # a glob or an exact file name
        else:
            files = sorted(root.glob(f"{pattern}*.jsonl"))  # a prefix: bundled://safety_prefs
        if not files:
            avail = sorted(p.stem for p in root.glob("*.jsonl"))
            raise MissingInputError(f"No package data matches {path!r} in {root}; available: {avail}.")
        return files
    p = Path(path).expanduser()
    if any(c in path for c in "*?["):
        files = sorted(Path(p.anchor or ".").glob(str(p.relative_to(p.anchor)) if p.is_absolute() else path))
        if not files:
            raise MissingInputError(f"No files match {path!r}.")
        return files
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in {".jsonl", ".json", ".csv", ".parquet", ".gz"})
        if not files:
            raise MissingInputError(f"Directory {p} has no .jsonl/.json/.csv/.parquet files.")
        return files
    if not p.is_file():
        raise MissingInputError(f"Data file {p} does not exist.")
    return [p]


def is_local(path: str) -> bool:
    """Read from disk (never the hub): package data, an existing path, a glob, or anything that looks like a path."""
    return (
        path.startswith((BUNDLED_PREFIX, SUITE_PREFIX, POOL_PREFIX))
        or Path(path).expanduser().exists()
        or any(c in path for c in "*?[")
        or looks_local(path)
    )


# the loaders that read ``path`` through :func:`iter_rows` (so a local path must exist before anything runs)
SYNTH_READER = "safetune.synth.source.load"
PATH_READERS = frozenset(
    {
        "safetune.data.sources.triplets.load",
        "safetune.data.sources.pku_saferlhf.load",
        "safetune.data.sources.hh_rlhf.load",
    }
)


def precheck_local_paths(sources: Any, key: str = "data.sources") -> None:
    """Every local file, directory or glob named by a source's ``path`` exists (hub ids are left to loading).

    Run right after composing, before the heavy imports: a typo in a path fails in about a second, naming the
    config key, and no run directory is created for a run that cannot start."""
    for index, src in enumerate(sources if isinstance(sources, list) else []):
        if isinstance(src, dict) and src.get("_target_") == SYNTH_READER:
            _precheck_synth(src, f"{key}.{index}")
            continue
        if not isinstance(src, dict) or src.get("_target_", "safetune.data.sources.triplets.load") not in PATH_READERS:
            continue
        path = src.get("path")
        if not isinstance(path, str) or not path.strip() or path == "???" or not is_local(path):
            continue
        try:
            resolve_local(path)
        except MissingInputError as e:
            raise MissingInputError(
                f"{key}.{index}.path={path!r} ({src.get('name') or 'source'}): {e.message}",
                hint=f"fix {key}.{index}.path (relative paths are read from the directory you launch from: "
                f"{Path.cwd()}), or use a hub dataset id",
            ) from None


PAIRS = "pairs.jsonl"


def pairs_file(path: str) -> Path:
    """The pairs file of a synthesis output directory (or ``path`` itself when it names a ``.jsonl``)."""
    p = Path(path).expanduser()
    return p if p.suffix == ".jsonl" else p / PAIRS


def _precheck_synth(src: dict[str, Any], key: str) -> None:
    """A synthesised-pairs source names output directories (or their pairs.jsonl) that hold pairs."""
    path = src.get("path")
    if path in (None, "", "???"):
        return  # the loader says what to set
    for i, p in enumerate(path if isinstance(path, list) else [path]):
        f = pairs_file(str(p))
        if not f.is_file():
            where = f"{key}.path" + (f".{i}" if isinstance(path, list) else "")
            raise MissingInputError(
                f"{where}={str(p)!r} ({src.get('name') or 'source'}): {f} does not exist (no synthesised pairs there).",
                hint="run `safetune-data synthesize out_dir=DIR` first and pass synth_dir=DIR (or that source's "
                "path), or drop this source",
            )


BadRows = list[tuple[str, str]]


def _problem(bad: BadRows | None, where: str, message: str) -> None:
    """Collect a bad row into ``bad`` (one pass reports them all), or raise at once when no sink is given."""
    if bad is None:
        raise SchemaError(message)
    bad.append((where, message))


def _open_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped for ``.gz``; a broken archive is an error naming the file."""
    raw = path.read_bytes()
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as e:
        kind = "not a gzip file" if raw[:2] != b"\x1f\x8b" else f"a damaged or truncated gzip file ({e})"
        raise SchemaError(
            f"{path}: {kind}; expected a gzip-compressed file.",
            hint=f"re-download it, or rename it without .gz if it is plain text ({path.name.removesuffix('.gz')})",
        ) from e


def _utf8_lines(data: bytes, path: Path) -> list[str]:
    """Decode line by line so a bad byte is reported with its line number."""
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        pass
    for lineno, raw in enumerate(data.splitlines(keepends=True), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise SchemaError(
                f"{path}:{lineno}: broken encoding (byte {e.start}: {e.reason}); expected UTF-8 text.",
                hint="re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
            ) from e
    raise AssertionError("unreachable")  # pragma: no cover


def iter_file_rows(path: Path, bad: BadRows | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``(location, row)`` where location is 'file:line' (JSONL/CSV) or 'file:row N'.

    ``bad``: a list that collects ``(location, message)`` for JSONL lines that are not UTF-8, not JSON or not an
    object, so one pass reports every bad line; without it the first one raises :class:`SchemaError`.
    """
    name = path.name
    suffix = path.suffixes[-2] if path.suffix == ".gz" and len(path.suffixes) > 1 else path.suffix
    if path.suffix == ".gz" and len(path.suffixes) == 1:
        suffix = ".jsonl"
    if suffix == ".jsonl":
        for lineno, raw in enumerate(_open_bytes(path).splitlines(), 1):
            where = f"{name}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                _problem(
                    bad,
                    where,
                    f"{path}:{lineno}: broken encoding (byte {e.start}: {e.reason}); expected UTF-8 text. Re-save the file as UTF-8.",
                )
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                _problem(
                    bad,
                    where,
                    f"{path}:{lineno}: malformed JSON ({e.msg} at column {e.colno}); fix or remove the line.",
                )
                continue
            if not isinstance(row, dict):
                _problem(bad, where, f"{path}:{lineno}: expected a JSON object per line, got {type(row).__name__}.")
                continue
            yield where, row
    elif suffix == ".json":
        text = "".join(_utf8_lines(_open_bytes(path), path))
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SchemaError(f"{path}:{e.lineno}: malformed JSON ({e.msg}).") from e
        if isinstance(data, dict):
            data = next((v for v in data.values() if isinstance(v, list)), None)
        if not isinstance(data, list):
            raise SchemaError(f"{path}: expected a JSON list of objects (or an object holding one).")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                _problem(bad, f"{name}:item {i}", f"{path}: item {i} is {type(row).__name__}, expected an object.")
                continue
            yield f"{name}:item {i}", row
    elif suffix == ".csv":
        reader = csv.DictReader(_utf8_lines(_open_bytes(path), path))
        try:
            for row in reader:
                yield f"{name}:{reader.line_num}", dict(row)
        except csv.Error as e:
            raise SchemaError(f"{path}:{reader.line_num}: malformed CSV ({e}).") from e
    elif suffix == ".parquet":
        import pandas as pd

        try:
            records = pd.read_parquet(path).to_dict(orient="records")
        except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
            raise SchemaError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e}).") from e
        for i, row in enumerate(records):
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
    bad: BadRows | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows from a local path (``bundled://``, file, dir, glob) or, otherwise, a hub dataset id.

    ``bad`` collects unreadable lines instead of raising at the first (see :func:`iter_file_rows`)."""
    if not str(path).strip():
        raise MissingInputError(
            "the data path is empty.",
            hint="set it to a file, directory or hub id (an environment variable may be set to an empty string)",
        )
    if is_local(path):
        for f in resolve_local(path):
            yield from iter_file_rows(f, bad)
        return
    require_hub(path, what="dataset")
    from datasets import load_dataset

    try:
        ds = load_dataset(path, subset, data_dir=data_dir, split=split, revision=revision)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise EnvironmentProblem(
            f"hub dataset {path!r} (subset {subset!r}, split {split!r}) could not be loaded: {str(e).splitlines()[0]}",
            hint="check the dataset id, subset and split, or use a local file",
        ) from e
    for i, row in enumerate(ds):
        yield f"{path}[{split}]:row {i}", row


def load_rows(path: str, convert: Any, *, on_error: str = "raise", **iter_kwargs: Any) -> Loaded:
    """``convert(iter_rows(path, ...))`` with unreadable lines collected into the result's ``errors`` when
    ``on_error='collect'`` (one pass reports every bad row), raised at once otherwise."""
    bad: BadRows | None = [] if check_on_error(on_error) == "collect" else None
    out = convert(iter_rows(path, bad=bad, **iter_kwargs))
    out = out if isinstance(out, Loaded) else Loaded(out)
    out.errors.extend(bad or [])
    return out
