"""The files of an evaluation directory: results.json, report.md, results.csv, report.html (written), and the
readers of results.json and verdicts.jsonl.

Reports lead with the decision: the headline block (:mod:`safetune.eval.render.headline`), then the charts (HTML),
then the tables, then (HTML) a filterable browser of every judged answer of ``verdicts.jsonl``.

Extensible: ``write_reports(..., sections=[(title, markdown), ...])`` appends further sections to the Markdown and
HTML; extra top-level keys of ``summary`` land in the JSON.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from safetune.core.errors import MissingInputError
from safetune.core.runs import write_json, write_text
from safetune.core.schema import EvalRecord, SchemaError
from safetune.data.io import iter_file_rows
from safetune.eval.render.browser import BROWSER_CSS, browser_html
from safetune.eval.render.headline import HEADLINE_CSS, eval_cards, headline_html, headline_markdown, review_markdown
from safetune.eval.render.html import render_html
from safetune.eval.render.markdown import report_markdown, report_tables_markdown
from safetune.eval.review import labels_summary
from safetune.eval.stats import t_mean_ci

log = logging.getLogger(__name__)

REVIEW_THRESHOLD = 0.7  # the default eval.review_threshold, for summaries written without ``labels``


def category_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a summary into rows: one per (suite, kind, group)."""
    rows = []
    for suite, s in summary["suites"].items():
        for g, v in s.get("harmful", {}).get("per_category", {}).items():
            rows.append({"suite": suite, "kind": "harmful", "group": g, "metric": "refusal_rate", **v})
        for g, v in s.get("benign", {}).get("per_type", {}).items():
            rows.append({"suite": suite, "kind": "benign", "group": g, "metric": "over_refusal_rate", **v})
    return rows


def retention_intervals(out_dir: Path) -> dict[str, list[float]]:
    """Student-t 95% intervals of the mean helpful log-likelihood per retention source, from ``retention.json``
    (empty when retention was not run)."""
    p = out_dir / "retention.json"
    if not p.is_file():
        return {}
    try:
        sources = json.loads(p.read_text(encoding="utf-8")).get("sources", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
        log.warning("%s: unreadable (%s); the headline shows retention without an interval "
                    "(delete the file and re-run safetune-eval to recompute it)", p, e)  # fmt: skip
        return {}
    return {
        name: list(t_mean_ci(np.asarray(src["loglik"], dtype=float), 0.95))
        for name, src in sources.items()
        if isinstance(src, dict) and src.get("loglik")
    }


def checkpoint_view(
    name: str, meta: dict[str, Any], summary: dict[str, Any], records: list[EvalRecord]
) -> dict[str, Any]:
    """What the headline shows of a checkpoint besides its rates: judge, the judge's measured accuracy, labels."""
    from safetune.eval.judge_check import measured_accuracy  # the judges (torch) only when a report is written

    judge = str(meta.get("judge") or "")
    return {
        "name": name,
        "judge": judge or "unknown",
        "judge_accuracy": measured_accuracy(judge) if judge else None,
        "labels": summary.get("labels") or (labels_summary(records, REVIEW_THRESHOLD) if records else None),
        "n_verdicts": len(records) if records else None,
        "selectivity": summary.get("selectivity"),
    }


def write_reports(
    out_dir: Path,
    summary: dict[str, Any],
    meta: dict[str, Any],
    sections: list[tuple[str, str]] | None = None,
    records: list[EvalRecord] | None = None,
) -> dict[str, str]:
    """results.json, report.md, results.csv, report.html. ``sections``: extra (title, markdown) parts; ``records``:
    the judged answers (default: the directory's verdicts.jsonl, which the eval stage writes first) for the
    headline's verdict counts and the HTML example browser. A summary without ``labels`` gets them here (threshold
    :data:`REVIEW_THRESHOLD`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if records is None:
        records = load_verdicts(out_dir)
    if "labels" not in summary and records:
        summary = {**summary, "labels": labels_summary(records, REVIEW_THRESHOLD)}
    write_json(out_dir / "results.json", {"meta": meta, "summary": summary})
    title = f"safetune evaluation — {meta.get('label', '')}"
    label = str(meta.get("label", ""))
    cards = eval_cards(summary, checkpoint_view(label, meta, summary, records), retention_intervals(out_dir))
    review = review_markdown(summary.get("labels"))
    secs = [*(sections or []), *([("Review these: low-confidence verdicts", review)] if review else [])]
    write_text(out_dir / "report.md", report_markdown(summary, meta, secs, head=headline_markdown(cards)))
    rubric = [(label, summary["rubric"])] if summary.get("rubric") else None
    threshold = float((summary.get("labels") or {}).get("threshold") or REVIEW_THRESHOLD)
    page = render_html(
        title,
        report_tables_markdown(summary, secs),
        [(label, summary["overall"])],
        rubric=rubric,
        headline=headline_html(cards),
        browser=browser_html([records], [label], threshold),
        css=HEADLINE_CSS + "\n" + BROWSER_CSS,
    )
    write_text(out_dir / "report.html", page)
    rows = category_rows(summary)
    buf = io.StringIO()
    w = csv.DictWriter(
        buf,
        fieldnames=["suite", "kind", "group", "metric", "k", "n", "rate", "ci_low", "ci_high", "partial_rate"],
        extrasaction="ignore",
    )
    w.writeheader()
    w.writerows(rows)
    write_text(out_dir / "results.csv", buf.getvalue())
    return {
        "results_json": str(out_dir / "results.json"),
        "report_md": str(out_dir / "report.md"),
        "results_csv": str(out_dir / "results.csv"),
        "report_html": str(out_dir / "report.html"),
    }


def load_results(eval_dir: str | Path) -> dict[str, Any]:
    p = Path(eval_dir) / "results.json"
    if not p.is_file():
        raise MissingInputError(
            f"{p} not found: {eval_dir} is not a safetune evaluation directory (run safetune-eval first)."
        )
    try:
        out = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SchemaError(
            f"{p}: not valid JSON ({e}); the evaluation was interrupted while writing, or the file was edited.",
            hint=f"re-run safetune-eval into {eval_dir} (answers are cached, nothing is regenerated)",
        ) from e
    if not isinstance(out, dict) or "summary" not in out:
        raise SchemaError(f"{p}: expected a safetune results.json with 'meta' and 'summary', got {type(out).__name__}.")
    return out


def load_verdicts(eval_dir: str | Path) -> list[EvalRecord]:
    p = Path(eval_dir) / "verdicts.jsonl"
    if not p.is_file():
        return []
    return [EvalRecord.from_dict(row) for _, row in iter_file_rows(p)]
