"""One place decides the numeric precision of training and generation, on CPU and GPU.

Rule (``auto``): compute in bfloat16 wherever the device computes it natively — GPUs with bf16 support and CPUs
with AVX512-BF16 or AMX — and in the weights' own dtype elsewhere. Weights that are already 16-bit are used as
they are. Training hands the decision to ``trl.DPOConfig(bf16=...)`` (autocast); generation autocasts around
``generate``; the reference-log-prob cache and the generation cache key on the decided value, so numbers computed
at different precisions never mix.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from safetune.core.errors import InputError

REQUESTS = ("auto", "model", "bf16", "fp16", "fp32")
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


class PrecisionError(InputError):
    """A precision setting is invalid or unsupported by this hardware; the message names the key and the fix."""


def cpu_bf16_supported() -> bool:
    """True when the CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX), i.e. bf16 autocast is faster."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(c()) for c in checks if c is not None)
    except Exception:  # noqa: BLE001 - private torch API; fall back to fp32 when it changes
        return False


def native_bf16(device_type: str | None = None) -> bool:
    """Does ``device_type`` ('cuda', 'cpu'; None = the device training would use) compute bf16 natively?"""
    device_type = device_type or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return cpu_bf16_supported()
    return False


def bf16_supported() -> bool:
    """The ``trainer.bf16: null`` default: bf16 on GPUs that support it, and on CPUs with native bf16."""
    return native_bf16(None)


def weights_dtype(name: str) -> torch.dtype:
    """``model.dtype`` -> torch dtype; ``auto`` is bf16 on GPUs with native bf16 (weights stored in half the
    memory), float32 elsewhere (CPU weights stay fp32 and compute in bf16 through autocast)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and native_bf16("cuda") else torch.float32
    try:
        return _DTYPES[name]
    except KeyError as e:
        raise PrecisionError(f"model.dtype={name!r} is not valid; expected auto, float32, bfloat16 or float16.") from e


@dataclass(frozen=True)
class Precision:
    """What runs: ``autocast`` (None = the weights' own dtype) and the label caches key on."""

    autocast: torch.dtype | None = field(default=None, metadata={"help": "Autocast dtype, None for none."})
    label: str = field(default="model", metadata={"help": "'bf16', 'fp16' or 'model' (no autocast)."})

    def context(self, device_type: str) -> Any:
        """An autocast context for ``device_type`` (a no-op when no autocast is decided)."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast)


def decide(requested: str, *, device_type: str, weight_dtype: torch.dtype) -> Precision:
    """The precision that runs for ``requested`` (``auto``/``model``/``bf16``/``fp16``/``fp32``).

    ``auto``: bf16 autocast when the weights are fp32 and ``device_type`` computes bf16 natively, else the weights'
    dtype. ``model``/``fp32``: the weights' dtype. ``bf16``/``fp16``: that autocast, always.
    """
    if requested not in REQUESTS:
        raise PrecisionError(f"precision {requested!r} is not valid; expected one of {', '.join(REQUESTS)}.")
    if requested == "auto":
        if weight_dtype == torch.float32 and native_bf16(device_type):
            return Precision(torch.bfloat16, "bf16")
        return Precision()
    if requested == "bf16":
        return Precision(torch.bfloat16, "bf16")
    if requested == "fp16":
        return Precision(torch.float16, "fp16")
    return Precision()


def decide_for_model(requested: str, model: Any) -> Precision:
    """:func:`decide` for a loaded model (its first parameter's device and dtype)."""
    param = next(model.parameters())
    return decide(requested, device_type=param.device.type, weight_dtype=param.dtype)


def training_flags(bf16: bool | None, fp16: bool | None) -> dict[str, bool]:
    """``trainer.bf16``/``trainer.fp16`` (None = auto) -> the DPOConfig flags, checked against the hardware.

    ``auto`` follows :func:`decide`: bf16 where the device computes it natively. On CPU, fp16 is never used (slow and
    lossy there) and an explicit ``bf16=true`` without native support is an error (it would be emulated, slower
    than fp32).
    """
    cuda = torch.cuda.is_available()
    flags = {"bf16": bf16_supported() if bf16 is None else bool(bf16), "fp16": bool(fp16)}
    if not cuda:
        flags["fp16"] = False
        if flags["bf16"] and not cpu_bf16_supported():
            raise PrecisionError(
                "trainer.bf16=true but this CPU has no native bfloat16 (AVX512-BF16 or AMX); bf16 would be "
                "emulated and slower than fp32. Set trainer.bf16=null (auto) or false."
            )
    return flags


def training_label(bf16: bool, fp16: bool) -> str:
    """The label the reference cache keys on: 'bf16', 'fp16' or 'fp32'."""
    return "bf16" if bf16 else "fp16" if fp16 else "fp32"


def _castable(module: Any, dtype: torch.dtype, frozen_only: bool) -> bool:
    w = getattr(module, "weight", None)
    if not isinstance(module, torch.nn.Linear) or not isinstance(w, torch.Tensor):
        return False
    if not w.dtype.is_floating_point or w.dtype.itemsize <= dtype.itemsize:
        return False  # quantised, already 16-bit or narrower
    return not (frozen_only and w.requires_grad)


@contextlib.contextmanager
def weights_in(model: Any, precision: Precision, *, frozen_only: bool = True) -> Iterator[int]:
    """Hold ``model``'s ``nn.Linear`` weights (and biases) in the autocast dtype while the block runs.

    Autocast casts an fp32 weight to bf16 on every ``linear`` call and caches the cast only for weights that need
    a gradient, so frozen weights — a LoRA run's whole base model, every weight during generation — are re-cast
    at each op (on CPU, at batch 1-128 a decoding step spends as long casting as multiplying). Autocast rounds
    the weight to the same bf16 values it would have cast, so the results are those of plain autocast, bit for bit;
    norms, embeddings and the residual stream keep their dtype (only ``nn.Linear`` is touched). A tied LM head
    gets its own 16-bit copy and the embedding keeps its fp32 weight; on exit the original parameters are put
    back (ties restored), so optimizers, saving and merging see the fp32 weights. ``frozen_only``: leave weights
    that need a gradient (trainable adapters) alone. No-op without an autocast dtype. Yields the number of
    weights held in 16 bits.
    """
    dtype = precision.autocast
    saved: list[tuple[Any, str, Any]] = []
    if dtype is not None:
        with torch.no_grad():
            for module in model.modules():
                if not _castable(module, dtype, frozen_only):
                    continue
                for name in ("weight", "bias"):
                    p = getattr(module, name, None)
                    if isinstance(p, torch.Tensor) and p.dtype.is_floating_point:
                        saved.append((module, name, p))
                        setattr(module, name, torch.nn.Parameter(p.detach().to(dtype), requires_grad=False))
    try:
        yield sum(1 for _, name, _ in saved if name == "weight")
    finally:
        for module, name, p in reversed(saved):
            setattr(module, name, p)


def _sdpa_in_fp32(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """transformers' SDPA attention, run in fp32 (autocast off) when called under CPU autocast."""
    inner = _ATTENTION_SAVED["sdpa"]
    if query.device.type != "cpu" or not torch.is_autocast_enabled("cpu"):
        return inner(module, query, key, value, attention_mask, **kwargs)
    if attention_mask is not None and attention_mask.dtype.is_floating_point:
        attention_mask = attention_mask.float()
    with torch.autocast("cpu", enabled=False):
        return inner(module, query.float(), key.float(), value.float(), attention_mask, **kwargs)


_ATTENTION_SAVED: dict[str, Any] = {}


@contextlib.contextmanager
def cpu_attention_in_fp32(enabled: bool = True) -> Iterator[bool]:
    """Run transformers' ``sdpa`` attention in fp32 under CPU autocast while the block runs (yields whether it applied).

    Under CPU bf16 autocast the rotary embedding leaves queries and keys in fp32 and SDPA casts them to bf16 itself;
    its bf16 kernels are the slow ones on CPU (fused backward ~2.4x fp32's at the demo's shapes; attention is a small
    share of the FLOPs), so the attention runs faster in fp32 — and rounds less. Other devices, and calls outside
    autocast, take the plain path. ``trainer.cpu_attention_fp32`` (benchmarks/README.md)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS as table

    if not enabled or "sdpa" in _ATTENTION_SAVED:  # off, or already held by an outer block
        yield bool(enabled)
        return
    local = "sdpa" in table._local_mapping
    _ATTENTION_SAVED["sdpa"] = table["sdpa"]
    table["sdpa"] = _sdpa_in_fp32
    try:
        yield True
    finally:
        if local:
            table["sdpa"] = _ATTENTION_SAVED["sdpa"]
        else:
            del table["sdpa"]
        del _ATTENTION_SAVED["sdpa"]
