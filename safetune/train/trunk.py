"""The reference and the policy share the frozen trunk inside each training step (``trainer.share_frozen_trunk``).

With LoRA on the top layers only (``peft.top_layers``), the bottom ``K`` decoder layers and the input embeddings
carry no adapter and no trainable weight: the policy and the adapter-disabled reference compute *the same* hidden
states there. TRL either runs a separate reference pass over the whole data before training (every layer, once per
row) or a full reference forward in every step; either way the policy then runs the same ``K`` layers again.
:class:`SharedTrunk` removes that duplicate work: inside a step the reference forward runs once through every layer
and the hidden state entering layer ``K`` is kept (:meth:`SharedTrunk.capture`); the policy forward then starts at
layer ``K`` from that hidden state (:meth:`SharedTrunk.reuse`: ``inputs_embeds`` instead of ``input_ids``, the layer
list cut to ``layers[K:]`` for that call). Per row and epoch that is ``L + (L - K)`` layer forwards instead of
``L + L`` (the separate pass) — the demo (``L = 30``, ``K = 20``) does 40 instead of 60.

Reuse is keyed by the call's own inputs: the policy call is served from the kept hidden state only when its
``input_ids``, ``position_ids`` and ``attention_mask`` equal the captured ones (packed or padded alike), else the
model runs in full. The first reuse is verified: the reference log-probs are recomputed from the kept hidden state and
must equal the full pass's (:func:`verify_reuse`); a model whose backbone cannot start from a middle layer is
reported and falls back to full forwards.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from safetune.core.compiling import find_decoder_layers

log = logging.getLogger(__name__)

_KEY_FIELDS = ("input_ids", "position_ids", "attention_mask")


def _tuner_layer_type() -> type | None:
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return None
    return BaseTunerLayer


def _decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """The backbone module holding the decoder-layer list, the attribute name and the list (None if not found)."""
    found = find_decoder_layers(model)
    if found is None or len(found[2]) < 2:
        return None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    # the backbone embeds the tokens itself: skipping it must skip exactly embeddings + bottom layers
    if embeddings is None or not any(c is embeddings for c in found[0].children()):
        return None
    return found


def frozen_depth(model: nn.Module) -> int:
    """How many bottom decoder layers (plus the embeddings) have no adapter and no trainable weight; 0 if unknown."""
    found = _decoder_layers(model)
    if found is None:
        return 0
    embeddings = model.get_input_embeddings()
    if any(p.requires_grad for p in embeddings.parameters()):
        return 0
    tuner = _tuner_layer_type()
    for i, layer in enumerate(found[2]):
        if any(p.requires_grad for p in layer.parameters()):
            return i
        if tuner is not None and any(isinstance(m, tuner) for m in layer.modules()):
            return i  # an adapter (even a frozen one) makes policy != reference here
    return 0  # nothing trains in any layer: not a LoRA-on-top-layers setup


def _key(kwargs: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(kwargs.get(name) for name in _KEY_FIELDS)


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and a.device == b.device and bool(torch.equal(a, b))


class SharedTrunk:
    """Keeps the hidden state entering layer ``depth`` from one forward and starts the next matching one there."""

    def __init__(self, model: nn.Module, depth: int):
        found = _decoder_layers(model)
        if found is None or not 0 < depth < len(found[2]):
            raise ValueError(f"no frozen trunk of depth {depth} in this model")
        self.owner, self.attr, self.layers = found
        self.depth = depth
        self.top = nn.ModuleList(list(self.layers)[depth:])
        self.enabled = True
        self.verified = False
        self.reused = 0
        self.missed = 0
        self._key: tuple[Any, ...] | None = None
        self._hidden: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Within: every backbone forward records its inputs and the hidden state entering layer ``depth``."""

        def on_backbone(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            self._key = None if args else _key(kwargs)
            self._hidden = None

        def on_layer(_module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            self._hidden = None if hidden is None else hidden.detach()

        hooks = [
            self.owner.register_forward_pre_hook(on_backbone, with_kwargs=True),
            self.layers[self.depth].register_forward_pre_hook(on_layer, with_kwargs=True),
        ]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()

    @contextlib.contextmanager
    def reuse(self) -> Iterator[None]:
        """Within: a backbone forward whose inputs equal the captured ones starts at layer ``depth``."""

        def on_backbone(module: nn.Module, args: tuple, kwargs: dict[str, Any]):
            hidden, key = self._hidden, self._key
            if not self.enabled or args or hidden is None or key is None or kwargs.get("inputs_embeds") is not None:
                self.missed += 1
                return None
            if not all(_same(a, b) for a, b in zip(key, _key(kwargs), strict=True)):
                self.missed += 1
                return None
            self.reused += 1
            kwargs = {**kwargs, "input_ids": None, "inputs_embeds": hidden}
            setattr(module, self.attr, self.top)
            return args, kwargs

        def restore(module: nn.Module, *_: Any) -> None:
            setattr(module, self.attr, self.layers)

        hooks = [
            self.owner.register_forward_pre_hook(on_backbone, with_kwargs=True),
            self.owner.register_forward_hook(restore, always_call=True),
        ]
        try:
            yield
        finally:
            for h in hooks:
                h.remove()
            setattr(self.owner, self.attr, self.layers)

    def release(self) -> None:
        """Drop the kept hidden state (end of a step)."""
        self._key, self._hidden = None, None


def verify_reuse(full: torch.Tensor, reused: torch.Tensor, low_precision: bool) -> tuple[bool, float]:
    """Whether log-probs computed from the kept hidden state equal the full forward's (summed per sequence)."""
    worst = float((full.float() - reused.float()).abs().max()) if full.numel() else 0.0
    tol = 0.5 if low_precision else 1e-3  # nats per sequence; a wrong start layer moves them by far more
    return worst <= tol, worst


def trunk_for(trainer: Any) -> SharedTrunk | None:
    """The trainer's shared trunk, or None when it does not apply (the reason is logged at debug level)."""
    args = trainer.args
    model = trainer.accelerator.unwrap_model(trainer.model)
    reasons = []
    if trainer.ref_model is not None:
        reasons.append("a separate reference model")
    if not hasattr(model, "peft_config") or "ref" in getattr(model, "peft_config", {}):
        reasons.append("no fresh LoRA adapter (the reference is not the adapter-disabled base)")
    if args.gradient_checkpointing:
        reasons.append("gradient checkpointing")
    if getattr(trainer, "aux_loss_enabled", False):
        reasons.append("router aux loss")
    if reasons:
        log.debug("share_frozen_trunk does not apply: %s", ", ".join(reasons))
        return None
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    depth = frozen_depth(base)
    if depth < 1:
        log.debug("share_frozen_trunk does not apply: adapters start at the first layer")
        return None
    return SharedTrunk(base, depth)


def in_step_is_cheaper(num_layers: int, depth: int, epochs: float, stored_fraction: float) -> bool:
    """Layer forwards per row: the separate pass ``(1 - stored) L + E L`` vs in-step ``E (L + L - K)``."""
    separate = (1.0 - stored_fraction) * num_layers + epochs * num_layers
    in_step = epochs * (2 * num_layers - depth)
    return in_step < separate
