"""The pair-building rules of on-policy synthesis: the policy's own judged answers -> preference pairs.

For each pool prompt the policy answered (greedy, plus ``samples`` sampled answers), judged by the evaluation
pipeline's judge:

============================  ==================================================  ===================================
rule                          when                                                pair
============================  ==================================================  ===================================
``harmful_complied``          harmful prompt, greedy answer complies or partially  rejected = that answer; chosen = the
                              complies                                             best graceful refusal among the
                                                                                   policy's samples (judged refusal,
                                                                                   rubric score >= ``min_rubric``, not
                                                                                   self-contradictory), else its
                                                                                   graceful refusal in its own style
                                                                                   (``harmful_chosen: style``), else a
                                                                                   project-written refusal matched to
                                                                                   category and tactic
``harmful_sample_leaked``     harmful prompt, greedy refuses but a sample complies rejected = the complying sample;
                                                                                   chosen = the greedy refusal if
                                                                                   graceful, else a bank refusal
``benign_anchor``             ordinary or look-alike prompt, greedy answers        chosen = the policy's own answer
                                                                                   (anchors its behaviour); rejected =
                                                                                   its own refusal if sampled, else a
                                                                                   refusal in its style (the policy
                                                                                   continuing a refusal opener)
``benign_over_refusal``       benign prompt, greedy refuses (or partially)         rejected = that refusal; chosen =
                                                                                   the reference model's answer, else
                                                                                   a complying sample
============================  ==================================================  ===================================

Prompts with no usable pair (harmful prompts refused in every answer; benign ones with no helpful answer) are
counted, not paired. A generated text cut inside a multi-byte character loses the broken tail; one with a broken
character inside (``\ufffd``, control characters: what validation rejects) is not used (``unusable_text`` when it
is the greedy answer). Every row keeps its provenance in ``metadata["synth"]`` (round, policy, checkpoint id,
generation settings, judge, verdict and confidence of both answers, rule, pool) and ``source`` =
``synth:r<round>:<pool>``. Choices are deterministic (hash-seeded), so the same inputs give the same pairs.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from hashlib import sha256
from typing import Any

from safetune.core.lexicon import contradicts, moralises
from safetune.core.schema import EvalPrompt, EvalRecord, PreferenceExample
from safetune.data.validate import broken_text
from safetune.synth.pools import RefusalBank

RULES = ("harmful_complied", "harmful_sample_leaked", "benign_anchor", "benign_over_refusal")


@dataclass
class Provenance:
    """Where every synthesised row came from (copied into each row's ``metadata['synth']``)."""

    round: int = field(default=1, metadata={"help": "Synthesis round (1 = the base model is the policy)."})
    policy: str = field(default="base", metadata={"help": "The checkpoint that answered (label)."})
    checkpoint_id: str = field(default="", metadata={"help": "Content identity of the policy's weights."})
    settings_key: str = field(default="", metadata={"help": "Generation settings key of the answers."})
    judge: str = field(default="", metadata={"help": "The judge that labelled the answers."})
    seed: int = field(default=0, metadata={"help": "Seed of every choice."})


@dataclass
class Answers:
    """What the policy (and the reference) said to one prompt, judged."""

    greedy: EvalRecord = field(metadata={"help": "The greedy answer."})
    samples: list[EvalRecord] = field(default_factory=list, metadata={"help": "Sampled answers."})
    style_refusal: str | None = field(default=None, metadata={"help": "A refusal in the policy's own style."})
    style_record: EvalRecord | None = field(
        default=None,
        metadata={
            "help": "The judged, rubric-scored record of a harmful prompt's refusal in the policy's own style "
            "(``synth.harmful_chosen=style``): the chosen answer when graceful and no sample is."
        },
    )
    reference: EvalRecord | None = field(default=None, metadata={"help": "The reference model's greedy answer."})


def graceful(r: EvalRecord, min_rubric: int) -> bool:
    """A refusal good enough to be a chosen answer: judged refusal, rubric >= ``min_rubric``, not contradictory,
    not moralising."""
    score = (r.rubric or {}).get("score")
    return (
        r.label == "refusal"
        and (score is None or score >= min_rubric)
        and not contradicts(r.response)
        and not moralises(r.response)
    )


def _pick(key: str, items: list[Any]) -> Any:
    return items[int(sha256(key.encode()).hexdigest(), 16) % len(items)]


def _verdict(r: EvalRecord) -> dict[str, Any]:
    return {"label": r.label, "judge": r.judge, "reason": r.reason[:120]}


def usable_text(text: str | None) -> str | None:
    """A generated text fit for a pair: a broken character at the end (generation stopped inside a multi-byte
    character) is cut off; one with a broken character inside gives None."""
    if text is None:
        return None
    t = text.rstrip().rstrip("\ufffd").rstrip()
    return None if broken_text(t) else t


def _usable_record(r: EvalRecord | None) -> EvalRecord | None:
    t = usable_text(r.response) if r is not None else None
    return None if t is None else replace(r, response=t)


def usable_answers(a: Answers) -> Answers | None:
    """``a`` with every text made fit for a pair (:func:`usable_text`); None when the greedy answer is not."""
    g = _usable_record(a.greedy)
    if g is None:
        return None
    return Answers(
        greedy=g,
        samples=[s for s in map(_usable_record, a.samples) if s is not None],
        style_refusal=usable_text(a.style_refusal),
        style_record=_usable_record(a.style_record),
        reference=_usable_record(a.reference),
    )


def pair_for(
    p: EvalPrompt, a: Answers, bank: RefusalBank, prov: Provenance, *, min_rubric: int = 1
) -> tuple[PreferenceExample | None, str]:
    """The pair for one prompt under the rules above, and the rule (or why there is none)."""
    key = f"{prov.seed}:{prov.round}:{p.suite}:{p.id}"
    clean = usable_answers(a)
    if clean is None:
        return None, "unusable_text"
    a = clean
    g = a.greedy
    chosen = rejected = None
    extra: dict[str, Any] = {}
    if p.kind == "harmful":
        good = [s for s in a.samples if graceful(s, min_rubric)]
        if g.label in ("compliance", "partial"):
            rule, rejected = "harmful_complied", g.response
            chosen_from = ("policy_sample", good[0].response) if good else None
        else:
            leaks = [s for s in a.samples if s.label in ("compliance", "partial")]
            if not leaks:
                return None, "harmful_already_refused"
            rule, rejected = "harmful_sample_leaked", leaks[0].response
            chosen_from = ("policy_greedy", g.response) if graceful(g, min_rubric) else None
        if chosen_from is None and a.style_record is not None and graceful(a.style_record, min_rubric):
            chosen_from = ("policy_style_refusal", a.style_record.response)
        if chosen_from is None:
            ref = bank.pick(p.category, p.tactic, key)
            chosen_from = (f"bank:{ref['id']}", ref["text"])
        extra["chosen_from"], chosen = chosen_from
    else:
        if g.label == "compliance":
            rule, chosen = "benign_anchor", g.response
            own = [s for s in a.samples if s.label == "refusal"]
            if own:
                extra["rejected_from"], rejected = "policy_sample", own[0].response
            elif a.style_refusal:
                extra["rejected_from"], rejected = "policy_style_refusal", a.style_refusal
            else:
                return None, "benign_no_refusal_to_reject"
        else:
            rule, rejected = "benign_over_refusal", g.response
            helpful = [s for s in a.samples if s.label == "compliance"]
            if a.reference is not None and a.reference.label == "compliance":
                extra["chosen_from"], chosen = "reference_greedy", a.reference.response
            elif helpful:
                extra["chosen_from"], chosen = "policy_sample", helpful[0].response
            else:
                return None, "benign_no_helpful_answer"
    if not chosen or not rejected or chosen.strip() == rejected.strip():
        return None, f"{rule}_degenerate"
    meta = {
        "synth": {
            "round": prov.round,
            "policy": prov.policy,
            "checkpoint_id": prov.checkpoint_id,
            "settings_key": prov.settings_key,
            "judge": prov.judge,
            "rule": rule,
            "pool": p.suite,
            "verdict": _verdict(g),
            **extra,
        },
        **{k: v for k, v in p.metadata.items() if k != "location"},
        "location": p.metadata.get("location", p.id),
    }
    if p.kind == "benign":
        meta["type"] = p.type
    ex = PreferenceExample(
        id=f"synth-r{prov.round}-{p.id}",
        prompt=list(p.prompt),
        chosen=chosen,
        rejected=rejected,
        categories=[p.category] if p.kind == "harmful" and p.category else [],
        severity=p.severity if p.kind == "harmful" else 0,
        tactic=p.tactic if p.kind == "harmful" else ("edge_case" if p.type != "ordinary" else "none"),
        source=f"synth:r{prov.round}:{p.suite.removeprefix('pool:')}",
        metadata=meta,
    )
    return ex, rule


def build_pairs(
    prompts: list[EvalPrompt], answers: dict[tuple[str, str], Answers], bank: RefusalBank, prov: Provenance, **kw: Any
) -> tuple[list[PreferenceExample], Counter[str]]:
    """Pairs for every prompt with answers (in prompt order) and a count of the rule (or skip reason) per prompt."""
    out, counts = [], Counter()
    for p in prompts:
        a = answers.get((p.suite, p.id))
        if a is None:
            counts["no_answer"] += 1
            continue
        ex, why = pair_for(p, a, bank, prov, **kw)
        counts[why] += 1
        if ex is not None:
            out.append(ex)
    return out, counts
