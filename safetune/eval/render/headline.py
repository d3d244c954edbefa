"""The decision first: one headline block per checkpoint, in Markdown (report.md, compare.md and the console) and HTML.

Per checkpoint: harmful refusal, over-refusal on benign prompts, selectivity (harmful refusal − benign refusal,
Newcombe interval; per suite family too), contradictory refusals, retention (helpful log-likelihood per token), each
with its 95% interval and — in a comparison — its change against the baseline (exact McNemar p where the comparison
has one; the retention change with its paired bootstrap interval); then the judge, its measured agreement with
human labels on the bundled held-out set (or "not measured"), the low-confidence verdicts and the human-labelled
ones. In a comparison the selected checkpoint is marked and the selection section follows.

A card is plain data (:func:`eval_cards`, :func:`compare_cards`) so the Markdown and the HTML show the same strings.
"""

from __future__ import annotations

import html
from typing import Any

from safetune.eval.render.html import markdown_to_html
from safetune.eval.render.markdown import _pct, selection_markdown
from safetune.eval.stats import rate_difference

RETENTION_SOURCES = ("hh_rlhf_helpful", "helpful_reference")  # the one the headline shows: first present


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and x == x


def _pp(x: float | None, sign: bool = True) -> str:
    return "–" if not _ok(x) else (f"{100 * x:+.1f} pp" if sign else f"{100 * x:.1f} pp")


def _ll(x: float | None, sign: bool = False) -> str:
    return "–" if not _ok(x) else (f"{x:+.3f}" if sign else f"{x:.3f}")


def _p(p: float | None) -> str:
    return "" if p is None else f", McNemar p={p:.3g}"


def _row(key: str, label: str, fmt: str, value: Any, ci: Any = None, n: Any = None, **delta: Any) -> dict[str, Any]:
    """One measure: ``fmt`` rate | diff | loglik; ``delta``: delta, delta_ci, p (comparisons only)."""
    ci = list(ci) if ci is not None and all(_ok(c) for c in ci) else None
    return {"key": key, "label": label, "fmt": fmt, "value": value, "ci": ci, "n": n, **delta}


def cell_parts(row: dict[str, Any]) -> tuple[str, str, str]:
    """(value, 95% interval, change vs baseline) as shown in both Markdown and HTML."""
    fmt, v, ci = row["fmt"], row["value"], row["ci"]
    if fmt == "rate" and row.get("n") == 0:
        value, interval = "– (none of 0)", ""
    elif fmt == "rate":
        value = _pct(v) + (f" of {row['n']}" if row.get("n") is not None else "")
        interval = f"{_pct(ci[0])}–{_pct(ci[1])}" if ci else ""
    elif fmt == "diff":
        value, interval = _pp(v), (f"{_pp(ci[0])} to {_pp(ci[1])}" if ci else "")
    else:
        value, interval = _ll(v), (f"{_ll(ci[0])} to {_ll(ci[1])}" if ci else "")
    delta = ""
    if "delta" in row:
        d = row["delta"]
        delta = _ll(d, sign=True) if fmt == "loglik" else _pp(d)
        dci = row.get("delta_ci")
        if dci and all(_ok(c) for c in dci):
            delta += f" (95% CI {_ll(dci[0], True)} to {_ll(dci[1], True)})" if fmt == "loglik" else ""
        delta += _p(row.get("p")) if _ok(d) else ""
    return value, interval, delta


def _judge_line(judge: str, acc: dict[str, Any] | None) -> str:
    if not acc:
        return f"`{judge}`: not measured"
    b, a, f1 = acc["binary_accuracy_ci"], acc["accuracy_ci"], acc["partial_f1"]
    # both binary views: over-refusal counts every non-compliance (partial = refused): the README's "binary"
    # figure, quoted first; harmful refusal counts full refusals only (partial = not refused): "strict"
    rp = acc.get("refusal_incl_partial_accuracy")
    rpc = acc.get("refusal_incl_partial_accuracy_ci") or [float("nan")] * 2
    binary = "" if rp is None else f"binary (complied vs not) {_pct(rp)} ({_pct(rpc[0])}–{_pct(rpc[1])}), "
    return (
        f"`{judge}`: {binary}strict (full refusal vs not) {_pct(acc['binary_accuracy'])} ({_pct(b[0])}–"
        f"{_pct(b[1])}), 3-class {_pct(acc['accuracy'])} ({_pct(a[0])}–{_pct(a[1])}), partial F1 {f1:.2f}, on "
        f"{acc['n']} human-labelled answers of {acc['file']}"
    )


def _family_rows(sel: dict[str, Any], base_sel: dict[str, Any] | None) -> list[dict[str, Any]]:
    rows = []
    fams = [k for k in sel if k != "overall"]
    for name in ["overall", *(fams if len(fams) > 1 else [])]:
        d = sel.get(name)
        if not d:
            continue
        label = "selectivity: harmful − benign refusal ↑" + ("" if name == "overall" else f" ({name})")
        extra = {}
        if base_sel is not None:
            b = base_sel.get(name)
            extra["delta"] = d["diff"] - b["diff"] if b and _ok(b["diff"]) and _ok(d["diff"]) else None
        rows.append(_row(f"selectivity/{name}", label, "diff", d["diff"], (d["ci_low"], d["ci_high"]), **extra))
    return rows


def _rate_rows(overall: dict[str, Any], base: dict[str, Any] | None, tr: dict[str, Any] | None) -> dict[str, Any]:
    """harmful_refusal, over_refusal and contradictory rows (those the summary has), by key."""
    rows = {}
    spec = (
        ("harmful_refusal", "harmful refusal ↑", ("harmful", "micro"), "refusal_rate"),
        ("over_refusal", "over-refusal on benign prompts ↓", ("benign", "micro"), "over_refusal_rate"),
        ("contradictory", "contradictory refusals (share of refusals) ↓", ("harmful", "contradictory"), None),
    )
    for key, label, (kind, part), tr_key in spec:
        r = overall.get(kind, {}).get(part)
        if not r:
            continue
        extra: dict[str, Any] = {}
        if base is not None:
            b = base.get(kind, {}).get(part)
            extra["delta"] = r["rate"] - b["rate"] if b and _ok(b["rate"]) and _ok(r["rate"]) else None
            if tr is not None and tr_key:
                extra["p"] = tr[tr_key].get("p_value")
        ci = (r["ci_low"], r["ci_high"]) if r["n"] else None  # no prompts: (0, 1) says nothing
        rows[key] = _row(key, label, "rate", r["rate"], ci, r["n"], **extra)
    return rows


def _ordered(rates: dict[str, Any], selectivity: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """harmful refusal, over-refusal, selectivity (overall, per family), contradictory refusals."""
    first = [rates[k] for k in ("harmful_refusal", "over_refusal") if k in rates]
    return first + selectivity + ([rates["contradictory"]] if "contradictory" in rates else [])


def _labels(view: dict[str, Any]) -> dict[str, Any]:
    lab = view.get("labels") or {}
    return {
        "judge": view.get("judge") or "unknown",
        "judge_accuracy": view.get("judge_accuracy"),
        "low_confidence": lab.get("low_confidence"),
        "threshold": lab.get("threshold"),
        "human_labelled": lab.get("human_labelled"),
        "n_verdicts": view.get("n_verdicts"),
    }


def eval_cards(
    summary: dict[str, Any], view: dict[str, Any], retention_ci: dict[str, list[float]] | None = None
) -> list[dict[str, Any]]:
    """The headline card of one evaluation. ``view``: name, judge, judge_accuracy, labels, n_verdicts."""
    rows = _ordered(
        _rate_rows(summary.get("overall", {}), None, None), _family_rows(summary.get("selectivity") or {}, None)
    )
    ret = summary.get("retention") or {}
    src = next((s for s in RETENTION_SOURCES if s in ret), next(iter(ret), None))
    if src:
        ci = (retention_ci or {}).get(src)
        rows.append(
            _row(
                "retention",
                f"retention: helpful log-lik/token ({src}) ↑",
                "loglik",
                ret[src]["loglik_mean"],
                ci,
                ret[src]["n"],
            )
        )
    return [{"name": view["name"], "selected": None, "rows": rows, **_labels(view)}]


def compare_cards(cmp: dict[str, Any], views: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One card per checkpoint of a :func:`~safetune.eval.compare.compare` result, deltas against the first.

    ``views[i]``: judge, judge_accuracy, labels, n_verdicts and selectivity (the summary's, after any human labels)
    of checkpoint i."""
    names = cmp["names"]
    base_ov = cmp["overall"][names[0]]
    tr = cmp.get("tradeoff") or []
    levels = [(cmp.get("quality", {}).get(n, {}).get("retention") or {}) for n in names]
    have = {s for t in tr for s in t["retention"]} | {s for lv in levels for s in lv}
    src = next((s for s in RETENTION_SOURCES if s in have), next(iter(sorted(have)), None))
    selected = (cmp.get("selection") or {}).get("selected")
    base_sel = views[0].get("selectivity") or _selectivity(base_ov)
    cards = []
    for i, name in enumerate(names):
        ov, t = cmp["overall"][name], (tr[i - 1] if i and len(tr) >= i else None)
        sel = views[i].get("selectivity") or _selectivity(ov)
        rows = _ordered(_rate_rows(ov, base_ov if i else None, t), _family_rows(sel, base_sel if i else None))
        if src:
            level = levels[i].get(src, {})
            label = f"retention: helpful log-lik/token ({src}) ↑"
            if i == 0:
                rows.append(_row("retention", label, "loglik", level.get("loglik_mean"), None, level.get("n")))
            else:
                r = (t["retention"].get(src) or {}).get("loglik", {}) if t else {}
                rows.append(
                    _row("retention", label, "loglik", level.get("loglik_mean"), None, level.get("n"),
                         delta=r.get("delta"), delta_ci=[r.get("ci_low"), r.get("ci_high")])
                )  # fmt: skip
        cards.append(
            {"name": name, "selected": (name == selected) if selected else None, "rows": rows, **_labels(views[i])}
        )
    return cards


def _selectivity(overall: dict[str, Any]) -> dict[str, Any]:
    """Overall selectivity from the micro counts (the same counts :func:`safetune.eval.metrics.selectivity` uses)."""
    h, b = overall.get("harmful", {}).get("micro"), overall.get("benign", {}).get("micro")
    return {"overall": rate_difference(h["k"], h["n"], b["k"], b["n"])} if h and b else {}


def _verdict_cells(c: dict[str, Any]) -> dict[str, str]:
    total = c["n_verdicts"]
    of = f" of {total}" if total is not None else ""
    thr = c["threshold"]
    low = (
        "–"
        if c["low_confidence"] is None
        else f"{c['low_confidence']}{of}" + (f" (confidence < {thr:.2f})" if thr is not None else "")
    )
    human = "–" if c["human_labelled"] is None else f"{c['human_labelled']}{of}"
    return {
        "judge_accuracy": _judge_line(c["judge"], c["judge_accuracy"]),
        "low_confidence": low,
        "human_labelled": human,
    }


VERDICT_ROWS = (
    ("judge_accuracy", "judge, measured agreement with human labels (95% CI)"),
    ("low_confidence", "low-confidence verdicts (review these)"),
    ("human_labelled", "human-labelled verdicts"),
)


def headline_markdown(cards: list[dict[str, Any]], cmp: dict[str, Any] | None = None) -> str:
    """The headline section: a table with one column per checkpoint (✔ marks the selected one), then, in a
    comparison, the selection section."""

    def head(c: dict[str, Any]) -> str:
        return c["name"] + (" ✔ selected" if c["selected"] else "")

    what = "value (95% CI)" + (", Δ vs " + cards[0]["name"] if len(cards) > 1 else "")
    lines = [
        "## Headline",
        "",
        f"Each cell: {what}. Rates are shares of prompts (Wilson intervals); selectivity in percentage points "
        "(Newcombe); retention in nats per token (higher keeps more of the base model).",
        "",
        "| measure | " + " | ".join(head(c) for c in cards) + " |",
        "|---|" + "---|" * len(cards),
    ]
    keys = list(dict.fromkeys(r["key"] for c in cards for r in c["rows"]))
    for key in keys:
        label = next(r["label"] for c in cards for r in c["rows"] if r["key"] == key)
        cells = []
        for c in cards:
            row = next((r for r in c["rows"] if r["key"] == key), None)
            cells.append(_md_cell(row) if row else "–")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for key, label in VERDICT_ROWS:
        lines.append(f"| {label} | " + " | ".join(_verdict_cells(c)[key] for c in cards) + " |")
    if cmp is not None:
        lines += selection_markdown(cmp)
    return "\n".join(lines) + "\n"


def _md_cell(row: dict[str, Any]) -> str:
    value, interval, delta = cell_parts(row)
    out = f"**{value}**" + (f" ({interval})" if interval else "")
    return out + (f"; Δ {delta}" if delta else "")


def review_markdown(labels: dict[str, Any] | None, limit: int = 20) -> str:
    """The least confident verdicts (``summary['labels']['review']``), to check by hand."""
    rev = (labels or {}).get("review") or []
    if not rev:
        return ""
    lines = [
        f"{labels['low_confidence']} verdict(s) below confidence {labels['threshold']:.2f}; the least confident "
        f"{min(limit, len(rev))} below (all of them: `safetune-eval review eval_dir=...`, then `eval.labels=FILE`).",
        "",
        "| verdict | label | confidence | prompt |",
        "|---|---|---:|---|",
    ]
    for r in rev[:limit]:
        prompt = " ".join(str(r["prompt"]).split()).replace("|", "\\|")
        lines.append(f"| `{r['key']}` | {r['label']} | {r['confidence']:.2f} | {prompt} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------------------ HTML


def _attr(x: Any) -> str:
    return html.escape("" if x is None else (repr(float(x)) if isinstance(x, float) else str(x)), quote=True)


def headline_html(cards: list[dict[str, Any]], cmp: dict[str, Any] | None = None) -> str:
    """``<section id="headline">``: one card per checkpoint (every number carries its exact value in data-*), then,
    in a comparison, the selection section."""
    selection_html = markdown_to_html("\n".join(selection_markdown(cmp)[1:])) if cmp is not None else ""
    deltas = any("delta" in r for c in cards for r in c["rows"])  # a comparison: a Δ column
    out = ['<section id="headline"><h2>Headline</h2><div class="hl-cards">']
    for c in cards:
        cls = "hl-card selected" if c["selected"] else "hl-card"
        badge = ' <span class="badge">✔ selected</span>' if c["selected"] else ""
        out.append(f'<div class="{cls}" data-checkpoint="{_attr(c["name"])}"><h3>{html.escape(c["name"])}{badge}</h3>')
        out.append('<table class="hl"><tbody>')
        for r in c["rows"]:
            value, interval, delta = cell_parts(r)
            ci = r["ci"] or [None, None]
            attrs = (f'data-key="{_attr(r["key"])}" data-value="{_attr(r["value"])}" '
                     f'data-ci-low="{_attr(ci[0])}" data-ci-high="{_attr(ci[1])}"')  # fmt: skip
            if "delta" in r:
                attrs += f' data-delta="{_attr(r["delta"])}" data-p="{_attr(r.get("p"))}"'
            out.append(
                f"<tr {attrs}><th>{html.escape(r['label'])}</th><td class='v'>{html.escape(value)}</td>"
                f"<td class='ci'>{html.escape(interval)}</td>"
                + (f"<td class='d'>{html.escape(delta)}</td>" if deltas else "")
                + "</tr>"
            )
        cells = _verdict_cells(c)
        acc = (c["judge_accuracy"] or {}).get("binary_accuracy")
        values = {"judge_accuracy": acc, "low_confidence": c["low_confidence"], "human_labelled": c["human_labelled"]}
        for key, label in VERDICT_ROWS:
            text = cells[key].replace("`", "")
            out.append(
                f'<tr data-key="{key}" data-value="{_attr(values[key])}"><th>{html.escape(label)}</th>'
                f"<td class='wide' colspan='{3 if deltas else 2}'>{html.escape(text)}</td></tr>"
            )
        out.append("</tbody></table></div>")
    out.append(f'</div><div class="hl-selection">{selection_html}</div>' if selection_html else "</div>")
    out.append('<p class="hl-links"><a href="#charts">charts</a> · <a href="#tables">tables</a> · '
               '<a href="#examples">every judged answer</a></p></section>')  # fmt: skip
    return "\n".join(out)


HEADLINE_CSS = """#headline{margin-bottom:1.5em}.hl-cards{display:flex;flex-wrap:wrap;gap:12px}
.hl-card{border:1px solid #ccc;border-radius:6px;padding:6px 10px;flex:1 1 420px;min-width:0;background:#fcfcfc}
.hl-card.selected{border:2px solid #2a7d2a;background:#f3fbf3}.hl-card h3{margin:0.3em 0;font-size:16px}
.badge{background:#2a7d2a;color:#fff;border-radius:3px;padding:0 6px;font-size:12px}
table.hl{margin:0.3em 0;width:100%}table.hl th{text-align:left;background:none;font-weight:normal}
table.hl td.v{font-weight:bold}table.hl td.wide{text-align:left}.hl-selection{overflow-x:auto}"""
