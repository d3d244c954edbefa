"""Evaluation prompt suites: bundled (project-written) and public ones, mapped onto the taxonomy.

Every loader returns a list of :class:`EvalPrompt`. Configure suites in the
``eval/suite`` group as a list of ``{name, loader, path, ...}``.
"""

from __future__ import annotations

from importlib import import_module, resources
from pathlib import Path
from typing import Any

from safetune.data.io import iter_rows
from safetune.schema import EvalPrompt, SchemaError, as_messages, canonical_category, check_tactic


def bundled_suite_dir() -> Path:
    return Path(str(resources.files("safetune") / "eval" / "bundled"))


def _prompt_from_row(row: dict[str, Any], where: str, field: str = "prompt"):
    if field not in row or row[field] in (None, ""):
        raise SchemaError(f"{where}: missing or empty field '{field}'.")
    msgs = as_messages(row[field], where=f"{where}: field '{field}'")
    if msgs[-1]["role"] != "user":
        raise SchemaError(f"{where}: field '{field}' must end with a user turn.")
    return msgs


def load_jsonl_suite(
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
                prompt=_prompt_from_row(row, where, prompt_field),
                kind=row_kind,
                suite=name,
                category=canonical_category(cat, where=f"{where}: field '{category_field}'") if cat else None,
                type=row.get(type_field) or None,
                tactic=check_tactic(row.get("tactic") or "none", where=f"{where}: field 'tactic'"),
                severity=int(row["severity"]) if row.get("severity") not in (None, "") else None,
            )
        )
    return out


def load_bundled(path: str, *, name: str, **_: Any) -> list[EvalPrompt]:
    """``path`` is 'harmful' or 'benign' (files in safetune/eval/bundled/)."""
    f = bundled_suite_dir() / f"{path}.jsonl"
    if not f.is_file():
        raise FileNotFoundError(f"Bundled suite {path!r} not found at {f}; expected 'harmful' or 'benign'.")
    return load_jsonl_suite(str(f), name=name, kind="harmful" if path == "harmful" else "benign")


# loader name -> "module:function"; functions take (path, name=..., **options)
SUITE_LOADERS = {
    "bundled": "safetune.eval.suites:load_bundled",
    "jsonl": "safetune.eval.suites:load_jsonl_suite",
    "custom": "safetune.eval.suites:load_jsonl_suite",
    "xstest": "safetune.eval.public_suites:load_xstest",
    "advbench": "safetune.eval.public_suites:load_advbench",
    "harmbench": "safetune.eval.public_suites:load_harmbench",
    "jbb": "safetune.eval.public_suites:load_jbb",
    "jbb_artifacts": "safetune.eval.public_suites:load_jbb_artifacts",
    "pku": "safetune.eval.public_suites:load_pku",
}


def report_group(p: EvalPrompt) -> str:
    """Reporting group: harmful -> category (else the suite's own type), benign -> type."""
    if p.kind == "harmful":
        return p.category or p.type or "uncategorised"
    return p.type or "uncategorised"


def load_suite(spec: dict[str, Any]) -> list[EvalPrompt]:
    spec = dict(spec)
    loader = spec.pop("loader", "jsonl")
    if loader not in SUITE_LOADERS:
        raise ValueError(f"suite loader={loader!r}; expected one of {sorted(SUITE_LOADERS)}.")
    mod, fn = SUITE_LOADERS[loader].split(":")
    name = spec.pop("name", None) or loader
    path = spec.pop("path", None)
    if path is None and loader in ("bundled", "jsonl", "custom", "jbb_artifacts"):
        raise ValueError(f"suite {name!r} (loader={loader}) needs a 'path'.")
    kwargs = {k: v for k, v in spec.items() if v is not None}
    if path is not None:
        kwargs["path"] = path
    return getattr(import_module(mod), fn)(name=name, **kwargs)


def limit_per_group(prompts: list[EvalPrompt], n: int | None) -> list[EvalPrompt]:
    """Keep the first ``n`` prompts (by id) of each (suite, group): a deterministic, stratified subset."""
    if not n:
        return prompts
    seen: dict[tuple[str, str], int] = {}
    out = []
    for p in sorted(prompts, key=lambda p: (p.suite, report_group(p), p.id)):
        k = (p.suite, report_group(p))
        if seen.get(k, 0) < n:
            seen[k] = seen.get(k, 0) + 1
            out.append(p)
    return out
