"""Prompt pools for on-policy preference synthesis, and the project-written refusal bank.

Pools are prompts only (``safetune/data/pools``, read as ``pools://<name>``; or your own JSONL/CSV): ordinary requests
over 28 areas of life, benign look-alikes of 11 types, and harmful requests over the 19 categories and four tactics.
Rows: ``{id, prompt (text or messages), kind: harmful|benign, category?, tactic?, severity?, area?, type?, style?}``.
Each pool config node is a ``_target_`` (:func:`load_pool`) the synthesis config lists under ``synth.pools``.

Pools never share a prompt with an evaluation suite: :func:`check_disjoint` (normalised text) runs before any
generation and fails naming the pool row and the suite row.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from safetune.core.errors import InputError
from safetune.core.schema import EvalPrompt, SchemaError, as_messages, canonical_category, check_tactic
from safetune.data.io import iter_rows
from safetune.data.mix import load_suite_prompts, normalise_text


def load_pool(
    path: str,
    *,
    name: str | None = None,
    max_rows: int | None = None,
    seed: int = 0,
    kind: str | None = None,
    part: int = 0,
) -> list[EvalPrompt]:
    """Prompts of a pool file (or glob); ``max_rows`` keeps a seeded sample spread evenly over the pool's groups
    (area/type for benign rows, category for harmful ones); ``part`` k takes the (k+1)-th such sample, disjoint from
    parts 0..k-1 while the pool lasts (the rounds runner gives round k part k-1); ``kind`` keeps one kind only."""
    name = name or path.rsplit("/", 1)[-1].replace("*", "")
    out: list[EvalPrompt] = []
    for where, row in iter_rows(path):
        row_kind = row.get("kind") or ("harmful" if row.get("category") else "benign")
        if row_kind not in ("harmful", "benign"):
            raise SchemaError(f"{where}: field 'kind' must be 'harmful' or 'benign', got {row_kind!r}.")
        if kind and row_kind != kind:
            continue
        if not row.get("prompt"):
            raise SchemaError(f"{where}: field 'prompt' is missing or empty.")
        msgs = as_messages(row["prompt"], where=f"{where}: field 'prompt'")
        if msgs[-1]["role"] != "user":
            raise SchemaError(f"{where}: field 'prompt' must end with a user turn.")
        harmful = row_kind == "harmful"
        if harmful and not row.get("category"):
            raise SchemaError(f"{where}: a harmful pool row needs 'category' (one of the 19 taxonomy names).")
        out.append(
            EvalPrompt(
                id=str(row.get("id") or f"{name}-{len(out)}"),
                prompt=msgs,
                kind=row_kind,
                suite=f"pool:{name}",
                category=canonical_category(row["category"], where=f"{where}: field 'category'") if harmful else None,
                type=None if harmful else str(row.get("type") or "ordinary"),
                tactic=check_tactic(
                    row.get("tactic") or ("direct" if harmful else "none"), where=f"{where}: field 'tactic'"
                ),
                severity=int(row["severity"]) if harmful and row.get("severity") not in (None, "") else None,
                metadata={k: row[k] for k in ("area", "style") if row.get(k)} | {"location": where},
            )
        )
    return stratified_sample(out, max_rows, seed, part)


def _group(p: EvalPrompt) -> str:
    return p.category if p.kind == "harmful" else str(p.metadata.get("area") or p.type)


def stratified_sample(prompts: list[EvalPrompt], n: int | None, seed: int = 0, part: int = 0) -> list[EvalPrompt]:
    """``n`` prompts taken round-robin over the groups (each group shuffled with ``seed``), in the pool's order.

    ``part`` k skips the ``k * n`` prompts parts 0..k-1 took (same seed), so successive parts are disjoint until the
    pool runs out; then the order wraps around (the earliest prompts come back first)."""
    if n is None or (n >= len(prompts) and part == 0):
        return prompts
    if n < 1:
        raise InputError(f"max_rows={n!r}: expected a whole number >= 1, or null for the whole pool.")
    if part < 0:
        raise InputError(f"part={part!r}: expected a whole number >= 0.")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(_group(p), []).append(i)
    rng = random.Random(seed)
    for idx in groups.values():
        rng.shuffle(idx)
    order: list[int] = []  # the whole pool in round-robin order; part k is the k-th window of n
    names = sorted(groups)
    while len(order) < len(prompts):
        for g in names:
            if groups[g]:
                order.append(groups[g].pop())
    n = min(n, len(prompts))
    start = part * n
    keep = [order[(start + j) % len(order)] for j in range(n)]
    return [prompts[i] for i in sorted(keep)]


def check_disjoint(prompts: list[EvalPrompt], suites: list[str]) -> None:
    """Raise when a pool prompt equals (after normalisation) a prompt of any evaluation suite in ``suites``."""
    for suite in suites:
        seen = load_suite_prompts(suite)
        for p in prompts:
            hit = seen.get(normalise_text(p.user_text))
            if hit:
                raise InputError(
                    f"pool row {p.metadata.get('location', p.id)} repeats evaluation prompt {hit} ({suite}): "
                    f"{p.user_text[:100]!r}. Synthesis pools must never hold evaluation prompts.",
                    hint="remove the row from the pool (or drop that suite from synth.leakage_suites if it is not one)",
                )


def pool_coverage(prompts: list[EvalPrompt]) -> dict[str, Any]:
    """Counts per kind, area, look-alike type, harm category, tactic and style (``safetune-data stats --pools``)."""
    benign = [p for p in prompts if p.kind == "benign"]
    harmful = [p for p in prompts if p.kind == "harmful"]
    return {
        "prompts": len(prompts),
        "kind": dict(Counter(p.kind for p in prompts)),
        "area": dict(Counter(str(p.metadata.get("area", "?")) for p in benign if p.type == "ordinary").most_common()),
        "type": dict(Counter(p.type for p in benign).most_common()),
        "category": dict(Counter(p.category for p in harmful).most_common()),
        "tactic": dict(Counter(p.tactic for p in harmful).most_common()),
        "style": dict(Counter(str(p.metadata.get("style", "?")) for p in prompts).most_common()),
        "multi_turn": sum(len(p.prompt) > 1 for p in prompts),
    }


@dataclass
class RefusalBank:
    """Project-written graceful refusals per harm category and tactic (``pools://refusals``)."""

    rows: list[dict[str, Any]] = field(default_factory=list, metadata={"help": "{id, category, tactic, text}"})

    @classmethod
    def load(cls, path: str = "pools://refusals") -> RefusalBank:
        rows = []
        for where, row in iter_rows(path):
            if not isinstance(row.get("text"), str) or not row["text"].strip():
                raise SchemaError(f"{where}: field 'text' must hold the refusal.")
            cat = row.get("category") or "any"
            rows.append(
                {
                    "id": str(row.get("id") or where),
                    "category": cat if cat == "any" else canonical_category(cat, where=f"{where}: field 'category'"),
                    "tactic": str(row.get("tactic") or "any"),
                    "text": row["text"].strip(),
                }
            )
        if not rows:
            raise InputError(f"{path}: the refusal bank is empty.")
        return cls(rows)

    def pick(self, category: str | None, tactic: str, key: str) -> dict[str, Any]:
        """A refusal for (category, tactic), chosen deterministically by ``key``: tactic-specific ones of the
        category first, then the category's general ones, then generic ones."""
        tiers = [
            [r for r in self.rows if r["category"] == category and r["tactic"] == tactic],
            [r for r in self.rows if r["category"] == category and r["tactic"] == "any"],
            [r for r in self.rows if r["category"] == "any"],
            self.rows,
        ]
        pool = [r for tier in tiers[:2] for r in tier] or next(t for t in tiers[2:] if t)
        return pool[int(sha256(key.encode()).hexdigest(), 16) % len(pool)]
