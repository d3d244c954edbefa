"""Every TRL extension safetune needs, in one module, each checked against the installed TRL.

Tested with TRL 1.16.x (``pyproject.toml`` pins ``trl>=1.16,<1.17``). The subclass below overrides private
``DPOTrainer`` hooks and the context managers swap private TRL names; :func:`check_trl` verifies them before a
trainer is built and names the one that moved when the installed TRL differs:

- ``DPOTrainer._prepare_dataset``: keep the first ``trainer.max_completion_length`` response tokens (TRL 1.x
  dropped the option) and add the ``length`` column transformers' length-grouped sampler reads;
- ``DPOTrainer._set_signature_columns_if_needed``: keep that column past ``remove_unused_columns``;
- ``DPOTrainer._precompute_ref_logps``: the shared on-disk reference cache and a length-sorted reference pass, or
  no separate pass when the reference is computed in-step on a shared frozen trunk (``train/trunk.py``);
- ``DPOTrainer.compute_ref_log_probs`` / ``_compute_loss``: completion-only LM-head scoring on CPU, packed and
  shared-prompt batches (``train/packing.py``), the in-step reference whose trunk the policy reuses, and the
  step-0 sanity check (which reads the rewards TRL logs in ``self._metrics``);
- ``Trainer.train`` / ``evaluate`` and the reference pass: under bf16/fp16 autocast, the frozen linear weights are
  held in that dtype for the call (``trainer.cast_frozen_weights``; :func:`safetune.core.precision.weights_in`);
- ``trl.trainer.utils._use_triton``: the switch TRL uses to score completion positions only;
- ``TOKEN_CHUNK_SIZE`` / ``_CHUNKED_LOGPROB_CHUNK_SIZE``: CPU tiles of the fused LM head (:func:`cpu_logprob_tiles`);
- ``trl.trainer.dpo_trainer.hash_module``: the shared reference cache's key instead (:func:`reference_hash`).
- transformers' ``sdpa`` attention function: fp32 under CPU autocast (``trainer.cpu_attention_fp32``; core/precision).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Iterator
from typing import Any

import torch

from safetune.core.compiling import compile_model
from safetune.core.errors import EnvironmentProblem
from safetune.core.precision import Precision, cpu_attention_in_fp32, training_label, weights_in
from safetune.train.dpo_config import SanityCheck

log = logging.getLogger(__name__)

TESTED_TRL = "1.16"

# hook -> parameters it must accept (after self)
_HOOKS: dict[str, tuple[str, ...]] = {
    "_prepare_dataset": ("dataset", "processing_class", "args", "dataset_name"),
    "_set_signature_columns_if_needed": (),
    "_precompute_ref_logps": ("dataset", "name", "batch_size"),
    "compute_ref_log_probs": ("model", "inputs"),
    "_compute_loss": ("model", "inputs", "return_outputs"),
}


class TRLCompatibilityError(EnvironmentProblem):
    """The installed TRL lacks a hook safetune overrides; the message names it and the tested version."""


def check_trl() -> str:
    """Verify the TRL internals safetune relies on; returns the installed version.

    Raises :class:`TRLCompatibilityError` naming the missing or changed hook, the installed and the tested TRL
    version, and the fix (install ``trl>=1.16,<1.17``).
    """
    import trl
    from trl import DPOTrainer
    from trl.trainer import utils as trl_utils

    version = trl.__version__
    problems = []
    for name, params in _HOOKS.items():
        fn = getattr(DPOTrainer, name, None)
        if fn is None:
            problems.append(f"DPOTrainer.{name} is missing")
            continue
        got = list(inspect.signature(fn).parameters)[1:]
        if list(params) != got[: len(params)]:
            problems.append(f"DPOTrainer.{name} takes {got}, expected {list(params)}")
    if not callable(getattr(trl_utils, "_use_triton", None)):
        problems.append("trl.trainer.utils._use_triton is missing")
    from trl.trainer import dpo_trainer as trl_dpo

    for name in ("disable_gradient_checkpointing", "hash_module"):
        if not callable(getattr(trl_dpo, name, None)):
            problems.append(f"trl.trainer.dpo_trainer.{name} is missing")
    if problems:
        raise TRLCompatibilityError(
            f"The installed TRL {version} changed internals safetune extends (tested with {TESTED_TRL}.x): "
            + "; ".join(problems)
            + f". Install a tested TRL: pip install 'trl>={TESTED_TRL},<1.17'."
        )
    if not version.startswith(TESTED_TRL):
        log.warning("TRL %s is not the tested %s.x; its DPOTrainer hooks look compatible.", version, TESTED_TRL)
    return version


def pair_lengths(dataset: Any, max_length: int | None) -> list[int]:
    """Padded width each tokenised preference row needs in TRL's collator: prompt + the longer response, capped."""
    lengths = [
        len(p) + max(len(c), len(r))
        for p, c, r in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"], strict=True)
    ]
    return [min(n, max_length) for n in lengths] if max_length else lengths


@contextlib.contextmanager
def _patched(*changes: tuple[Any, str, Any]) -> Iterator[None]:
    """Set ``(module, name, value)`` attributes for the block; the old values come back after it."""
    saved = [(m, n, getattr(m, n)) for m, n, _ in changes]
    for m, n, value in changes:
        setattr(m, n, value)
    try:
        yield
    finally:
        for m, n, value in saved:
            setattr(m, n, value)


@contextlib.contextmanager
def completion_positions_only() -> Iterator[bool]:
    """Score only completion positions in TRL's fused LM head on CPU too (yields whether the switch applied).

    TRL's fused head projects just the positions whose label is not -100 on Triton devices, and every position
    elsewhere (fixed tile shapes avoid recompiles on XLA/Neuron). Eager CPU has no recompiles, so scoring the
    prompt and padding positions through the 49k-row LM head is pure waste: the log-probs are identical (tested)
    and a reference forward is ~1.3x faster. :func:`check_trl` verifies the helper exists before training.
    """
    from trl.trainer import utils as trl_utils

    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield False
        return
    with _patched((trl_utils, "_use_triton", lambda device: device.type == "cpu" or original(device))):
        yield True


@contextlib.contextmanager
def checkpointing_paused(model: Any, gradient_checkpointing_kwargs: dict | None = None) -> Iterator[None]:
    """TRL's ``disable_gradient_checkpointing`` (around its reference forwards), restoring each layer's own setting.

    TRL 1.16 turns checkpointing back on with ``gradient_checkpointing_enable(kwargs)``: every layer is checkpointed
    again and transformers' ``every_n_layers`` (``trainer.gradient_checkpointing_kwargs``) reaches
    ``torch.utils.checkpoint``, which fails on it at the next backward. Here each module's flag is switched off and
    back as it was; the checkpoint function stays the one the trainer set up.
    """
    flags = [
        (m, m.gradient_checkpointing)
        for m in model.modules()
        if isinstance(getattr(m, "gradient_checkpointing", None), bool)
    ]
    for m, _ in flags:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m, flag in flags:
            m.gradient_checkpointing = flag


# TRL's CPU LM-head tiles: 4096 tokens x 32768 words, up to 512 MB of fp32 per temporary; 8 MB ones stay in cache
CPU_LOGPROB_TOKENS = 512
CPU_LOGPROB_VOCAB = 4096


@contextlib.contextmanager
def cpu_logprob_tiles(device: Any) -> Iterator[bool]:
    """Cache-sized tiles for TRL's fused LM head on CPU (yields whether they applied; a no-op on other devices).

    Same per-token log-probs, entropies and gradients within float rounding (the log-sum-exp adds the vocabulary in
    other pieces; tested), 1.5-2.5x faster head forward + backward on the embedded model's 49,152-word vocabulary
    (``benchmarks/README.md``). Held for the whole ``train`` / ``evaluate`` / reference pass: the backward, which TRL
    runs after the loss returns, reads the token tile size again.
    """
    from trl.kernels import chunked_logprob as trl_kernel
    from trl.trainer import utils as trl_utils

    tiles = (
        (trl_kernel, "TOKEN_CHUNK_SIZE", CPU_LOGPROB_TOKENS),
        (trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", CPU_LOGPROB_VOCAB),
    )
    if torch.device(device).type != "cpu" or not all(isinstance(getattr(m, n, None), int) for m, n, _ in tiles):
        yield False
        return
    with _patched(*((m, n, min(v, getattr(m, n))) for m, n, v in tiles)):
        yield True


@contextlib.contextmanager
def reference_hash(key: str | None) -> Iterator[None]:
    """Name TRL's reference-pass cache file by ``key`` (when not None) instead of TRL hashing the model.

    TRL 1.16 hashes every tensor in ``DPOTrainer.__init__`` (~1 s for 135M, minutes for 7B, in every sweep job, even
    when safetune's cache serves every row); that cache's ``RefLogpCache.reference_key`` already names what the
    reference log-probs depend on (model identity and files, template, truncation, precision, versions)."""
    from trl.trainer import dpo_trainer as trl_dpo

    with _patched(*(() if key is None else ((trl_dpo, "hash_module", lambda module: key),))):
        yield


def make_trainer_class():
    """``trl.DPOTrainer`` plus safetune's shared reference cache and the step-0 sanity check (TRL checked first)."""
    from trl import DPOTrainer
    from trl.trainer import dpo_trainer as trl_dpo

    check_trl()
    trl_dpo.disable_gradient_checkpointing = checkpointing_paused  # same behaviour, per-layer settings kept

    class SafetuneDPOTrainer(DPOTrainer):
        def __init__(
            self,
            *args: Any,
            ref_cache: Any = None,
            sanity: SanityCheck | None = None,
            max_completion_length: int | None = None,
            pack_sequences: bool | None = None,
            share_frozen_trunk: bool | None = None,
            share_prompt: bool | None = None,
            cast_frozen_weights: bool | None = None,
            cpu_attention_fp32: bool | None = None,
            compile: str | None = None,
            compile_options: dict[str, Any] | None = None,
            release_memory_every: int | None = None,
            keep_freed_pages: bool | None = None,
            **kwargs: Any,
        ):
            # Set before DPOTrainer.__init__, which tokenizes the data and precomputes reference log-probs.
            self._safetune_max_completion = max_completion_length
            self._safetune_pack = bool(pack_sequences)
            self._safetune_share_prompt = bool(share_prompt)
            self._safetune_pack_verified = False
            self._safetune_ref_cache = ref_cache
            self._safetune_share_trunk = bool(share_frozen_trunk)
            self._safetune_cast_frozen = bool(cast_frozen_weights)
            self._safetune_attention_fp32 = bool(cpu_attention_fp32) and not compile  # eager, CPU autocast only
            self._safetune_trunk = None  # a SharedTrunk when the reference is computed in-step (train/trunk.py)
            self._safetune_sanity = sanity
            self._safetune_checked = False
            self.sanity_report: dict[str, float] = {}
            if keep_freed_pages:  # before the reference pass, the first step with big temporaries
                from safetune.core import memory

                if memory.keep_freed_pages():
                    log.info("keep_freed_pages: freed large blocks stay in the heap (glibc mallopt)")
                else:
                    log.info(
                        "trainer.keep_freed_pages: left alone (malloc is not glibc's, the environment already tunes it "
                        "(%s), or %s=default)",
                        ", ".join(memory.MALLOC_TUNING_ENV),
                        memory.ALLOCATOR_ENV,
                    )
            model = kwargs.get("model", args[0] if args else None)
            # before DPOTrainer.__init__ (the reference pass runs there); PEFT wraps the compiled layers unchanged
            self.compile_state = compile_model(model, compile, compile_options or {}, "trainer.compile")
            with reference_hash(ref_cache.reference_key() if ref_cache is not None else None):
                super().__init__(*args, **kwargs)
            if release_memory_every:
                from safetune.train.callbacks import ReleaseMemoryCallback

                self.add_callback(ReleaseMemoryCallback(release_memory_every))

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

        def _held(self) -> contextlib.ExitStack:
            """Around train / evaluate / the reference pass: the frozen linear weights in the autocast dtype
            (``trainer.cast_frozen_weights``, core/precision.py; not with FSDP/DeepSpeed, which own the parameters),
            cache-sized CPU LM-head tiles, fp32 attention under CPU autocast (``trainer.cpu_attention_fp32``)."""
            args, stack = self.args, contextlib.ExitStack()
            dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else None
            owned = getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False)
            if self._safetune_cast_frozen and dtype is not None and not owned:
                stack.enter_context(weights_in(self.model, Precision(dtype, training_label(args.bf16, args.fp16))))
            stack.enter_context(cpu_logprob_tiles(self.accelerator.device))
            stack.enter_context(cpu_attention_in_fp32(self._safetune_attention_fp32))
            return stack

        def train(self, *args: Any, **kwargs: Any):
            with self._held():
                return super().train(*args, **kwargs)

        def evaluate(self, *args: Any, **kwargs: Any):
            with self._held():
                return super().evaluate(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name: str, batch_size: int):
            cache = self._safetune_ref_cache
            if name == "train" and self._safetune_share_trunk and self._choose_shared_trunk(dataset, cache):
                return dataset  # no ref columns: _compute_loss computes them in each step
            with self._held():
                if cache is None:
                    return self._length_sorted_ref_pass(dataset, name, batch_size)
                compute = lambda rows: self._length_sorted_ref_pass(rows, name, batch_size)  # noqa: E731
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

        def _planned_epochs(self, rows: int) -> float:
            args = self.args
            if args.max_steps and args.max_steps > 0:
                batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
                return args.max_steps * batch / max(rows, 1)
            return float(args.num_train_epochs)

        def _choose_shared_trunk(self, dataset, cache) -> bool:
            """Skip the separate reference pass when in-step reference + shared trunk needs fewer layer forwards."""
            from safetune.train.trunk import in_step_is_cheaper, trunk_for

            trunk = trunk_for(self)
            if trunk is None:
                return False
            stored = cache.stored_fraction(dataset) if cache is not None else 0.0
            epochs = self._planned_epochs(len(dataset))
            cheaper = [in_step_is_cheaper(trunk.num_layers, trunk.depth, epochs, stored)]
            if self.accelerator.num_processes > 1:  # every rank must take the same path (the pass is collective)
                from accelerate.utils import broadcast_object_list

                broadcast_object_list(cheaper, from_process=0)
            if not cheaper[0]:
                log.info(
                    "share_frozen_trunk: the separate reference pass is cheaper here (%.1f epochs, %.0f%% of rows "
                    "cached; frozen trunk %d of %d layers)",
                    epochs,
                    100 * stored,
                    trunk.depth,
                    trunk.num_layers,
                )
                return False
            self._safetune_trunk = trunk
            log.info(
                "share_frozen_trunk: reference log-probs are computed in each step; the policy starts from the "
                "reference's hidden state at layer %d of %d (%d instead of %d layer forwards per row and epoch, no "
                "separate pass)",
                trunk.depth,
                trunk.num_layers,
                2 * trunk.num_layers - trunk.depth,
                trunk.num_layers * (1 + 1 / max(epochs, 1e-9)),
            )
            return True

        def _ref_sharing_trunk(self, model, inputs):
            """This batch's reference log-probs (full forward); the trunk's hidden state is kept for the policy."""
            from safetune.train.trunk import verify_reuse

            trunk = self._safetune_trunk
            with trunk.capture():
                chosen, rejected = self.compute_ref_log_probs(model, inputs)
            if not trunk.verified:  # once: the reference again, started from the kept state, must match
                trunk.verified = True
                before = trunk.reused
                with trunk.reuse():
                    again = torch.cat(self.compute_ref_log_probs(model, inputs))
                ok, worst = verify_reuse(torch.cat([chosen, rejected]), again, bool(self.args.bf16 or self.args.fp16))
                if ok and trunk.reused > before:
                    log.info("share_frozen_trunk: verified (worst %.2g nats per sequence)", worst)
                else:
                    trunk.enabled = False
                    log.warning(
                        "share_frozen_trunk: this model's backbone cannot start from layer %d (log-probs moved by "
                        "%.3g nats, reused=%s); falling back to full policy forwards. Set "
                        "trainer.share_frozen_trunk=false to use the separate reference pass instead.",
                        trunk.depth,
                        worst,
                        trunk.reused > before,
                    )
            return chosen.detach(), rejected.detach()

        def _packed(self, model):
            """The model, or a packed-sequence stand-in for it (``trainer.pack_sequences``; see train/packing.py)."""
            if not self._safetune_pack or getattr(self, "aux_loss_enabled", False):
                return model
            from safetune.train.packing import PackedForward

            pad = getattr(getattr(self, "_tokenizer", None), "pad_token_id", None) or 0
            # the first batch that really packs is checked against the padded pass, once
            return PackedForward(
                model,
                pad,
                capacity=self.args.max_length,
                verify=not self._safetune_pack_verified,
                share_prompt=self._safetune_share_prompt,
            )

        def _note_verified(self, model) -> None:
            if getattr(model, "verified_max_diff", None) is not None:
                self._safetune_pack_verified = True
                log.info("pack_sequences: packed == padded log-probs (worst %.2g nats)", model.verified_max_diff)

        def compute_ref_log_probs(self, model, inputs):
            model = self._packed(model)
            with completion_positions_only():
                out = super().compute_ref_log_probs(model, inputs)
            self._note_verified(model)
            return out

        def _compute_loss(self, model, inputs, return_outputs):
            trunk = self._safetune_trunk
            shared = trunk is not None and self.precompute_ref_logps and "ref_chosen_logps" not in inputs
            if shared:
                chosen, rejected = self._ref_sharing_trunk(model, inputs)
                inputs = {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
            model = self._packed(model)
            with completion_positions_only(), trunk.reuse() if shared else contextlib.nullcontext():
                out = super()._compute_loss(model, inputs, return_outputs)
            if shared:
                trunk.release()
            self._note_verified(model)
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
