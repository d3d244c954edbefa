"""Train stage: ``safetune-train`` / ``accelerate launch -m safetune.train``.

The Hydra entry point composes the config and calls :func:`run_train`, which
returns ``(metrics, artifacts)``. Everything it does is a plain function that
tests call directly.

Run directory layout (written by rank 0 only)::

    <run_dir>/
      adapter/                 LoRA adapter (safetensors) + tokenizer   (full model when peft=none)
      config.yaml              resolved config, secrets redacted
      data_manifest.json       sources, row counts, content hash, coverage
      data/train.jsonl         the normalised training rows (with categories, tactics, sources)
      log_history.json         the trainer's log history
      metrics.json             final metrics
      safetune_run.json        what eval needs to rebuild the model (model spec, template, adapter path)
      trainer/                 trainer checkpoints and tensorboard logs
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR, runs
from safetune.data import build_preference_data
from safetune.dpo import build_dpo_config
from safetune.formatting import ChatFormatter
from safetune.modeling import ModelSpec, load_model, load_tokenizer, lora_config, resolve_model_path
from safetune.preflight import preflight_training_rows

log = logging.getLogger(__name__)


def resolve_run_dir(cfg: DictConfig) -> Path:
    proposed = cfg.get("run_dir") or os.path.join(cfg.paths.runs, f"{cfg.name}-{runs.timestamp()}")
    return runs.agree_on_dir(proposed)


def to_container(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def _on_disk(ds: Any, path: Path) -> Any:
    """Rank 0 saves the dataset into the run dir and every rank loads it from there.

    In-memory datasets keep their map() caches in a per-process temp dir, so TRL's precomputed
    reference log-probs (written by rank 0) would be invisible to the other ranks under DDP.
    """
    from accelerate import PartialState
    from datasets import load_from_disk

    state = PartialState()
    if state.is_main_process:
        ds.save_to_disk(str(path))
    state.wait_for_everyone()
    return load_from_disk(str(path))


def run_train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build data, tokenizer, model, LoRA and DPOConfig from ``cfg``; train; save the run directory."""
    from accelerate import PartialState
    from datasets import Dataset
    from trl import DPOTrainer

    state = PartialState()
    run_dir = resolve_run_dir(cfg)
    main = state.is_main_process
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(runs.redact(to_container(cfg)))))

    # Data (validated before any model loads, so bad input fails fast)
    bundle = build_preference_data(cfg.data)
    from safetune.data.validate import enforce_valid

    enforce_valid(bundle, cfg.data)  # raises on validation errors unless data.allow_invalid=true
    if not bundle.train:
        raise ValueError("The configured data produced no training rows; check data.sources.")
    if main:
        runs.write_json(run_dir / "data_manifest.json", bundle.manifest)
        (run_dir / "data").mkdir(exist_ok=True)
        with open(run_dir / "data" / "train.jsonl", "w") as f:
            for ex in bundle.train:
                f.write(json.dumps(ex.to_dict(), ensure_ascii=False) + "\n")

    spec = ModelSpec.from_cfg(to_container(cfg.model))
    spec.load_in_4bit = bool(cfg.peft.get("load_in_4bit", False))
    model_path = resolve_model_path(spec) if main else None
    state.wait_for_everyone()
    model_path = model_path or resolve_model_path(spec)
    tokenizer = load_tokenizer(spec, model_path)
    formatter = ChatFormatter.from_cfg(tokenizer, to_container(cfg.template))
    # Chat-template preflight on a sample of rows, before any model loads; template.preflight.force=true overrides.
    preflight_training_rows(formatter, bundle.train, to_container(cfg.template), to_container(cfg.trainer), show=main)
    train_ds = _on_disk(Dataset.from_list([formatter.to_trl(ex) for ex in bundle.train]), run_dir / "data" / "trl_train")
    eval_ds = None
    if bundle.eval:
        eval_ds = _on_disk(Dataset.from_list([formatter.to_trl(ex) for ex in bundle.eval]), run_dir / "data" / "trl_eval")

    model = load_model(spec, model_path)
    peft_config = lora_config(to_container(cfg.peft), model)
    if spec.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.trainer.get("gradient_checkpointing")))

    os.environ.setdefault("TENSORBOARD_LOGGING_DIR", str(run_dir / "tensorboard"))
    args = build_dpo_config(to_container(cfg.trainer), str(run_dir / "trainer"))
    if eval_ds is None:
        args.eval_strategy = "no"
    trainer = DPOTrainer(
        model=model,
        ref_model=None,  # with LoRA the reference is the adapter-disabled base: no second copy in memory
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    result = trainer.train()
    metrics: dict[str, Any] = {k: v for k, v in result.metrics.items()}
    if eval_ds is not None:
        metrics.update(trainer.evaluate())
    history = trainer.state.log_history
    last_train = next((h for h in reversed(history) if "loss" in h), {})
    for key in ("loss", "rewards/accuracies", "rewards/margins", "rewards/chosen", "rewards/rejected"):
        if key in last_train:
            metrics[f"final/{key}"] = last_train[key]

    adapter_dir = run_dir / "adapter"
    trainer.save_model(str(adapter_dir))  # rank 0 writes (Trainer guards it)
    state.wait_for_everyone()
    if main:
        (adapter_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config is in config.yaml
        tokenizer.save_pretrained(str(adapter_dir))
        runs.write_json(run_dir / "log_history.json", history)
        runs.write_json(run_dir / "metrics.json", metrics)
        runs.write_json(run_dir / runs.RUN_INFO, {
            "kind": "adapter" if peft_config is not None else "full",
            "model": runs.redact(to_container(cfg.model)),
            "template": to_container(cfg.template),
            "adapter": "adapter",
            "name": cfg.name,
            "data_content_hash": bundle.manifest["content_hash"],
            "world_size": state.num_processes,
        })
        log.info("Run directory: %s", run_dir)
    artifacts = {"run_dir": str(run_dir), "adapter_dir": str(adapter_dir)}
    return metrics, artifacts


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _hydra_main(cfg: DictConfig) -> None:
    metrics, artifacts = run_train(cfg)
    if runs.is_main_process():
        from safetune.console import print_metrics

        print_metrics("train", metrics, artifacts)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
