"""AdvBench harmful behaviours (``walledai/AdvBench`` or a local ``harmful_behaviors.csv``): harmful, no categories."""

from __future__ import annotations

from typing import Any

from safetune.core.schema import EvalPrompt, canonical_category
from safetune.data.io import iter_rows
from safetune.eval.suites.common import get_field, user_turn


def load(
    path: str = "walledai/AdvBench",
    *,
    name: str = "advbench",
    split: str = "train",
    category: str | None = None,
    **_: Any,
) -> list[EvalPrompt]:
    cat = canonical_category(category, where="advbench suite option 'category'") if category else None
    return [
        EvalPrompt(
            id=f"advbench-{i}",
            prompt=user_turn(get_field(row, "goal", "prompt", "behavior", where=where)),
            kind="harmful",
            suite=name,
            category=cat,
            type="advbench",
            metadata={"target": row.get("target")},
        )
        for i, (where, row) in enumerate(iter_rows(path, split=split))
    ]
