"""HarmBench text behaviours (``walledai/HarmBench`` or a local CSV): semantic categories mapped onto the taxonomy;
contextual rows get their context before the behaviour; copyright rows go to their own suite by default."""

from __future__ import annotations

from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import EvalPrompt, canonical_category
from safetune.data.io import iter_rows
from safetune.eval.suites.common import get_field, user_turn


def load(
    path: str = "walledai/HarmBench",
    *,
    name: str = "harmbench",
    split: str = "train",
    subset: str | None = None,
    copyright: str = "separate",
    **_: Any,
) -> list[EvalPrompt]:
    """``copyright``: 'separate' (own suite ``<name>_copyright``), 'include' or 'drop'."""
    if copyright not in ("separate", "include", "drop"):
        raise InputError(f"harmbench option copyright={copyright!r}; expected 'separate', 'include' or 'drop'.")
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split, subset=subset)):
        behavior = str(get_field(row, "Behavior", "prompt", where=where))
        functional = str(get_field(row, "FunctionalCategory", where=where, required=False) or "standard").lower()
        semantic = get_field(row, "SemanticCategory", "category", where=where, required=False)
        context = get_field(row, "ContextString", "context", where=where, required=False)
        is_copyright = functional == "copyright" or str(semantic).lower() == "copyright"
        if is_copyright and copyright == "drop":
            continue
        text = f"{str(context).strip()}\n\n---\n\n{behavior.strip()}" if context else behavior
        out.append(
            EvalPrompt(
                id=str(get_field(row, "BehaviorID", where=where, required=False) or f"harmbench-{i}"),
                prompt=user_turn(text),
                kind="harmful",
                suite=f"{name}_copyright" if is_copyright and copyright == "separate" else name,
                category=canonical_category(semantic, where=f"{where}: field 'SemanticCategory'") if semantic else None,
                type=functional,
                metadata={"functional_category": functional, "semantic_category": semantic},
            )
        )
    return out
