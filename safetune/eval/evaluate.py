"""Eval stage: ``safetune-eval checkpoint=<run dir | base | model>``.

Generates answers to the configured suites (batched, cached, resumable), judges
refusals, and writes per-category results (JSON, Markdown, CSV, HTML) into the eval dir.

Beyond the refusal rate (``results.json`` -> ``summary``):

* ``rubric``: graceful-refusal rubric over the harmful refusals (``eval/rubric``: rules or llm), per category;
  each refusal's scores are in ``verdicts.jsonl`` (``rubric``);
* ``answers``: answer rate and answer length on the benign prompts;
* ``retention``: likelihood-based capability retention (``eval/retention``); per-example values in
  ``retention.json`` (reused when the checkpoint and settings are unchanged) for paired deltas in compare.

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
from safetune.eval.retention import answer_stats, run_retention
from safetune.eval.rubric import score_records, summarise_rubric
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
        if hasattr(ck.model, "peft_config"):  # adapters on a 4-bit base are not merged (see load_checkpoint)
            raise RuntimeError(
                f"generation.backend=vllm needs a merged model, but {ck.checkpoint_id} is a LoRA adapter on a 4-bit "
                "base, which is not merged. Export a merged model (safetune-export run_dir=...) and evaluate that "
                "directory, or use generation.backend=hf."
            )
        if not (merged / "config.json").is_file():
            ck.model.save_pretrained(merged, safe_serialization=True)
            ck.tokenizer.save_pretrained(merged)
        return str(merged)

    return get


def build_rubric_judge(rubric_cfg: Any) -> Any:
    """None for the rules scorer, else the configured LLM rubric judge (``eval/rubric=llm``)."""
    rc = _c(rubric_cfg) or {}
    scorer = rc.get("scorer", "rules")
    if scorer == "rules":
        return None
    if scorer != "llm":
        raise ValueError(f"eval.rubric.scorer={scorer!r}; expected 'rules' or 'llm' (conf/eval/rubric/<name>.yaml).")
    if not rc.get("judge"):
        raise ValueError("eval.rubric.scorer=llm needs eval.rubric.judge (see conf/eval/rubric/llm.yaml).")
    from hydra.utils import instantiate

    return instantiate(rc["judge"])


def retention_for(ck: Any, ret_cfg: Any, out_dir: Path) -> dict[str, Any] | None:
    """run_retention for ``ck``, saved with its settings as ``retention.json``; reused if both are unchanged.
    None when ``eval.retention`` is absent or ``enabled: false``."""
    from safetune.runs import write_json

    rc = _c(ret_cfg)
    if not rc or not rc.get("enabled", True):
        return None
    path = out_dir / "retention.json"
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("config") == rc and old.get("checkpoint_id") == ck.checkpoint_id:
            log.info("retention: reusing %s", path)
            return old
    res = run_retention(ck, rc)
    res["config"] = rc
    write_json(path, res)
    return res


def retention_summary(res: dict[str, Any]) -> dict[str, Any]:
    """The per-source means of a run_retention result (the per-example values stay in retention.json)."""
    out = {}
    for name, src in res["sources"].items():
        out[name] = {"n": src["n"], "loglik_mean": src["loglik_mean"]}
        if "preference_accuracy" in src:
            out[name]["preference_accuracy"] = src["preference_accuracy"]
    return out


def verdict_record(p: Any, response: str, v: Any, *, sample: int = 0) -> dict[str, Any]:
    """One row of verdicts.jsonl: the prompt's reporting fields, the answer, and the judge's verdict."""
    return {
        "prompt_id": p.id,
        "suite": p.suite,
        "kind": p.kind,
        "group": report_group(p),
        "category": p.category,
        "type": p.type,
        "tactic": p.tactic,
        "severity": p.severity,
        "sample": sample,
        "prompt": p.user_text,
        "response": response,
        "label": v.label,
        "judge": v.judge,
        "reason": v.reason,
    }


def run_eval(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetune.runs import agree_on_dir, process_state

    state = process_state()  # several CPU processes form a gloo group too
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
    rubric_judge = build_rubric_judge(cfg.eval.get("rubric"))
    by_id = {(p.suite, p.id): p for p in prompts}
    verdicts = judge.judge_many([(by_id[(g.suite, g.prompt_id)].user_text, g.response) for g in gens])
    records = [
        verdict_record(by_id[(g.suite, g.prompt_id)], g.response, v, sample=g.sample) for g, v in zip(gens, verdicts)
    ]
    score_records(records, rubric_judge, kind="harmful")  # adds r["rubric"] to harmful refusals
    with open(out_dir / "verdicts.jsonl", "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    summary = summarise(records)
    if any(r["kind"] == "harmful" for r in records):
        summary["rubric"] = summarise_rubric(records, kind="harmful")
    if any(r["kind"] == "benign" for r in records):
        summary["answers"] = answer_stats(records, kind="benign")
    ret = retention_for(ck, cfg.eval.get("retention"), out_dir)
    if ret is not None:
        summary["retention"] = retention_summary(ret)
    meta = {
        "label": ck.label,
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_id": ck.checkpoint_id,
        "settings": settings.__dict__,
        "judge": getattr(judge, "name", type(judge).__name__),
        "rubric_scorer": getattr(rubric_judge, "name", "rules"),
        "n_prompts": len(prompts),
        "n_generated": n_new,
        "n_cached": len(gens) - n_new,
    }
    artifacts = write_reports(out_dir, summary, meta)
    artifacts["eval_dir"] = str(out_dir)
    if ret is not None:
        artifacts["retention_json"] = str(out_dir / "retention.json")
    metrics = {"n_prompts": len(prompts), "n_generated": n_new}
    ov = summary["overall"]
    if "harmful" in ov:
        metrics["harmful_refusal_rate"] = ov["harmful"]["micro"]["rate"]
        metrics["harmful_refusal_macro"] = ov["harmful"]["macro"]
        metrics["harmful_partial_rate"] = ov["harmful"]["partial_rate"]
    if "benign" in ov:
        metrics["benign_over_refusal_rate"] = ov["benign"]["micro"]["rate"]
    if "rubric" in summary:
        rb = summary["rubric"]["overall"]
        metrics["rubric_n"] = rb["n"]
        if rb["n"]:  # no refusals: no rubric means (left out rather than NaN)
            metrics["rubric_mean_score"] = rb["mean_score"]
            metrics["rubric_alternative_rate"] = rb["alternative_rate"]
            metrics["rubric_lecturing_rate"] = rb["lecturing_rate"]
    if "answers" in summary:
        metrics["benign_answer_rate"] = summary["answers"]["answer_rate"]["rate"]
        if summary["answers"]["answer_rate"]["k"]:
            metrics["benign_mean_answer_words"] = summary["answers"]["mean_words"]
    for name, src in summary.get("retention", {}).items():
        metrics[f"retention/{name}/loglik_mean"] = src["loglik_mean"]
        if "preference_accuracy" in src:
            metrics[f"retention/{name}/preference_accuracy"] = src["preference_accuracy"]["rate"]
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
