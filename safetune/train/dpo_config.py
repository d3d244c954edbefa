"""``trl.DPOConfig`` is built here, and only here, from the resolved ``trainer`` config; plus the step-0 sanity check.

The precision (``trainer.bf16: null`` = auto) is decided by :mod:`safetune.core.precision`, the same rule generation
uses. Options TRL does not have (``max_completion_length``) are safetune's own and implemented in
:mod:`safetune.train.trl_ext`.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
from typing import Any

import torch

from safetune.core.checks import check_fields
from safetune.core.compiling import check_compile_setting
from safetune.core.config import ConfigError
from safetune.core.errors import SafetuneError
from safetune.core.precision import PrecisionError, training_flags
from safetune.core.ranges import TRAINER_RANGES, check_checkpointing_kwargs

log = logging.getLogger(__name__)

# safetune's defaults that differ from TRL's (see conf/trainer/default.yaml for the tuned values).
SAFETUNE_DEFAULTS: dict[str, Any] = {
    "gradient_checkpointing": False,  # TRL defaults to True; 1.2x slower for small models on CPU
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": ["tensorboard"],
    "remove_unused_columns": True,
}


# trainer options safetune implements itself because the installed TRL has no such DPOConfig field.
SAFETUNE_TRAINER_OPTIONS: dict[str, str] = {
    "max_completion_length": "Keep at most this many tokens of each chosen/rejected response (TRL 1.x dropped the "
    "field). Cuts training and reference-pass compute when only the opening of a response matters; null keeps all.",
    "pack_sequences": "Pack the chosen and rejected sequences of each batch end to end (when a cost model says it is "
    "cheaper than padding), with "
    "block-diagonal attention and per-sequence positions, so no forward pass pays for padding (TRL 1.16 disables its "
    "own padding_free for DPO). Same log-probs as the padded pass within float tolerance.",
    "share_prompt": "With pack_sequences: lay each preference pair out as its prompt once followed by the chosen and "
    "the rejected answer, each attending to the prompt and itself only (a 4-D attention mask), so the prompt is "
    "computed once instead of twice; used when cheaper than flat packing. Same log-probs as the padded pass.",
    "share_frozen_trunk": "With LoRA on the top layers only (peft.top_layers), compute the reference log-probs inside "
    "each step and start the policy forward from the reference's hidden state at the first adapted layer, instead of a "
    "separate reference pass plus a full policy forward (train/trunk.py). Chosen per run when it needs fewer layer "
    "forwards than the separate pass (few epochs, reference cache cold); same log-probs (verified on the first step).",
    "cast_frozen_weights": "Under bf16/fp16 autocast, hold the frozen linear weights (a LoRA run's whole base model) in "
    "that dtype for the reference pass and training, instead of autocast re-casting them at every op; adapters and "
    "optimizer state stay fp32. Same log-probs and losses as plain autocast (core/precision.py: weights_in).",
    "cpu_attention_fp32": "Under bf16/fp16 autocast on CPU, run the attention (transformers' sdpa) in fp32: its bf16 "
    "CPU kernels are slower than fp32's at these shapes (backward ~2.4x), and it rounds less (1.11x the eager bf16 "
    "run in bench_train). Eager runs only: with trainer.compile the compiled steps were no faster and compiling took "
    "longer, so it is left off there. No effect on other devices or without autocast; the reference cache keys on "
    "it (core/precision.py: cpu_attention_in_fp32).",
    "compile": "torch.compile the model before training: null (eager), 'regions' (each decoder layer; seconds to "
    "compile, one graph shared by the layers) or 'model' (the whole forward; more fusion, minutes to compile, "
    "recompiles on new shapes). Falls back to eager with a warning when compile is unavailable or fails "
    "(core/compiling.py). transformers' own torch_compile field compiles the whole model without the fallback.",
    "compile_options": "Keyword arguments for torch.compile with trainer.compile (backend, mode, dynamic, fullgraph, "
    "options); dynamic defaults to true so new batch shapes do not recompile.",
    "release_memory_every": "Every N optimizer steps collect garbage and hand the heap's free pages back to the OS "
    "(gc.collect + glibc malloc_trim; core/memory.py): tensors caught in reference cycles wait for Python's rare "
    "full collection, and a long CPU run's memory creeps up without it. 0 or null: never.",
    "keep_freed_pages": "Keep freed large blocks in the process's heap (glibc mallopt; core/memory.py) instead of "
    "unmapping them, so each step's big temporaries are not page-faulted in again: 1.2-1.6x faster runs with LoRA "
    "on every layer (fp32 and bf16) for 0.1-0.3 GB more peak memory in bench_train; no gain on the demo's "
    "top-layer setting, where it cost 0.4 GB of peak memory. Process-wide, from the trainer's start to the end of "
    "the process.",
}


def safetune_trainer_options(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer`` options handled by safetune rather than ``trl.DPOConfig`` (see SAFETUNE_TRAINER_OPTIONS)."""
    from trl import DPOConfig

    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    out = {k: trainer_cfg.get(k) for k in SAFETUNE_TRAINER_OPTIONS if k not in valid}
    n = out.get("max_completion_length")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"trainer.max_completion_length must be a positive integer or null; got {n!r}.")
    flags = ("pack_sequences", "share_prompt", "share_frozen_trunk", "cast_frozen_weights", "cpu_attention_fp32")
    for name in (*flags, "keep_freed_pages"):
        flag = out.get(name)
        if flag is not None and not isinstance(flag, bool):
            raise ConfigError(f"trainer.{name} must be true or false; got {flag!r}.")
    every = out.get("release_memory_every")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 0):
        raise ConfigError(
            f"trainer.release_memory_every must be a whole number >= 0 or null; got {every!r}.",
            hint="e.g. trainer.release_memory_every=10 (0 or null turns it off)",
        )
    options = out.get("compile_options")
    if options is not None and not isinstance(options, dict):
        raise ConfigError(f"trainer.compile_options must be a mapping of torch.compile arguments; got {options!r}.")
    out["compile"], out["compile_options"] = check_compile_setting(out.get("compile"), options, "trainer.compile")
    return out


def validate_trainer(trainer_cfg: dict[str, Any]) -> None:
    """Check the ``trainer`` group before any data or model loads: unknown keys, value types against
    ``trl.DPOConfig``'s annotations, and ranges (beta, learning rate, batch sizes, ...)."""
    from trl import DPOConfig

    cfg = dict(trainer_cfg)
    for key in ("loss_type", "report_to"):  # a single name is accepted for these lists
        if isinstance(cfg.get(key), str):
            cfg[key] = [cfg[key]]
    check_fields(cfg, DPOConfig, prefix="trainer", ranges=TRAINER_RANGES)
    check_checkpointing_kwargs(cfg)
    if cfg.get("max_steps") is not None and (cfg["max_steps"] == 0 or cfg["max_steps"] < -1):
        raise ConfigError(
            f"trainer.max_steps={cfg['max_steps']!r}: expected -1 (use num_train_epochs) or a positive step count."
        )
    losses = cfg.get("loss_type")
    losses = [losses] if isinstance(losses, str) else list(losses or [])
    valid = dpo_loss_types()
    bad = [x for x in losses if valid and x not in valid]
    if bad:
        raise ConfigError(
            f"trainer.loss_type={losses}: {bad} not among the installed TRL's DPO losses {sorted(valid)}.",
            hint="e.g. trainer.loss_type=[sigmoid,sft]",
        )
    weights = cfg.get("loss_weights")
    if weights is not None and len(weights) != len(losses):
        raise ConfigError(
            f"trainer.loss_weights={list(weights)} has {len(weights)} weight(s) for {len(losses)} loss(es) {losses}.",
            hint="give one weight per trainer.loss_type entry, or loss_weights=null",
        )
    safetune_trainer_options(cfg)
    build_dpo_config(cfg, "/tmp/safetune-config-check")  # unknown fields and TRL's own checks, now


def dpo_loss_types() -> set[str]:
    """The DPO loss names the installed TRL documents for ``loss_type`` (empty when its help text moved)."""
    from trl import DPOConfig

    helptext = next(f.metadata.get("help", "") for f in dataclasses.fields(DPOConfig) if f.name == "loss_type")
    return set(re.findall(r"`'([a-z_]+)'`", helptext))


def build_dpo_config(trainer_cfg: dict[str, Any], output_dir: str):
    """Map the ``trainer`` config group onto ``trl.DPOConfig``, failing clearly on unknown fields."""
    from trl import DPOConfig

    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    own = set(SAFETUNE_TRAINER_OPTIONS) - valid
    opts = {**SAFETUNE_DEFAULTS, **{k: v for k, v in dict(trainer_cfg).items() if v is not None and k not in own}}
    unknown = sorted(set(opts) - valid)
    if unknown:
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
    try:
        flags = training_flags(opts.get("bf16"), opts.get("fp16"))
    except PrecisionError as e:
        raise ConfigError(str(e)) from e
    opts.update(flags)
    if not torch.cuda.is_available():
        opts.setdefault("use_cpu", True)
    try:
        return DPOConfig(output_dir=output_dir, **opts)
    except (ValueError, TypeError) as e:  # TRL's / transformers' own validation of field values
        raise ConfigError(f"trainer: {e}", hint="check the trainer.* values named above") from e


def expected_initial_loss(loss_type: list[str]) -> float | None:
    """The DPO sigmoid loss at step 0 is ln 2 because the policy equals the reference."""
    return math.log(2) if list(loss_type) == ["sigmoid"] else None


class SanityCheckError(SafetuneError, RuntimeError):
    """The first training batch shows the policy is not the reference (the DPO recipe is miswired)."""


@dataclasses.dataclass
class SanityCheck:
    """Step-0 check: the policy starts as the reference, so log-ratios are ~0, margins ~0 and the sigmoid loss ~ln 2."""

    enabled: bool = dataclasses.field(default=True, metadata={"help": "Run the check on the first training batch."})
    max_abs_logratio: float | None = dataclasses.field(
        default=0.05,
        metadata={
            "help": "Largest allowed |policy - reference| summed log-prob (nats) per sequence at step 0. "
            "bf16/fp16 training needs more (about 0.5)."
        },
    )

    @classmethod
    def from_cfg(cls, cfg: Any) -> SanityCheck:
        d = dict(cfg or {})
        return cls(
            **{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and v is not None}
            | ({"max_abs_logratio": None} if d.get("max_abs_logratio", 0) is None else {})
        )

    def check(self, chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> dict[str, float]:
        """Raise :class:`SanityCheckError` when the first batch does not look like step 0 of DPO."""
        lc, lr = chosen_logratio.detach().float(), rejected_logratio.detach().float()
        margin = beta * (lc - lr)
        implied = torch.nn.functional.softplus(-margin).mean().item()  # the sigmoid DPO loss of this batch
        worst = max(lc.abs().max().item(), lr.abs().max().item())
        tol = 0.05 if self.max_abs_logratio is None else self.max_abs_logratio
        report = {
            "sanity/max_abs_logratio": worst,
            "sanity/reward_margin": margin.mean().item(),
            "sanity/dpo_sigmoid_loss": implied,
        }
        if not (math.isfinite(worst) and worst <= tol):
            raise SanityCheckError(
                f"Step-0 sanity check failed: the policy's log-probabilities differ from the reference's by up to "
                f"{worst:.4g} nats per sequence on the first batch (allowed {tol}); the sigmoid DPO "
                f"loss is {implied:.4f} instead of ln 2 = {math.log(2):.4f} and the reward margin is "
                f"{report['sanity/reward_margin']:.4g} instead of 0. At step 0 the policy must equal the reference. "
                "Likely causes: stale reference log-probs (clear ref_cache.dir or set ref_cache.enabled=false), a "
                "reference model that is not the starting policy (ref_model / model.name_or_path mismatch), LoRA "
                "weights that are not zero-initialised, or reduced precision (raise sanity.max_abs_logratio for "
                "bf16/fp16). Disable with sanity.enabled=false only if you know why."
            )
        return report
