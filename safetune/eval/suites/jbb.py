"""JailbreakBench (``JailbreakBench/JBB-Behaviors``; ``harmful-behaviors.csv`` / ``benign-behaviors.csv``), and jailbreak
artifact JSON files (e.g. PAIR) whose ``prompt`` field is the attack."""

from __future__ import annotations

from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import EvalPrompt, canonical_category
from safetune.data.io import iter_rows
from safetune.eval.suites.common import get_field, user_turn


def load(
    path: str = "JailbreakBench/JBB-Behaviors",
    *,
    name: str = "jbb",
    kind: str = "harmful",
    subset: str = "behaviors",
    split: str | None = None,
    **_: Any,
) -> list[EvalPrompt]:
    """JBB-Behaviors. ``kind`` 'harmful' or 'benign' picks the hub split (files are separate already)."""
    if kind not in ("harmful", "benign"):
        raise InputError(f"jbb option kind={kind!r}; expected 'harmful' or 'benign'.")
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split or kind, subset=subset)):
        jcat = get_field(row, "category", where=where)
        idx = get_field(row, "index", "Index", where=where, required=False)
        out.append(
            EvalPrompt(
                id=f"jbb-{kind}-{idx if idx is not None else i}",
                prompt=user_turn(get_field(row, "goal", "Goal", where=where)),
                kind=kind,
                suite=name,
                category=canonical_category(jcat, where=f"{where}: field 'category'") if kind == "harmful" else None,
                type=str(jcat) if kind == "benign" else "jbb",
                metadata={"behavior": row.get("behavior") or row.get("Behavior")},
            )
        )
    return out


def load_artifacts(
    path: str, *, name: str = "jbb_attack", tactic: str = "social_engineering", **_: Any
) -> list[EvalPrompt]:
    """JailbreakBench attack artifacts (JSON with a ``jailbreaks`` list); rows without an attack prompt are skipped."""
    out = []
    for where, row in iter_rows(path):
        prompt = row.get("prompt")
        if not prompt or str(prompt).strip() in ("None", "null"):
            continue
        out.append(
            EvalPrompt(
                id=f"jbb-attack-{get_field(row, 'index', where=where)}",
                prompt=user_turn(prompt),
                kind="harmful",
                suite=name,
                category=canonical_category(
                    get_field(row, "category", where=where), where=f"{where}: field 'category'"
                ),
                tactic=tactic,
                metadata={"goal": row.get("goal"), "reference_jailbroken": row.get("jailbroken")},
            )
        )
    return out
