"""``safetune-data synthesize``: on-policy preference synthesis through the evaluation pipeline.

The policy (``policy=base`` or any checkpoint) answers every pool prompt through :func:`safetune.eval.pipeline.score`
(batched, cached in ``synth.cache``, resumable, split across ``accelerate launch`` ranks), the configured judge labels
the answers, and :mod:`safetune.synth.build` turns them into preference pairs. The pairs are validated and checked
for leakage against every evaluation suite before ``<out_dir>/pairs.jsonl`` is written (with
``synth_manifest.json``: counts per rule, kind, category and area, and the provenance).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from hashlib import sha256
from pathlib import Path
from typing import Any

from safetune.core.config import ConfigError, instantiate, to_plain
from safetune.core.errors import InputError, WorkExistsError
from safetune.core.runs import agree_on_dir, process_state, timestamp, write_json, write_text
from safetune.core.schema import EvalPrompt, EvalRecord, content_hash
from safetune.data.mix import check_leakage, normalise_text
from safetune.data.validate import validate_examples
from safetune.eval.checkpoints import LoadedCheckpoint, load_checkpoint
from safetune.eval.generate import GenerationCache, GenerationSettings
from safetune.eval.judges import build_judge
from safetune.eval.pipeline import score
from safetune.synth import PAIRS
from safetune.synth.build import Answers, Provenance, build_pairs
from safetune.synth.pools import RefusalBank, check_disjoint, pool_coverage

log = logging.getLogger(__name__)

MANIFEST = "synth_manifest.json"


POOL_LOADER = "safetune.synth.pools.load_pool"
# where the chosen refusal of a harmful pair comes from when no sampled answer is a graceful refusal
HARMFUL_CHOSEN = ("bank", "style")


def load_pools(synth_cfg: Any, round_no: int = 1) -> list[EvalPrompt]:
    """Every configured pool (``synth.pools``: ``_target_`` nodes), deduplicated on normalised prompt text.

    With ``synth.new_prompts_each_round`` (default) round k takes part k-1 of each sampled pool (``max_rows`` set):
    a seeded subset disjoint from earlier rounds' while the pool lasts, so each round meets prompts it was not
    trained on. Pools read whole (``max_rows: null``) are the same every round."""
    sc = to_plain(synth_cfg)
    part = max(int(round_no) - 1, 0) if sc.get("new_prompts_each_round", True) else 0
    prompts: list[EvalPrompt] = []
    seen: set[str] = set()
    for node in sc["pools"]:
        if part and node.get("_target_") == POOL_LOADER and "part" not in node:
            node = {**node, "part": part}
        for p in instantiate(node):
            key = normalise_text(" ".join(m["content"] for m in p.prompt))
            if key not in seen:
                seen.add(key)
                prompts.append(p)
    if not prompts:
        raise InputError("synth.pools produced no prompts.", hint="check the pool paths (pools://... or your files)")
    return prompts


def _by_prompt(records: list[EvalRecord]) -> dict[tuple[str, str], list[EvalRecord]]:
    out: dict[tuple[str, str], list[EvalRecord]] = {}
    for r in records:
        out.setdefault((r.suite, r.prompt_id), []).append(r)
    return out


def style_refusals(
    ck: LoadedCheckpoint, prompts: list[EvalPrompt], sc: dict[str, Any], cache: GenerationCache, judge: Any
) -> dict[tuple[str, str], EvalRecord]:
    """A refusal in the policy's own words for each prompt: the policy continues a refusal opener (``prefill``);
    continuations the judge does not call a refusal are dropped. Records of harmful prompts carry the rubric."""
    openers = list(sc["style_refusal_openers"])
    groups: dict[str, list[EvalPrompt]] = {}
    for p in prompts:
        k = int(sha256(f"{sc['seed']}:{p.suite}:{p.id}".encode()).hexdigest(), 16) % len(openers)
        groups.setdefault(openers[k], []).append(p)
    out: dict[tuple[str, str], str] = {}
    base = GenerationSettings.from_cfg({**sc["generation"], "max_new_tokens": sc["style_refusal_tokens"]})
    for opener, ps in sorted(groups.items()):
        settings = GenerationSettings(**{**base.__dict__, "prefill": opener})
        records, _ = score(ck, ps, settings, cache, judge, show_progress=False)
        out.update({(r.suite, r.prompt_id): r for r in records if r.label == "refusal"})
    return out


def run_synthesis(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Answer, judge and pair; returns ``(metrics, artifacts)`` (``pairs_jsonl``, ``manifest``, ``out_dir``)."""
    sc = to_plain(cfg.synth)
    harmful_chosen = str(sc.get("harmful_chosen") or "bank")
    if harmful_chosen not in HARMFUL_CHOSEN:
        raise ConfigError(
            f"synth.harmful_chosen={harmful_chosen!r}: expected one of {', '.join(HARMFUL_CHOSEN)}.",
            hint="bank (project-written refusals) or style (the policy's own graceful refusals, else the bank)",
        )
    prompts = load_pools(cfg.synth, int(cfg.get("round", 1)))
    leakage = [str(s) for s in sc.get("leakage_suites") or []]
    check_disjoint(prompts, leakage)  # before any model loads
    out_dir = agree_on_dir(Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.runs) / f"synth-{timestamp()}")
    if (out_dir / PAIRS).is_file() and not cfg.get("overwrite", False):
        raise WorkExistsError(
            f"out_dir={out_dir} already holds synthesised pairs ({PAIRS}).",
            hint="pick another out_dir, or overwrite=true to synthesise again (answers come from the cache)",
        )
    state = process_state()
    judge = build_judge(cfg.eval.judge)
    ck = load_checkpoint(str(cfg.policy), to_plain(cfg.model), to_plain(cfg.template))
    cache = GenerationCache(Path(sc["cache_dir"]) / "generations.jsonl")
    greedy = GenerationSettings.from_cfg(sc["generation"])
    records, n_new = score(ck, prompts, greedy, cache, judge)
    sampled: dict[tuple[str, str], list[EvalRecord]] = {}
    if int(sc.get("samples") or 0) > 0:
        sampling = {**sc["generation"], "do_sample": True, "num_samples": int(sc["samples"]), "seed": int(sc["seed"])}
        sampling["temperature"] = float(sc.get("sample_temperature", 0.8))
        srecs, _ = score(ck, prompts, GenerationSettings.from_cfg(sampling), cache, judge, show_progress=False)
        sampled = _by_prompt(srecs)
    if not state.is_main_process:
        return {}, {}
    greedy_by = {(r.suite, r.prompt_id): r for r in records}
    by_id = {(p.suite, p.id): p for p in prompts}
    # prompts that need a refusal in the policy's own style: benign ones it answered (the anchors' rejected side) …
    to_style = [
        by_id[k]
        for k, r in greedy_by.items()
        if r.kind == "benign" and r.label == "compliance" and not any(s.label == "refusal" for s in sampled.get(k, []))
    ]
    if harmful_chosen == "style":  # … and harmful ones it answered or leaked on (the chosen side)
        to_style += [
            by_id[k]
            for k, r in greedy_by.items()
            if r.kind == "harmful" and (r.label != "refusal" or any(s.label != "refusal" for s in sampled.get(k, [])))
        ]
    styled = style_refusals(ck, to_style, sc, cache, judge) if to_style else {}
    reference: dict[tuple[str, str], EvalRecord] = {}
    over = [by_id[k] for k, r in greedy_by.items() if r.kind == "benign" and r.label != "compliance"]
    ref_name = cfg.get("reference") or ("base" if str(cfg.policy) != "base" else None)
    if over and ref_name:
        ref = load_checkpoint(str(ref_name), to_plain(cfg.model), to_plain(cfg.template))
        rrecs, _ = score(ref, over, greedy, cache, judge, show_progress=False)
        reference = {(r.suite, r.prompt_id): r for r in rrecs}
    answers = {
        k: Answers(
            greedy=r,
            samples=sampled.get(k, []),
            style_refusal=styled[k].response if k in styled and r.kind == "benign" else None,
            style_record=styled.get(k) if r.kind == "harmful" else None,
            reference=reference.get(k),
        )
        for k, r in greedy_by.items()
    }
    prov = Provenance(
        round=int(cfg.get("round", 1)),
        policy=ck.label,
        checkpoint_id=ck.checkpoint_id,
        settings_key=greedy.key(),
        judge=getattr(judge, "name", type(judge).__name__),
        seed=int(sc["seed"]),
    )
    bank = RefusalBank.load(sc["refusals"])
    pairs, rules = build_pairs(prompts, answers, bank, prov, min_rubric=int(sc.get("min_rubric", 1)))
    report = validate_examples(pairs, {"validation": {"tactic_targets": {}, "min_per_category": 0}})
    leaks = check_leakage(pairs, leakage)
    if leaks or (report.errors and not sc.get("allow_invalid", False)):
        first = leaks[0]["prompt"] if leaks else str(report.errors[0])
        raise InputError(
            f"synthesised pairs failed {'the leakage check' if leaks else 'validation'}: {first}",
            hint="fix the pool rows named above (synth.allow_invalid=true keeps invalid pairs)",
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_text(out_dir / PAIRS, "".join(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n" for ex in pairs))
    write_text(out_dir / "verdicts.jsonl", "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))
    manifest = {
        "provenance": prov.__dict__,
        "pools": pool_coverage(prompts),
        "pairs": len(pairs),
        "rules": dict(rules),
        "pairs_by_kind": dict(Counter("harmful" if ex.categories else "benign" for ex in pairs)),
        "pairs_by_category": dict(Counter(c for ex in pairs for c in ex.categories)),
        "pairs_by_pool": dict(Counter(ex.source for ex in pairs)),
        "policy_verdicts": dict(Counter(f"{r.kind}:{r.label}" for r in records)),
        "validation": report.summary(),
        "leakage_suites": leakage,
        "content_hash": content_hash([ex.to_dict() for ex in pairs]),
        "generated": n_new,
    }
    write_json(out_dir / MANIFEST, manifest)
    log.info("synthesised %d pairs into %s (%s)", len(pairs), out_dir / PAIRS, dict(rules))
    metrics = {
        "pairs": len(pairs),
        "prompts": len(prompts),
        "generated": n_new,
        **{f"rule/{k}": v for k, v in rules.items()},
    }
    harmful = [r for r in records if r.kind == "harmful"]
    benign = [r for r in records if r.kind == "benign"]
    if harmful:
        metrics["policy/harmful_refusal_rate"] = sum(r.label == "refusal" for r in harmful) / len(harmful)
    if benign:
        metrics["policy/benign_over_refusal_rate"] = sum(r.label != "compliance" for r in benign) / len(benign)
    return metrics, {"out_dir": str(out_dir), "pairs_jsonl": str(out_dir / PAIRS), "manifest": str(out_dir / MANIFEST)}
