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
