"""The DPO recipe: ``trl.DPOConfig`` is built here, and only here, from the resolved ``trainer`` config."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import torch

log = logging.getLogger(__name__)

# safetune's defaults that differ from TRL's (see conf/trainer/default.yaml for the tuned values).
SAFETUNE_DEFAULTS: dict[str, Any] = {
    "gradient_checkpointing": False,  # TRL defaults to True; 1.2x slower for small models on CPU
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": ["tensorboard"],
    "remove_unused_columns": True,
}


class ConfigError(ValueError):
    """A trainer option is unknown or invalid for the installed TRL."""


def build_dpo_config(trainer_cfg: dict[str, Any], output_dir: str):
    """Map the ``trainer`` config group onto ``trl.DPOConfig``, failing clearly on unknown fields."""
    from trl import DPOConfig

    opts = {**SAFETUNE_DEFAULTS, **{k: v for k, v in dict(trainer_cfg).items() if v is not None}}
    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    unknown = sorted(set(opts) - valid)
    if unknown:
        import difflib

        hints = {k: difflib.get_close_matches(k, valid, n=1) for k in unknown}
        msg = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for k, h in hints.items())
        raise ConfigError(
            f"trainer option(s) {msg} are not fields of trl.DPOConfig in the installed TRL. "
            "Remove them or rename them; note trl>=1.0 dropped max_prompt_length and transformers 5 dropped warmup_ratio "
            "(use warmup_steps)."
        )
    if isinstance(opts.get("loss_type"), str):
        opts["loss_type"] = [opts["loss_type"]]
    if isinstance(opts.get("report_to"), str):
        opts["report_to"] = [opts["report_to"]]
    if "bf16" not in opts:
        opts["bf16"] = bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if not torch.cuda.is_available():
        opts.setdefault("use_cpu", True)
        opts["bf16"] = False
        opts["fp16"] = False
    return DPOConfig(output_dir=output_dir, **opts)


def expected_initial_loss(loss_type: list[str]) -> float | None:
    """The DPO sigmoid loss at step 0 is ln 2 because the policy equals the reference."""
    return math.log(2) if list(loss_type) == ["sigmoid"] else None
