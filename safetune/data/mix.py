"""Load every configured source, mix with weights / max rows, deduplicate, split, and describe the result.

Deterministic given ``data.seed``. Config keys (``conf/data/*.yaml``)::

    sources:            list of {name, _target_, path, weight, max_rows, <loader options>}
    seed:               mixing/splitting seed
    dedup:              drop exact and normalised-text duplicates (keep the first)
    eval_fraction:      held-out fraction, split by prompt group (no prompt in both splits)
    leakage_suites:     eval suites (``suite://harmful``, a jsonl path) whose prompts must not be trained on
    on_leakage:         error (default) | warn
    validation:         thresholds for :mod:`safetune.data.validate`
    allow_invalid:      train even when validation reports errors

``weight`` scales a source relative to its size (0.5 keeps half its rows, 2.0 repeats each row
twice); ``max_rows`` caps it after weighting. Both sample with the seeded RNG.

The manifest (per-source counts, skipped rows and reasons, duplicates, leakage, coverage of
categories/tactics/severities and a content hash) is written into each run directory as
``data_manifest.json``; the full normalised rows go to ``data/train.jsonl``. TRL's DPOTrainer
drops every column it does not use, so the TRL rows keep only ``id`` next to
prompt/chosen/rejected: reports join on ``id`` with ``data/train.jsonl`` to recover category,
severity, tactic and source.
"""

from __future__ import annotations

import logging
import random
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from safetune.core.config import instantiate, legacy_target, to_plain
from safetune.core.errors import InputError, SafetuneError
from safetune.core.schema import PreferenceExample, SchemaError, content_hash
from safetune.data.io import Loaded, iter_rows

log = logging.getLogger(__name__)

# The ``loader:`` names of earlier configs -> their ``_target_`` (deprecated; still accepted with a warning).
LEGACY_LOADERS = {
    "triplets": "safetune.data.sources.triplets.load",
    "pku_saferlhf": "safetune.data.sources.pku_saferlhf.load",
    "hh_rlhf": "safetune.data.sources.hh_rlhf.load",
}
MIX_KEYS = ("name", "weight", "max_rows")


class DataLeakageError(InputError):
    """An evaluation-suite prompt appears in the training data."""


@dataclass
class DataBundle:
    train: list[PreferenceExample] = field(metadata={"help": "Training rows after mixing, dedup and split."})
    eval: list[PreferenceExample] = field(default_factory=list, metadata={"help": "Held-out rows (by prompt)."})
    manifest: dict[str, Any] = field(default_factory=dict, metadata={"help": "Counts, hashes, coverage."})
    errors: list[tuple[str, str]] = field(
        default_factory=list,
        metadata={"help": "(location, message) of invalid rows when loaded with on_error=collect."},
    )
    leakage: list[dict[str, str]] = field(default_factory=list, metadata={"help": "Eval-suite prompts found in data."})


def normalise_text(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", "", text.lower())).strip()


def source_target(src: dict[str, Any]) -> str:
    """A source's ``_target_`` (a legacy ``loader:`` name is mapped, with a deprecation warning)."""
    return legacy_target(src, LEGACY_LOADERS, what="data source", default="triplets")


def load_source(src: dict[str, Any], *, on_error: str = "raise") -> Loaded:
    """Instantiate one source node (its ``_target_`` is a ``load(path, ..., on_error)`` function) and load it."""
    src = dict(to_plain(src))
    target = source_target(src)
    if not src.get("path"):
        if target == "safetune.synth.source.load":  # on-policy pairs: path is usually ${synth_dir}
            raise InputError(
                f"data source {src.get('name') or target!r} reads synthesised on-policy pairs, but no directory is set "
                "(synth_dir is null).",
                hint="synthesise first (`safetune-data synthesize experiment=<same> out_dir=DIR`) and add "
                "synth_dir=DIR, or run the whole round with `safetune-demo` / `safetune-rounds`",
            )
        raise InputError(f"data source {src.get('name') or target!r} has no 'path'.")
    options = {k: v for k, v in src.items() if k not in (*MIX_KEYS, "loader", "_target_") and v is not None}
    load = instantiate({"_target_": target, **options}, _partial_=True)
    rows = load(on_error=on_error)
    return rows if isinstance(rows, Loaded) else Loaded(rows)


def pair_key(ex: PreferenceExample, *, normalised: bool = True, swapped: bool = False) -> str:
    norm = normalise_text if normalised else (lambda t: t)
    a, b = (ex.rejected, ex.chosen) if swapped else (ex.chosen, ex.rejected)
    return content_hash([[norm(m["content"]) for m in ex.prompt], norm(a), norm(b)])


def _repeat(ex: PreferenceExample, k: int) -> PreferenceExample:
    return replace(ex, id=f"{ex.id}~{k + 1}", metadata={**ex.metadata, "repeat_of": ex.id})


def dedup(
    examples: list[PreferenceExample], seen: tuple[set[str], set[str]] | None = None
) -> tuple[list[PreferenceExample], Counter[str]]:
    """Drop exact, then normalised-text (case/punctuation/whitespace) duplicates of the pair; keep the first.

    ``seen`` (exact keys, normalised keys) carries state across calls, so sources are deduplicated against
    the sources before them — before weighting, which repeats rows on purpose.
    """
    exact, norm = seen if seen is not None else (set(), set())
    dropped: Counter[str] = Counter()
    out = []
    for ex in examples:
        k_exact, k_norm = pair_key(ex, normalised=False), pair_key(ex)
        if k_exact in exact:
            dropped["exact"] += 1
            continue
        if k_norm in norm:
            dropped["normalised"] += 1
            continue
        exact.add(k_exact)
        norm.add(k_norm)
        out.append(ex)
    return out, dropped


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


def suite_prompt_text(prompt: Any, where: str) -> str:
    """The last user turn of an eval-suite row's ``prompt`` (a string or a message list)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        for m in reversed(prompt):
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
                return m["content"]
    raise SchemaError(
        f"{where}: field 'prompt' must be a string or a message list with a user turn, got {prompt!r:.80}."
    )


def load_suite_prompts(path: str) -> dict[str, str]:
    """normalised prompt -> location, for every row of an evaluation suite (read as plain rows)."""
    out: dict[str, str] = {}
    for where, row in iter_rows(path):
        if "prompt" not in row:
            raise SchemaError(f"{where}: evaluation suite row has no 'prompt' field (row has {sorted(row)}).")
        out.setdefault(normalise_text(suite_prompt_text(row["prompt"], where)), where)
    return out


def check_leakage(examples: list[PreferenceExample], suites: list[str]) -> list[dict[str, str]]:
    """Rows whose last user turn equals (after normalisation) a prompt from any of ``suites``."""
    hits: list[dict[str, str]] = []
    for suite in suites:
        prompts = load_suite_prompts(suite)
        for ex in examples:
            key = normalise_text(ex.user_text)
            if key and key in prompts:
                hits.append(
                    {
                        "suite": suite,
                        "suite_location": prompts[key],
                        "id": ex.id,
                        "location": str(ex.metadata.get("location", ex.id)),
                        "prompt": ex.user_text[:120],
                    }
                )
    return hits


def coverage(examples: list[PreferenceExample]) -> dict[str, Any]:
    return {
        "categories": dict(Counter(c for ex in examples for c in ex.categories)),
        "tactics": dict(Counter(ex.tactic for ex in examples)),
        "severities": {str(k): v for k, v in Counter(ex.severity for ex in examples).items()},
        "rows_per_source": dict(Counter(ex.source for ex in examples)),
        "harmful_rows": sum(ex.is_harmful for ex in examples),
        "benign_rows": sum(not ex.is_harmful for ex in examples),
    }


def build_preference_data(data_cfg: Any, *, on_error: str = "raise") -> DataBundle:
    """Load, mix, dedup, split and leakage-check the configured sources.

    ``on_error='collect'`` (used by validation) keeps going past invalid rows and returns them in
    ``bundle.errors``; leakage is then reported in ``bundle.leakage`` instead of raising.
    """
    cfg = dict(to_plain(data_cfg))
    seed = int(cfg.get("seed", 42))
    rng = random.Random(seed)
    sources = cfg.get("sources") or []
    if not sources:
        raise InputError("data.sources is empty; configure at least one source (e.g. data=bundled).")
    mixed: list[PreferenceExample] = []
    per_source: list[dict[str, Any]] = []
    errors: list[tuple[str, str]] = []
    dropped: Counter[str] = Counter()
    seen: tuple[set[str], set[str]] = (set(), set())
    allow_empty = bool(cfg.get("allow_empty", False))
    for index, src in enumerate(sources):
        src = dict(src)
        name = src.get("name") or src.get("path")
        try:
            rows = load_source(src, on_error=on_error)
        except SafetuneError as e:
            raise e.add_context(f"data.sources.{index} ({name})") from None
        if not rows and not allow_empty:
            dropped_all = sum(rows.skipped.values())
            why = (
                f"all {dropped_all} row(s) were left out ({', '.join(sorted(rows.skipped))})"
                if dropped_all
                else f"{len(rows.errors)} row(s), all invalid"
                if rows.errors
                else "it holds no rows"
            )
            msg = f"data.sources.{index} ({name}): {src.get('path')} yields no usable rows: {why}."
            if on_error == "raise" and not rows.errors:
                raise InputError(msg, hint="check the file and its format options, or set data.allow_empty=true")
            rows.errors.append((str(src.get("path")), msg))
        errors.extend(rows.errors)
        skipped, skipped_at = dict(rows.skipped), dict(rows.skipped_at)
        invalid_rows = len(rows.errors) if isinstance(rows, Loaded) else 0
        if cfg.get("dedup", True):
            rows, src_dropped = dedup(list(rows), seen)
            dropped.update(src_dropped)
        loaded = len(rows)
        max_rows = src.get("max_rows")
        weight = src.get("weight")
        if weight is not None:
            if float(weight) < 0:
                raise InputError(f"data source {name!r}: weight must be >= 0, got {weight}.")
            # weight scales the source relative to its size (0.5 = half the rows, 2.0 = each row twice)
            n = round(loaded * float(weight))
            whole, rest = divmod(n, loaded) if loaded else (0, 0)
            extra = [rows[i] for i in sorted(rng.sample(range(loaded), rest))]
            # Repeats get their own ids ("<id>~2") so per-row rules and id-joined reports stay unambiguous.
            rows = [r if k == 0 else _repeat(r, k) for k in range(whole) for r in rows] + [
                _repeat(r, whole) if whole else r for r in extra
            ]
        if max_rows is not None and len(rows) > int(max_rows):
            rows = [rows[i] for i in sorted(rng.sample(range(len(rows)), int(max_rows)))]
        per_source.append(
            {
                "name": name,
                "loader": source_target(src).rsplit(".", 2)[-2],
                "path": src.get("path"),
                "loaded": loaded,
                "used": len(rows),
                "skipped": skipped,
                "skipped_examples": skipped_at,
                "invalid_rows": invalid_rows,
                "content_hash": content_hash([r.to_dict() for r in rows]),
            }
        )
        if skipped:
            log.warning("Source %s: %d row(s) left out: %s", name, sum(skipped.values()), skipped)
        mixed.extend(rows)
    suites = list(cfg.get("leakage_suites") or [])
    leakage = check_leakage(mixed, suites) if suites else []
    if leakage:
        msg = (
            f"{len(leakage)} training row(s) repeat an evaluation-suite prompt, e.g. {leakage[0]['location']} "
            f"(id {leakage[0]['id']}) = {leakage[0]['suite_location']}: {leakage[0]['prompt']!r}. Remove them from the "
            "training data, or set data.on_leakage=warn to accept inflated evaluation scores."
        )
        if cfg.get("on_leakage", "error") == "error" and on_error == "raise":
            raise DataLeakageError(msg)
        log.warning(msg)
    train, ev = split_by_prompt(mixed, float(cfg.get("eval_fraction", 0.0) or 0.0), seed)
    rng.shuffle(train)
    manifest = {
        "sources": per_source,
        "duplicates_dropped": sum(dropped.values()),
        "duplicates_by_kind": dict(dropped),
        "train_rows": len(train),
        "eval_rows": len(ev),
        "seed": seed,
        "content_hash": content_hash([ex.to_dict() for ex in train]),
        "leakage_suites": suites,
        "leakage_hits": len(leakage),
        **coverage(train),
    }
    log.info("Preference data: %d train / %d eval rows from %d source(s)", len(train), len(ev), len(sources))
    return DataBundle(train=train, eval=ev, manifest=manifest, errors=errors, leakage=leakage)
