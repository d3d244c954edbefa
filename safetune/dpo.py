"""The DPO recipe: ``trl.DPOConfig`` is built here, and only here, from the resolved ``trainer`` config."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator
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


# trainer options safetune implements itself because the installed TRL has no such DPOConfig field.
SAFETUNE_TRAINER_OPTIONS: dict[str, str] = {
    "max_completion_length": "Keep at most this many tokens of each chosen/rejected response (TRL 1.x dropped the "
    "field). Cuts training and reference-pass compute when only the opening of a response matters; null keeps all.",
}


def safetune_trainer_options(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """The ``trainer`` options handled by safetune rather than ``trl.DPOConfig`` (see SAFETUNE_TRAINER_OPTIONS)."""
    from trl import DPOConfig

    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    out = {k: trainer_cfg.get(k) for k in SAFETUNE_TRAINER_OPTIONS if k not in valid}
    n = out.get("max_completion_length")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"trainer.max_completion_length must be a positive integer or null; got {n!r}.")
    return out


class ConfigError(ValueError):
    """A trainer option is unknown or invalid for the installed TRL."""


def build_dpo_config(trainer_cfg: dict[str, Any], output_dir: str):
    """Map the ``trainer`` config group onto ``trl.DPOConfig``, failing clearly on unknown fields."""
    from trl import DPOConfig

    valid = {f.name for f in dataclasses.fields(DPOConfig)}
    own = set(SAFETUNE_TRAINER_OPTIONS) - valid
    opts = {**SAFETUNE_DEFAULTS, **{k: v for k, v in dict(trainer_cfg).items() if v is not None and k not in own}}
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
        opts["bf16"] = bf16_supported()
    if not torch.cuda.is_available():
        opts.setdefault("use_cpu", True)
        opts["fp16"] = False  # fp16 autocast on CPU is slow and lossy; bf16 is the CPU's reduced precision
        if opts["bf16"] and not cpu_bf16_supported():
            raise ConfigError(
                "trainer.bf16=true but this CPU has no native bfloat16 (AVX512-BF16 or AMX); bf16 would be "
                "emulated and slower than fp32. Set trainer.bf16=null (auto) or false."
            )
    return DPOConfig(output_dir=output_dir, **opts)


def cpu_bf16_supported() -> bool:
    """True when the CPU computes bfloat16 matmuls natively (AVX512-BF16 or AMX), i.e. bf16 autocast is faster."""
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(c()) for c in checks if c is not None)
    except Exception:  # noqa: BLE001 - private torch API; fall back to fp32 when it changes
        return False


def bf16_supported() -> bool:
    """The ``trainer.bf16: null`` default: bf16 on GPUs that support it, and on CPUs with native bf16."""
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    return cpu_bf16_supported()


def expected_initial_loss(loss_type: list[str]) -> float | None:
    """The DPO sigmoid loss at step 0 is ln 2 because the policy equals the reference."""
    return math.log(2) if list(loss_type) == ["sigmoid"] else None


class SanityCheckError(RuntimeError):
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


def pair_lengths(dataset: Any, max_length: int | None) -> list[int]:
    """Padded width each tokenised preference row needs in TRL's collator: prompt + the longer response, capped."""
    lengths = [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
    ]
    return [min(n, max_length) for n in lengths] if max_length else lengths


@contextlib.contextmanager
def completion_positions_only() -> Iterator[bool]:
    """Score only completion positions in TRL's fused LM head on CPU too (yields whether the switch applied).

    TRL's fused head projects just the positions whose label is not -100 on Triton devices, and every position
    elsewhere (fixed tile shapes avoid recompiles on XLA/Neuron). Eager CPU has no recompiles, so scoring the
    prompt and padding positions through the 49k-row LM head is pure waste: the log-probs are identical (tested)
    and a reference forward is ~1.3x faster. Falls back silently if TRL's internals move (trl is pinned).
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - trl is a dependency
        yield False
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield False
        return

    def _compact(device: Any) -> bool:
        return device.type == "cpu" or original(device)

    trl_utils._use_triton = _compact
    try:
        yield True
    finally:
        trl_utils._use_triton = original


def make_trainer_class():
    """``trl.DPOTrainer`` plus safetune's shared reference cache and the step-0 sanity check."""
    from trl import DPOTrainer

    class SafetuneDPOTrainer(DPOTrainer):
        def __init__(
            self,
            *args: Any,
            ref_cache: Any = None,
            sanity: SanityCheck | None = None,
            max_completion_length: int | None = None,
            **kwargs: Any,
        ):
            # Set before DPOTrainer.__init__, which tokenizes the data and precomputes reference log-probs.
            self._safetune_max_completion = max_completion_length
            self._safetune_ref_cache = ref_cache
            self._safetune_sanity = sanity
            self._safetune_checked = False
            self.sanity_report: dict[str, float] = {}
            super().__init__(*args, **kwargs)

        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
            n = self._safetune_max_completion
            if n is not None:
                dataset = dataset.map(
                    lambda ex: {"chosen_ids": ex["chosen_ids"][:n], "rejected_ids": ex["rejected_ids"][:n]},
                    desc=f"Keeping the first {n} response tokens of the {dataset_name} dataset",
                )
            col = args.length_column_name
            if "prompt_ids" in dataset.column_names and col not in dataset.column_names:
                # transformers' train_sampling_strategy=group_by_length|batch_rebalance reads this column.
                dataset = dataset.add_column(col, pair_lengths(dataset, args.max_length))
            return dataset

        def _set_signature_columns_if_needed(self):
            super()._set_signature_columns_if_needed()
            col = self.args.length_column_name
            if self._signature_columns is not None and col not in self._signature_columns:
                self._signature_columns = [*self._signature_columns, col]  # keep it past remove_unused_columns

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            cache = self._safetune_ref_cache

            def compute():
                return self._length_sorted_ref_pass(dataset, name, batch_size)

            if cache is None:
                return compute()
            return cache.attach(dataset, name, compute, self.accelerator)

        def _length_sorted_ref_pass(self, dataset, name: str, batch_size: int):
            """TRL's reference pass over the rows sorted longest-first (less padding), returned in dataset order."""
            from datasets import Dataset, concatenate_datasets

            lengths = pair_lengths(dataset, self.args.max_length)
            order = sorted(range(len(dataset)), key=lambda i: -lengths[i])  # stable; longest first: OOM early
            if order == list(range(len(dataset))):
                return super()._precompute_ref_logps(dataset, name, batch_size)
            out = super()._precompute_ref_logps(dataset.select(order), name, batch_size)
            chosen, rejected = [0.0] * len(order), [0.0] * len(order)
            for i, c, r in zip(order, out["ref_chosen_logps"], out["ref_rejected_logps"], strict=True):
                chosen[i], rejected[i] = c, r
            cols = Dataset.from_dict({"ref_chosen_logps": chosen, "ref_rejected_logps": rejected})
            return concatenate_datasets([dataset, cols], axis=1)

        def compute_ref_log_probs(self, model, inputs):
            with completion_positions_only():
                return super().compute_ref_log_probs(model, inputs)

        def _compute_loss(self, model, inputs, return_outputs):
            with completion_positions_only():
                out = super()._compute_loss(model, inputs, return_outputs)
            sanity = self._safetune_sanity
            if self._safetune_checked or sanity is None or not sanity.enabled or not self.model.training:
                return out
            self._safetune_checked = True
            if self.state.global_step > 0:
                return out  # a resumed run starts past step 0
            # TRL just logged this batch's rewards (beta * log-ratio, gathered over ranks): read them back.
            m = self._metrics["train"]
            chosen, rejected = m["rewards/chosen"][-1] / self.beta, m["rewards/rejected"][-1] / self.beta
            self.sanity_report = sanity.check(torch.tensor([chosen]), torch.tensor([rejected]), beta=self.beta)
            log.info("Step-0 sanity check passed: %s", self.sanity_report)
            return out

    return SafetuneDPOTrainer
