"""PKU-SafeRLHF prompts (``PKU-Alignment/PKU-SafeRLHF`` or a local file): a prompt's categories are the union of its
responses' harm categories; prompts with none are benign."""

from __future__ import annotations

from typing import Any

from safetune.core.schema import HARM_CATEGORIES, EvalPrompt, SchemaError, canonical_category
from safetune.data.io import iter_rows
from safetune.eval.suites.common import get_field, user_turn


def load(
    path: str = "PKU-Alignment/PKU-SafeRLHF", *, name: str = "pku_saferlhf", split: str = "test", **_: Any
) -> list[EvalPrompt]:
    out = []
    seen: set[str] = set()
    for i, (where, row) in enumerate(iter_rows(path, split=split)):
        prompt = str(get_field(row, "prompt", where=where))
        if prompt in seen:  # PKU repeats a prompt once per response pair
            continue
        seen.add(prompt)
        cats: set[str] = set()
        sev = 0
        for r in (0, 1):
            flags = row.get(f"response_{r}_harm_category") or {}
            if not isinstance(flags, dict):
                raise SchemaError(f"{where}: field 'response_{r}_harm_category' must be an object of 19 booleans.")
            cats.update(
                canonical_category(k, where=f"{where}: response_{r}_harm_category") for k, v in flags.items() if v
            )
            sev = max(sev, int(row.get(f"response_{r}_severity_level") or 0))
        ordered = [c for c in HARM_CATEGORIES if c in cats]
        out.append(
            EvalPrompt(
                id=f"pku-{i}",
                prompt=user_turn(prompt),
                kind="harmful" if ordered else "benign",
                suite=name,
                category=ordered[0] if ordered else None,
                type=None if ordered else "pku_safe",
                severity=sev if ordered else None,
                metadata={"categories": ordered},
            )
        )
    return out
