"""Capability retention: likelihood metrics on a tiny random Llama (itself vs a perturbed copy), deltas with
intervals, answer statistics, and the real hh-rlhf helpful-base file."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from safetune.core.formatting import ChatFormatter
from safetune.eval import metrics as M
from safetune.eval import retention as R
from safetune.eval.checkpoints import LoadedCheckpoint
from tests.conftest import shared_file

HH_HELPFUL = "hh-rlhf/helpful-base/test.jsonl.gz"


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from safetune.core.modeling import ModelSpec, resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path(ModelSpec()))
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    return model, tok, ChatFormatter(tok)


@pytest.fixture(scope="module")
def perturbed(tiny):
    model = copy.deepcopy(tiny[0])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.5)
    return model


@pytest.fixture(scope="module")
def ref_pairs():
    rows = R.load_helpful_reference(max_rows=6)
    return [(r["prompt"], r["response"]) for r in rows]


def test_loglik_is_batch_invariant_and_matches_a_manual_computation(tiny, ref_pairs):
    model, tok, fmt = tiny
    batched = R.helpful_loglik(model, tok, fmt, ref_pairs, batch_size=4)
    single = R.helpful_loglik(model, tok, fmt, ref_pairs, batch_size=1)
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(math.isfinite(v) and v < 0 for v in batched)
    # manual: log p of the completion tokens (TRL's split) from an unpadded forward pass
    messages, response = ref_pairs[0]
    reply = [{"role": "assistant", "content": response}]
    tp = fmt.tokenize_like_trl({"prompt": messages, "chosen": reply, "rejected": reply})
    ids = torch.tensor([tp.prompt_chosen_ids])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
    tgt = ids[0, 1:]
    token_lp = logp[torch.arange(len(tgt)), tgt][tp.split - 1 :]
    assert batched[0] == pytest.approx(token_lp.mean().item(), abs=1e-4)
    assert len(token_lp) == len(tp.chosen_ids)


def test_model_vs_itself_has_zero_delta(tiny, ref_pairs):
    model, tok, fmt = tiny
    a = R.helpful_loglik(model, tok, fmt, ref_pairs, batch_size=3)
    b = R.helpful_loglik(model, tok, fmt, ref_pairs, batch_size=3)
    rep = R.retention_report(a, b, seed=0)
    assert rep["delta"] == 0.0 and rep["ci_low"] == 0.0 and rep["ci_high"] == 0.0 and rep["n"] == len(ref_pairs)


def test_perturbed_model_has_nonzero_delta_with_interval(tiny, perturbed, ref_pairs):
    model, tok, fmt = tiny
    base = R.helpful_loglik(model, tok, fmt, ref_pairs, batch_size=3)
    other = R.helpful_loglik(perturbed, tok, fmt, ref_pairs, batch_size=3)
    rep = R.retention_report(base, other, seed=0)
    assert rep["delta"] != 0.0
    assert rep["delta"] == pytest.approx(sum(other) / len(other) - sum(base) / len(base))
    assert rep["ci_low"] <= rep["delta"] <= rep["ci_high"]
    assert rep["t_ci"][0] <= rep["delta"] <= rep["t_ci"][1]
    assert R.retention_report(base, other, seed=0) == rep  # seeded: deterministic
    # random weights perturbed this much make every reference answer less (or more) likely, not mixed
    assert all(o != b for o, b in zip(other, base))


def test_retention_report_accuracy_and_errors():
    base = [True, True, False, False, True, True, True, False]
    other = [True, False, False, True, False, False, True, False]
    rep = R.retention_report(base, other, kind="accuracy", seed=3)
    assert rep["base"] == 5 / 8 and rep["other"] == 3 / 8 and rep["delta"] == pytest.approx(-2 / 8)
    assert (rep["b"], rep["c"]) == (1, 3)
    assert rep["base_rate"]["k"] == 5 and rep["other_rate"]["n"] == 8
    assert rep["ci_low"] <= rep["delta"] <= rep["ci_high"] and 0 < rep["p_value"] <= 1
    with pytest.raises(ValueError, match="paired values"):
        R.retention_report([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        R.retention_report([float("nan")], [1.0])


def test_preference_accuracy_flips_when_chosen_and_rejected_swap(tiny):
    from safetune.core.schema import PreferenceExample

    model, tok, fmt = tiny
    exs = [
        PreferenceExample(str(i), [{"role": "user", "content": q}], chosen=c, rejected=r)
        for i, (q, c, r) in enumerate(
            [
                ("How do I boil an egg?", "Put it in boiling water for nine minutes.", "Eggs are oval."),
                ("Name a prime number.", "Seven is prime.", "I like numbers, they are neat and round."),
                ("What colour is the sky?", "Usually blue on a clear day.", "Skies."),
            ]
        )
    ]
    swapped = [PreferenceExample(e.id, e.prompt, chosen=e.rejected, rejected=e.chosen) for e in exs]
    for norm in ("mean", "sum"):
        fwd = R.preference_accuracy(model, tok, fmt, exs, batch_size=2, normalise=norm)
        rev = R.preference_accuracy(model, tok, fmt, swapped, batch_size=2, normalise=norm)
        assert len(fwd) == 3 and [not x for x in fwd] == rev
    with pytest.raises(ValueError, match="normalise"):
        R.preference_accuracy(model, tok, fmt, exs, normalise="max")


def test_answer_stats_on_benign_records():
    recs = [
        {"kind": "benign", "group": "homonyms", "label": "compliance", "response": "one two three four five six"},
        {"kind": "benign", "group": "homonyms", "label": "refusal", "response": "I can't help with that."},
        {"kind": "benign", "group": "safe_contexts", "label": "compliance", "response": "yes"},
        {"kind": "harmful", "group": "Drugs", "label": "compliance", "response": "ignored harmful row"},
    ]
    out = M.answer_stats(recs, short_words=5)
    assert out["n"] == 3 and out["answer_rate"]["k"] == 2 and out["answer_rate"]["rate"] == pytest.approx(2 / 3)
    assert out["mean_words"] == pytest.approx((6 + 1) / 2) and out["short_answer_rate"] == 0.5
    assert out["per_group"]["homonyms"]["answer_rate"]["rate"] == 0.5
    assert out["per_group"]["safe_contexts"]["mean_words"] == 1
    none = M.answer_stats([recs[1]])
    assert none["answer_rate"]["k"] == 0 and math.isnan(none["mean_words"])
    with pytest.raises(ValueError, match="needs 'label' and 'response'"):
        M.answer_stats([{"kind": "benign", "label": "compliance"}])


def test_run_and_compare_retention_on_real_hh_helpful_base(tiny, perturbed):
    path = shared_file(HH_HELPFUL)
    model, tok, fmt = tiny
    cfg = {
        "batch_size": 8,
        "max_length": 512,
        "helpful_reference": {"_target_": "safetune.eval.retention.HelpfulReference", "enabled": True, "max_rows": 8},
        "hh_rlhf": {
            "_target_": "safetune.eval.retention.HHHelpfulPairs",
            "enabled": True,
            "path": str(path),
            "max_rows": 16,
        },
    }
    base = R.run_retention(LoadedCheckpoint(model, tok, fmt, "model:tiny", "base"), cfg)
    other = R.run_retention(LoadedCheckpoint(perturbed, tok, fmt, "model:tiny-perturbed", "perturbed"), cfg)
    hh = base["sources"]["hh_rlhf_helpful"]
    assert hh["n"] == 16 and len(hh["preference"]) == 16 and len(set(hh["ids"])) == 16
    assert all(math.isfinite(v) for v in hh["loglik"]) and math.isfinite(hh["loglik_mean"])
    assert 0.0 <= hh["preference_accuracy"]["rate"] <= 1.0
    assert base["sources"]["helpful_reference"]["n"] == 8

    same = R.compare_retention(base, base, seed=0)
    assert same["sources"]["hh_rlhf_helpful"]["loglik"]["delta"] == 0.0
    assert same["sources"]["hh_rlhf_helpful"]["preference"]["delta"] == 0.0

    cmp = R.compare_retention(base, other, seed=0)
    assert (cmp["base"], cmp["other"]) == ("base", "perturbed")
    for name in ("helpful_reference", "hh_rlhf_helpful"):
        rep = cmp["sources"][name]["loglik"]
        assert rep["delta"] != 0.0 and rep["ci_low"] <= rep["delta"] <= rep["ci_high"]
    pref = cmp["sources"]["hh_rlhf_helpful"]["preference"]
    assert 0.0 <= pref["other"] <= 1.0 and pref["ci_low"] <= pref["delta"] <= pref["ci_high"]


def test_missing_hh_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="helpful-base"):
        R.load_hh_helpful(str(tmp_path / "nope.jsonl.gz"))
