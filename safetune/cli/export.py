"""``safetune-export run_dir=<run>``: merge the LoRA adapter into the base model and save a standalone model."""

from __future__ import annotations

from omegaconf import DictConfig

from safetune.cli.common import hydra_entry
from safetune.cli.console import print_metrics


def run(cfg: DictConfig) -> None:
    from safetune.train.export import run_export  # heavy (torch, transformers): after the config is checked

    metrics, artifacts = run_export(cfg)
    print_metrics("export", metrics, artifacts)


main = hydra_entry("export", run)

if __name__ == "__main__":
    main()
