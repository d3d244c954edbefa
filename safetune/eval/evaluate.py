"""Eval stage: ``safetune-eval checkpoint=<run dir | base | model>``.

Generates answers to the configured suites (batched, cached, resumable), judges
refusals, and writes per-category results (JSON, Markdown, CSV) into the eval dir.
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
from safetune.eval.suites import limit_per_group, load_suite

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


def run_eval(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    prompts = load_suites(cfg.eval.suite, cfg.get("limit_per_group"))  # fail on bad suites before loading a model
    if not prompts:
        raise ValueError("The configured evaluation suites are empty.")
    judge = build_judge(cfg.eval.judge)
    ck = load_checkpoint(str(cfg.checkpoint), _c(cfg.model), _c(cfg.template))
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(cfg, ck.label)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = GenerationSettings.from_cfg(_c(cfg.generation))
    cache = GenerationCache(out_dir / "generations.jsonl")
    gens, n_new = generate(ck.model, ck.tokenizer, ck.formatter, prompts, settings, cache, ck.checkpoint_id)
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
                "group": p.group,
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
    metrics, artifacts = run_eval(cfg)
    from safetune.console import console, print_metrics

    console.print(Path(artifacts["report_md"]).read_text())
    print_metrics("eval", metrics, artifacts)


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
