"""Real evaluation directories for the notebook and browser tests, written by the library's own functions.

Prompts: 6 harmful rows (6 categories) and 6 benign rows (several XSTest-style types) of the bundled preference
set. Three checkpoints answer them; every answer is judged by the real keyword judge and summarised/reported by
``safetune.eval.metrics.summarise`` and ``safetune.eval.report.write_reports``:

* ``base``                  — the eval stage itself (``run_eval``) on a randomly initialised 2-layer Llama: noise
                              answers, so it practically never refuses;
* ``sweep/pairs-chosen``    — answers are the pairs' *chosen* replies (graceful refusals / helpful answers);
* ``sweep/pairs-rejected``  — answers are the pairs' *rejected* replies (compliance / over-refusals).

``sweep/`` is a directory of evaluation directories, like a sweep's output, so loaders must expand it. Built once
per process into a temporary directory; no verdict or rate is written by hand.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from safetune import CONF_DIR


def bundled_rows() -> list:
    """6 harmful rows in distinct categories and 6 benign rows, from the bundled preference data."""
    from safetune.data.sources.triplets import load

    rows = list(load("bundled://safety_prefs"))
    harmful, seen = [], set()
    for r in rows:
        if r.is_harmful and r.categories[0] not in seen and len(harmful) < 6:
            harmful.append(r)
            seen.add(r.categories[0])
    benign = [r for r in rows if not r.is_harmful][::15][:6]
    return harmful + benign


def suite_rows(rows: list) -> list[dict]:
    out = []
    for r in rows:
        d = {"id": r.id, "prompt": r.user_text, "tactic": r.tactic}
        if r.is_harmful:
            d.update(category=r.categories[0], severity=r.severity)
        else:
            d.update(kind="benign", type=r.id.split("-")[1])
        out.append(d)
    return out


_BUILT: dict[str, Path] = {}


def tiny_llama(out: Path) -> str:
    from train_tiny import make_tiny_model

    return str(make_tiny_model(out, hidden=32, tie=False, pad=True))


def run_one(model: str, suite: Path, out_dir: Path) -> None:
    """The eval stage proper (generation, cache, judge, reports) on ``model``."""
    from safetune.eval.pipeline import run_eval

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(
            "eval",
            overrides=[
                f"model.name_or_path={model}",
                "checkpoint=base",
                f"out_dir={out_dir}",
                "generation.batch_size=12",
                "generation.max_new_tokens=8",
                "eval/judge=keyword",
            ],
        )
    with open_dict(cfg):
        cfg.eval.suite = {
            "suites": [{"name": "mine", "_target_": "safetune.eval.suites.bundled.load_jsonl", "path": str(suite)}]
        }
    run_eval(cfg)


def write_answers(out_dir: Path, suite: Path, answers: dict[str, str], label: str) -> None:
    """A checkpoint whose answers are given: judged, summarised and reported exactly as ``run_eval`` does."""
    from safetune.core.schema import EvalRecord
    from safetune.eval.judges.keyword import KeywordJudge
    from safetune.eval.metrics import summarise
    from safetune.eval.report import write_reports
    from safetune.eval.suites import load_suite

    prompts = load_suite({"name": "mine", "_target_": "safetune.eval.suites.bundled.load_jsonl", "path": str(suite)})
    verdicts = KeywordJudge().judge_many([(p.user_text, answers[p.id]) for p in prompts])
    records = [EvalRecord.from_prompt(p, answers[p.id], v) for p, v in zip(prompts, verdicts)]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "verdicts.jsonl").write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    write_reports(out_dir, summarise(records), {"label": label, "checkpoint": label, "judge": "keyword"})


def build_eval_dirs() -> Path:
    """The root holding ``base/`` and ``sweep/pairs-{chosen,rejected}/`` (built once per process)."""
    if "root" in _BUILT:
        return _BUILT["root"]
    root = Path(tempfile.mkdtemp(prefix="safetune-evals-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    rows = bundled_rows()
    suite = root / "prompts.jsonl"
    suite.write_text("".join(json.dumps(p) + "\n" for p in suite_rows(rows)))
    evals = root / "evals"
    run_one(tiny_llama(root / "tiny-llama"), suite, evals / "base")
    write_answers(evals / "sweep" / "pairs-chosen", suite, {r.id: r.chosen for r in rows}, "pairs-chosen")
    write_answers(evals / "sweep" / "pairs-rejected", suite, {r.id: r.rejected for r in rows}, "pairs-rejected")
    _BUILT["root"] = evals
    return evals


def flips_between(a: Path, b: Path) -> int:
    """Prompts whose refusal verdict differs between two eval dirs (counted from verdicts.jsonl directly)."""
    load = lambda d: {  # noqa: E731
        (r["suite"], r["prompt_id"]): r["label"] == "refusal"
        for r in map(json.loads, (d / "verdicts.jsonl").read_text().splitlines())
    }
    va, vb = load(a), load(b)
    return sum(va[k] != vb[k] for k in va.keys() & vb.keys())
