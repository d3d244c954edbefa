"""Value ranges of ``trainer`` and ``generation`` keys, importable without torch/TRL so entry points check them first.

:func:`precheck_trainer` / :func:`precheck_generation` run in ``safetune-train`` / ``safetune-eval`` right after
composition (about a second, not the ~10 s of importing torch, transformers and TRL); the full checks later
(:func:`safetune.train.dpo_config.validate_trainer`, ``GenerationSettings.from_cfg``) use the same ranges with the
types of ``trl.DPOConfig`` / ``GenerationSettings``.
"""

from __future__ import annotations

from typing import Any

from safetune.core.checks import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT, Range, check_ranges
from safetune.core.config import ConfigError

# value ranges of DPOConfig fields that TRL/transformers check only deep inside training (if at all)
TRAINER_RANGES: dict[str, Range] = {
    "beta": POSITIVE,
    "learning_rate": POSITIVE,
    "num_train_epochs": POSITIVE,
    "per_device_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "max_length": AT_LEAST_ONE,
    "precompute_ref_batch_size": AT_LEAST_ONE,
    "warmup_steps": NON_NEGATIVE,
    "weight_decay": NON_NEGATIVE,
    "logging_steps": POSITIVE,
    "save_steps": POSITIVE,
    "save_total_limit": AT_LEAST_ONE,
    "max_grad_norm": NON_NEGATIVE,
    "label_smoothing": UNIT,
    "dataloader_num_workers": NON_NEGATIVE,
}

GENERATION_RANGES: dict[str, Range] = {
    "max_new_tokens": AT_LEAST_ONE,
    "batch_size": AT_LEAST_ONE,
    "num_samples": AT_LEAST_ONE,
    "temperature": POSITIVE,
    "top_p": (0, 1, False, True),
}


def precheck_trainer(trainer_cfg: dict[str, Any]) -> None:
    """Every ranged ``trainer`` key holds a number in range (raises ConfigError naming the key otherwise)."""
    check_ranges(trainer_cfg, TRAINER_RANGES, prefix="trainer")
    check_checkpointing_kwargs(trainer_cfg)


def check_checkpointing_kwargs(trainer_cfg: dict[str, Any]) -> None:
    """``trainer.gradient_checkpointing_kwargs.every_n_layers`` (transformers 5: checkpoint every n-th layer only)
    must be a whole number >= 1; TRL and transformers take any value and fail or misbehave inside training."""
    kwargs = trainer_cfg.get("gradient_checkpointing_kwargs")
    if not isinstance(kwargs, dict) or "every_n_layers" not in kwargs:
        return
    n = kwargs["every_n_layers"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(
            f"trainer.gradient_checkpointing_kwargs.every_n_layers must be a whole number >= 1, got {n!r}",
            hint="1 checkpoints every decoder layer, 2 every other one (half the recompute, about half the saving); "
            "it applies with trainer.gradient_checkpointing=true",
        )


def precheck_generation(generation_cfg: dict[str, Any]) -> None:
    """Every ranged ``generation`` key holds a number in range (raises ConfigError naming the key otherwise)."""
    check_ranges(generation_cfg, GENERATION_RANGES, prefix="generation")
