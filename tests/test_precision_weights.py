"""Frozen linear weights held in the autocast dtype (``core.precision.weights_in``): generation
(``generation.cast_weights``) and training (``trainer.cast_frozen_weights``) give plain autocast's numbers."""

from __future__ import annotations

import pytest
import torch
from test_train_padding import _trainer as _padding_trainer
from train_tiny import make_tiny_model

from safetune.core import precision as precision_mod
from safetune.core.config import ConfigError
from safetune.core.precision import Precision, weights_in
from safetune.train.dpo_config import safetune_trainer_options

BF16 = Precision(torch.bfloat16, "bf16")


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_cast") / "model", layers=4)


def _lora_model(model_dir, tie: bool = False):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, tie_word_embeddings=tie)
    if tie:
        model.tie_weights()
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    g = torch.Generator().manual_seed(0)
    for n, p in model.named_parameters():  # non-zero B, so the adapters change the output
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.05, generator=g)
    return model


def _ids():
    return torch.randint(1, 1000, (2, 10), generator=torch.Generator().manual_seed(0))


def test_held_weights_give_autocasts_logits_and_lora_gradients_and_are_put_back(tiny4):
    model = _lora_model(tiny4)
    before = {n: p for n, p in model.named_parameters()}
    ids = _ids()

    def run():
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids).logits
        logits.float().logsumexp(-1).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return logits.detach(), grads

    plain_logits, plain_grads = run()
    with weights_in(model, BF16) as n:
        base = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
        assert base.dtype == torch.bfloat16 and not base.requires_grad
        lora_a = model.get_base_model().model.layers[0].self_attn.q_proj.lora_A["default"].weight
        assert lora_a.dtype == torch.float32 and lora_a.requires_grad  # trainable adapters stay fp32
        held_logits, held_grads = run()
    assert n == 4 * 7 + 1  # 7 frozen linears per layer (q/v through their base layer) and the LM head
    assert torch.equal(held_logits, plain_logits)
    assert held_grads.keys() == plain_grads.keys() and held_grads
    for k in plain_grads:
        assert torch.equal(held_grads[k], plain_grads[k]), k
    after = {n: p for n, p in model.named_parameters()}
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)  # same Parameter objects
    assert all(p.dtype == torch.float32 for p in after.values())


def test_a_tied_lm_head_gets_its_own_copy_and_the_tie_comes_back(tiny4):
    model = _lora_model(tiny4, tie=True).get_base_model()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = model(input_ids=_ids()).logits
        with weights_in(model, BF16, frozen_only=False):
            assert model.lm_head.weight.dtype == torch.bfloat16
            assert model.model.embed_tokens.weight.dtype == torch.float32  # embeddings (and norms) untouched
            held = model(input_ids=_ids()).logits
    assert torch.equal(held, plain)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_nothing_is_held_without_autocast_or_when_weights_are_already_16_bit(tiny4):
    model = _lora_model(tiny4)
    with weights_in(model, Precision()) as n:
        assert n == 0
    model.to(torch.bfloat16)
    with weights_in(model, BF16, frozen_only=False) as n:
        assert n == 0


def test_weights_come_back_when_the_block_raises(tiny4):
    model = _lora_model(tiny4).get_base_model()
    w = model.lm_head.weight
    with pytest.raises(RuntimeError, match="boom"), weights_in(model, BF16, frozen_only=False):
        raise RuntimeError("boom")
    assert model.lm_head.weight is w


def test_generation_with_held_weights_gives_the_same_answers(tiny4):
    from transformers import AutoTokenizer

    from safetune.eval.generate import generate_texts

    model = _lora_model(tiny4)
    tok = AutoTokenizer.from_pretrained(tiny4)
    texts = ["hello there", "a longer prompt with more words in it", "x"]
    kw = {"max_new_tokens": 8, "batch_size": 3, "precision": "bf16", "chunked_prefill": True}
    plain = generate_texts(model, tok, texts, cast_weights=False, **kw)
    held = generate_texts(model, tok, texts, cast_weights=True, **kw)
    assert held == plain and any(plain)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def _lora_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("packed", [False, True])
def test_bf16_training_with_held_frozen_weights_equals_plain_autocast(tiny4, tmp_path, monkeypatch, packed):
    from peft import LoraConfig

    if packed:  # the tiny model's cost model prefers padding; pack every batch (its first-call check runs too)
        from safetune.train import packing

        monkeypatch.setattr(packing, "best_plan", lambda lengths, w, cap, aw: packing.plan_packing(lengths, cap))

    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)  # emulated where not native: same numbers
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg = {"per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "seed": 0, "bf16": True}
    cfg["pack_sequences"] = packed
    runs = {}
    for flag in (False, True):
        t = _padding_trainer(tiny4, tmp_path / str(flag), 8, peft_config=lora, cast_frozen_weights=flag, **cfg)
        seen = []
        original = t.compute_loss

        def spy(*a, _orig=original, _t=t, _seen=seen, **k):
            layer = _t.model.get_base_model().model.layers[0].mlp.up_proj
            _seen.append(layer.weight.dtype)
            return _orig(*a, **k)

        t.compute_loss = spy
        t.train()
        assert seen and set(seen) == {torch.bfloat16 if flag else torch.float32}
        runs[flag] = t
    plain, held = runs[False], runs[True]
    assert plain.train_dataset["ref_chosen_logps"] == held.train_dataset["ref_chosen_logps"]
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, held)]
    assert losses[0] == losses[1] and len(losses[0]) == 2
    a, b = _lora_weights(plain), _lora_weights(held)
    assert a.keys() == b.keys() and a
    for n in a:
        assert torch.equal(a[n], b[n]), n
    assert all(p.dtype == torch.float32 for p in held.model.parameters())  # fp32 again for saving and merging


def test_cast_frozen_weights_must_be_a_boolean():
    with pytest.raises(ConfigError, match="trainer.cast_frozen_weights must be true or false"):
        safetune_trainer_options({"cast_frozen_weights": "yes"})
