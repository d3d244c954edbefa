"""``trainer.cpu_attention_fp32``: transformers' sdpa attention runs in fp32 under CPU autocast while the trainer's
train / evaluate / reference pass run (``core.precision.cpu_attention_in_fp32``), and nowhere else."""

from __future__ import annotations

import pytest
import torch
from test_train_padding import _trainer as _padding_trainer
from train_tiny import make_tiny_model
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from safetune.core import precision as precision_mod
from safetune.core.config import ConfigError
from safetune.core.precision import cpu_attention_in_fp32
from safetune.train.dpo_config import safetune_trainer_options


@pytest.fixture(scope="module")
def tiny4(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny_attn") / "model", layers=4)


@pytest.fixture
def spy():
    """Record what the sdpa attention function receives (dtypes, autocast state), then run the real one."""
    real = ALL_ATTENTION_FUNCTIONS["sdpa"]
    seen: list[tuple[torch.dtype, torch.dtype, torch.dtype, bool]] = []

    def record(module, query, key, value, attention_mask, **kwargs):
        mask = attention_mask.dtype if attention_mask is not None else None
        seen.append((query.dtype, value.dtype, mask, torch.is_autocast_enabled("cpu")))
        return real(module, query, key, value, attention_mask, **kwargs)

    ALL_ATTENTION_FUNCTIONS["sdpa"] = record
    try:
        yield seen
    finally:
        del ALL_ATTENTION_FUNCTIONS["sdpa"]


def _model(model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")


def _ids():
    return torch.randint(1, 1000, (2, 12), generator=torch.Generator().manual_seed(0))


def test_attention_runs_in_fp32_under_cpu_autocast_and_the_table_is_restored(tiny4, spy):
    model, ids = _model(tiny4), _ids()
    with torch.no_grad():
        reference = model(input_ids=ids).logits  # fp32, no autocast
        spy.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            plain = model(input_ids=ids).logits
        assert {s[1] for s in spy} == {torch.bfloat16} and all(s[3] for s in spy)  # v in bf16, autocast on
        spy.clear()
        with cpu_attention_in_fp32() as applied, torch.autocast("cpu", dtype=torch.bfloat16):
            assert applied
            held = model(input_ids=ids).logits
        assert spy and all(s[:2] == (torch.float32, torch.float32) and not s[3] for s in spy)
        spy.clear()
        with cpu_attention_in_fp32():  # no autocast: the plain path, untouched
            model(input_ids=ids)
        assert all(s[3] is False and s[1] == torch.float32 for s in spy)
    # the spy is the table's entry again (a local override is put back, not deleted)
    assert ALL_ATTENTION_FUNCTIONS["sdpa"].__name__ == "record"
    assert torch.isfinite(held).all()
    # bf16 elsewhere (projections, MLP) keeps the logits near plain autocast's and near fp32
    assert (held.float() - plain.float()).abs().max() < 0.1
    assert (held.float() - reference).abs().max() < 0.1


def test_disabled_nested_and_non_cpu_calls_pass_through(spy):
    real = ALL_ATTENTION_FUNCTIONS["sdpa"]
    with cpu_attention_in_fp32(False) as applied:
        assert not applied and ALL_ATTENTION_FUNCTIONS["sdpa"] is real
    with cpu_attention_in_fp32():
        wrapped = ALL_ATTENTION_FUNCTIONS["sdpa"]
        assert wrapped is not real
        with cpu_attention_in_fp32() as inner:  # an outer block already holds it: not wrapped twice
            assert inner and ALL_ATTENTION_FUNCTIONS["sdpa"] is wrapped
        assert ALL_ATTENTION_FUNCTIONS["sdpa"] is wrapped
        q = torch.zeros(1, 2, 3, 4, device="meta", dtype=torch.bfloat16)
        mask = torch.zeros(1, 1, 3, 3, device="meta", dtype=torch.bfloat16)
        module = torch.nn.Module()
        module.is_causal, module.training = False, False
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wrapped(module, q, q, q, mask)
    assert spy[-1][:2] == (torch.bfloat16, torch.bfloat16)  # not a CPU tensor: left as it came
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is real


def test_a_float_mask_is_cast_with_the_inputs(spy):
    q = torch.randn(1, 2, 5, 8)
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bfloat16)
    module = torch.nn.Module()
    module.is_causal, module.training = False, False
    with cpu_attention_in_fp32(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, q, q.bfloat16(), mask)
    assert spy[-1] == (torch.float32, torch.float32, torch.float32, False) and out.dtype == torch.float32


def test_bf16_training_runs_attention_in_fp32_only_when_set(tiny4, tmp_path, monkeypatch, spy):
    from peft import LoraConfig

    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)  # emulated where not native
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg = {"per_device_train_batch_size": 4, "max_steps": 2, "learning_rate": 1e-2, "seed": 0, "bf16": True}
    losses = {}
    for flag in (False, True):
        spy.clear()
        t = _padding_trainer(tiny4, tmp_path / str(flag), 8, peft_config=lora, cpu_attention_fp32=flag, **cfg)
        ref_pass = list(spy)  # DPOTrainer.__init__ ran the reference pass
        spy.clear()
        t.train()
        want = torch.float32 if flag else torch.bfloat16
        assert ref_pass and {s[1] for s in ref_pass} == {want}
        assert spy and {s[1] for s in spy} == {want}
        assert ALL_ATTENTION_FUNCTIONS["sdpa"].__name__ == "record"  # put back after train()
        losses[flag] = [h["loss"] for h in t.state.log_history if "loss" in h]
    assert len(losses[True]) == 2
    for a, b in zip(losses[False], losses[True], strict=True):
        assert a == pytest.approx(b, rel=0.05, abs=0.02)


def test_compiled_training_keeps_bf16_attention(tiny4, tmp_path, monkeypatch, spy):
    """With trainer.compile the fp32 attention did not pay (benchmarks/README.md): it is left off there."""
    from peft import LoraConfig

    monkeypatch.setattr(precision_mod, "cpu_bf16_supported", lambda: True)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cfg = {"per_device_train_batch_size": 4, "max_steps": 1, "seed": 0, "bf16": True, "compile": "regions"}
    t = _padding_trainer(tiny4, tmp_path, 4, peft_config=lora, cpu_attention_fp32=True, **cfg)
    assert not t._safetune_attention_fp32
    assert spy and {s[1] for s in spy} == {torch.bfloat16}  # the reference pass in __init__


def test_cpu_attention_fp32_must_be_a_boolean():
    with pytest.raises(ConfigError, match="trainer.cpu_attention_fp32 must be true or false"):
        safetune_trainer_options({"cpu_attention_fp32": "yes"})
