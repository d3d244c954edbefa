"""``safetune-eval checkpoint=<run dir | base | model>``: generate, judge and report per category.

* ``safetune-eval judge-check [judge_check.file=labelled.jsonl]`` measures the judges against human labels.
* ``accelerate launch -m safetune.eval ...`` splits generation across processes; rank 0 judges and reports.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safetune.cli.common import hydra_entry
from safetune.cli.console import console, print_metrics


def run(cfg: DictConfig) -> None:
    from safetune.eval.judge_check import run_judge_check
    from safetune.eval.pipeline import run_eval  # heavy (torch, transformers): after the config is checked

    if cfg.get("mode", "eval") == "judge_check":
        metrics, artifacts = run_judge_check(cfg)
        console.print(Path(artifacts["judge_check_md"]).read_text())
        print_metrics("judge-check", metrics, artifacts)
        return
    if cfg.get("mode", "eval") != "eval":
        raise ValueError(f"mode={cfg.mode!r}; expected 'eval' or 'judge_check'.")
    metrics, artifacts = run_eval(cfg)
    if not artifacts:  # not rank 0
        return
    console.print(Path(artifacts["report_md"]).read_text())
    print_metrics("eval", metrics, artifacts)


def subcommand_to_overrides(argv: list[str]) -> list[str]:
    """``safetune-eval judge-check a=b`` == ``safetune-eval mode=judge_check a=b``."""
    if argv and argv[0] in ("judge-check", "judge_check"):
        return ["mode=judge_check", *argv[1:]]
    return argv


main = hydra_entry("eval", run, subcommand_to_overrides)


if __name__ == "__main__":
    main()
