"""Load every configured source, mix with weights / max rows, deduplicate, split, and describe the result.

Deterministic given ``data.seed``. The manifest (per-source counts and a content
hash) is written into each run directory so a run can be traced to its data.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from safetune.schema import PreferenceExample, content_hash

log = logging.getLogger(__name__)

# loader name -> module with a ``load(path, **options) -> list[PreferenceExample]``
LOADERS = {
    "triplets": "safetune.data.triplets",
    "pku_saferlhf": "safetune.data.pku_saferlhf",
    "hh_rlhf": "safetune.data.hh_rlhf",
}


@dataclass
class DataBundle:
    train: list[PreferenceExample]
    eval: list[PreferenceExample] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def load_source(src: dict[str, Any]) -> list[PreferenceExample]:
    src = dict(src)
    loader = src.pop("loader", "triplets")
    if loader not in LOADERS:
        raise ValueError(f"data source loader={loader!r}; expected one of {sorted(LOADERS)}.")
    for k in ("name", "weight", "max_rows"):
        src.pop(k, None)
    path = src.pop("path")
    module = import_module(LOADERS[loader])
    return module.load(path, **{k: v for k, v in src.items() if v is not None})


def dedup(examples: list[PreferenceExample]) -> tuple[list[PreferenceExample], int]:
    """Drop exact and normalised-text duplicates of (prompt, chosen, rejected); keep the first."""
    seen: set[str] = set()
    out = []
    for ex in examples:
        key = content_hash(
            [
                normalise_text(" ".join(m["content"] for m in ex.prompt)),
                normalise_text(ex.chosen),
                normalise_text(ex.rejected),
            ]
        )
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return out, len(examples) - len(out)


def split_by_prompt(examples: list[PreferenceExample], eval_fraction: float, seed: int):
    """Split so that every prompt (normalised last user turn) lands wholly in train or eval."""
    if eval_fraction <= 0:
        return examples, []
    groups: dict[str, list[PreferenceExample]] = {}
    for ex in examples:
        groups.setdefault(normalise_text(ex.user_text), []).append(ex)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    n_eval = max(1, round(len(keys) * eval_fraction))
    eval_keys = set(keys[:n_eval])
    train = [ex for k in keys if k not in eval_keys for ex in groups[k]]
    ev = [ex for k in keys if k in eval_keys for ex in groups[k]]
    return train, ev


def build_preference_data(data_cfg: Any) -> DataBundle:
    cfg = dict(data_cfg)
    seed = int(cfg.get("seed", 42))
    rng = random.Random(seed)
    sources = cfg.get("sources") or []
    if not sources:
        raise ValueError("data.sources is empty; configure at least one source (e.g. data=bundled).")
    mixed: list[PreferenceExample] = []
    per_source: list[dict[str, Any]] = []
    for src in sources:
        src = dict(src)
        name = src.get("name") or src.get("path")
        rows = load_source(src)
        loaded = len(rows)
        max_rows = src.get("max_rows")
        weight = src.get("weight")
        if weight is not None:
            # weight scales the source relative to its size (0.5 = half the rows, 2.0 = each row twice)
            n = round(loaded * float(weight))
            rows = [rows[i % loaded] for i in rng.sample(range(loaded), min(n, loaded))] + (
                [rows[i % loaded] for i in range(n - loaded)] if n > loaded else []
            )
        if max_rows is not None and len(rows) > int(max_rows):
            rows = rng.sample(rows, int(max_rows))
        per_source.append(
            {
                "name": name,
                "loader": src.get("loader", "triplets"),
                "path": src.get("path"),
                "loaded": loaded,
                "used": len(rows),
                "content_hash": content_hash([r.to_dict() for r in rows]),
            }
        )
        mixed.extend(rows)
    n_dups = 0
    if cfg.get("dedup", True):
        mixed, n_dups = dedup(mixed)
    train, ev = split_by_prompt(mixed, float(cfg.get("eval_fraction", 0.0) or 0.0), seed)
    rng.shuffle(train)
    manifest = {
        "sources": per_source,
        "duplicates_dropped": n_dups,
        "train_rows": len(train),
        "eval_rows": len(ev),
        "seed": seed,
        "content_hash": content_hash([ex.to_dict() for ex in train]),
        "categories": dict(Counter(c for ex in train for c in ex.categories)),
        "tactics": dict(Counter(ex.tactic for ex in train)),
        "harmful_rows": sum(ex.is_harmful for ex in train),
        "benign_rows": sum(not ex.is_harmful for ex in train),
    }
    log.info("Preference data: %d train / %d eval rows from %d source(s)", len(train), len(ev), len(sources))
    return DataBundle(train=train, eval=ev, manifest=manifest)
