"""``trainer.share_frozen_trunk``: in-step reference whose hidden state below the first adapted layer the policy reuses."""

from __future__ import annotations

import logging

import pytest
import torch
from test_train_padding import _trainer as _padding_trainer
from train_tiny import make_tiny_model

from safetune.core.config import ConfigError
from safetune.train import trunk as trunk_mod
from safetune.train.dpo_config import safetune_trainer_options
from safetune.train.trunk import SharedTrunk, frozen_depth, in_step_is_cheaper


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_trunk") / "model", layers=4)


def _lora(layers: list[int] | None):
    from peft import LoraConfig

    return LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        target_modules=["q_proj", "v_proj", "down_proj"],
        layers_to_transform=layers,
        layers_pattern="layers" if layers else None,
        task_type="CAUSAL_LM",
    )


def _peft_model(model_dir, layers):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer import utils as trl_utils

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    trl_utils.add_fused_lm_head(model)
    return get_peft_model(model, _lora(layers))


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :4] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "fused_lm_head": True}


def test_frozen_depth_is_the_first_adapted_layer(tiny4):
    assert frozen_depth(_peft_model(tiny4, [2, 3]).get_base_model()) == 2
    assert frozen_depth(_peft_model(tiny4, [1, 3]).get_base_model()) == 1
    assert frozen_depth(_peft_model(tiny4, None).get_base_model()) == 0  # adapters everywhere: nothing to share
    model = _peft_model(tiny4, [2, 3]).get_base_model()
    model.get_input_embeddings().weight.requires_grad_(True)  # trained embeddings: policy != reference from the start
    assert frozen_depth(model) == 0


def test_reuse_gives_the_full_forwards_log_probs_and_gradients(tiny4):
    model = _peft_model(tiny4, [2, 3])
    for p in model.parameters():  # non-zero adapters, so the policy really differs from the reference
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.05)
    trunk = SharedTrunk(model.get_base_model(), 2)
    batch = _batch()
    full = model(**batch).log_probs
    full.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    with torch.no_grad(), model.disable_adapter(), trunk.capture():
        model(**batch)  # the reference forward keeps the hidden state entering layer 2
    with trunk.reuse():
        reused = model(**batch).log_probs
        reused.sum().backward()
    assert trunk.reused == 1 and trunk.missed == 0
    assert torch.allclose(full, reused, atol=1e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert torch.allclose(grads[n], p.grad, atol=1e-5), n
    assert len(getattr(trunk.owner, trunk.attr)) == 4  # the full layer list is back


def test_reuse_never_serves_other_inputs(tiny4):
    model = _peft_model(tiny4, [2, 3])
    trunk = SharedTrunk(model.get_base_model(), 2)
    with torch.no_grad(), trunk.capture():
        model(**_batch(0))
    other = _batch(1)
    with torch.no_grad():
        expected = model(**other).log_probs
        with trunk.reuse():
            got = model(**other).log_probs
    assert trunk.reused == 0 and trunk.missed == 1
    assert torch.equal(expected, got)


def test_in_step_is_chosen_only_when_it_needs_fewer_layer_forwards():
    assert in_step_is_cheaper(30, 20, epochs=1, stored_fraction=0.0)  # the demo: 40 vs 60 per row
    assert not in_step_is_cheaper(30, 20, epochs=3, stored_fraction=0.0)  # 120 vs 120
    assert in_step_is_cheaper(30, 26, epochs=5, stored_fraction=0.0)  # top 4 layers: 170 vs 180
    assert not in_step_is_cheaper(30, 20, epochs=1, stored_fraction=1.0)  # cache warm: the pass is free
    assert not in_step_is_cheaper(30, 0, epochs=1, stored_fraction=0.0)


def _trainer(model_dir, tmp_path, name, **opts):
    """Two LoRA steps on the 4-layer model with adapters on layers 2-3 (a frozen trunk of depth 2)."""
    cfg = {"per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "seed": 0}
    cfg["loss_type"] = ["sigmoid", "sft"]
    return _padding_trainer(model_dir, tmp_path / name, 8, peft_config=_lora([2, 3]), **{**cfg, **opts})


def _losses(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def _lora_weights(trainer):
    return {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_" in n}


@pytest.mark.parametrize("packed", [False, True])
def test_training_with_a_shared_trunk_equals_the_separate_reference_pass(tiny4, tmp_path, monkeypatch, packed):
    if packed:  # the tiny model's narrow attention makes the cost model prefer padding; pack every batch here
        from safetune.train import packing

        monkeypatch.setattr(packing, "best_plan", lambda lengths, w, cap, aw: packing.plan_packing(lengths, cap))
    separate = _trainer(tiny4, tmp_path, "separate", share_frozen_trunk=False, pack_sequences=packed)
    shared = _trainer(tiny4, tmp_path, "shared", share_frozen_trunk=True, pack_sequences=packed)
    assert "ref_chosen_logps" in separate.train_dataset.column_names
    assert "ref_chosen_logps" not in shared.train_dataset.column_names  # no separate pass
    separate.train()
    shared.train()
    trunk = shared._safetune_trunk
    assert trunk is not None and trunk.depth == 2 and trunk.enabled
    assert trunk.reused == 3  # the first-step verification, then one policy forward per step
    assert _losses(shared) == pytest.approx(_losses(separate), abs=1e-4) and len(_losses(shared)) == 2
    a, b = _lora_weights(separate), _lora_weights(shared)
    assert a.keys() == b.keys() and a
    for n in a:
        assert torch.allclose(a[n], b[n], atol=1e-5), n


def test_a_wrong_start_layer_is_caught_and_training_falls_back(tiny4, tmp_path, monkeypatch, caplog):
    """If the backbone could not start from the kept hidden state, the first step's check switches sharing off."""
    original = SharedTrunk.__init__

    def off_by_one(self, model, depth):
        original(self, model, depth)
        self.top = torch.nn.ModuleList(list(self.layers)[depth - 1 :])  # runs layer 1 twice: wrong hidden states

    monkeypatch.setattr(trunk_mod.SharedTrunk, "__init__", off_by_one)
    separate = _trainer(tiny4, tmp_path, "separate", share_frozen_trunk=False)
    shared = _trainer(tiny4, tmp_path, "broken", share_frozen_trunk=True)
    separate.train()
    with caplog.at_level(logging.WARNING, logger="safetune.train.trl_ext"):
        shared.train()
    assert not shared._safetune_trunk.enabled
    assert "cannot start from layer 2" in caplog.text and "share_frozen_trunk=false" in caplog.text
    assert _losses(shared) == pytest.approx(_losses(separate), abs=1e-4)


def test_a_warm_reference_cache_keeps_the_separate_pass(tiny4, tmp_path):
    from safetune.train.refcache import RefLogpCache

    cache = RefLogpCache(dir=tmp_path / "ref", key_parts={"model": "tiny4"})
    first = _trainer(tiny4, tmp_path, "a", share_frozen_trunk=False)
    rows = first.train_dataset.remove_columns(["ref_chosen_logps", "ref_rejected_logps"])
    cache.attach(rows, "train", lambda _: first.train_dataset, first.accelerator)
    assert cache.stored_fraction(first.train_dataset) == 1.0
    warm = _trainer(tiny4, tmp_path, "warm", share_frozen_trunk=True, ref_cache=cache)
    assert warm._safetune_trunk is None and "ref_chosen_logps" in warm.train_dataset.column_names
    assert cache.hits == ["train"]


def test_share_frozen_trunk_must_be_a_boolean():
    with pytest.raises(ConfigError, match="trainer.share_frozen_trunk must be true or false"):
        safetune_trainer_options({"share_frozen_trunk": "auto"})


@pytest.mark.parametrize("cast", [False, True])
def test_bf16_training_with_a_shared_trunk_and_packing_runs(tiny4, tmp_path, monkeypatch, cast):
    """The demo's setting on a CPU with native bf16: the packing check must accept the bf16 trunk state."""
    from safetune.core import precision as precision_mod
    from safetune.train import packing

    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(packing, "best_plan", lambda lengths, w, cap, aw: packing.plan_packing(lengths, cap))
    opts = {"bf16": True, "pack_sequences": True, "cast_frozen_weights": cast}
    separate = _trainer(tiny4, tmp_path, "separate", share_frozen_trunk=False, **opts)
    shared = _trainer(tiny4, tmp_path, "shared", share_frozen_trunk=True, **opts)
    separate.train()
    shared.train()
    assert shared._safetune_trunk is not None and shared._safetune_trunk.enabled
    assert _losses(shared) == pytest.approx(_losses(separate), abs=0.05) and len(_losses(shared)) == 2


@pytest.mark.slow
def test_bf16_demo_setting_trains_on_the_embedded_model(embedded_model_dir, tmp_path, monkeypatch):
    """SmolLM2 with LoRA on the top 10 layers, in-step reference on the shared trunk, packed batches, bf16 autocast:
    the first-batch packing check compares at the training precision (in fp32 the bf16 trunk state alone moved the
    log-probs by ~0.009 nats/token, over the fp32 tolerance, and training stopped)."""
    from safetune.core import precision as precision_mod
    from safetune.train import packing

    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)
    monkeypatch.setattr(packing, "best_plan", lambda lengths, w, cap, aw: packing.plan_packing(lengths, cap))
    lora = _lora(list(range(20, 30)))
    cfg = {"per_device_train_batch_size": 4, "max_steps": 1, "learning_rate": 1e-3, "seed": 0, "bf16": True}
    for cast in (False, True):
        t = _padding_trainer(
            embedded_model_dir,
            tmp_path / str(cast),
            4,
            peft_config=lora,
            share_frozen_trunk=True,
            pack_sequences=True,
            cast_frozen_weights=cast,
            **cfg,
        )
        t.train()
        assert t._safetune_trunk is not None and t._safetune_trunk.enabled and t._safetune_trunk.reused >= 1
        assert len(_losses(t)) == 1
