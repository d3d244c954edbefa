"""The files of an evaluation directory: results.json, report.md, results.csv, report.html (written), and the
readers of results.json and verdicts.jsonl.

Extensible: ``write_reports(..., sections=[(title, markdown), ...])`` appends further sections to the Markdown and
HTML; extra top-level keys of ``summary`` land in the JSON.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from safetune.core.errors import MissingInputError
from safetune.core.runs import write_json, write_text
from safetune.core.schema import EvalRecord, SchemaError
from safetune.data.io import iter_file_rows
from safetune.eval.render.html import render_html
from safetune.eval.render.markdown import report_markdown


def category_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a summary into rows: one per (suite, kind, group)."""
    rows = []
    for suite, s in summary["suites"].items():
        for g, v in s.get("harmful", {}).get("per_category", {}).items():
            rows.append({"suite": suite, "kind": "harmful", "group": g, "metric": "refusal_rate", **v})
        for g, v in s.get("benign", {}).get("per_type", {}).items():
            rows.append({"suite": suite, "kind": "benign", "group": g, "metric": "over_refusal_rate", **v})
    return rows


def write_reports(
    out_dir: Path, summary: dict[str, Any], meta: dict[str, Any], sections: list[tuple[str, str]] | None = None
) -> dict[str, str]:
    """results.json, report.md, results.csv, report.html. ``sections``: extra (title, markdown) parts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "results.json", {"meta": meta, "summary": summary})
    title = f"safetune evaluation — {meta.get('label', '')}"
    md = report_markdown(summary, meta, sections)
    write_text(out_dir / "report.md", md)
    label = str(meta.get("label", ""))
    rubric = [(label, summary["rubric"])] if summary.get("rubric") else None
    write_text(out_dir / "report.html", render_html(title, md, [(label, summary["overall"])], rubric=rubric))
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
