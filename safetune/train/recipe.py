"""The DPO recipe: ``safetune-train`` / ``accelerate launch -m safetune.train`` call :func:`run_train`.

:func:`run_train` returns ``(metrics, artifacts)`` and is three steps, each a plain function tests call directly:
:func:`build_data` (load, validate, preflight and tokenise-ready rows), :func:`build_trainer` (model, LoRA,
``DPOConfig``, reference cache, sanity check, callbacks) and :func:`save_run` (adapter, metrics, run info).

Run directory layout (written by rank 0 only)::

    <run_dir>/
      adapter/                 LoRA adapter (safetensors) + tokenizer   (full model when peft=none)
      config.yaml              resolved config, secrets redacted
      data_manifest.json       sources, row counts, content hash, coverage
      data/train.jsonl         the normalised training rows (with categories, tactics, sources)
      log_history.json         the trainer's log history
      metrics.json             final metrics
      safetune_run.json        what eval needs to rebuild the model (model spec, template, adapter path)
      trainer/                 trainer checkpoints (each marked complete when fully written) and logs

Resume: ``resume=auto`` continues from the newest complete checkpoint in ``<run_dir>/trainer`` (set
``run_dir`` and ``trainer.save_strategy=steps trainer.save_steps=N``); ``resume=<path>`` from that checkpoint.
Multirun (``-m``): each job writes ``<sweep dir>/<job num>``; see :mod:`safetune.train.sweep` for the
subprocess launcher, the per-job evaluation and the sweep summary.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safetune.core import runs
from safetune.core.config import to_plain
from safetune.core.errors import InputError
from safetune.core.formatting import ChatFormatter
from safetune.core.modeling import (
    ModelSpec,
    keep_4bit_layers_trainable,
    load_model,
    load_tokenizer,
    lora_config,
    resolve_model_path,
)
from safetune.core.precision import training_label
from safetune.data import DataBundle, build_preference_data
from safetune.data.validate import enforce_valid
from safetune.train.callbacks import (
    CompleteCheckpointCallback,
    SafetyEvalCallback,
    last_complete_checkpoint,
)
from safetune.train.dpo_config import SanityCheck, build_dpo_config, safetune_trainer_options, validate_trainer
from safetune.train.preflight import PreflightReport, preflight_training_rows
from safetune.train.refcache import build_ref_cache
from safetune.train.trl_ext import make_trainer_class

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: DictConfig) -> Path:
    proposed = (
        cfg.get("run_dir") or _multirun_job_dir() or os.path.join(cfg.paths.runs, f"{cfg.name}-{runs.timestamp()}")
    )
    return runs.agree_on_dir(proposed)


def _multirun_job_dir() -> str | None:
    """Inside a Hydra multirun job: ``<hydra.sweep.dir>/<hydra.sweep.subdir>``."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return hc.runtime.output_dir if hc.mode == RunMode.MULTIRUN else None


def hydra_overrides() -> list[str]:
    """The command-line overrides of this job (recorded in safetune_run.json; the sweep summary reads them)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def resolve_resume(resume: Any, trainer_dir: Path) -> str | None:
    """``null``/false: fresh; ``auto``: newest complete checkpoint if any; a path: that checkpoint (must be complete)."""
    if resume in runs.NO_RESUME:
        return None
    if resume == "auto":
        ck = last_complete_checkpoint(trainer_dir) if runs.is_main_process() else None
        found = runs.broadcast_str(str(ck) if ck else "")  # rank 0 decides (and quarantines incomplete ones)
        if not found:
            log.info("resume=auto: no complete checkpoint in %s; starting fresh.", trainer_dir)
            return None
        log.info("resume=auto: continuing from %s", found)
        return str(found)
    p = runs.check_resume_path(resume)
    return str(p)


to_container = to_plain  # kept for callers of the earlier name


def _on_disk(ds: Any, path: Path) -> Any:
    """Rank 0 saves the dataset into the run dir and every rank loads it from there.

    In-memory datasets keep their map() caches in a per-process temp dir, so TRL's precomputed
    reference log-probs (written by rank 0) would be invisible to the other ranks under DDP.
    """
    from datasets import load_from_disk

    state = runs.process_state()
    if state.is_main_process:
        ds.save_to_disk(str(path))
    state.wait_for_everyone()
    return load_from_disk(str(path))


@dataclass
class TrainData:
    """What :func:`build_data` prepared for the trainer.

    ``bundle``: the validated preference rows and their manifest; ``model_path``/``spec``: the resolved base model
    (``load_in_4bit`` from the peft group); ``tokenizer``/``formatter``: the chat template set once, shared with
    generation; ``train_ds``/``eval_ds``: TRL conversational rows saved in the run directory (``eval_ds`` None
    without a held-out split).
    """

    bundle: DataBundle
    model_path: str
    spec: ModelSpec
    tokenizer: Any
    formatter: ChatFormatter
    train_ds: Any
    eval_ds: Any = None


def build_data(
    cfg: DictConfig, run_dir: Path, *, on_preflight: Callable[[PreflightReport, Any], None] | None = None
) -> TrainData:
    """Load, validate and describe the data (before any model loads), run the chat-template preflight, and write
    the TRL rows into the run directory."""
    from datasets import Dataset

    state = runs.process_state()
    main = state.is_main_process
    bundle = build_preference_data(cfg.data)
    enforce_valid(bundle, cfg.data)  # raises on validation errors unless data.allow_invalid=true
    if not bundle.train:
        raise InputError("The configured data produced no training rows; check data.sources.")
    if main:
        runs.write_json(run_dir / "data_manifest.json", bundle.manifest)
        (run_dir / "data").mkdir(exist_ok=True)
        with open(run_dir / "data" / "train.jsonl", "w") as f:
            for ex in bundle.train:
                f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")
    spec = ModelSpec.from_cfg(to_plain(cfg.model))
    spec.load_in_4bit = bool(cfg.peft.get("load_in_4bit", False))
    model_path = resolve_model_path(spec) if main else None
    state.wait_for_everyone()
    model_path = model_path or resolve_model_path(spec)
    tokenizer = load_tokenizer(spec, model_path)
    formatter = ChatFormatter.from_cfg(tokenizer, to_plain(cfg.template))
    # Chat-template preflight on a sample of rows, before any model loads; template.preflight.force=true overrides.
    preflight_training_rows(
        formatter,
        bundle.train,
        to_plain(cfg.template),
        to_plain(cfg.trainer),
        on_report=on_preflight if main else None,
    )
    train_ds = _on_disk(
        Dataset.from_list([formatter.to_trl(ex) for ex in bundle.train]), run_dir / "data" / "trl_train"
    )
    eval_ds = None
    if bundle.eval:
        eval_ds = _on_disk(
            Dataset.from_list([formatter.to_trl(ex) for ex in bundle.eval]), run_dir / "data" / "trl_eval"
        )
    return TrainData(bundle, model_path, spec, tokenizer, formatter, train_ds, eval_ds)


def build_trainer(cfg: DictConfig, data: TrainData, run_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Model, LoRA, ``DPOConfig``, reference cache, sanity check and callbacks -> ``(trainer, facts)``.

    ``facts``: what the run info records (adapter or full, precision, distributed type, the reference cache)."""
    spec, model_path = data.spec, data.model_path
    model = load_model(spec, model_path)
    peft_cfg = dict(to_plain(cfg.peft))
    reference = str(peft_cfg.pop("reference", "base") or "base")
    peft_config = lora_config(peft_cfg, model)
    if spec.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(cfg.trainer.get("gradient_checkpointing"))
        )
        keep_4bit_layers_trainable(model)
    ref_model = None  # with LoRA the reference is the adapter-disabled base: no second copy in memory
    if peft_config is None and reference == "explicit":
        ref_model = load_model(spec, model_path)  # full fine-tuning: a frozen copy of the starting weights
        ref_model.eval().requires_grad_(False)

    trainer_cfg = to_plain(cfg.trainer)
    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    args = build_dpo_config(trainer_cfg, str(run_dir / "trainer"))
    if data.eval_ds is None:
        args.eval_strategy = "no"
    precision = training_label(args.bf16, args.fp16)
    eager = not trainer_cfg.get("compile")
    if precision != "fp32" and trainer_cfg.get("cpu_attention_fp32") and eager and args.device.type == "cpu":
        precision += "+fp32-attention"  # the reference pass's log-probs differ (a little) with it
    ref_cache = build_ref_cache(
        cfg.get("ref_cache"),
        model_spec={**to_plain(cfg.model), "load_in_4bit": spec.load_in_4bit},
        model_path=model_path,
        data_content_hash=data.bundle.manifest["content_hash"],
        template=to_plain(cfg.template),
        trainer_cfg=trainer_cfg,
        reference=reference if peft_config is None else "adapter-disabled-base",
        precision=precision,
    )
    sanity = SanityCheck.from_cfg(to_plain(cfg.get("sanity")))
    if sanity.max_abs_logratio is None:
        sanity.max_abs_logratio = 1.0 if (args.bf16 or args.fp16) else 0.05
    trainer = make_trainer_class()(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=data.train_ds,
        eval_dataset=data.eval_ds,
        processing_class=data.tokenizer,
        peft_config=peft_config,
        ref_cache=ref_cache,
        sanity=sanity,
        **safetune_trainer_options(trainer_cfg),
    )
    distributed_type = str(trainer.accelerator.distributed_type).rsplit(".", 1)[-1]  # NO, MULTI_CPU, FSDP, ...
    _warn_if_strategy_downgraded(distributed_type)
    trainer.add_callback(CompleteCheckpointCallback())
    safety_cb = _safety_callback(cfg, trainer, data.tokenizer, data.formatter, run_dir)
    if safety_cb is not None:
        trainer.add_callback(safety_cb)
    facts = {
        "kind": "adapter" if peft_config is not None else "full",
        "precision": precision,
        "distributed_type": distributed_type,
        "ref_cache": ref_cache,
        "safety_callback": safety_cb,
        "trainer_cfg": trainer_cfg,
    }
    return trainer, facts


def train_metrics(trainer: Any, result: Any, facts: dict[str, Any], resume_from: str | None) -> dict[str, Any]:
    """Final metrics: the trainer's, the last logged DPO values, the sanity report and reference-cache use."""
    metrics: dict[str, Any] = dict(result.metrics)
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
    last_train = next((h for h in reversed(trainer.state.log_history) if "loss" in h), {})
    for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
        if key in last_train:
            metrics[f"final/{key}"] = last_train[key]
    metrics.update(trainer.sanity_report)
    trunk = getattr(trainer, "_safetune_trunk", None)
    if trunk is not None:  # reference computed in-step, sharing the frozen trunk (train/trunk.py)
        metrics["ref/shared_trunk_layers"] = trunk.depth if trunk.enabled else 0
        metrics["ref/shared_trunk_reused"] = trunk.reused
    ref_cache = facts["ref_cache"]
    if ref_cache is not None:
        metrics["ref_cache/hits"] = len(ref_cache.hits)
        metrics["ref_cache/misses"] = len(ref_cache.misses)
        metrics["ref_cache/rows_reused"] = ref_cache.rows_reused
        metrics["ref_cache/rows_computed"] = ref_cache.rows_computed
    if resume_from:
        metrics["resumed_from"] = Path(resume_from).name
    return metrics


def save_run(
    cfg: DictConfig, trainer: Any, data: TrainData, facts: dict[str, Any], metrics: dict[str, Any], run_dir: Path
) -> dict[str, Any]:
    """Atomic final save (temp dir, then rename: a crash never leaves a half-written adapter/), then the
    run directory's JSON files. Returns the artifacts."""
    state = runs.process_state()
    main = state.is_main_process
    adapter_dir = run_dir / "adapter"
    tmp_dir = run_dir / ".adapter.tmp"
    if main and tmp_dir.exists():
        shutil.rmtree(tmp_dir)
    state.wait_for_everyone()
    trainer.save_model(str(tmp_dir))  # rank 0 writes (Trainer guards it)
    state.wait_for_everyone()
    if main:
        data.tokenizer.save_pretrained(str(tmp_dir))
        (tmp_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle: run dirs hold safetensors/JSON only
        if adapter_dir.exists():
            shutil.rmtree(adapter_dir)
        os.replace(tmp_dir, adapter_dir)
        if facts["safety_callback"] is not None:
            runs.write_json(run_dir / "safety_history.json", facts["safety_callback"].history)
        runs.write_json(run_dir / "log_history.json", trainer.state.log_history)
        runs.write_json(run_dir / "metrics.json", metrics)
        trainer_cfg = facts["trainer_cfg"]
        runs.write_json(
            run_dir / runs.RUN_INFO,
            {
                "kind": facts["kind"],
                "model": runs.redact({**to_plain(cfg.model), "load_in_4bit": data.spec.load_in_4bit}),
                "template": to_plain(cfg.template),
                "adapter": "adapter",
                "name": cfg.name,
                "data_content_hash": data.bundle.manifest["content_hash"],
                "world_size": state.num_processes,
                # how the processes shared the work: NO, MULTI_CPU, MULTI_GPU, FSDP, DEEPSPEED (accelerate's names)
                "distributed_type": facts["distributed_type"],
                "mixed_precision": facts["precision"],
                "overrides": runs.redact_overrides(hydra_overrides()),
                "trainer": {k: trainer_cfg.get(k) for k in ("beta", "loss_type", "learning_rate", "max_length")},
            },
        )
        log.info("Run directory: %s", run_dir)
    state.wait_for_everyone()
    return {"run_dir": str(run_dir), "adapter_dir": str(adapter_dir)}


def run_train(
    cfg: DictConfig, *, on_preflight: Callable[[PreflightReport, Any], None] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build data, tokenizer, model, LoRA and DPOConfig from ``cfg``; train; save the run directory."""
    from transformers import set_seed

    set_seed(int(cfg.get("seed", 42)))  # LoRA init and data order: same seed, same run
    validate_trainer(to_plain(cfg.trainer))  # types and ranges, before any data or model loads
    run_dir = resolve_run_dir(cfg)
    runs.guard_run_dir(run_dir, cfg.get("resume"), bool(cfg.get("overwrite", False)))
    if runs.is_main_process():
        run_dir.mkdir(parents=True, exist_ok=True)
        runs.write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(runs.redact(to_plain(cfg)))))
    resume_from = resolve_resume(cfg.get("resume"), run_dir / "trainer")  # a bad resume path fails before work
    data = build_data(cfg, run_dir, on_preflight=on_preflight)  # validated before any model loads
    trainer, facts = build_trainer(cfg, data, run_dir)
    result = trainer.train(resume_from_checkpoint=resume_from)
    metrics = train_metrics(trainer, result, facts, resume_from)
    artifacts = save_run(cfg, trainer, data, facts, metrics, run_dir)
    return metrics, artifacts


def _warn_if_strategy_downgraded(distributed_type: str) -> str | None:
    """accelerate silently runs plain multi-process CPU training when an FSDP/DeepSpeed config meets no GPU."""
    for flag, wanted in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(flag, "false").lower() == "true" and distributed_type != wanted:
            msg = (
                f"The accelerate config asks for {wanted} but accelerate is running {distributed_type}: {wanted} "
                "needs GPUs (accelerate falls back to plain data parallel on CPU). Training continues without "
                "sharding; use conf/accelerate/ddp.yaml on CPU to make this explicit."
            )
            log.warning(msg)
            return msg
    return None


def _safety_callback(cfg: DictConfig, trainer: Any, tokenizer: Any, formatter: Any, run_dir: Path):
    sc = cfg.get("safety_callback")
    if not sc or not sc.get("enabled"):
        return None
    return SafetyEvalCallback(
        trainer,
        tokenizer,
        formatter,
        to_plain(sc.suite),
        to_plain(sc.judge),
        every_n_steps=int(sc.every_n_steps),
        limit_per_group=int(sc.limit_per_group),
        max_new_tokens=int(sc.max_new_tokens),
        batch_size=int(sc.get("batch_size", 16)),
        out_dir=run_dir,
    )
