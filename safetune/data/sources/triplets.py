"""Custom prompt/chosen/rejected triplets (also the bundled set and dpo_harmful_refined's layout).

Fields may be strings or message lists; column names are mapped in config
(``columns: {prompt: question, chosen: good, rejected: bad}``); optional
category/severity/tactic columns flow into the schema.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from safetune.core.schema import PreferenceExample, SchemaError, as_messages, canonical_category, check_tactic
from safetune.data.io import Loaded, check_on_error, load_rows

DEFAULT_COLUMNS = {
    "id": "id",
    "prompt": "prompt",
    "chosen": "chosen",
    "rejected": "rejected",
    "categories": "categories",
    "category": "category",
    "severity": "severity",
    "tactic": "tactic",
    "source": "source",
    "metadata": "metadata",
}


def _response_text(value: Any, *, where: str, field: str) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        last = value[-1]
        if last.get("role") != "assistant":
            raise SchemaError(
                f"{where}: field '{field}' is a message list whose last role is {last.get('role')!r}; expected 'assistant'."
            )
        text = last.get("content")
        if not isinstance(text, str):
            raise SchemaError(f"{where}: field '{field}' last message content must be a string.")
    elif isinstance(value, dict) and isinstance(value.get("content"), str):
        text = value["content"]
    else:
        raise SchemaError(
            f"{where}: field '{field}' must be a string or a list of messages, got {type(value).__name__}."
        )
    if not text.strip():
        raise SchemaError(f"{where}: field '{field}' is empty; expected a non-empty response.")
    return text


def _split_prompt_and_responses(prompt: Any, chosen: Any, rejected: Any, where: str):
    """Handle rows where chosen/rejected are full conversations including the prompt turns."""
    if prompt is None and isinstance(chosen, list) and isinstance(rejected, list):
        shared = []
        for a, b in zip(chosen[:-1], rejected[:-1]):
            if a != b:
                break
            shared.append(a)
        if not shared:
            raise SchemaError(f"{where}: no 'prompt' field and chosen/rejected share no leading turns.")
        return shared, chosen[len(shared) :], rejected[len(shared) :]
    return prompt, chosen, rejected


def row_to_example(
    row: dict[str, Any],
    *,
    where: str,
    columns: dict[str, str] | None = None,
    source: str = "triplets",
    category_map: dict[str, str] | None = None,
    index: int = 0,
) -> PreferenceExample:
    cols = {**DEFAULT_COLUMNS, **(columns or {})}
    for req in ("prompt", "chosen", "rejected"):
        if cols[req] not in row and not (req == "prompt" and isinstance(row.get(cols["chosen"]), list)):
            raise SchemaError(
                f"{where}: missing field '{cols[req]}' (the {req} column); row has {sorted(row)}. "
                f"Map it with data.sources.0.columns.{req}=<your column> (the source's index in data.sources)."
            )
    prompt, chosen, rejected = _split_prompt_and_responses(
        row.get(cols["prompt"]), row[cols["chosen"]], row[cols["rejected"]], where
    )
    if prompt is None:
        raise SchemaError(f"{where}: field '{cols['prompt']}' is null.")
    messages = as_messages(prompt, where=f"{where}: field '{cols['prompt']}'")
    if messages[-1]["role"] != "user":
        raise SchemaError(
            f"{where}: field '{cols['prompt']}' must end with a user turn, ends with {messages[-1]['role']!r}."
        )
    cats_raw = row.get(cols["categories"])
    if cats_raw is None:
        cats_raw = row.get(cols["category"])
    if hasattr(cats_raw, "tolist"):  # numpy arrays from parquet
        cats_raw = cats_raw.tolist()
    if isinstance(cats_raw, float) and cats_raw != cats_raw:  # NaN from CSV/parquet
        cats_raw = None
    if isinstance(cats_raw, str):
        cats_raw = [c for c in (x.strip() for x in cats_raw.replace(";", ",").split(",")) if c]
    cats: list[str] = []
    for c in cats_raw or []:
        mapped = (category_map or {}).get(c, c)
        cats.append(canonical_category(mapped, where=f"{where}: field '{cols['categories']}'"))
    sev = row.get(cols["severity"])
    if sev in ("", None) or (isinstance(sev, float) and sev != sev):
        sev = None
    else:
        try:
            sev = int(sev)
        except (TypeError, ValueError) as e:
            raise SchemaError(f"{where}: field '{cols['severity']}' must be an integer 0-3, got {sev!r}.") from e
        if not 0 <= sev <= 3:
            raise SchemaError(f"{where}: field '{cols['severity']}' must be 0-3, got {sev}.")
    tactic = check_tactic(row.get(cols["tactic"]) or "none", where=f"{where}: field '{cols['tactic']}'")
    meta = row.get(cols["metadata"]) or {}
    if not isinstance(meta, dict):
        meta = {"metadata": meta}
    meta = {**meta, "location": where}
    rid = row.get(cols["id"])
    return PreferenceExample(
        id=str(rid) if rid not in (None, "") else f"{source}-{index}",
        prompt=messages,
        chosen=_response_text(chosen, where=where, field=cols["chosen"]),
        rejected=_response_text(rejected, where=where, field=cols["rejected"]),
        categories=cats,
        severity=sev,
        tactic=tactic,
        source=str(row.get(cols["source"]) or source),
        metadata=meta,
    )


def convert(rows: Iterable[tuple[str, dict[str, Any]]], *, on_error: str = "raise", **kw: Any) -> Loaded:
    """Map raw rows to examples; ``on_error='collect'`` records bad rows in ``.errors`` instead of raising."""
    check_on_error(on_error)
    out = Loaded()
    for i, (where, row) in enumerate(rows):
        try:
            out.append(row_to_example(row, where=where, index=i, **kw))
        except SchemaError as e:
            if on_error == "raise":
                raise
            out.errors.append((where, str(e)))
    return out


def load(
    path: str,
    *,
    columns: dict[str, str] | None = None,
    source: str | None = None,
    split: str = "train",
    category_map: dict[str, str] | None = None,
    on_error: str = "raise",
    **hub_kwargs: Any,
) -> Loaded:
    """Load triplets from a local file/dir/glob, ``bundled://``, or a hub id (``subset``, ``data_dir``, ``revision``)."""
    opts = {
        "columns": {k: v for k, v in (columns or {}).items() if v},  # null mappings keep the default column name
        "source": source or ("safetune-bundled" if path.startswith("bundled://") else "triplets"),
        "category_map": category_map,
        "on_error": on_error,
    }
    return load_rows(path, lambda rows: convert(rows, **opts), on_error=on_error, split=split, **hub_kwargs)
