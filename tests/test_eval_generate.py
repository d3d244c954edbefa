"""Generation settings keys, cache shards and truncated lines, backend selection."""

from __future__ import annotations

import json

import pytest

from safetune.eval.generate import GenerationCache, GenerationSettings, use_vllm


def test_settings_key_ignores_batch_size_and_unused_sampling_fields():
    a = GenerationSettings(batch_size=4)
    assert a.key() == GenerationSettings(batch_size=64, temperature=0.3, seed=9).key()  # greedy: sampling fields unused
    assert a.key() == GenerationSettings(backend="auto").key()
    assert a.key() != GenerationSettings(backend="vllm").key()
    assert a.key() != GenerationSettings(max_new_tokens=49).key()
    s1 = GenerationSettings(do_sample=True, seed=1, num_samples=3)
    assert s1.key() != GenerationSettings(do_sample=True, seed=2, num_samples=3).key()


def test_cache_reads_every_shard_and_skips_a_truncated_line(tmp_path):
    main = tmp_path / "generations.jsonl"
    main.write_text(json.dumps({"key": "a", "response": "A"}) + "\n" + '{"key": "b", "resp')
    r1 = GenerationCache(main, shard=1)
    r1.add_many([{"key": "c", "response": "C"}])
    assert (tmp_path / "generations.rank1.jsonl").is_file()
    merged = GenerationCache(main)
    assert set(merged.entries) == {"a", "c"} and merged.get("c")["response"] == "C"


def test_backend_selection(monkeypatch):
    import importlib.util

    assert use_vllm(GenerationSettings(backend="hf")) is False
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "vllm" else real_find(n, *a))
    assert use_vllm(GenerationSettings(backend="auto")) is False
    with pytest.raises(RuntimeError, match="generation.backend=vllm but vLLM is not installed"):
        use_vllm(GenerationSettings(backend="vllm"))
    with pytest.raises(ValueError, match="expected hf, vllm or auto"):
        use_vllm(GenerationSettings(backend="tgi"))


def test_precision_keys_the_cache_and_auto_resolves_by_hardware(tmp_path, monkeypatch):
    import torch
    from train_tiny import make_tiny_model
    from transformers import AutoModelForCausalLM

    from safetune import dpo
    from safetune.eval.generate import resolve_precision

    assert GenerationSettings(precision="bf16").key() != GenerationSettings(precision="model").key()
    model = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "m"), dtype=torch.float32)
    monkeypatch.setattr(dpo, "cpu_bf16_supported", lambda: True)
    assert resolve_precision("auto", model) == "bf16"
    assert resolve_precision("model", model) == "model"
    monkeypatch.setattr(dpo, "cpu_bf16_supported", lambda: False)
    assert resolve_precision("auto", model) == "model"  # emulated bf16 would be slower than fp32
    assert resolve_precision("bf16", model) == "bf16"  # asked for explicitly
    monkeypatch.setattr(dpo, "cpu_bf16_supported", lambda: True)
    assert resolve_precision("auto", model.to(torch.bfloat16)) == "model"  # already reduced precision
    with pytest.raises(ValueError, match="generation.precision='fp8'; expected one of auto, model, bf16"):
        resolve_precision("fp8", model)


@pytest.mark.parametrize("precision,autocast", [("bf16", True), ("model", False)])
def test_generate_texts_runs_under_the_requested_precision(tmp_path, precision, autocast):
    import torch
    from train_tiny import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetune.eval.generate import generate_texts

    path = make_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    seen: list[bool] = []
    forward = model.forward

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*a, **k)

    model.forward = spy
    out = generate_texts(model, tok, ["Hello there", "Hi"], max_new_tokens=3, batch_size=2, precision=precision)
    assert len(out) == 2 and seen and set(seen) == {autocast}
