"""``trainer.pack_sequences``: several sequences per row, block-diagonal attention, same numbers as padding."""

from __future__ import annotations

import contextlib

import pytest
import torch
from test_train_padding import _trainer as _padding_trainer
from train_tiny import make_tiny_model

from safetune.core.config import ConfigError
from safetune.train import packing
from safetune.train.dpo_config import safetune_trainer_options
from safetune.train.packing import PackedForward, best_plan, pack_batch, plan_packing


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_pack") / "model")


@pytest.fixture(scope="module")
def fused_model(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "mean_logits", "is_top1"))
    return model.eval()


def _batch(lengths: list[int], width: int, prompt: int = 4, seed: int = 0, vocab: int = 1000):
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    labels = torch.full((len(lengths), width), -100, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, prompt:n] = ids[i, prompt:n]
    return ids, mask, labels


def test_first_fit_decreasing_fills_rows_without_overflow():
    plan = plan_packing([10, 3, 7, 2, 8, 4], capacity=12)
    fill: dict[int, list[tuple[int, int]]] = {}
    for n, r, o in zip(plan.lengths, plan.row, plan.offset):
        fill.setdefault(r, []).append((o, o + n))
    for spans in fill.values():
        spans.sort()
        assert spans[0][0] == 0 and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no overlap
        assert spans[-1][1] <= 12
    assert plan.rows == 3 < 6  # 34 tokens in 3 rows of 12 instead of 6 padded rows
    assert plan.padded_tokens_saved == 6 * 10 - plan.rows * plan.width
    with pytest.raises(ValueError, match="does not fit"):
        plan_packing([13], capacity=12)


def test_cost_model_packs_uneven_batches_and_leaves_uniform_ones_padded():
    # SmolLM2-135M: hidden 576 -> attention_width 1728
    uneven = best_plan([40, 120, 60, 130, 50, 125, 45, 110], 130, capacity=192, attention_width=1728)
    assert uneven is not None and uneven.rows < 8 and uneven.width <= 192
    assert best_plan([100] * 8, 100, capacity=192, attention_width=1728) is None  # nothing to gain
    assert best_plan([60, 62, 58, 61], 62, capacity=256, attention_width=1728) is None
    # a narrow model pays relatively more for wide rows: it never picks wider rows than a wide model
    lengths = [40, 120, 60, 130, 50, 125, 45, 110, 30, 35]
    narrow = best_plan(lengths, 130, capacity=260, attention_width=30)
    wide = best_plan(lengths, 130, capacity=260, attention_width=1e9)
    assert narrow is not None and wide is not None and narrow.width <= 130 < wide.width


def test_pack_batch_restarts_positions_and_masks_first_tokens():
    ids, mask, labels = _batch([6, 3, 2], width=6, prompt=1)
    packed, plan, _ = pack_batch(ids, mask, labels, pad_token_id=0)
    assert plan.rows == 2  # [6] and [3, 2]
    row = plan.row[1]
    assert packed["position_ids"][row].tolist() == [0, 1, 2, 0, 1, 0]  # 3-token seq, 2-token seq, 1 pad
    assert packed["labels"][row, plan.offset[2]].item() == -100  # never predicted from the row-mate's last token
    assert "attention_mask" not in packed  # transformers derives the block-diagonal mask from the positions


def test_packed_per_token_outputs_equal_the_padded_pass(fused_model):
    lengths = [20, 9, 14, 5, 17, 11]  # chosen + rejected of three pairs, very unequal
    ids, mask, labels = _batch(lengths, width=20)
    with torch.no_grad():
        padded = fused_model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        wrapper = PackedForward(fused_model, pad_token_id=0)
        packed = wrapper(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True, use_cache=False)
    assert wrapper.last_plan.rows < len(lengths)  # really packed several sequences per row
    for name in ("log_probs", "entropy", "mean_logits"):
        a, b = getattr(padded, name), getattr(packed, name)
        assert a.shape == b.shape
        assert torch.allclose(a, b, atol=1e-5), name
    assert torch.equal(padded.is_top1 & (labels[:, 1:] != -100), packed.is_top1 & (labels[:, 1:] != -100))
    assert (padded.log_probs.sum(1) != 0).all()


def test_packed_sequences_never_attend_to_each_other(fused_model):
    """Change every token of one sequence: the log-probs of the sequences sharing its row must not move."""
    lengths = [16, 6, 5, 4]
    ids, mask, labels = _batch(lengths, width=16)
    wrapper = PackedForward(fused_model, pad_token_id=0)
    with torch.no_grad():
        before = wrapper(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
        plan = wrapper.last_plan
        mates = [i for i in range(len(lengths)) if plan.row[i] == plan.row[1]]
        assert len(mates) >= 2, plan  # sequence 1 shares its row
        victim = max(mates, key=lambda i: plan.offset[i])  # the one packed last, so earlier ones come before it...
        first = min(mates, key=lambda i: plan.offset[i])  # ...and one packed before it (causal leak would go there)
        changed, changed_labels = ids.clone(), labels.clone()
        changed[first, : lengths[first]] = (ids[first, : lengths[first]] + 7) % 1000 + 1
        changed_labels[first, 4 : lengths[first]] = changed[first, 4 : lengths[first]]
        after = wrapper(input_ids=changed, attention_mask=mask, labels=changed_labels, fused_lm_head=True).log_probs
    assert not torch.allclose(before[first], after[first])  # the changed sequence itself did change
    assert torch.allclose(before[victim], after[victim], atol=1e-6)  # its row-mate after it saw none of it
    # and a plain concatenation without the block-diagonal mask WOULD have leaked: guard the test itself
    row_ids = torch.cat([changed[first, : lengths[first]], ids[victim, : lengths[victim]]])[None]
    row_ids0 = torch.cat([ids[first, : lengths[first]], ids[victim, : lengths[victim]]])[None]
    with torch.no_grad():
        leak_a = fused_model(input_ids=row_ids, labels=row_ids, fused_lm_head=True).log_probs[0, lengths[first] :]
        leak_b = fused_model(input_ids=row_ids0, labels=row_ids0, fused_lm_head=True).log_probs[0, lengths[first] :]
    assert not torch.allclose(leak_a, leak_b, atol=1e-6)


def test_gradients_equal_the_padded_pass(tiny_model):
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    ids, mask, labels = _batch([18, 7, 12, 4], width=18)

    def grad(m):
        model.zero_grad()
        m(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs.sum().backward()
        return model.model.layers[0].self_attn.q_proj.weight.grad.clone()

    assert torch.allclose(grad(model), grad(PackedForward(model, 0)), atol=1e-5)


def _trainer(model_dir, tmp_path, name: str, **cfg):
    return _padding_trainer(
        model_dir,
        tmp_path / name,
        8,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-3,
        seed=0,
        loss_type=["sigmoid", "sft"],
        **cfg,
    )


def test_dpo_training_with_packing_matches_padding(tiny_model, tmp_path, monkeypatch):
    calls = []
    original = PackedForward.__call__

    def counted(self, **kwargs):
        out = original(self, **kwargs)
        calls.append(self.last_plan)
        return out

    monkeypatch.setattr(PackedForward, "__call__", counted)
    # the tiny model's 64-wide attention makes the cost model prefer padding; pack every batch here
    monkeypatch.setattr(packing, "best_plan", lambda lengths, width, capacity, aw: plan_packing(lengths, capacity))
    plain = _trainer(tiny_model, tmp_path, "plain", pack_sequences=False)
    assert calls == []
    packed = _trainer(tiny_model, tmp_path, "packed", pack_sequences=True)
    assert len(calls) == 2  # the reference pass: 8 rows in batches of 4, packed
    for col in ("ref_chosen_logps", "ref_rejected_logps"):  # reference pass packed too
        assert torch.allclose(
            torch.tensor(packed.train_dataset[col]), torch.tensor(plain.train_dataset[col]), atol=1e-4
        )
    plain.train()
    packed.train()
    assert len(calls) == 4 and all(p.rows < 8 for p in calls)  # two training steps, each fewer rows than sequences
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, packed)]
    assert len(losses[0]) == 2
    assert losses[0] == pytest.approx(losses[1], abs=1e-4)
    w_plain = dict(plain.model.named_parameters())["model.layers.1.mlp.down_proj.weight"]
    w_packed = dict(packed.model.named_parameters())["model.layers.1.mlp.down_proj.weight"]
    assert torch.allclose(w_plain, w_packed, atol=1e-5)


def test_pack_sequences_must_be_a_boolean():
    with pytest.raises(ConfigError, match="trainer.pack_sequences must be true or false"):
        safetune_trainer_options({"pack_sequences": "yes"})


def test_a_model_that_ignores_packed_positions_is_refused(fused_model, monkeypatch):
    """If the attention did not honour packed positions, the first-batch check stops training with the fix."""
    from transformers import masking_utils

    from safetune.train.packing import PackingUnsupported

    ids, mask, labels = _batch([16, 6, 5, 4], width=16)
    ok = PackedForward(fused_model, 0, verify=True)
    ok(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    assert ok.verified_max_diff is not None and ok.verified_max_diff < 1e-4 and not ok.verify
    monkeypatch.setattr(masking_utils, "find_packed_sequence_indices", lambda position_ids: None)  # plain causal
    leaky = PackedForward(fused_model, 0, verify=True)
    with pytest.raises(PackingUnsupported, match="trainer.pack_sequences=false"):
        leaky(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)


def test_the_first_batch_check_runs_one_packed_row_not_the_whole_batch(fused_model):
    """The check's padded and packed passes cover the sequences of one packed row (the cheapest holding two or
    more), not a padded pass over the whole batch; the call still runs its own packed pass once, with or without
    gradients, and its outputs equal the padded pass's."""
    ids, mask, labels = _batch([16, 6, 5, 4, 12, 3], width=16)
    with torch.no_grad():
        padded = fused_model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True).log_probs
    scored = labels[:, 1:] != -100
    shapes: list[tuple[int, ...]] = []
    for grad in (False, True):
        shapes.clear()
        hook = fused_model.register_forward_pre_hook(
            lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
        )
        try:
            wrapper = PackedForward(fused_model, 0, verify=True)
            with torch.set_grad_enabled(grad):
                out = wrapper(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
        finally:
            hook.remove()
        plan = wrapper.last_plan
        assert wrapper.verified_max_diff is not None and not wrapper.verify
        # rows of 16: [16], [12, 4], [6, 5, 3]; the cheapest with two or more: 3 sequences x 6 padded tokens (< 2 x 12)
        assert plan.rows == 3
        assert wrapper.checked_sequences == 3
        assert shapes == [(3, 6), (1, 16), (3, 16)], shapes  # check: padded, packed; then the call's packed pass
        assert out.log_probs.requires_grad == grad
        assert torch.allclose(out.log_probs[scored], padded[scored], atol=1e-5)
    # a second call (verified) runs the packed pass only
    shapes.clear()
    hook = fused_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        with torch.no_grad():
            wrapper(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    finally:
        hook.remove()
    assert shapes == [(3, 16)]


def test_check_row_picks_a_row_with_several_sequences_and_keeps_their_layout():
    ids, mask, labels = _batch([16, 6, 5, 4, 12, 3], width=16)
    plan = plan_packing([16, 6, 5, 4, 12, 3], capacity=16)
    sub_ids, sub_mask, sub_labels, sub = packing.check_row(ids, mask, labels, plan)
    assert sub.rows == 1 and sub.width == plan.width and sorted(sub.lengths) == [3, 5, 6]
    assert sub_ids.shape == (3, 6) and sub_mask.sum().item() == 14
    for k, n in enumerate(sub.lengths):
        i = plan.lengths.index(n)
        assert torch.equal(sub_ids[k, :n], ids[i, :n]) and torch.equal(sub_labels[k, :n], labels[i, :n])
        assert sub.offset[k] == plan.offset[i]
    # every row single: the cheapest one
    one = plan_packing([5, 3], capacity=5)
    _, _, _, sub = packing.check_row(*_batch([5, 3], width=5), one)
    assert sub.lengths == [3]


def test_the_first_batch_check_runs_at_the_training_precision_under_bf16_autocast(fused_model):
    """bf16 training (autocast; the shared trunk's bf16 hidden state, held 16-bit weights) is checked as it runs,
    at the 16-bit tolerance, instead of failing on fp32-vs-bf16 rounding or mixing fp32 inputs with bf16 weights."""
    from safetune.core.precision import Precision, weights_in

    ids, mask, labels = _batch([16, 6, 5, 4], width=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for held in (False, True):
            ctx = weights_in(fused_model, Precision(torch.bfloat16, "bf16"), frozen_only=False) if held else None
            with ctx or contextlib.nullcontext():
                ok = PackedForward(fused_model, 0, verify=True)
                out = ok(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
            assert not ok.verify and ok.verified_max_diff is not None and ok.verified_max_diff < 0.05
            assert out.log_probs.dtype == torch.float32 and torch.isfinite(out.log_probs).all()
