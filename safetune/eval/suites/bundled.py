"""Project-written suites shipped in ``safetune/eval/bundled`` (``harmful``: 190 prompts over the 19 categories and four
tactics; ``benign``: 160 look-alikes of 10 types), and the generic JSONL/CSV suite loader (``eval/suite=custom``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from safetune.core.errors import MissingInputError
from safetune.core.schema import EvalPrompt, SchemaError, canonical_category, check_tactic
from safetune.data.io import iter_rows
from safetune.eval.suites.common import prompt_from_row


def load_jsonl(
    path: str,
    *,
    name: str,
    kind: str | None = None,
    prompt_field: str = "prompt",
    category_field: str = "category",
    type_field: str = "type",
) -> list[EvalPrompt]:
    """Generic suite: rows with prompt (+ optional category/type/tactic/severity/kind)."""
    out = []
    for i, (where, row) in enumerate(iter_rows(path)):
        row_kind = row.get("kind") or kind or ("harmful" if row.get(category_field) else "benign")
        if row_kind not in ("harmful", "benign"):
            raise SchemaError(f"{where}: field 'kind' must be 'harmful' or 'benign', got {row_kind!r}.")
        cat = row.get(category_field)
        out.append(
            EvalPrompt(
                id=str(row.get("id") or f"{name}-{i}"),
                prompt=prompt_from_row(row, where, prompt_field),
                kind=row_kind,
                suite=name,
                category=canonical_category(cat, where=f"{where}: field '{category_field}'") if cat else None,
                type=row.get(type_field) or None,
                tactic=check_tactic(row.get("tactic") or "none", where=f"{where}: field 'tactic'"),
                severity=int(row["severity"]) if row.get("severity") not in (None, "") else None,
            )
        )
    return out


def bundled_suite_dir() -> Path:
    return Path(str(resources.files("safetune") / "eval" / "bundled"))


def load(path: str, *, name: str, **_: Any) -> list[EvalPrompt]:
    """``path`` is 'harmful' or 'benign' (files in safetune/eval/bundled/)."""
    f = bundled_suite_dir() / f"{path}.jsonl"
    if not f.is_file():
        raise MissingInputError(f"Bundled suite {path!r} not found at {f}; expected 'harmful' or 'benign'.")
    return load_jsonl(str(f), name=name, kind="harmful" if path == "harmful" else "benign")
