"""``safetune-export run_dir=<run>``: merge the LoRA adapter into the base model and save a standalone model."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from safetune import CONF_DIR
from safetune.cli.common import check_config, rewrite_argv
from safetune.cli.console import print_metrics
from safetune.train.export import run_export


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _hydra_main(cfg: DictConfig) -> None:
    check_config(cfg)
    metrics, artifacts = run_export(cfg)
    print_metrics("export", metrics, artifacts)


def main() -> None:
    rewrite_argv()
    _hydra_main()


if __name__ == "__main__":
    main()
