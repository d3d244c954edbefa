"""Prefill for batched generation: length-bucketed chunks, a shared prefix run once, a KV cache with room to grow.

A left-padded batch pays for its padding: in one batch of 128 prompts of the bundled suites the longest rendered
prompt has 133 tokens and the mean 77, so 42% of the prefill work is spent on pad tokens, and prefill is most of
the time of 40-token answers on a CPU. :func:`prefill_inputs` instead

- runs the token prefix every prompt shares (the chat template's system turn) once, when ``share_prefix``;
- runs the prompts' remainders in chunks of rows of similar length (the caller sorts by length), each chunk padded
  only to its own longest row, with the positions each token has in the plain left-padded batch;
- writes every chunk's keys and values into one cache laid out exactly as the plain batch's (prefix, then zeros
  where the batch has padding, then the row's tokens), leaving out each row's last token, which ``generate`` runs;
- gives that cache room for the answer's tokens (:class:`GrowingLayer`), so each decoding step writes its key and
  value in place instead of concatenating a copy of the whole cache (``DynamicLayer``'s ``torch.cat``: ~40% of a
  decoding step at batch 128 on SmolLM2), held in autocast's 16-bit dtype when autocast is on
  (:func:`kv_cache_dtype`: attention casts the keys to it anyway, so the answers stay the same at half the memory).

Padded positions are masked in the plain batch too, so every real token attends to exactly the tokens it attends
to there, at the same positions: the same answers (tested against the plain batch on the tiny and the embedded
model), less work.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

MIN_SHARED_PREFIX = 8  # tokens; below this the extra forward call costs more than it saves
# padded tokens per prefill forward: the activations stay in the CPU caches (fastest of 256..8192 on 2 cores)
CHUNK_TOKENS = 1024


class GrowingLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values are views of a buffer with spare room along the sequence.

    Appending writes in place while the room lasts (then the buffer grows by ``room`` more). Anything that replaces
    ``keys`` from outside (batch selection, beam reordering, cropping) is detected, and the next update starts a
    new buffer from it.
    """

    def __init__(self, room: int = 64) -> None:
        super().__init__()
        self.room = room
        self._kbuf: torch.Tensor | None = None
        self._vbuf: torch.Tensor | None = None

    def adopt(self, kbuf: torch.Tensor, vbuf: torch.Tensor, length: int) -> None:
        """Start from buffers whose first ``length`` positions hold the cache."""
        self.device, self.dtype = kbuf.device, kbuf.dtype
        self._kbuf, self._vbuf = kbuf, vbuf
        self.keys, self.values = kbuf[:, :, :length], vbuf[:, :, :length]
        self.is_initialized = True

    def _is_own_view(self) -> bool:
        k = self.keys
        return (
            self._kbuf is not None
            and k is not None
            and k.numel() > 0
            and k.data_ptr() == self._kbuf.data_ptr()
            and k.shape[0] == self._kbuf.shape[0]
            and k.stride() == self._kbuf.stride()
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = self.get_seq_length()
        need = n + key_states.shape[-2]
        if not self._is_own_view() or need > self._kbuf.shape[-2]:  # type: ignore[union-attr]
            kshape = (*key_states.shape[:2], need + self.room, key_states.shape[-1])
            vshape = (*value_states.shape[:2], need + self.room, value_states.shape[-1])
            dtype = self._kbuf.dtype if self._kbuf is not None else key_states.dtype  # a 16-bit cache stays 16-bit
            kbuf, vbuf = key_states.new_zeros(kshape, dtype=dtype), value_states.new_zeros(vshape, dtype=dtype)
            if n:
                kbuf[:, :, :n] = self.keys
                vbuf[:, :, :n] = self.values
            self._kbuf, self._vbuf = kbuf, vbuf
        self._kbuf[:, :, n:need] = key_states  # type: ignore[index]
        self._vbuf[:, :, n:need] = value_states  # type: ignore[index]
        self.keys, self.values = self._kbuf[:, :, :need], self._vbuf[:, :, :need]  # type: ignore[index]
        return self.keys, self.values


def kv_cache_dtype(device: Any) -> torch.dtype | None:
    """The dtype the KV cache is held in: autocast's when autocast is on for ``device``, else None (the keys' own).

    Under autocast the rotary embedding leaves keys in the residual stream's fp32, but attention (``sdpa`` and
    ``matmul`` are both on autocast's 16-bit list) casts them to 16 bits before using them, so a 16-bit cache gives
    the same answers, bit for bit, at half the memory (a batch of 128 bundled prompts: ~1 GB of fp32 keys and values
    on SmolLM2-135M) and half the bytes each decoding step reads."""
    kind = getattr(device, "type", str(device))
    if not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def cache_kwarg() -> str:
    """transformers >= 5.2x names the KV cache ``cache`` (``past_key_values`` is deprecated); older ones the latter."""
    from transformers.generation import utils as generation_utils

    return "cache" if "cache" in getattr(generation_utils, "ALL_CACHE_NAMES", ()) else "past_key_values"


def common_prefix_length(ids: list[list[int]]) -> int:
    """Tokens every sequence starts with, leaving at least one token of each to feed ``generate``."""
    n = min(len(x) for x in ids) - 1
    first = ids[0]
    for k in range(max(n, 0)):
        if any(x[k] != first[k] for x in ids):
            return k
    return max(n, 0)


def supports_chunked_prefill(model: Any) -> bool:
    """Full-attention decoders with a dynamic cache only (no sliding windows, recurrent state or encoder)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "is_encoder_decoder", False):
        return False
    text = cfg.get_text_config(decoder=True) if hasattr(cfg, "get_text_config") else cfg
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    types = getattr(text, "layer_types", None)
    return not types or all(t == "full_attention" for t in types)


def _forward_kwargs(model: Any) -> set[str]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return set(inspect.signature(type(base).forward).parameters)  # the class's: wrappers of forward hide them


def prefill_inputs(
    model: Any,
    ids: list[list[int]],
    pad_token_id: int,
    device: Any,
    *,
    share_prefix: bool,
    room: int,
    chunk_tokens: int = CHUNK_TOKENS,
) -> dict[str, Any] | None:
    """``generate`` inputs (ids, mask and a filled KV cache) for token rows ``ids``, sorted longest first.

    None when this model or batch cannot take the path (the caller then runs a plain left-padded batch).
    ``room``: spare cache positions for the answer (``max_new_tokens``).
    """
    if not ids or not supports_chunked_prefill(model):
        return None
    accepts = _forward_kwargs(model)
    if "position_ids" not in accepts:
        return None
    p = common_prefix_length(ids) if share_prefix and len(ids) > 1 else 0
    if p < MIN_SHARED_PREFIX:
        p = 0
    rests = [x[p:] for x in ids]
    width = max(len(r) for r in rests)
    total = p + width
    if total < 2:
        return None
    name = cache_kwarg()
    extra = {"logits_to_keep": 1} if "logits_to_keep" in accepts else {}
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] = []
    if p:
        out = model(input_ids=torch.tensor([ids[0][:p]], device=device), use_cache=True, **extra)
        prefix_kv = [(layer.keys, layer.values) for layer in _layers(out)]
    bufs: list[tuple[torch.Tensor, torch.Tensor]] = []
    kv_dtype = kv_cache_dtype(device)

    def buffers(like: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if not bufs:
            for k, v in like:
                kb = k.new_zeros((len(ids), k.shape[1], total + room, k.shape[-1]), dtype=kv_dtype or k.dtype)
                vb = v.new_zeros((len(ids), v.shape[1], total + room, v.shape[-1]), dtype=kv_dtype or v.dtype)
                bufs.append((kb, vb))
        return bufs

    if prefix_kv:
        for (kb, vb), (k, v) in zip(buffers(prefix_kv), prefix_kv):
            kb[:, :, :p] = k
            vb[:, :, :p] = v
    for r0, r1 in _chunks([len(r) for r in rests], chunk_tokens):
        w = max(len(r) for r in rests[r0:r1])  # the chunk pads to its own longest row only
        if w < 2:
            continue  # only the last token, which generate runs
        rows, masks = [], []
        for r in rests[r0:r1]:
            rows.append([pad_token_id] * (w - len(r)) + r[:-1])
            masks.append([1] * p + [0] * (w - len(r)) + [1] * (len(r) - 1))
        mask = torch.tensor(masks, device=device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, p:]
        kwargs: dict[str, Any] = {}
        if prefix_kv:
            n = r1 - r0
            kwargs[name] = DynamicCache(
                ddp_cache_data=[(k.expand(n, -1, -1, -1), v.expand(n, -1, -1, -1)) for k, v in prefix_kv]
            )
        out = model(
            input_ids=torch.tensor(rows, device=device),
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            **kwargs,
            **extra,
        )
        start = p + width - w  # where this chunk's padded remainder begins in the batch layout
        real = mask[:, p:, None].bool().unsqueeze(1)  # pad positions are written as zeros (never NaN: masked)
        for (kb, vb), layer in zip(buffers([(x.keys, x.values) for x in _layers(out)]), _layers(out)):
            kb[r0:r1, :, start : total - 1] = torch.where(real, layer.keys[:, :, p:], 0.0)
            vb[r0:r1, :, start : total - 1] = torch.where(real, layer.values[:, :, p:], 0.0)
    if not bufs:
        return None
    cache = DynamicCache()
    cache.layer_class_to_replicate = None
    cache.layers = []
    for kb, vb in bufs:
        layer = GrowingLayer(room)
        layer.adopt(kb, vb, total - 1)
        cache.layers.append(layer)
    full_rows, full_masks = [], []
    for x, r in zip(ids, rests):
        pad = width - len(r)
        full_rows.append(x[:p] + [pad_token_id] * pad + r)
        full_masks.append([1] * p + [0] * pad + [1] * len(r))
    return {
        "input_ids": torch.tensor(full_rows, device=device),
        "attention_mask": torch.tensor(full_masks, device=device),
        name: cache,
    }


def _layers(out: Any) -> list[Any]:
    cache = out.get("cache") if "cache" in out else out.get("past_key_values")
    return list(cache.layers)


def _chunks(lengths: list[int], chunk_tokens: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose padded size (rows x the range's longest row) stays within ``chunk_tokens``."""
    out, start = [], 0
    while start < len(lengths):
        end = start + 1
        longest = lengths[start]
        while end < len(lengths) and (end + 1 - start) * max(longest, lengths[end]) <= chunk_tokens:
            longest = max(longest, lengths[end])
            end += 1
        out.append((start, end))
        start = end
    return out
