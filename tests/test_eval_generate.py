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

    from safetune.core import precision as dpo
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


def test_vllm_backend_writes_the_same_rows_and_resumes(tmp_path, monkeypatch):
    """The vLLM adapter (no GPU here: a stand-in ``vllm`` module records what safetune asks of it): one LLM per
    checkpoint directory, greedy = temperature 0, n samples per prompt, answers cached like the HF path's."""
    import importlib.machinery
    import sys
    import types

    import torch
    from accelerate import PartialState

    from safetune.core.schema import EvalPrompt
    from safetune.eval.generate import generate

    PartialState()  # created on CPU before CUDA is faked below
    calls: dict[str, list] = {"llm": [], "generate": []}

    class SamplingParams:
        def __init__(self, **kw):
            self.kw = kw

    class LLM:
        def __init__(self, model, trust_remote_code, seed):
            calls["llm"].append({"model": model, "trust_remote_code": trust_remote_code})

        def generate(self, texts, params):
            calls["generate"].append((list(texts), params.kw))
            out = types.SimpleNamespace
            return [out(outputs=[out(text=f" answer {i} to {t} ") for i in range(params.kw["n"])]) for t in texts]

    fake = types.ModuleType("vllm")
    fake.LLM, fake.SamplingParams = LLM, SamplingParams
    fake.__spec__ = importlib.machinery.ModuleSpec("vllm", None)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    class Fmt:
        def render_prompt(self, messages):
            return "<user>" + messages[-1]["content"] + "<assistant>"

    prompts = [
        EvalPrompt(id=f"p{i}", prompt=[{"role": "user", "content": f"question {i}"}], kind="harmful", suite="s")
        for i in range(3)
    ]
    cache = GenerationCache(tmp_path / "generations.jsonl")
    settings = GenerationSettings(backend="auto", max_new_tokens=7, precision="model")
    gens, n_new = generate(None, None, Fmt(), prompts, settings, cache, "ck1", vllm_model_dir=lambda: "/ckpt")
    assert n_new == 3 and calls["llm"] == [{"model": "/ckpt", "trust_remote_code": False}]
    ((texts, kw),) = calls["generate"]
    assert texts == [f"<user>question {i}<assistant>" for i in range(3)]
    assert kw["temperature"] == 0.0 and kw["max_tokens"] == 7 and kw["n"] == 1
    assert [g.prompt_id for g in gens] == ["p0", "p1", "p2"]
    assert gens[1].response == "answer 0 to <user>question 1<assistant>"  # stripped, matched to its own prompt
    assert gens[0].settings_key == GenerationSettings(backend="vllm", max_new_tokens=7, precision="model").key()
    rows = [json.loads(line) for line in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert {r["prompt_id"] for r in rows} == {"p0", "p1", "p2"}

    # Resume: nothing left to generate, vLLM is not started again.
    again, n_again = generate(
        None,
        None,
        Fmt(),
        prompts,
        settings,
        GenerationCache(tmp_path / "generations.jsonl"),
        "ck1",
        vllm_model_dir=lambda: "/ckpt",
    )
    assert n_again == 0 and len(calls["llm"]) == 1 and [g.response for g in again] == [g.response for g in gens]

    # Sampling: n samples per prompt in one request.
    sampled = GenerationSettings(backend="vllm", do_sample=True, num_samples=2, temperature=0.7, precision="model")
    gens2, _ = generate(None, None, Fmt(), prompts, sampled, cache, "ck1", vllm_model_dir=lambda: "/ckpt")
    assert calls["generate"][-1][1]["n"] == 2 and calls["generate"][-1][1]["temperature"] == 0.7
    assert [(g.prompt_id, g.sample) for g in gens2][:2] == [("p0", 0), ("p0", 1)]
    assert gens2[1].response == "answer 1 to <user>question 0<assistant>"


def test_vllm_refuses_an_unmerged_4bit_adapter_with_a_clear_error(tmp_path):
    import types

    from safetune.eval.checkpoints import vllm_model_dir as _vllm_dir

    ck = types.SimpleNamespace(
        model=types.SimpleNamespace(peft_config={"default": {}}, name_or_path=""), checkpoint_id="adapter:runs/q4"
    )
    with pytest.raises(RuntimeError, match="LoRA adapter on a 4-bit base.*safetune-export"):
        _vllm_dir(ck, tmp_path)()
    assert not (tmp_path / "merged_model").exists()


PREFIX_PROMPTS = [
    "How do I boil an egg?",
    "Write a short, polite note to my landlord asking when the boiler will be repaired, mentioning it has been "
    "broken for two weeks and that I have a small child at home.",
    "What's 2+2?",
    "How can I get into my neighbour's wifi without asking?",
    "Explain photosynthesis to a ten-year-old in three sentences.",
]


def _chat_texts(tok):
    return [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PREFIX_PROMPTS
    ]


def test_common_prefix_length_leaves_a_token_to_generate_from():
    from safetune.eval.generate import common_prefix_length

    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # identical prompts keep one token each
    assert common_prefix_length([[7], [1, 2]]) == 0


def test_shared_prefix_generation_gives_the_plain_batchs_answers(tmp_path):
    import torch
    from train_tiny import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetune.eval.generate import MIN_SHARED_PREFIX, generate_texts

    path = make_tiny_model(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(path)
    texts = _chat_texts(tok)
    calls: list[int] = []
    forward = model.forward

    def spy(*a, **k):
        calls.append(k["input_ids"].shape[1])
        return forward(*a, **k)

    model.forward = spy
    plain = generate_texts(model, tok, texts, max_new_tokens=12, batch_size=8, share_prefix=False)
    prefill_plain = calls[0]
    calls.clear()
    shared = generate_texts(model, tok, texts, max_new_tokens=12, batch_size=8, share_prefix=True)
    assert shared == plain
    # one forward over the prefix, one over the rest but each row's last token, then generate from that last token
    assert calls[0] >= MIN_SHARED_PREFIX and calls[1] == prefill_plain - calls[0] - 1 and calls[2] == 1


@pytest.mark.slow
def test_shared_prefix_generation_on_the_embedded_model(embedded_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetune.eval.generate import generate_texts

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    texts = _chat_texts(tok)
    plain = generate_texts(model, tok, texts, max_new_tokens=24, batch_size=8, share_prefix=False)
    shared = generate_texts(model, tok, texts, max_new_tokens=24, batch_size=8, share_prefix=True)
    assert shared == plain
    assert len(set(plain)) == len(plain) and all(plain)


def test_compile_keys_the_cache_only_when_set_and_is_checked():
    from safetune.core.config import ConfigError

    plain = GenerationSettings()
    assert "compile" not in json.dumps(plain.sampling()) or plain.sampling()["compile"] is None
    assert GenerationSettings(compile=None).key() == plain.key()
    assert GenerationSettings(compile="regions").key() != plain.key()
    assert GenerationSettings(compile="regions").key() != GenerationSettings(compile="model").key()
    assert GenerationSettings.from_cfg({"compile": None}).compile is None
    with pytest.raises(ConfigError, match="generation.compile must be null"):
        GenerationSettings.from_cfg({"compile": "fast"})


@pytest.mark.parametrize("broken", [False, True], ids=["compiled", "compile-fails"])
def test_compiled_generation_gives_the_eager_answers(tmp_path, monkeypatch, broken):
    import torch
    from train_tiny import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from safetune.eval.generate import generate_texts

    path = make_tiny_model(tmp_path / "m")
    tok = AutoTokenizer.from_pretrained(path)
    texts = _chat_texts(tok)
    eager_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if broken:  # the backend fails at the first compiled call: generation goes on eager

        def fake_compile(fn, **kwargs):
            def fails(*a, **k):
                raise RuntimeError("BackendCompilerFailed: inductor raised")

            return fails

        monkeypatch.setattr(torch, "compile", fake_compile)
    torch._dynamo.reset()
    kw = {"max_new_tokens": 8, "batch_size": 8, "share_prefix": True, "chunked_prefill": True}
    plain = generate_texts(eager_model, tok, texts, **kw)
    compiled = generate_texts(model, tok, texts, compile="regions", **kw)
    assert compiled == plain
    state = model._safetune_compile
    if broken:
        assert state.scope is None and "inductor raised" in state.fallback_reason
    else:
        assert state.scope == "regions" and state.fallback_reason is None
    again = generate_texts(model, tok, texts, compile="regions", **kw)  # compiled once, not wrapped twice
    assert again == plain and model._safetune_compile is state
