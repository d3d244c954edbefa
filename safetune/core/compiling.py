"""``torch.compile`` of a model's forward, with a fallback to eager when compiling is unavailable or fails.

Two scopes (``trainer.compile`` / ``generation.compile``):

- ``regions``: each repeated decoder layer's ``forward`` is compiled (PyTorch's *regional compilation*: the layers
  share one code object, so one compiled graph serves every layer with the same structure; compile time is
  seconds, not minutes). Embeddings, masks, the LM head and safetune's own wrappers (packing, the shared frozen
  trunk's hooks) stay eager, so varying batch layouts never force a recompile of the whole model.
- ``model``: the whole decoder stack's ``forward`` (embeddings, masks, every layer, the final norm; the LM head stays
  eager because TRL's fused log-prob head calls the stack directly). Minutes to compile on a small CPU; batch layouts
  the dynamic-shape graph does not cover (packed rows, shared-prompt masks) recompile.

The compiled forwards replace the bound ``forward`` of the modules in place, so parameter names, state dicts,
PEFT adapters and hooks are unchanged. Fallback: if ``torch.compile`` is unsupported or raises when wrapping, or a
compiled forward raises where the eager forward does not (a backend or compiler failure), every compiled forward of
that model goes back to eager for good, with one warning naming the error and the setting that turns compile off.
An error the eager forward raises too is the model's own and is raised as it is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from safetune.core.config import ConfigError

log = logging.getLogger(__name__)

COMPILE_SCOPES = ("regions", "model")
# torch.compile keyword arguments users may set through the ``*compile_options`` config keys
COMPILE_KWARGS = ("backend", "mode", "dynamic", "fullgraph", "options")


def check_compile_setting(scope: Any, options: Any, key: str) -> tuple[str | None, dict[str, Any]]:
    """Validate ``<key>`` (null/false, ``regions`` or ``model``) and ``<key>_options`` (torch.compile kwargs)."""
    if scope is False or scope is None or scope == "none":
        scope = None
    elif scope is True:
        scope = "regions"
    elif scope not in COMPILE_SCOPES:
        raise ConfigError(
            f"{key} must be null (eager), 'regions' (each decoder layer compiled) or 'model' (the whole forward); "
            f"got {scope!r}.",
            hint=f"{key}=regions",
        )
    options = dict(options or {})
    unknown = sorted(set(options) - set(COMPILE_KWARGS))
    if unknown:
        raise ConfigError(
            f"{key}_options has key(s) {unknown} that torch.compile does not take; expected some of {list(COMPILE_KWARGS)}.",
            hint=f"e.g. {key}_options={{mode: max-autotune-no-cudagraphs, dynamic: true}}",
        )
    return scope, options


@dataclass
class CompileState:
    """What :func:`compile_model` did: the scope that is in effect and why compile was dropped, if it was."""

    requested: str | None
    scope: str | None = None  # None: eager
    regions: int = 0
    fallback_reason: str | None = None
    modules: list[nn.Module] = field(default_factory=list, repr=False)

    def fall_back(self, reason: str, setting: str) -> None:
        """Every compiled forward back to eager (once), with one warning."""
        if self.scope is None and self.fallback_reason is not None:
            return
        for module in self.modules:
            module.__dict__.pop("forward", None)  # the class's forward again
        self.modules.clear()
        self.scope, self.fallback_reason = None, reason
        log.warning(
            "torch.compile is not used: %s. Running eager (same results, no compile speed-up); set %s=null to "
            "skip the attempt.",
            reason,
            setting,
        )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _guarded(compiled: Any, eager: Any, state: CompileState, setting: str) -> Any:
    def forward(*args: Any, **kwargs: Any) -> Any:
        if state.scope is None:
            return eager(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - a compile failure is told apart below by running eager
            out = eager(*args, **kwargs)  # raises the model's own error, if it is one
            state.fall_back(f"the compiled forward failed ({_first_line(err)})", setting)
            return out

    return forward


def find_decoder_layers(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """The module holding a causal LM's repeated decoder blocks (the ``config.num_hidden_layers``-long ModuleList),
    the attribute name and the list; None if not found (also used by ``safetune.train.trunk``)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    if not isinstance(n, int) or n < 1:
        return None
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, nn.ModuleList) and len(child) == n:
                return module, name, child
    return None


def backbone(model: nn.Module) -> nn.Module:
    """The decoder stack under the LM head: TRL's fused LM head (training) calls it directly, generation through the
    causal LM's forward, so compiling it covers both (the LM head and TRL's chunked log-prob kernel stay eager)."""
    get = getattr(model, "get_decoder", None)
    try:
        found = get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        found = None
    return found if isinstance(found, nn.Module) else model


def compile_model(model: nn.Module, scope: str | None, options: dict[str, Any], setting: str) -> CompileState:
    """Compile ``model``'s forward in place (``scope``: regions or model; None: nothing), falling back to eager."""
    state = CompileState(requested=scope)
    if scope is None:
        return state
    if not isinstance(model, nn.Module):
        state.fall_back(f"the model is given as {type(model).__name__}, not a loaded module", setting)
        return state
    kwargs = {"dynamic": True, **options}
    if scope == "regions":
        found = find_decoder_layers(model)
        targets = list(found[2]) if found else []
        if not targets:
            state.fall_back(f"no repeated decoder layers found in {type(model).__name__}", setting)
            return state
    else:
        targets = [backbone(model)]
    try:
        if not torch._dynamo.is_dynamo_supported():
            raise RuntimeError("torch._dynamo does not support this Python/platform")
        wrapped = []
        for module in targets:
            eager = module.forward
            wrapped.append((module, eager, torch.compile(eager, **kwargs)))
    except Exception as err:  # noqa: BLE001 - any wrap-time failure means: no compile here
        state.fall_back(f"torch.compile raised ({_first_line(err)})", setting)
        return state
    state.scope, state.regions = scope, len(targets)
    for module, eager, compiled in wrapped:
        module.forward = _guarded(compiled, eager, state, setting)
        state.modules.append(module)
    log.info(
        "%s=%s: %d %s compiled (%s)",
        setting,
        scope,
        len(targets),
        "decoder layers" if scope == "regions" else f"{type(targets[0]).__name__} forward",
        ", ".join(f"{k}={v}" for k, v in kwargs.items()),
    )
    return state
