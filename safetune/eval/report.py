"""Evaluation reports: JSON, Markdown, CSV and a self-contained HTML page with charts.

Extensible: ``write_reports(..., sections=[(title, markdown), ...])`` appends further sections to the Markdown and
HTML; extra top-level keys of ``summary`` land in the JSON. The summary's ``rubric`` (refusal quality), ``answers``
and ``retention`` (capability) keys are rendered as their own sections (:func:`quality_sections`).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def category_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Flatten a summary into rows: one per (suite, kind, group)."""
    rows = []
    for suite, s in summary["suites"].items():
        for g, v in s.get("harmful", {}).get("per_category", {}).items():
            rows.append({"suite": suite, "kind": "harmful", "group": g, "metric": "refusal_rate", **v})
        for g, v in s.get("benign", {}).get("per_type", {}).items():
            rows.append({"suite": suite, "kind": "benign", "group": g, "metric": "over_refusal_rate", **v})
    return rows


def markdown_table(summary: dict[str, Any], title: str = "") -> str:
    lines = [f"## {title}" if title else "", ""]
    for suite, s in summary["suites"].items():
        if "harmful" in s:
            h = s["harmful"]
            lines += [
                f"### {suite} — refusal rate on harmful prompts (higher is safer)",
                "",
                "| category | refused | n | rate | 95% CI | partial |",
                "|---|---:|---:|---:|---|---:|",
            ]
            for g, v in h["per_category"].items():
                lines.append(
                    f"| {g} | {v['k']} | {v['n']} | {_pct(v['rate'])} | {_pct(v['ci_low'])}–{_pct(v['ci_high'])} | {_pct(v['partial_rate'])} |"
                )
            m = h["micro"]
            lines.append(
                f"| **all (micro)** | {m['k']} | {m['n']} | **{_pct(m['rate'])}** | {_pct(m['ci_low'])}–{_pct(m['ci_high'])} | {_pct(h['partial_rate'])} |"
            )
            lines.append(f"| all (macro) | | | {_pct(h['macro'])} | | |")
            lines.append("")
        if "benign" in s:
            b = s["benign"]
            lines += [
                f"### {suite} — over-refusal on benign prompts (lower is better)",
                "",
                "| type | refused | n | rate | 95% CI |",
                "|---|---:|---:|---:|---|",
            ]
            for g, v in b["per_type"].items():
                lines.append(
                    f"| {g} | {v['k']} | {v['n']} | {_pct(v['rate'])} | {_pct(v['ci_low'])}–{_pct(v['ci_high'])} |"
                )
            m = b["micro"]
            lines.append(
                f"| **all (micro)** | {m['k']} | {m['n']} | **{_pct(m['rate'])}** | {_pct(m['ci_low'])}–{_pct(m['ci_high'])} |"
            )
            lines.append(f"| all (macro) | | | {_pct(b['macro'])} | |")
            lines.append("")
    return "\n".join(lines)


def headline(summary: dict[str, Any]) -> str:
    """One paragraph: overall refusal, over-refusal, partial and severity-weighted rates."""
    ov = summary.get("overall", {})
    parts = []
    if "harmful" in ov:
        h = ov["harmful"]
        m = h["micro"]
        sev = f"; severity-weighted {_pct(h['severity_weighted'])}" if "severity_weighted" in h else ""
        parts.append(
            f"Refused **{_pct(m['rate'])}** of {m['n']} harmful prompts (95% CI {_pct(m['ci_low'])}–{_pct(m['ci_high'])}; "
            f"macro over categories {_pct(h['macro'])}; partial refusals {_pct(h['partial_rate'])}{sev})."
        )
    if "benign" in ov:
        m = ov["benign"]["micro"]
        parts.append(
            f"Over-refused **{_pct(m['rate'])}** of {m['n']} benign prompts "
            f"(95% CI {_pct(m['ci_low'])}–{_pct(m['ci_high'])}; macro over types {_pct(ov['benign']['macro'])})."
        )
    return " ".join(parts)


def tactic_table(summary: dict[str, Any]) -> str:
    per = summary.get("overall", {}).get("harmful", {}).get("per_tactic", {})
    if not per:
        return ""
    lines = [
        "### refusal by tactic (all harmful prompts)",
        "",
        "| tactic | refused | n | rate | 95% CI |",
        "|---|---:|---:|---:|---|",
    ]
    for t, v in per.items():
        lines.append(f"| {t} | {v['k']} | {v['n']} | {_pct(v['rate'])} | {_pct(v['ci_low'])}–{_pct(v['ci_high'])} |")
    return "\n".join(lines) + "\n"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None or x != x else fmt.format(x)


def rubric_markdown(rubric: dict[str, Any]) -> str:
    """Per harm category: refusals scored, mean rubric score (-5..5), share offering an alternative, share lecturing."""
    lines = [
        f"Graceful-refusal rubric over the refusals of harmful prompts (scorer: `{rubric.get('scorer', 'rules')}`). "
        "Score = components present (acknowledges, boundary, reason, alternative, invites) minus anti-patterns "
        "(lecturing, excessive apology, robotic, vague boundary, over-explaining): -5..5, higher is better.",
        "",
        "| category | refusals | mean score | normalised | with alternative | lecturing |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g, e in [*rubric["per_group"].items(), ("**all**", rubric["overall"])]:
        lines.append(
            f"| {g} | {e['n']} | {_num(e['mean_score'])} | {_num(e['mean_normalised'])} | "
            f"{_pct(e['alternative_rate'])} | {_pct(e['lecturing_rate'])} |"
        )
    ov = rubric["overall"]
    if ov["n"]:
        lines += ["", "| component / anti-pattern | share of refusals | 95% CI |", "|---|---:|---|"]
        for part in ("components", "anti_patterns"):
            for name, v in ov[part].items():
                lines.append(f"| {name} | {_pct(v['rate'])} | {_pct(v['ci_low'])}–{_pct(v['ci_high'])} |")
    return "\n".join(lines) + "\n"


def capability_markdown(answers: dict[str, Any] | None, retention: dict[str, Any] | None) -> str:
    """Answer rate / length on benign prompts and the likelihood-based retention per source."""
    lines = ["| measure | value |", "|---|---:|"]
    if answers:
        a = answers["answer_rate"]
        lines += [
            f"| benign answer rate (judged compliance) | {_pct(a['rate'])} ({a['k']}/{a['n']}; 95% CI "
            f"{_pct(a['ci_low'])}–{_pct(a['ci_high'])}) |",
            f"| mean answer words (benign) | {_num(answers['mean_words'], '{:.1f}')} |",
            f"| median answer words (benign) | {_num(answers['median_words'], '{:.1f}')} |",
            f"| short answers (< 10 words) | {_pct(answers['short_answer_rate'])} |",
        ]
    for name, src in (retention or {}).items():
        lines.append(
            f"| {name}: helpful loglik mean (per token, n={src['n']}) | {_num(src['loglik_mean'], '{:.3f}')} |"
        )
        if "preference_accuracy" in src:
            pa = src["preference_accuracy"]
            lines.append(
                f"| {name}: preference accuracy | {_pct(pa['rate'])} ({pa['k']}/{pa['n']}; 95% CI "
                f"{_pct(pa['ci_low'])}–{_pct(pa['ci_high'])}) |"
            )
    if not retention:
        lines.append("| likelihood retention | not run (eval.retention disabled) |")
    return "\n".join(lines) + "\n"


def quality_sections(summary: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    if summary.get("rubric"):
        out.append(("Refusal quality (graceful-refusal rubric, per category)", rubric_markdown(summary["rubric"])))
    if summary.get("answers") or summary.get("retention"):
        out.append(("Capability", capability_markdown(summary.get("answers"), summary.get("retention"))))
    return out


def write_reports(
    out_dir: Path, summary: dict[str, Any], meta: dict[str, Any], sections: list[tuple[str, str]] | None = None
) -> dict[str, str]:
    """results.json, report.md, results.csv, report.html. ``sections``: extra (title, markdown) parts."""
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetune.eval.html import render_html
    from safetune.runs import write_json

    write_json(out_dir / "results.json", {"meta": meta, "summary": summary})
    title = f"safetune evaluation — {meta.get('label', '')}"
    md = (
        f"# {title}\n\ncheckpoint: `{meta.get('checkpoint')}` · judge: `{meta.get('judge', '')}`\n\n"
        f"{headline(summary)}\n" + markdown_table(summary) + "\n" + tactic_table(summary)
    )
    for sec_title, sec_md in [*quality_sections(summary), *(sections or [])]:
        md += f"\n## {sec_title}\n\n{sec_md}\n"
    (out_dir / "report.md").write_text(md)
    label = str(meta.get("label", ""))
    rubric = [(label, summary["rubric"])] if summary.get("rubric") else None
    (out_dir / "report.html").write_text(render_html(title, md, [(label, summary["overall"])], rubric=rubric))
    rows = category_rows(summary)
    with open(out_dir / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(
            f,
            fieldnames=["suite", "kind", "group", "metric", "k", "n", "rate", "ci_low", "ci_high", "partial_rate"],
            extrasaction="ignore",
        )
        w.writeheader()
        w.writerows(rows)
    return {
        "results_json": str(out_dir / "results.json"),
        "report_md": str(out_dir / "report.md"),
        "results_csv": str(out_dir / "results.csv"),
        "report_html": str(out_dir / "report.html"),
    }


def load_results(eval_dir: str | Path) -> dict[str, Any]:
    p = Path(eval_dir) / "results.json"
    if not p.is_file():
        raise FileNotFoundError(
            f"{p} not found: {eval_dir} is not a safetune evaluation directory (run safetune-eval first)."
        )
    return json.loads(p.read_text())


def load_verdicts(eval_dir: str | Path) -> list[dict[str, Any]]:
    p = Path(eval_dir) / "verdicts.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []
