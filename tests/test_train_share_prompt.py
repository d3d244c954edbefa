"""``trainer.share_prompt``: each pair's prompt computed once; chosen and rejected never see each other."""

from __future__ import annotations

import pytest
import torch
from test_train_packing import _trainer
from train_tiny import make_tiny_model

from safetune.core.config import ConfigError
from safetune.train import packing
from safetune.train.dpo_config import safetune_trainer_options
from safetune.train.packing import PackedForward, PackingUnsupported, pack_trees, plan_trees, shared_prompt_lengths


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_share") / "model")


@pytest.fixture(scope="module", params=["sdpa", "eager"])
def fused_model(tiny_model, request):
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32, attn_implementation=request.param)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model.eval()


def _pairs(prompts: list[int], chosen: list[int], rejected: list[int], seed: int = 0, vocab: int = 1000):
    """TRL's concatenated batch: [chosen_0..chosen_B-1, rejected_0..rejected_B-1], right-padded, prompt unscored."""
    g = torch.Generator().manual_seed(seed)
    seqs, starts = [], []
    for p, c in zip(prompts, chosen, strict=True):
        seqs.append(torch.randint(1, vocab, (p + c,), generator=g))
        starts.append(p)
    for i, (p, r) in enumerate(zip(prompts, rejected, strict=True)):
        seqs.append(torch.cat([seqs[i][:p], torch.randint(1, vocab, (r,), generator=g)]))  # the same prompt
        starts.append(p)
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (s, p) in enumerate(zip(seqs, starts, strict=True)):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
        labels[i, p : len(s)] = s[p:]
    return ids, mask, labels


def test_shared_length_is_the_prompt_minus_its_last_token():
    ids, mask, labels = _pairs([7, 3], [4, 5], [6, 2])
    assert shared_prompt_lengths(ids, mask, labels) == [6, 2]
    ids[3, 1] += 1  # pair 1's rejected prompt differs: nothing shared
    assert shared_prompt_lengths(ids, mask, labels) == [6, 0]


def test_branches_see_the_prompt_and_themselves_only():
    ids, mask, labels = _pairs([5], [3], [4])
    plan = plan_trees(ids, mask, labels, capacity=None)
    packed, _ = pack_trees(ids, mask, labels, 0, plan)
    # prompt[:-1] once (4), then prompt[-1] + chosen (1 + 3), then prompt[-1] + rejected (1 + 4)
    assert packed["input_ids"].shape == (1, 4 + 4 + 5)
    allowed = packed["attention_mask"][0, 0]
    chosen, rejected = range(4, 8), range(8, 13)
    assert all(allowed[q, :4].all() for q in list(chosen) + list(rejected))  # both read the whole shared prompt
    assert not any(allowed[q, k] for q in rejected for k in chosen)  # never the other answer
    assert packed["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 4, 5, 6, 7, 8]
    assert packed["labels"][0, 8].item() == -100  # the rejected branch's first token is never predicted


def test_tree_packing_gives_the_padded_log_probs_and_gradients(fused_model):
    ids, mask, labels = _pairs([9, 4, 12], [5, 8, 3], [7, 2, 6], seed=1)
    padded = fused_model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    fwd = PackedForward(fused_model, 0, share_prompt=True)
    fwd.share_prompt = True
    fwd._tree_plan = lambda i, m, lab, flat: plan_trees(i, m, lab, None)  # always trees (cost model aside)
    tree = fwd(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert fwd.tree_calls == 1 and fwd.last_plan.rows < 6
    for name in ("log_probs", "entropy", "mean_logits", "is_top1"):
        a, b = getattr(padded, name).float(), getattr(tree, name).float()
        assert torch.allclose(a, b, atol=1e-5), (name, (a - b).abs().max())

    def grad(run):
        fused_model.zero_grad()
        run().log_probs.sum().backward()
        return fused_model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    g_pad = grad(lambda: fused_model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True))
    g_tree = grad(lambda: fwd(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True))
    assert torch.allclose(g_pad, g_tree, atol=1e-5)


def test_a_leaky_mask_would_change_the_log_probs(fused_model, monkeypatch):
    """The equality above is not vacuous: letting the rejected answer see the chosen one moves its log-probs."""
    ids, mask, labels = _pairs([6, 5], [6, 7], [5, 4], seed=2)
    padded = fused_model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
    plan = plan_trees(ids, mask, labels, None)
    kind = "bool" if fused_model.config._attn_implementation == "sdpa" else "additive"
    packed, maps = pack_trees(ids, mask, labels, 0, plan, kind)
    leaky = packed["attention_mask"]
    n = leaky.size(-1)
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    packed["attention_mask"] = causal if kind == "bool" else torch.zeros(n, n).masked_fill(~causal, -1e30)
    packed["attention_mask"] = packed["attention_mask"].expand_as(leaky).clone()
    out = fused_model(**packed, fused_lm_head=True).log_probs
    got = packing.unpack_per_token(out, plan.rows, maps, ids.size(0), ids.size(1))
    assert (padded - got)[2:].abs().max() > 1e-2  # rejected answers (rows 2, 3) now read the chosen ones


def test_dpo_training_with_shared_prompts_matches_padding(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(PackedForward, "_tree_plan", lambda self, i, m, lab, flat: plan_trees(i, m, lab, None))
    plain = _trainer(tiny_model, tmp_path, "plain", pack_sequences=False)
    calls = []
    original = PackedForward.__call__

    def counted(self, **kwargs):
        out = original(self, **kwargs)
        calls.append(self.tree_calls)
        return out

    monkeypatch.setattr(PackedForward, "__call__", counted)
    shared = _trainer(tiny_model, tmp_path, "shared", pack_sequences=True, share_prompt=True)
    for col in ("ref_chosen_logps", "ref_rejected_logps"):
        assert torch.allclose(
            torch.tensor(shared.train_dataset[col]), torch.tensor(plain.train_dataset[col]), atol=1e-4
        )
    plain.train()
    shared.train()
    assert len(calls) == 4 and all(calls)  # reference pass (2 batches) and two steps, every one as trees
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, shared)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=1e-4)


def test_share_prompt_must_be_a_boolean():
    with pytest.raises(ConfigError, match="trainer.share_prompt must be true or false"):
        safetune_trainer_options({"share_prompt": 1})


def test_the_first_batch_check_of_shared_prompts_catches_a_leaky_mask(fused_model, monkeypatch):
    """The first-batch check runs one row of pairs laid out as trees; if the mask let the rejected answer read the
    chosen one, training stops with the fix instead of learning from leaked log-probs."""
    monkeypatch.setattr(PackedForward, "_tree_plan", lambda self, i, m, lab, flat: plan_trees(i, m, lab, None))
    ids, mask, labels = _pairs([6, 5, 7], [6, 7, 3], [5, 4, 6], seed=3)
    good = PackedForward(fused_model, 0, verify=True, share_prompt=True)
    good(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert good.tree_calls == 1 and not good.verify and good.verified_max_diff < 1e-4
    assert 2 <= good.checked_sequences < ids.size(0)  # one row's pairs, not the batch
    real = packing.pack_trees

    def leaky(*args, **kwargs):
        inputs, maps = real(*args, **kwargs)
        m = inputs["attention_mask"]
        n = m.size(-1)
        causal = torch.ones(n, n, dtype=torch.bool).tril()
        inputs["attention_mask"] = (
            (causal if m.dtype == torch.bool else torch.zeros(n, n).masked_fill(~causal, -1e30)).expand_as(m).clone()
        )
        return inputs, maps

    monkeypatch.setattr(packing, "pack_trees", leaky)
    bad = PackedForward(fused_model, 0, verify=True, share_prompt=True)
    with pytest.raises(PackingUnsupported, match="trainer.share_prompt=false"):
        bad(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
