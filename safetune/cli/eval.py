"""``safetune-eval checkpoint=<run dir | base | model>``: generate, judge and report per category.

* ``safetune-eval judge-check [judge_check.file=labelled.jsonl]`` measures the judges against human labels.
* ``accelerate launch -m safetune.eval ...`` splits generation across processes; rank 0 judges and reports.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safetune.cli.common import hydra_entry
from safetune.cli.console import console, print_metrics
from safetune.core.errors import InputError, MissingInputError


def run(cfg: DictConfig) -> None:
    from safetune.eval.judge_check import run_judge_check
    from safetune.eval.pipeline import run_eval  # heavy (torch, transformers): after the config is checked

    if cfg.get("mode", "eval") == "judge_check":
        metrics, artifacts = run_judge_check(cfg)
        console.print(Path(artifacts["judge_check_md"]).read_text())
        print_metrics("judge-check", metrics, artifacts)
        return
    if cfg.get("mode", "eval") == "review":
        from safetune.eval.report import load_verdicts
        from safetune.eval.review import export_review

        eval_dir = Path(cfg.review.get("eval_dir") or cfg.get("out_dir") or "")
        records = load_verdicts(eval_dir) if (eval_dir / "verdicts.jsonl").is_file() else None
        if not records:
            raise MissingInputError(
                f"review.eval_dir={eval_dir}: no verdicts.jsonl there.",
                hint="safetune-eval review eval_dir=<an evaluation directory>",
            )
        out = Path(cfg.review.get("out") or eval_dir / "review.csv")
        path, n = export_review(
            records, out, threshold=float(cfg.eval.review_threshold), everything=bool(cfg.review.all)
        )
        console.print(f"{n} verdict(s) to review written to {path}; fill human_label and pass eval.labels={path}")
        return
    if cfg.get("mode", "eval") != "eval":
        raise InputError(f"mode={cfg.mode!r}; expected 'eval', 'judge_check' or 'review'.")
    metrics, artifacts = run_eval(cfg)
    if not artifacts:  # not rank 0
        return
    console.print(Path(artifacts["report_md"]).read_text())
    print_metrics("eval", metrics, artifacts)


def subcommand_to_overrides(argv: list[str]) -> list[str]:
    """``safetune-eval judge-check a=b`` == ``safetune-eval mode=judge_check a=b`` (and ``review``)."""
    if argv and argv[0] in ("judge-check", "judge_check"):
        return ["mode=judge_check", *argv[1:]]
    if argv and argv[0] == "review":
        return ["mode=review", *argv[1:]]
    return argv


main = hydra_entry("eval", run, subcommand_to_overrides)


if __name__ == "__main__":
    main()
