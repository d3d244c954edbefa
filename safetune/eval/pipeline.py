"""The evaluation pipeline: the one way to turn prompts and a model into judged, typed records and a summary.

``safetune-eval`` (:func:`run_eval`), the in-training safety callback and preference synthesis all call
:func:`score` and :func:`summarise_records`, so their numbers agree by construction::

    prompts ─► format ─► generate (cached, resumable, multi-process) ─► judge ─► EvalRecord ─► rubric ─► summary

:func:`run_eval` adds what an evaluation directory holds: the checkpoint resolved from ``checkpoint=``,
``generations.jsonl``, ``verdicts.jsonl``, capability retention (``retention.json``) and the reports.

Beyond the refusal rate (``results.json`` -> ``summary``):

* ``rubric``: graceful-refusal rubric over the harmful refusals (``eval/rubric``: rules or llm), per category;
  each refusal's scores are in ``verdicts.jsonl`` (``rubric``);
* ``answers``: answer rate and answer length on the benign prompts;
* ``retention``: likelihood-based capability retention (``eval/retention``); per-example values in
  ``retention.json`` (reused when the checkpoint and settings are unchanged) for paired deltas in compare.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetune.core.config import instantiate, to_plain
from safetune.core.errors import InputError, WorkExistsError
from safetune.core.runs import agree_on_dir, process_state, write_text
from safetune.core.schema import EvalPrompt, EvalRecord, Generation
from safetune.eval.checkpoints import LoadedCheckpoint, load_checkpoint, vllm_model_dir
from safetune.eval.generate import GenerationCache, GenerationSettings, generate
from safetune.eval.judges import build_judge
from safetune.eval.metrics import answer_stats, headline_metrics, summarise
from safetune.eval.report import load_results, write_reports
from safetune.eval.retention import retention_for, retention_summary
from safetune.eval.review import apply_human_labels, labels_summary, load_human_labels
from safetune.eval.rubric import RulesRubric, score_records, summarise_rubric
from safetune.eval.suites import load_suites

log = logging.getLogger(__name__)

__all__ = ["judge_generations", "score", "summarise_records", "run_eval", "build_rubric_scorer", "load_suites"]


def judge_generations(prompts: list[EvalPrompt], gens: list[Generation], judge: Any) -> list[EvalRecord]:
    """One :class:`EvalRecord` per generation, judged in one batch."""
    by_id = {(p.suite, p.id): p for p in prompts}
    verdicts = judge.judge_many([(by_id[(g.suite, g.prompt_id)].user_text, g.response) for g in gens])
    return [
        EvalRecord.from_prompt(by_id[(g.suite, g.prompt_id)], g.response, v, sample=g.sample)
        for g, v in zip(gens, verdicts, strict=True)
    ]


def score(
    ck: LoadedCheckpoint,
    prompts: list[EvalPrompt],
    settings: GenerationSettings,
    cache: GenerationCache,
    judge: Any,
    *,
    rubric: Any = None,
    show_progress: bool = True,
    vllm_dir: Callable[[], str] | None = None,
    split_across_processes: bool = True,
) -> tuple[list[EvalRecord], int]:
    """Generate ``ck``'s answers (skipping cached ones), judge and rubric-score them: ``(records in prompt order,
    n generated)``. ``ck`` is a :class:`~safetune.eval.checkpoints.LoadedCheckpoint` (model, tokenizer, formatter and
    the checkpoint id the cache keys on).

    Under several processes every rank generates its share and only the main process judges (others get ``[]``);
    ``split_across_processes=False`` generates and judges here alone (a caller the other ranks do not join).
    ``rubric``: a rubric scorer for the harmful refusals (default :class:`~safetune.eval.rubric.RulesRubric`).
    """
    gens, n_new = generate(
        ck.model,
        ck.tokenizer,
        ck.formatter,
        prompts,
        settings,
        cache,
        ck.checkpoint_id,
        show_progress=show_progress,
        vllm_model_dir=vllm_dir,
        split_across_processes=split_across_processes,
    )
    if split_across_processes and not process_state().is_main_process:
        return [], n_new
    records = judge_generations(prompts, gens, judge)
    score_records(records, rubric or RulesRubric(), kind="harmful")  # adds r.rubric to harmful refusals
    return records, n_new


def summarise_records(records: list[EvalRecord]) -> dict[str, Any]:
    """Refusal per group, plus the rubric over harmful refusals and answer statistics over benign prompts."""
    summary = summarise(records)
    if any(r.kind == "harmful" for r in records):
        summary["rubric"] = summarise_rubric(records, kind="harmful")
    if any(r.kind == "benign" for r in records):
        summary["answers"] = answer_stats(records, kind="benign")
    return summary


def build_rubric_scorer(rubric_cfg: Any) -> Any:
    """The ``eval.rubric`` scorer (a ``_target_``: rules by default, or an LLM rubric judge)."""
    rc = to_plain(rubric_cfg) or {}
    if not rc or "_target_" not in rc:
        return RulesRubric()
    return instantiate(rc)


def default_out_dir(evals_dir: str, label: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", label)
    return Path(evals_dir) / safe


def write_verdicts(path: Path, records: list[EvalRecord]) -> None:
    write_text(path, "".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in records))


def guard_eval_dir(
    out_dir: Path, *, checkpoint: str, suites: list[str], checkpoint_id: str | None, overwrite: bool
) -> None:
    """Refuse to write into an evaluation directory of another checkpoint or suite set (unless ``overwrite``).

    The same checkpoint and suites resume from the generation cache instead."""
    path = out_dir / "results.json"
    if overwrite or not path.is_file():
        return
    meta = load_results(out_dir).get("meta", {})
    old_suites = sorted(meta.get("suites") or load_results(out_dir).get("summary", {}).get("suites", {}))
    clash = []

    def same(a: Any, b: str) -> bool:
        return a is None or a == b or (Path(str(a)).exists() and Path(str(a)).resolve() == Path(b).resolve())

    if not same(meta.get("checkpoint"), checkpoint):
        clash.append(f"checkpoint {meta.get('checkpoint')!r} (now {checkpoint!r})")
    if checkpoint_id is not None and meta.get("checkpoint_id") not in (None, checkpoint_id):
        clash.append(f"weights {meta.get('checkpoint_id')!r} (now {checkpoint_id!r})")
    if old_suites and sorted(suites) != old_suites:
        clash.append(f"suites {old_suites} (now {sorted(suites)})")
    if clash:
        raise WorkExistsError(
            f"out_dir={out_dir} holds the evaluation of another "
            + "; ".join(clash)
            + "; its reports would be replaced.",
            hint="pick another out_dir (or leave it unset), or overwrite=true to replace that evaluation",
        )


def run_eval(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``safetune-eval``: load the checkpoint, score every suite prompt, add retention, write the eval directory."""
    state = process_state()  # several CPU processes form a gloo group too
    prompts = load_suites(cfg.eval.suite, cfg.get("limit_per_group"))  # fail on bad suites before loading a model
    if not prompts:
        raise InputError("The configured evaluation suites are empty.")
    guard = {"checkpoint": str(cfg.checkpoint), "suites": sorted({p.suite for p in prompts})}
    guard["overwrite"] = bool(cfg.get("overwrite", False))
    if cfg.get("out_dir"):  # before the model loads: the cheap part of the check
        guard_eval_dir(Path(cfg.out_dir), checkpoint_id=None, **guard)
    judge = build_judge(cfg.eval.judge) if state.is_main_process else None
    rubric = build_rubric_scorer(cfg.eval.get("rubric")) if state.is_main_process else None
    ck = load_checkpoint(str(cfg.checkpoint), to_plain(cfg.model), to_plain(cfg.template))
    if not getattr(ck.model, "is_loaded_in_4bit", False) and next(ck.model.parameters()).device != state.device:
        ck.model.to(state.device)  # this rank's GPU when there is one (4-bit models are placed at load)
    out_dir = agree_on_dir(Path(cfg.out_dir) if cfg.get("out_dir") else default_out_dir(cfg.paths.evals, ck.label))
    guard_eval_dir(out_dir, checkpoint_id=ck.checkpoint_id, **guard)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = GenerationSettings.from_cfg(to_plain(cfg.generation))
    records, n_new = score(
        ck,
        prompts,
        settings,
        GenerationCache(out_dir / "generations.jsonl"),
        judge,
        rubric=rubric,
        vllm_dir=vllm_model_dir(ck, out_dir),
    )
    if not state.is_main_process:
        return {}, {}
    threshold = float(cfg.eval.get("review_threshold") or 0.7)
    if cfg.eval.get("labels"):
        n = apply_human_labels(records, load_human_labels(cfg.eval.labels))
        log.info("%d verdict(s) human-labelled from %s", n, cfg.eval.labels)
    write_verdicts(out_dir / "verdicts.jsonl", records)
    summary = summarise_records(records)
    summary["labels"] = labels_summary(records, threshold)
    ret = retention_for(ck, cfg.eval.get("retention"), out_dir)
    if ret is not None:
        summary["retention"] = retention_summary(ret)
    meta = {
        "label": ck.label,
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_id": ck.checkpoint_id,
        "settings": settings.__dict__,
        "judge": getattr(judge, "name", type(judge).__name__),
        "rubric_scorer": getattr(rubric, "name", "rules"),
        "suites": guard["suites"],
        "n_prompts": len(prompts),
        "n_generated": n_new,
        "n_cached": len(records) - n_new,
    }
    artifacts = write_reports(out_dir, summary, meta)
    artifacts["eval_dir"] = str(out_dir)
    if ret is not None:
        artifacts["retention_json"] = str(out_dir / "retention.json")
    metrics = {"n_prompts": len(prompts), "n_generated": n_new, **headline_metrics(summary)}
    return metrics, artifacts
