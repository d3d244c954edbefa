"""``trainer.gradient_checkpointing_kwargs.every_n_layers``: checkpoint every n-th decoder layer only.

transformers 5 supports it; TRL 1.16 switches checkpointing off around its reference forwards and back on with
``gradient_checkpointing_enable(kwargs)``, which checkpointed every layer again and handed ``every_n_layers`` to
``torch.utils.checkpoint`` (a crash at the next backward). safetune's ``checkpointing_paused`` keeps each layer's flag.
"""

from __future__ import annotations

import pytest
from test_train_padding import _trainer
from train_tiny import make_tiny_model

from safetune.core.config import ConfigError
from safetune.core.ranges import precheck_trainer
from safetune.train.dpo_config import build_dpo_config, validate_trainer
from safetune.train.trl_ext import checkpointing_paused


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_ckpt") / "model", layers=4)


def _flags(model) -> list[bool]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m.gradient_checkpointing for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def test_paused_checkpointing_comes_back_layer_by_layer(tiny4):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny4)
    model.activation_checkpointing_enable(every_n_layers=2)
    assert _flags(model) == [True, False, True, False]
    with checkpointing_paused(model, {"every_n_layers": 2}):
        assert _flags(model) == [False] * 4
    assert _flags(model) == [True, False, True, False]


@pytest.mark.parametrize("precompute", [False, True])
def test_training_checkpoints_every_second_layer_with_the_plain_losses(tiny4, tmp_path, precompute):
    """The reference forwards (in each step, TRL pausing checkpointing around them; or precomputed before training)
    leave every other layer checkpointed, and the steps train to the losses of the run without checkpointing."""
    from peft import LoraConfig

    def lora():
        return LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")

    recomputed: list[int] = []
    plain = _trainer(tiny4, tmp_path / "plain", 8, peft_config=lora(), max_steps=2, precompute_ref_log_probs=precompute)
    every2 = _trainer(
        tiny4,
        tmp_path / "every2",
        8,
        peft_config=lora(),
        max_steps=2,
        precompute_ref_log_probs=precompute,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"every_n_layers": 2},
    )
    plain.train()
    layers = [m for m in every2.model.modules() if type(m).__name__ == "LlamaDecoderLayer"]
    # the layer's forward is what gets recomputed (its own hooks stay outside the checkpoint): count its MLP's calls
    hooks = [m.mlp.register_forward_pre_hook(lambda mod, a, i=i: recomputed.append(i)) for i, m in enumerate(layers)]
    every2.train()
    for h in hooks:
        h.remove()
    assert _flags(every2.model) == [True, False, True, False]
    # each step: every layer's forward once (twice with the reference in the step), then layers 0 and 2 again in
    # backward (the recompute)
    steps, forwards = 2, 1 if precompute else 2
    assert sorted(recomputed) == sorted([0, 1, 2, 3] * forwards * steps + [0, 2] * steps), recomputed
    losses = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (plain, every2)]
    assert len(losses[0]) == 2 and losses[0] == pytest.approx(losses[1], abs=1e-5)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_every_n_layers_must_be_a_positive_whole_number(bad):
    with pytest.raises(ConfigError, match=r"trainer.gradient_checkpointing_kwargs.every_n_layers must be"):
        validate_trainer({"gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"every_n_layers": bad}})
    with pytest.raises(ConfigError, match=r"trainer.gradient_checkpointing_kwargs.every_n_layers must be"):
        precheck_trainer({"gradient_checkpointing_kwargs": {"every_n_layers": bad}})  # at start-up, before torch


def test_the_low_memory_trainer_preset_checkpoints_every_third_layer(tmp_path):
    from safetune.core.config import to_plain
    from tests.conftest import compose

    cfg = compose("train", ["trainer=low_memory"])
    assert cfg.trainer.beta == compose("train", []).trainer.beta  # the defaults, plus the checkpointing delta
    args = build_dpo_config(to_plain(cfg.trainer), str(tmp_path))
    assert args.gradient_checkpointing is True
    assert args.gradient_checkpointing_kwargs["every_n_layers"] == 3
