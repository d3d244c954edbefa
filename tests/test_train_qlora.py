"""QLoRA (4-bit NF4 base via bitsandbytes, on CPU) and full fine-tuning with an explicit reference model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from train_tiny import compose_train, make_tiny_model, train_overrides, write_tiny_data

from safetune.core.modeling import ModelSpec, load_model
from safetune.train.recipe import run_train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    return make_tiny_model(d / "model"), write_tiny_data(d / "data.jsonl")


def test_qlora_trains_lora_on_a_4bit_nf4_base(tiny, tmp_path):
    import bitsandbytes as bnb

    model_dir, data = tiny
    base = load_model(ModelSpec(name_or_path=str(model_dir), dtype="float32", load_in_4bit=True))
    q = base.model.layers[0].self_attn.q_proj
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.quant_type == "nf4"

    cfg = compose_train(
        train_overrides(
            model_dir,
            data,
            tmp_path / "run",
            "peft=qlora",
            "trainer.max_steps=3",
            "trainer.warmup_steps=0",
            "trainer.learning_rate=5e-3",
            "trainer.gradient_checkpointing=true",
            "model.attn_implementation=eager",
            f"ref_cache.dir={tmp_path / 'rc'}",
        )
    )
    metrics, art = run_train(cfg)
    assert metrics["sanity/max_abs_logratio"] < 1e-3  # 4-bit reference == 4-bit policy at step 0
    info = json.loads((tmp_path / "run" / "safetune_run.json").read_text())
    assert info["kind"] == "adapter" and info["model"]["load_in_4bit"] is True
    adapter = load_file(str(tmp_path / "run" / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and max(v.abs().max().item() for v in lora_b) > 0  # LoRA B starts at 0: training moved it
    assert not (tmp_path / "run" / "adapter" / "training_args.bin").exists()


def test_full_finetune_with_explicit_reference(tiny, tmp_path):
    model_dir, data = tiny
    cfg = compose_train(
        train_overrides(
            model_dir,
            data,
            tmp_path / "run",
            "peft=none",
            "peft.reference=explicit",
            "trainer.max_steps=2",
            "trainer.warmup_steps=0",
            "trainer.learning_rate=1e-3",
            "trainer.precompute_ref_log_probs=false",
        )
    )
    metrics, _ = run_train(cfg)
    assert metrics["sanity/max_abs_logratio"] < 1e-3
    info = json.loads((tmp_path / "run" / "safetune_run.json").read_text())
    assert info["kind"] == "full"
    trained = load_file(str(tmp_path / "run" / "adapter" / "model.safetensors"))
    original = load_file(str(model_dir / "model.safetensors"))
    changed = [k for k in original if k in trained and not torch.equal(original[k], trained[k])]
    assert len(changed) > len(original) // 2  # every layer trains, not just an adapter
