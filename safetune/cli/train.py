"""``safetune-train`` / ``python -m safetune.train`` / ``accelerate launch -m safetune.train``: DPO on preference data.

Multirun (``-m``): each job writes ``<sweep dir>/<job num>``; see :mod:`safetune.train.sweep` for the subprocess
launcher, the per-job evaluation and the sweep summary.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safetune.cli.common import hydra_entry, resolved
from safetune.cli.console import print_metrics, print_preflight
from safetune.core import runs
from safetune.data.io import precheck_local_paths


def run(cfg: DictConfig) -> None:
    if cfg.get("run_dir"):  # a finished run is refused in about a second, before the heavy imports (again in run_train)
        runs.guard_run_dir(Path(str(cfg.run_dir)), cfg.get("resume"), bool(cfg.get("overwrite", False)))
    runs.check_resume_path(cfg.get("resume"))  # a bad resume path, too
    precheck_local_paths(resolved(cfg, "data").get("sources"))  # and a data file that is not there
    from safetune.train import sweep
    from safetune.train.recipe import run_train  # heavy (torch, transformers): after the config is checked

    if sweep.handle_multirun_job(cfg):
        return  # a sweep job handed to its own subprocess (sweep.launcher=python|accelerate)
    metrics, artifacts = run_train(cfg, on_preflight=print_preflight)
    sweep.after_inline_job(cfg, artifacts)
    if runs.is_main_process():
        print_metrics("train", metrics, artifacts)


main = hydra_entry("train", run)

if __name__ == "__main__":
    main()
