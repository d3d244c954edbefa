"""Self-contained HTML reports: Markdown tables rendered to HTML plus charts embedded as base64 PNG.

Charts: per-category refusal bars with Wilson 95% intervals (one bar per checkpoint), per-type over-refusal bars,
safety (harmful refusal) vs over-refusal (benign) across checkpoints, the graceful-refusal rubric per category
(:func:`rubric_bars`), and the safety / helpfulness trade-off across checkpoints and sweep members
(:func:`tradeoff_plot`). Every chart has a legend naming its checkpoints and saying what the whiskers are.

Page order (:func:`render_html`): headline block, charts, tables, example browser.
"""

from __future__ import annotations

import base64
import html
import io
import re
from typing import Any


def _png(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _barh(
    groups: list[str],
    series: list[tuple[str, dict[str, tuple[float, float, float]]]],
    *,
    xlim: tuple[float, float],
    xlabel: str,
    title: str,
    zero_line: bool = False,
    legend_title: str = "checkpoint",
) -> str:
    """Horizontal grouped bars: ``series`` is (name, {group: (value, err_low, err_high)}), one bar per name; the
    legend names each bar's checkpoint (and, in its title, what the whiskers are)."""
    plt = _plt()
    n = len(series)
    height = 0.8 / n
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(groups) * max(n, 1.5) + 1.2))
    for j, (name, per) in enumerate(series):
        rows = [(i + (j - (n - 1) / 2) * height, per[g]) for i, g in enumerate(groups) if g in per]
        ys, vals = [y for y, _ in rows], [v for _, v in rows]
        xerr = [[v[1] for v in vals], [v[2] for v in vals]] if any(v[1] or v[2] for v in vals) else None
        ax.barh(ys, [v[0] for v in vals], height=height, xerr=xerr, capsize=2, label=name, error_kw={"elinewidth": 0.8})
    ax.set_yticks(range(len(groups)))
    ax.set_yticklabels(groups, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(*xlim)
    if zero_line:
        ax.axvline(0, color="#888", lw=0.8)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right", title=legend_title, title_fontsize=8)
    return _png(fig)


def group_bars(entries: list[tuple[str, dict[str, Any]]], kind: str, title: str) -> str | None:
    """Horizontal grouped bars with Wilson intervals. ``entries``: (checkpoint name, summary['overall'])."""
    key = "per_category" if kind == "harmful" else "per_type"
    groups = sorted({g for _, s in entries for g in s.get(kind, {}).get(key, {})})
    if not groups:
        return None
    series = [
        (
            name,
            {
                g: (
                    100 * v["rate"],
                    max(0.0, 100 * (v["rate"] - v["ci_low"])),
                    max(0.0, 100 * (v["ci_high"] - v["rate"])),
                )
                for g, v in s.get(kind, {}).get(key, {}).items()
            },
        )
        for name, s in entries
    ]
    return _barh(
        groups,
        series,
        xlim=(0, 100),
        xlabel="refusal rate (%) with Wilson 95% CI",
        title=title,
        legend_title="bars: checkpoint; whiskers: Wilson 95% CI",
    )


def _err(x: float) -> float:
    return max(0.0, 100 * x)  # float noise can put a Wilson bound a hair past the rate


def safety_scatter(entries: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Harmful refusal (y, higher is safer) vs benign over-refusal (x, lower is better), one point per checkpoint."""
    pts = [(n, s["harmful"]["micro"], s["benign"]["micro"]) for n, s in entries if "harmful" in s and "benign" in s]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for name, h, b in pts:
        ax.errorbar(
            100 * b["rate"],
            100 * h["rate"],
            xerr=[[_err(b["rate"] - b["ci_low"])], [_err(b["ci_high"] - b["rate"])]],
            yerr=[[_err(h["rate"] - h["ci_low"])], [_err(h["ci_high"] - h["rate"])]],
            fmt="o",
            capsize=3,
            label=name,
        )
        ax.annotate(name, (100 * b["rate"], 100 * h["rate"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlim(-4, 104)  # a margin: points at 0% or 100% would otherwise be clipped at the axes' edge
    ax.set_ylim(-4, 104)
    ax.set_xlabel("over-refusal on benign prompts (%)  ← better")
    ax.set_ylabel("refusal on harmful prompts (%)  ↑ safer")
    ax.set_title("safety vs over-refusal")
    ax.legend(fontsize=8, loc="best", title="points: checkpoint; whiskers: Wilson 95% CI", title_fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def rubric_bars(entries: list[tuple[str, dict[str, Any]]]) -> str | None:
    """Mean rubric score (-5..5) per harm category, one bar per checkpoint. ``entries``: (name, summary['rubric'])."""
    groups = sorted({g for _, r in entries for g, e in r.get("per_group", {}).items() if e["n"]})
    if not groups:
        return None
    series = [
        (name, {g: (e["mean_score"], 0.0, 0.0) for g, e in r.get("per_group", {}).items() if e["n"]})
        for name, r in entries
    ]
    return _barh(
        groups,
        series,
        xlim=(-5, 5),
        xlabel="mean graceful-refusal rubric score of refusals (-5..5)  → better",
        title="refusal quality per category",
        zero_line=True,
        legend_title="bars: checkpoint (mean score)",
    )


def tradeoff_plot(points: list[dict[str, Any]]) -> str | None:
    """Safety gain vs helpfulness cost, one point per checkpoint / sweep member.

    ``points``: ``{"name", "x" (harmful refusal rate, 0..1), "y", "y_low", "y_high" (optional interval),
    "y_label"}``; all points share the y measure (e.g. helpful log-likelihood delta vs the baseline).
    """
    pts = [p for p in points if p.get("x") is not None and p.get("y") is not None and p["y"] == p["y"]]
    if not pts:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for p in pts:
        lo, hi = p.get("y_low"), p.get("y_high")
        yerr = None
        if lo is not None and hi is not None and lo == lo and hi == hi:
            yerr = [[max(0.0, p["y"] - lo)], [max(0.0, hi - p["y"])]]
        ax.errorbar(100 * p["x"], p["y"], yerr=yerr, fmt="o", capsize=3, label=p["name"])
        ax.annotate(p["name"], (100 * p["x"], p["y"]), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlim(0, 100)
    ax.set_xlabel("refusal on harmful prompts (%)  → safer")
    ax.set_ylabel(pts[0].get("y_label", "helpfulness"))
    if any(p.get("y_low") is not None for p in pts):  # a delta measure: mark "no change"
        ax.axhline(0, color="#888", lw=0.8)
    ax.set_title("safety gain vs helpfulness cost")
    whiskers = "; whiskers: paired bootstrap 95% CI" if any(p.get("y_low") is not None for p in pts) else ""
    ax.legend(fontsize=8, loc="best", title=f"points: checkpoint{whiskers}", title_fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def tradeoff_points(cmp: dict[str, Any]) -> list[dict[str, Any]]:
    """Points for the trade-off plot: x = harmful refusal rate; y = helpful loglik Δ vs baseline (first retention
    source both have, hh-rlhf preferred) or, without retention, the benign answer rate."""
    tr = cmp.get("tradeoff") or []
    if not tr:
        return []
    names = cmp["names"]
    srcs = [s for s in ("hh_rlhf_helpful", "helpful_reference") if all(s in t["retention"] for t in tr)]
    pts = []
    if srcs:
        src = srcs[0]
        label = f"Δ helpful loglik vs {names[0]} ({src})"
        pts.append({"name": names[0], "x": tr[0]["refusal_rate"]["base"], "y": 0.0, "y_low": 0.0, "y_high": 0.0})
        for t in tr:
            r = t["retention"][src]["loglik"]
            pts.append(
                {
                    "name": t["other"],
                    "x": t["refusal_rate"]["other"],
                    "y": r["delta"],
                    "y_low": r["ci_low"],
                    "y_high": r["ci_high"],
                }
            )
    else:
        label = "benign answer rate"
        pts.append({"name": names[0], "x": tr[0]["refusal_rate"]["base"], "y": tr[0]["answer_rate"]["base"]})
        pts += [{"name": t["other"], "x": t["refusal_rate"]["other"], "y": t["answer_rate"]["other"]} for t in tr]
    for p in pts:
        p["y_label"] = label
    return pts


def _inline(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def markdown_to_html(md: str) -> str:
    """The subset our reports use: headings, pipe tables, paragraphs, bullet lists, blockquotes."""
    out: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            rows = []
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            body = [r for r in rows[1:] if not all(re.fullmatch(r":?-+:?", c) for c in r if c)]
            out.append(
                "<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>"
            )
            out += ["<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</tbody></table>")
            continue
        if m := re.match(r"^(#{1,4}) (.*)", line):
            lvl = len(m.group(1))
            out.append(f"<h{lvl}>{_inline(m.group(2))}</h{lvl}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{_inline(line[2:])}</blockquote>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child,td:nth-child(2),td:nth-child(3){text-align:left}th{background:#f3f3f3}
img{max-width:100%;margin:1em 0}blockquote{color:#555;border-left:3px solid #ccc;margin:0.3em 0;padding-left:0.8em;
font-size:13px;white-space:pre-wrap}code{background:#f3f3f3;padding:0 3px}#tables{overflow-x:auto}"""


def render_html(
    title: str,
    markdown: str,
    entries: list[tuple[str, dict[str, Any]]],
    *,
    rubric: list[tuple[str, dict[str, Any]]] | None = None,
    tradeoff: list[dict[str, Any]] | None = None,
    headline: str = "",
    browser: str = "",
    css: str = "",
) -> str:
    """A self-contained page, decision first: the ``headline`` block (HTML), the charts, the Markdown tables as
    HTML, then the example ``browser`` (HTML with its inline script).

    ``markdown``: the report's tables (without its headline, which ``headline`` shows); ``rubric``: (name,
    summary['rubric']) per checkpoint; ``tradeoff``: :func:`tradeoff_plot` points; ``css``: extra style rules."""
    charts = [
        safety_scatter(entries),
        tradeoff_plot(tradeoff) if tradeoff else None,
        group_bars(entries, "harmful", "refusal on harmful prompts, per category"),
        group_bars(entries, "benign", "over-refusal on benign prompts, per type"),
        rubric_bars(rubric) if rubric else None,
    ]
    imgs = "\n".join(f'<img alt="chart" src="{c}">' for c in charts if c)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{CSS}\n{css}</style></head><body>\n<h1>{html.escape(title)}</h1>\n"
        f"{headline}\n<section id='charts'><h2>Charts</h2>\n{imgs}\n</section>\n"
        f"<section id='tables'>\n{markdown_to_html(markdown)}\n</section>\n{browser}\n</body></html>\n"
    )
