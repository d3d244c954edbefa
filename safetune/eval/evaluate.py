"""Eval stage: ``safetune-eval checkpoint=<run dir | base | model>``.

Generates answers to the configured suites (batched, cached, resumable), judges
refusals, and writes per-category results (JSON, Markdown, CSV, HTML) into the eval dir.

* ``safetune-eval judge-check [judge_check.file=labelled.jsonl]`` measures the judges against human labels.
* ``accelerate launch -m safetune.eval.evaluate ...`` splits generation across processes; rank 0 judges and reports.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR
from safetune.eval.checkpoints import load_checkpoint
from safetune.eval.generate import GenerationCache, GenerationSettings, generate
from safetune.eval.judges import build_judge
from safetune.eval.metrics import summarise
from safetune.eval.report import write_reports
from safetune.eval.suites import limit_per_group, load_suite, report_group

log = logging.getLogger(__name__)


def _c(x: Any) -> Any:
    return OmegaConf.to_container(x, resolve=True) if isinstance(x, DictConfig) else x


def load_suites(suite_cfg: Any, limit: int | None = None):
    prompts = []
    for spec in _c(suite_cfg)["suites"]:
        prompts.extend(load_suite(spec))
    return limit_per_group(prompts, limit)


def default_out_dir(cfg: DictConfig, label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    return Path(cfg.paths.evals) / safe


def _vllm_dir(ck: Any, out_dir: Path):
    """A checkpoint directory vLLM can load: the model's own, or the merged adapter saved once into the eval dir."""

    def get() -> str:
        src = Path(str(getattr(ck.model, "name_or_path", "") or ""))
        if not ck.checkpoint_id.startswith("adapter:") and (src / "config.json").is_file():
            return str(src)
        merged = out_dir / "merged_model"
        if not (merged / "config.json").is_file():
            ck.model.save_pretrained(merged, safe_serialization=True)
            ck.tokenizer.save_pretrained(merged)
        return str(merged)

    return get


def run_eval(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch
    from accelerate import PartialState

    from safetune.runs import agree_on_dir

    # cpu=True lets several CPU processes (torchrun / accelerate's distributed launcher) form a gloo group.
    state = PartialState(cpu=not torch.cuda.is_available())
    prompts = load_suites(cfg.eval.suite, cfg.get("limit_per_group"))  # fail on bad suites before loading a model
    if not prompts:
        raise ValueError("The configured evaluation suites are empty.")
    judge = build_judge(cfg.eval.judge) if state.is_main_process else None
    ck = load_checkpoint(str(cfg.checkpoint), _c(cfg.model), _c(cfg.template))
    if not getattr(ck.model, "is_loaded_in_4bit", False) and next(ck.model.parameters()).device != state.device:
        ck.model.to(state.device)  # this rank's GPU when there is one (4-bit models are placed at load)
    out_dir = agree_on_dir(Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(cfg, ck.label))
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = GenerationSettings.from_cfg(_c(cfg.generation))
    cache = GenerationCache(out_dir / "generations.jsonl")
    gens, n_new = generate(
        ck.model,
        ck.tokenizer,
        ck.formatter,
        prompts,
        settings,
        cache,
        ck.checkpoint_id,
        vllm_model_dir=_vllm_dir(ck, out_dir),
    )
    if not state.is_main_process:
        return {}, {}
    by_id = {(p.suite, p.id): p for p in prompts}
    verdicts = judge.judge_many([(by_id[(g.suite, g.prompt_id)].user_text, g.response) for g in gens])
    records = []
    for g, v in zip(gens, verdicts):
        p = by_id[(g.suite, g.prompt_id)]
        records.append(
            {
                "prompt_id": p.id,
                "suite": p.suite,
                "kind": p.kind,
                "group": report_group(p),
                "category": p.category,
                "type": p.type,
                "tactic": p.tactic,
                "severity": p.severity,
                "sample": g.sample,
                "prompt": p.user_text,
                "response": g.response,
                "label": v.label,
                "judge": v.judge,
                "reason": v.reason,
            }
        )
    with open(out_dir / "verdicts.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarise(records)
    meta = {
        "label": ck.label,
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_id": ck.checkpoint_id,
        "settings": settings.__dict__,
        "judge": getattr(judge, "name", type(judge).__name__),
        "n_prompts": len(prompts),
        "n_generated": n_new,
        "n_cached": len(gens) - n_new,
    }
    artifacts = write_reports(out_dir, summary, meta)
    artifacts["eval_dir"] = str(out_dir)
    metrics = {"n_prompts": len(prompts), "n_generated": n_new}
    ov = summary["overall"]
    if "harmful" in ov:
        metrics["harmful_refusal_rate"] = ov["harmful"]["micro"]["rate"]
        metrics["harmful_refusal_macro"] = ov["harmful"]["macro"]
        metrics["harmful_partial_rate"] = ov["harmful"]["partial_rate"]
    if "benign" in ov:
        metrics["benign_over_refusal_rate"] = ov["benign"]["micro"]["rate"]
    for suite, s in summary["suites"].items():
        if "harmful" in s:
            metrics[f"{suite}/refusal_rate"] = s["harmful"]["micro"]["rate"]
        if "benign" in s:
            metrics[f"{suite}/over_refusal_rate"] = s["benign"]["micro"]["rate"]
    return metrics, artifacts


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    from safetune.console import console, print_metrics

    if cfg.get("mode", "eval") == "judge_check":
        from safetune.eval.judge_check import run_judge_check

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


def main() -> None:
    import sys

    sys.argv = [sys.argv[0], *subcommand_to_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
