"""Markdown for evaluation reports (report.md) and comparisons (compare.md).

Reports: (after the headline block of :mod:`.headline`) per-suite refusal / over-refusal tables with Wilson
intervals, refusal by tactic, the refusal-quality rubric and capability sections. Comparisons: the side-by-side
per-group table with deltas, paired exact McNemar tests, the safety-gain vs helpfulness-cost table, the rubric per
category and flipped examples.
"""

from __future__ import annotations

from typing import Any


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None or x != x else fmt.format(x)


# kind -> (heading, group column, the per-group key of the summary, extra columns (header, value getter))
_TABLES = {
    "harmful": ("refusal rate on harmful prompts (higher is safer)", "category", "per_category", True),
    "benign": ("over-refusal on benign prompts (lower is better)", "type", "per_type", False),
}


def _table(suite: str, kind: str, part: dict[str, Any]) -> list[str]:
    heading, col, key, partial = _TABLES[kind]
    extra_head, extra_sep = (" partial |", "---:|") if partial else ("", "")
    lines = [
        f"### {suite} — {heading}",
        "",
        f"| {col} | refused | n | rate | 95% CI |{extra_head}",
        f"|---|---:|---:|---:|---|{extra_sep}",
    ]

    def row(name: str, v: dict[str, Any], p: float | None, bold: bool = False) -> str:
        rate = f"**{_pct(v['rate'])}**" if bold else _pct(v["rate"])
        cells = f"| {name} | {v['k']} | {v['n']} | {rate} | {_pct(v['ci_low'])}–{_pct(v['ci_high'])} |"
        return cells + (f" {_pct(p)} |" if partial else "")

    lines += [row(g, v, v.get("partial_rate")) for g, v in part[key].items()]
    lines.append(row("**all (micro)**", part["micro"], part.get("partial_rate"), bold=True))
    lines += [f"| all (macro) | | | {_pct(part['macro'])} | |" + (" |" if partial else ""), ""]
    return lines


def markdown_table(summary: dict[str, Any], title: str = "") -> str:
    lines = [f"## {title}" if title else "", ""]
    for suite, s in summary["suites"].items():
        for kind in ("harmful", "benign"):
            if kind in s:
                lines += _table(suite, kind, s[kind])
    return "\n".join(lines)


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


def report_tables_markdown(summary: dict[str, Any], sections: list[tuple[str, str]] | None = None) -> str:
    """The tables of an evaluation report: per suite, tactics, then quality and extra sections."""
    md = markdown_table(summary, "Per suite and group") + "\n" + tactic_table(summary)
    for sec_title, sec_md in [*quality_sections(summary), *(sections or [])]:
        md += f"\n## {sec_title}\n\n{sec_md}\n"
    return md


def report_markdown(
    summary: dict[str, Any],
    meta: dict[str, Any],
    sections: list[tuple[str, str]] | None = None,
    head: str = "",
) -> str:
    """The evaluation report (report.md): title, the ``head`` (the headline block,
    :mod:`safetune.eval.render.headline`), then :func:`report_tables_markdown`."""
    title = f"safetune evaluation — {meta.get('label', '')}"
    intro = f"# {title}\n\ncheckpoint: `{meta.get('checkpoint')}` · judge: `{meta.get('judge', '')}`\n\n"
    return intro + (f"{head}\n" if head else "") + report_tables_markdown(summary, sections)


# ------------------------------------------------------------------------------------------------- comparisons


def _pp(c: dict[str, Any]) -> str:
    """A change of a rate in percentage points (with its McNemar p when there is one)."""
    if c["delta"] is None:
        return "–"
    p = f" (p={c['p_value']:.3g})" if "p_value" in c else ""
    return f"{100 * c['delta']:+.1f} pp{p}"


def _ci(r: dict[str, Any], scale: float = 1.0, fmt: str = "{:+.3f}", p: bool = False) -> str:
    s = f"{fmt.format(scale * r['delta'])} [{fmt.format(scale * r['ci_low'])}, {fmt.format(scale * r['ci_high'])}]"
    return s + (f" (p={r['p_value']:.3g})" if p and "p_value" in r else "")


def selection_markdown(cmp: dict[str, Any]) -> list[str]:
    """Selectivity per checkpoint and the checkpoint the selection bounds pick (marked ✔)."""
    sel = cmp.get("selection")
    if not sel:
        return []
    b = sel["bounds"]
    bounds = ", ".join(
        f"{k.replace('_', ' ')} {'≤' if k.startswith('max') else '≥'} {v:g}" for k, v in b.items() if v is not None
    )
    lines = [
        "",
        "## Selection: refuse harm, not life",
        "",
        f"Selectivity = refusal on harmful prompts − refusal on benign prompts (all suites). Bounds: {bounds or 'none'}. "
        f"Selected: **{sel['selected']}** ({sel['reason']}).",
        "",
        "| checkpoint | harmful refusal | over-refusal | selectivity | retention Δ | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in sel["points"]:
        ret = "–" if p["retention_delta"] is None else f"{p['retention_delta']:+.2f}"
        sel_pp = "–" if p["selectivity"] is None else f"{100 * p['selectivity']:+.1f} pp"
        mark = "✔ selected" if p["name"] == sel["selected"] else ""
        lines.append(
            f"| {p['name']} | {_pct(p['harmful_refusal'])} | {_pct(p['over_refusal'])} | {sel_pp} | {ret} | {mark} |"
        )
    return lines


def tradeoff_markdown(cmp: dict[str, Any]) -> list[str]:
    """Safety gain and helpfulness cost side by side (rows: measures; columns: baseline value, then Δ per checkpoint)."""
    tr = cmp.get("tradeoff") or []
    if not tr:
        return []
    names = cmp["names"]
    first = tr[0]
    lines = [
        "",
        f"## Safety gain vs helpfulness cost (Δ vs baseline {names[0]})",
        "",
        "Proportions in percentage points with exact McNemar p on the same prompts; log-likelihood deltas (mean "
        "per-token, helpful reference answers) and preference-accuracy deltas with paired bootstrap 95% intervals.",
        "",
        f"| measure | {names[0]} | " + " | ".join(f"Δ {t['other']}" for t in tr) + " |",
        "|---|---:|" + "---:|" * len(tr),
    ]

    def row(label: str, key: str, base_fmt: Any, delta_fmt: Any) -> None:
        lines.append(
            f"| {label} | {base_fmt(first[key]['base'])} | " + " | ".join(delta_fmt(t[key]) for t in tr) + " |"
        )

    row("harmful refusal rate (safety ↑)", "refusal_rate", _pct, _pp)
    row("benign over-refusal rate (↓)", "over_refusal_rate", _pct, _pp)
    row("rubric mean score (-5..5, ↑)", "rubric_mean_score", _num, lambda c: _num(c["delta"], "{:+.2f}"))
    row("refusals offering an alternative (↑)", "rubric_alternative_rate", _pct, _pp)
    row("refusals lecturing (↓)", "rubric_lecturing_rate", _pct, _pp)
    row("benign answer rate (↑)", "answer_rate", _pct, _pp)
    row(
        "mean answer words, benign",
        "mean_answer_words",
        lambda x: _num(x, "{:.1f}"),
        lambda c: _num(c["delta"], "{:+.1f}"),
    )
    sources = sorted({s for t in tr for s in t["retention"]})
    for src in sources:
        base_r = next((t["retention"][src] for t in tr if src in t["retention"]), None)
        lines.append(
            f"| {src}: helpful loglik (per token) [95% CI] | {_num(base_r['loglik']['base'], '{:.3f}') if base_r else '–'} | "
            + " | ".join(_ci(t["retention"][src]["loglik"]) if src in t["retention"] else "–" for t in tr)
            + " |"
        )
        if any("preference" in t["retention"].get(src, {}) for t in tr):
            pb = next(t["retention"][src]["preference"] for t in tr if "preference" in t["retention"].get(src, {}))
            lines.append(
                f"| {src}: preference accuracy [95% CI, p] | {_pct(pb['base'])} | "
                + " | ".join(
                    _ci(t["retention"][src]["preference"], 100, "{:+.1f}", p=True) + " pp"
                    if "preference" in t["retention"].get(src, {})
                    else "–"
                    for t in tr
                )
                + " |"
            )
    if not sources:
        lines.append("| helpful loglik | no retention.json in the eval dirs (retention disabled) |" + " |" * len(tr))
    return lines


def compare_rubric_markdown(cmp: dict[str, Any]) -> list[str]:
    rows = cmp.get("rubric_rows") or []
    if not rows or all(v is None for v in rows[-1]["n"]):
        return []
    names = cmp["names"]
    cols = [f"{n}: {c}" for n in names for c in ("refusals", "mean score", "alternative", "lecturing")]
    lines = [
        "",
        "## Refusal quality per category (graceful-refusal rubric over harmful refusals)",
        "",
        "| category | " + " | ".join(cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for r in rows:
        cells = []
        for j in range(len(names)):
            n = r["n"][j]
            cells += [
                "–" if n is None else str(n),
                _num(r["mean_score"][j]),
                _pct(r["alternative_rate"][j]),
                _pct(r["lecturing_rate"][j]),
            ]
        g = "**ALL**" if r["group"] == "ALL" else r["group"]
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    return lines


def compare_markdown(cmp: dict[str, Any], max_per_direction: int = 5, head: str = "", tables_only: bool = False) -> str:
    """compare.md: the ``head`` (headline block with the selection, :mod:`safetune.eval.render.headline`), then the
    per-group table, McNemar tests, the selection (unless ``head`` holds it), trade-off, rubric, flips.
    ``tables_only``: no title, head or selection (the HTML page shows those as its headline block)."""
    names = cmp["names"]
    cols = "| suite | kind | group | " + " | ".join(names) + " | " + " | ".join(f"Δ {n}" for n in names[1:]) + " |"
    sep = "|---|---|---|" + "---:|" * (2 * len(names) - 1)
    lines = [
        *([] if tables_only else ["# safetune comparison", ""]),
        *([head.rstrip("\n"), ""] if head and not tables_only else []),
        "## Per suite and group",
        "",
        "Harmful rows: refusal rate (higher is safer). Benign rows: over-refusal rate (lower is better).",
        "",
        cols,
        sep,
    ]
    for r in cmp["rows"]:
        base = r["rates"][0]
        deltas = [("–" if (v is None or base is None) else f"{100 * (v - base):+.1f}") for v in r["rates"][1:]]
        g = f"**{r['group']}**" if r["group"] == "ALL" else r["group"]
        lines.append(
            f"| {r['suite']} | {r['kind']} | {g} | "
            + " | ".join(_pct(v) for v in r["rates"])
            + " | "
            + " | ".join(deltas)
            + " |"
        )
    lines += [
        "",
        "## Paired exact McNemar tests (refusal vs not, same prompts)",
        "",
        *[
            f"{o['baseline']} → {o['other']}: paired on the {o['shared']} prompts both answered"
            + (
                ""
                if o["shared"] == max(o["baseline_n"], o["other_n"])
                else f" (of {o['baseline_n']} and {o['other_n']})"
            )
            + "."
            for o in cmp.get("overlap", [])
        ],
        "",
        "| baseline → other | kind | group | n | now refuses | no longer refuses | p |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in cmp["tests"]:
        for g, v in sorted(t["per_group"].items(), key=lambda kv: (kv[0] != "__all__", kv[0])):
            gname = "**ALL**" if g == "__all__" else g
            lines.append(
                f"| {t['baseline']} → {t['other']} | {t['kind']} | {gname} | {v['n']} | {v['now_refuses']} | {v['no_longer_refuses']} | {v['p_value']:.3g} |"
            )
    if not head and not tables_only:
        lines += selection_markdown(cmp)
    lines += tradeoff_markdown(cmp)
    lines += compare_rubric_markdown(cmp)
    lines += flips_markdown(cmp, max_per_direction)
    return "\n".join(lines) + "\n"


def _quote(text: str, limit: int = 300) -> str:
    t = " ".join(str(text).split())
    return (t[:limit] + "…") if len(t) > limit else t


def flips_markdown(cmp: dict[str, Any], max_per_direction: int = 5) -> list[str]:
    """Flipped examples per comparison: refused now / not before, and refused before / not now."""
    lines = ["", "## Flipped examples", ""]
    for t in cmp["tests"]:
        flips = t.get("flips", [])
        for now_refuses, title in ((True, "refused now, not before"), (False, "refused before, not now")):
            sel = [f for f in flips if (f["after"] == "refusal") == now_refuses]
            if not sel:
                continue
            lines += [f"### {t['baseline']} → {t['other']} · {t['kind']} prompts · {title} ({len(sel)})", ""]
            for f in sel[:max_per_direction]:
                lines += [
                    f"- **{f['suite']} / {f['group']}** `{f['prompt_id']}`: {_quote(f['prompt'], 200)}",
                    f"> before ({f['before']}): {_quote(f['response_before'])}",
                    f"> after ({f['after']}): {_quote(f['response_after'])}",
                    "",
                ]
            if len(sel) > max_per_direction:
                lines += [f"…and {len(sel) - max_per_direction} more in compare.json.", ""]
    return lines
