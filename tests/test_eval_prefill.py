"""Chunked prefill and the growing KV cache (safetune/eval/prefill.py): the plain batch's answers, less work."""

from __future__ import annotations

import pytest

PROMPTS = [
    "Hi",
    "How do I boil an egg?",
    "Write a short, polite note to my landlord asking when the boiler will be repaired, mentioning it has been "
    "broken for two weeks, that I have a small child at home and that I would like a date in writing this week.",
    "What's 2+2?",
    "How can I get into my neighbour's wifi without asking?",
    "Explain photosynthesis to a ten-year-old in three sentences.",
    "List three board games for a family evening and say why each works for mixed ages.",
    "ok",
    "Translate 'good morning' into French, Spanish and German, one per line, with a note on pronunciation.",
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import torch
    from train_tiny import make_tiny_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path_factory.mktemp("prefill") / "m")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(path)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    return model, tok, texts


def test_growing_layer_appends_in_place_and_equals_concatenation():
    import torch
    from transformers.cache_utils import DynamicLayer

    from safetune.eval.prefill import GrowingLayer

    grow, plain = GrowingLayer(room=4), DynamicLayer()
    torch.manual_seed(0)
    steps = [torch.randn(2, 3, n, 8) for n in (5, 1, 1, 1, 1, 1, 1)]
    ptrs = []
    for k in steps:
        gk, gv = grow.update(k, -k)
        pk, pv = plain.update(k, -k)
        assert torch.equal(gk, pk) and torch.equal(gv, pv)
        ptrs.append(gk.data_ptr())
    assert grow.get_seq_length() == 11
    assert len(set(ptrs[:5])) == 1  # 5 tokens + room 4: the next four land in the same buffer
    assert ptrs[5] != ptrs[4]  # then it grows once
    # something replacing the keys from outside (batch selection) starts a new buffer from them
    grow.batch_select_indices(torch.tensor([1]))
    plain.batch_select_indices(torch.tensor([1]))
    k = torch.randn(1, 3, 1, 8)
    gk, gv = grow.update(k, k)
    pk, pv = plain.update(k, k)
    assert gk.shape == (1, 3, 12, 8) and torch.equal(gk, pk) and torch.equal(gv, pv)


def test_chunks_cover_every_row_within_the_token_budget():
    from safetune.eval.prefill import _chunks

    lengths = [50, 40, 40, 30, 10, 10, 10, 10, 2, 1]
    ranges = _chunks(lengths, 100)
    assert ranges[0][0] == 0 and ranges[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    for r0, r1 in ranges:
        assert r1 - r0 == 1 or (r1 - r0) * max(lengths[r0:r1]) <= 100
    assert _chunks([500, 3], 100) == [(0, 1), (1, 2)]  # a row longer than the budget gets a chunk of its own


@pytest.mark.parametrize("share_prefix", [True, False])
def test_prefilled_cache_equals_the_plain_batchs_at_every_real_position(tiny, share_prefix):
    import torch

    from safetune.eval.prefill import GrowingLayer, prefill_inputs

    model, tok, texts = tiny
    ids = sorted((tok(t, add_special_tokens=False)["input_ids"] for t in texts), key=len, reverse=True)
    with torch.inference_mode():
        enc = prefill_inputs(model, ids, tok.pad_token_id, "cpu", share_prefix=share_prefix, room=6, chunk_tokens=120)
        assert enc is not None
        cache = enc.get("cache", enc.get("past_key_values"))
        mask = enc["attention_mask"]
        # the same layout run as one padded batch in one forward, over every token but the last
        full = model(
            input_ids=enc["input_ids"][:, :-1],
            attention_mask=mask[:, :-1],
            position_ids=(mask[:, :-1].cumsum(-1) - 1).clamp(min=0),
            use_cache=True,
        )
    ref = full.get("cache") if "cache" in full else full.past_key_values
    real = mask[:, :-1].bool()
    for layer, ref_layer in zip(cache.layers, ref.layers):
        assert isinstance(layer, GrowingLayer)
        assert layer.keys.shape == ref_layer.keys.shape
        for b in range(len(ids)):
            torch.testing.assert_close(layer.keys[b][:, real[b]], ref_layer.keys[b][:, real[b]], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                layer.values[b][:, real[b]], ref_layer.values[b][:, real[b]], atol=1e-5, rtol=1e-4
            )
            assert not layer.keys[b][:, ~real[b]].any()  # padding is zeros, never stale numbers
    # every row's real tokens sit at the end, as in the plain left-padded batch
    assert enc["input_ids"].shape[1] == max(len(x) for x in ids)
    for b, x in enumerate(ids):
        assert enc["input_ids"][b][mask[b].bool()].tolist() == x


@pytest.mark.parametrize(
    ("share_prefix", "chunked"), [(True, True), (False, True), (True, False)], ids=["both", "chunked", "shared"]
)
def test_chunked_prefill_gives_the_plain_batchs_answers(tiny, share_prefix, chunked, monkeypatch):
    import safetune.eval.generate as gen

    model, tok, texts = tiny
    calls: list[tuple[int, int]] = []
    forward = model.forward

    def spy(*a, **k):
        calls.append(tuple(k["input_ids"].shape))
        return forward(*a, **k)

    plain = gen.generate_texts(model, tok, texts, max_new_tokens=10, batch_size=16)
    monkeypatch.setattr(gen, "CHUNK_TOKENS", 64)  # several chunks for these nine prompts
    monkeypatch.setattr(model, "forward", spy)
    fast = gen.generate_texts(
        model, tok, texts, max_new_tokens=10, batch_size=16, share_prefix=share_prefix, chunked_prefill=chunked
    )
    assert fast == plain
    prefill = [c for c in calls if c[1] > 1]
    if chunked:
        assert len(prefill) >= 3  # chunks of rows, not one padded batch
        assert all(rows == 1 or rows * width <= 64 for rows, width in prefill)  # the prefix call is one row
    else:
        assert len(prefill) == 2 if share_prefix else 1


@pytest.mark.parametrize("cast_weights", [False, True], ids=["autocast", "held-bf16"])
def test_bf16_cache_is_half_the_memory_with_the_plain_batchs_answers(tiny, cast_weights, monkeypatch):
    import torch

    import safetune.eval.generate as gen

    model, tok, texts = tiny
    made: list[object] = []
    real = gen.prefill_inputs

    def spy(*a, **k):
        enc = real(*a, **k)
        made.append(enc)
        return enc

    kw = dict(max_new_tokens=10, batch_size=16, precision="bf16", cast_weights=cast_weights)
    plain = gen.generate_texts(model, tok, texts, **kw)
    monkeypatch.setattr(gen, "CHUNK_TOKENS", 64)
    monkeypatch.setattr(gen, "prefill_inputs", spy)
    fast = gen.generate_texts(model, tok, texts, **kw, share_prefix=True, chunked_prefill=True)
    assert fast == plain
    cache = made[0].get("cache", made[0].get("past_key_values"))
    assert {layer.keys.dtype for layer in cache.layers} == {torch.bfloat16}  # 16-bit after decoding too
    # without autocast the cache keeps the keys' own dtype
    made.clear()
    gen.generate_texts(model, tok, texts, max_new_tokens=4, batch_size=16, share_prefix=True, chunked_prefill=True)
    cache = made[0].get("cache", made[0].get("past_key_values"))
    assert {layer.keys.dtype for layer in cache.layers} == {torch.float32}


def test_chunked_prefill_samples_like_the_plain_batch(tiny):
    from safetune.eval.generate import generate_texts

    model, tok, texts = tiny
    kw = dict(max_new_tokens=8, batch_size=16, do_sample=True, temperature=1.0, top_p=0.9, seed=3)
    assert generate_texts(model, tok, texts, **kw) == generate_texts(
        model, tok, texts, **kw, share_prefix=True, chunked_prefill=True
    )


def test_models_the_path_does_not_fit_get_the_plain_batch(tiny, monkeypatch):
    from safetune.eval import prefill

    model, tok, texts = tiny
    monkeypatch.setattr(
        model.config, "layer_types", ["sliding_attention"] * model.config.num_hidden_layers, raising=False
    )
    assert not prefill.supports_chunked_prefill(model)
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert prefill.prefill_inputs(model, ids, tok.pad_token_id, "cpu", share_prefix=True, room=4) is None
    monkeypatch.undo()  # this Llama cannot really run sliding layers; generation then takes the plain batch
    monkeypatch.setattr(prefill, "supports_chunked_prefill", lambda model: False)
    from safetune.eval.generate import generate_texts

    kw = dict(max_new_tokens=6, batch_size=16)
    assert generate_texts(model, tok, texts, **kw, share_prefix=True, chunked_prefill=True) == generate_texts(
        model, tok, texts, **kw
    )


@pytest.mark.slow
def test_chunked_prefill_on_the_embedded_model(embedded_model_dir, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import safetune.eval.generate as gen

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    plain = gen.generate_texts(model, tok, texts, max_new_tokens=24, batch_size=16)
    monkeypatch.setattr(gen, "CHUNK_TOKENS", 128)
    fast = gen.generate_texts(
        model, tok, texts, max_new_tokens=24, batch_size=16, share_prefix=True, chunked_prefill=True
    )
    assert fast == plain
    assert len(set(plain)) == len(plain) and all(plain)
    # the demo's settings: the 16-bit cache gives the answers of an fp32 cache (the chunks' bf16 GEMM shapes differ
    # from the plain batch's, so there the comparison is path against path, cache dtype the only change)
    from safetune.eval import prefill

    kw = dict(max_new_tokens=24, batch_size=16, precision="bf16", cast_weights=True, share_prefix=True)
    fast16 = gen.generate_texts(model, tok, texts, **kw, chunked_prefill=True)
    monkeypatch.setattr(prefill, "kv_cache_dtype", lambda device: None)
    assert fast16 == gen.generate_texts(model, tok, texts, **kw, chunked_prefill=True)
