"""PKU-SafeRLHF (dual harmlessness/helpfulness preferences) -> :class:`PreferenceExample`.

Source: hub ``PKU-Alignment/PKU-SafeRLHF`` (``subset`` alpaca-7b / alpaca2-7b / alpaca3-8b, or the
``v0`` revision) or a local json/jsonl/parquet file with the same columns::

    prompt, response_0, response_1, is_response_0_safe, is_response_1_safe,
    better_response_id, safer_response_id,
    response_{0,1}_harm_category   {19 category name -> bool}   (absent in v0)
    response_{0,1}_severity_level  0..3                         (absent in v0)

``policy`` picks which response is *chosen*:

- ``safer`` (default): ``safer_response_id``;
- ``better``: ``better_response_id`` (helpfulness);
- ``agree``: keep only rows where both ids agree;
- ``safe_vs_unsafe``: keep only rows where exactly one response is safe; that one is chosen.

Harm categories come from the *rejected* (less safe) response's labels, severity from its
severity level; both are empty/None when that response is labelled safe or the v0 schema has no
labels. Filters: ``categories_include`` (keep rows with any of these), ``categories_exclude``
(drop rows with any of these), ``min_severity``. Rows dropped by the policy or the filters are
counted in the result's ``skipped`` (see :class:`safetune.data.io.Loaded`), never silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import PreferenceExample, SchemaError, as_messages, canonical_category, check_tactic
from safetune.data.io import Loaded, check_on_error, load_rows, text_field

HUB_ID = "PKU-Alignment/PKU-SafeRLHF"
POLICIES = ("safer", "better", "agree", "safe_vs_unsafe")
REQUIRED = ("prompt", "response_0", "response_1", "safer_response_id", "better_response_id")


def _py(v: Any) -> Any:
    """numpy scalars (parquet) -> Python scalars."""
    return v.item() if hasattr(v, "item") and not isinstance(v, (str, bytes)) else v


def _response_id(row: dict[str, Any], key: str, where: str) -> int:
    v = _py(row.get(key))
    if isinstance(v, bool) or v not in (0, 1):
        raise SchemaError(f"{where}: field '{key}' must be 0 or 1, got {v!r}.")
    return int(v)


def _is_safe(row: dict[str, Any], i: int, where: str) -> bool | None:
    key = f"is_response_{i}_safe"
    v = _py(row.get(key))
    if v is None:
        return None
    if not isinstance(v, bool):
        raise SchemaError(f"{where}: field '{key}' must be true/false, got {v!r}.")
    return v


def _categories(row: dict[str, Any], i: int, where: str) -> list[str]:
    key = f"response_{i}_harm_category"
    raw = row.get(key)
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise SchemaError(
            f"{where}: field '{key}' must be a mapping of category name -> bool, got {type(raw).__name__}."
        )
    return [canonical_category(name, where=f"{where}: field '{key}'") for name, on in raw.items() if _py(on)]


def _severity(row: dict[str, Any], i: int, where: str) -> int | None:
    key = f"response_{i}_severity_level"
    v = _py(row.get(key))
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 3:
        raise SchemaError(f"{where}: field '{key}' must be an integer 0-3, got {v!r}.")
    return v


def _text(row: dict[str, Any], key: str, where: str) -> str:
    return text_field(row, key, where, what="a string")


def row_to_example(
    row: dict[str, Any],
    *,
    where: str,
    policy: str = "safer",
    source: str = "pku_saferlhf",
    index: int = 0,
    tactic: str = "none",
) -> tuple[PreferenceExample | None, str]:
    """Convert one row. Returns ``(example, "")`` or ``(None, reason)`` when the policy drops it."""
    missing = [k for k in REQUIRED if k not in row]
    if missing:
        raise SchemaError(
            f"{where}: missing field(s) {missing}; a PKU-SafeRLHF row needs {list(REQUIRED)} (row has {sorted(row)})."
        )
    prompt = _text(row, "prompt", where)
    responses = (_text(row, "response_0", where), _text(row, "response_1", where))
    safer, better = _response_id(row, "safer_response_id", where), _response_id(row, "better_response_id", where)
    safe = (_is_safe(row, 0, where), _is_safe(row, 1, where))
    if policy == "safer":
        chosen_id = safer
    elif policy == "better":
        chosen_id = better
    elif policy == "agree":
        if safer != better:
            return None, "policy agree: safer and better responses differ"
        chosen_id = safer
    elif policy == "safe_vs_unsafe":
        if None in safe:
            raise SchemaError(f"{where}: policy safe_vs_unsafe needs is_response_0_safe/is_response_1_safe.")
        if safe[0] == safe[1]:
            return None, "policy safe_vs_unsafe: both responses " + ("safe" if safe[0] else "unsafe")
        chosen_id = 0 if safe[0] else 1
    else:
        raise SchemaError(f"pku_saferlhf: policy={policy!r}; expected one of {POLICIES}.")
    rej = 1 - chosen_id
    if safe[rej] is True:
        categories, severity = [], _severity(row, rej, where)
    else:
        categories, severity = _categories(row, rej, where), _severity(row, rej, where)
    rid = row.get("id") or (row.get(f"response_{chosen_id}_sha256") or "")[:16] or str(index)
    meta = {
        "location": where,
        "policy": policy,
        "chosen_response_id": chosen_id,
        "is_chosen_safe": safe[chosen_id],
        "is_rejected_safe": safe[rej],
        "better_response_id": better,
        "safer_response_id": safer,
        "chosen_categories": _categories(row, chosen_id, where),
        "chosen_severity": _severity(row, chosen_id, where),
    }
    for k in ("prompt_source", f"response_{chosen_id}_source", f"response_{rej}_source"):
        if k in row:
            meta[k] = row[k]
    ex = PreferenceExample(
        id=f"pku-{rid}-{index}",
        prompt=as_messages(prompt, where=f"{where}: field 'prompt'"),
        chosen=responses[chosen_id],
        rejected=responses[rej],
        categories=categories,
        severity=severity,
        tactic=check_tactic(tactic, where=f"{where}: option 'tactic'"),
        source=source,
        metadata=meta,
    )
    return ex, ""


def _canon_list(names: Sequence[str] | None, option: str) -> set[str]:
    return {canonical_category(n, where=f"pku_saferlhf option '{option}'") for n in (names or [])}


def convert(
    rows: Iterable[tuple[str, dict[str, Any]]],
    *,
    policy: str = "safer",
    categories_include: Sequence[str] | None = None,
    categories_exclude: Sequence[str] | None = None,
    min_severity: int | None = None,
    source: str = "pku_saferlhf",
    tactic: str = "none",
    on_error: str = "raise",
) -> Loaded:
    if policy not in POLICIES:
        raise InputError(f"pku_saferlhf: policy={policy!r}; expected one of {POLICIES}.")
    check_on_error(on_error)
    include, exclude = (
        _canon_list(categories_include, "categories_include"),
        _canon_list(categories_exclude, "categories_exclude"),
    )
    out = Loaded()
    for i, (where, row) in enumerate(rows):
        try:
            ex, reason = row_to_example(row, where=where, policy=policy, source=source, index=i, tactic=tactic)
        except SchemaError as e:
            if on_error == "raise":
                raise
            out.errors.append((where, str(e)))
            continue
        if ex is None:
            out.skip(reason, where)
            continue
        cats = set(ex.categories)
        if include and not cats & include:
            out.skip("filter categories_include", where)
        elif exclude and cats & exclude:
            out.skip("filter categories_exclude", where)
        elif min_severity is not None and (ex.severity or 0) < int(min_severity):
            out.skip(f"filter min_severity={min_severity}", where)
        else:
            out.append(ex)
    return out


def load(
    path: str = HUB_ID,
    *,
    policy: str = "safer",
    categories_include: Sequence[str] | None = None,
    categories_exclude: Sequence[str] | None = None,
    min_severity: int | None = None,
    source: str | None = None,
    tactic: str = "none",
    on_error: str = "raise",
    **hub: Any,
) -> Loaded:
    """Load PKU-SafeRLHF from the hub (``subset``, ``split``, ``revision``) or a local json/jsonl/parquet path."""
    subset = hub.get("subset")
    opts = {
        "policy": policy,
        "categories_include": categories_include,
        "categories_exclude": categories_exclude,
        "min_severity": min_severity,
        "source": source or ("pku_saferlhf" + (f":{subset}" if subset else "")),
        "tactic": tactic,
        "on_error": on_error,
    }
    return load_rows(path, lambda rows: convert(rows, **opts), on_error=on_error, **{"split": "train", **hub})
