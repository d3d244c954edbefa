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


# bitsandbytes warns this when a backward runs through its 4-bit inference kernel (no gradient flows there)
@pytest.mark.filterwarnings("error:.*autograd kernel was not registered:UserWarning")
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
    lora_b = {k: v for k, v in adapter.items() if "lora_B" in k}
    # LoRA B starts at 0: training moved every one of them (a layer whose gradient was cut would stay at 0)
    assert lora_b and [k for k, v in lora_b.items() if v.abs().max().item() == 0] == []
    assert not (tmp_path / "run" / "adapter" / "training_args.bin").exists()


def _lora_grads(model_dir, eval_pass_first: bool, keep_trainable: str) -> dict[str, torch.Tensor | None]:
    from peft import LoraConfig, get_peft_model

    from safetune.core.modeling import keep_4bit_layers_trainable

    torch.manual_seed(0)
    base = load_model(ModelSpec(name_or_path=str(model_dir), dtype="float32", load_in_4bit=True))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # non-zero B so every adapter has a gradient
            torch.nn.init.normal_(p, std=0.02)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    if keep_trainable == "before":  # as training does: right after loading
        keep_4bit_layers_trainable(model)
    if eval_pass_first:  # what a reference or sanity pass before training does
        model.eval()
        with torch.no_grad():
            model(input_ids=ids)
    if keep_trainable == "after":  # a model that was already evaluated (its 4-bit weights may be repacked)
        keep_4bit_layers_trainable(model)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def test_4bit_layers_keep_their_gradient_after_an_eval_pass(tiny):
    """bitsandbytes repacks 4-bit weights for an inference kernel without a backward after an eval-mode pass on
    CPUs with AVX512-BF16; training undoes that, so every adapter gets the gradient it would have had anyway."""
    model_dir, _ = tiny
    clean = _lora_grads(model_dir, eval_pass_first=False, keep_trainable="no")
    assert clean and all(g is not None for g in clean.values())
    # as training does it: the same gradients, bit for bit
    trained = _lora_grads(model_dir, eval_pass_first=True, keep_trainable="before")
    assert set(trained) == set(clean) and all(torch.equal(clean[n], g) for n, g in trained.items())
    # undone after the fact: every adapter has its gradient again (the weights' round trip through the packed
    # layout re-quantises the nested absmax: the weights move by ~0.3% of the largest, the gradients by ~1%)
    repaired = _lora_grads(model_dir, eval_pass_first=True, keep_trainable="after")
    assert [n for n, g in repaired.items() if g is None] == []
    for n, g in clean.items():
        assert (g - repaired[n]).abs().max() <= 0.05 * g.abs().max() + 1e-8, n


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
