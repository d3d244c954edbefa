"""Helpers shared by the suite loaders: field lookup that names the row, and prompt parsing."""

from __future__ import annotations

from typing import Any

from safetune.core.schema import SchemaError, as_messages


def get_field(row: dict[str, Any], *names: str, where: str, required: bool = True) -> Any:
    """First present field among ``names`` (case-insensitive: copies of these files differ in header case)."""
    lower = {str(k).lower(): v for k, v in row.items()}
    for n in names:
        v = lower.get(n.lower())
        if v not in (None, ""):
            return v
    if required:
        raise SchemaError(
            f"{where}: missing field {names[0]!r} (also tried {list(names[1:])}); got fields {sorted(row)}."
        )
    return None


def user_turn(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": str(text).strip()}]


def prompt_from_row(row: dict[str, Any], where: str, field: str = "prompt"):
    if field not in row or row[field] in (None, ""):
        raise SchemaError(f"{where}: missing or empty field '{field}'.")
    msgs = as_messages(row[field], where=f"{where}: field '{field}'")
    if msgs[-1]["role"] != "user":
        raise SchemaError(f"{where}: field '{field}' must end with a user turn.")
    return msgs
