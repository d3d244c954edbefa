"""``safetune-compare``: several evaluations side by side, with deltas and paired exact McNemar tests.

Besides the per-category refusal table, ``compare.json`` holds, per checkpoint against the first (the baseline):

* ``tradeoff``: safety gain and helpfulness cost side by side — Δ refusal rate, Δ over-refusal, Δ rubric mean
  score / alternative share / lecturing share, Δ benign answer rate and mean answer words, and the retention
  deltas (``retention``: per source ``loglik`` and ``preference`` reports with paired bootstrap intervals,
  from the eval dirs' ``retention.json``);
* ``quality``: each checkpoint's rubric / answers / retention summaries; ``rubric_rows``: the rubric per category.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR
from safetune.eval.metrics import mcnemar_exact
from safetune.eval.report import load_results, load_verdicts
from safetune.eval.retention import compare_retention

log = logging.getLogger(__name__)


def _pct(x: float | None) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def expand_eval_dirs(paths: list[str]) -> list[Path]:
    """Eval dirs as given; a directory of eval dirs (e.g. a sweep) expands to its members."""
    out = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(q.parent for q in p.rglob("results.json"))
            if not found:
                raise FileNotFoundError(f"{p} holds no evaluation (no results.json below it).")
            out.extend(found)
        else:
            raise FileNotFoundError(f"{p} is not an evaluation directory.")
    return out


def paired(base: list[dict[str, Any]], other: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    """Per group and overall: discordant counts (refused before / not now and the reverse) and McNemar p."""
    a = {(r["suite"], r["prompt_id"], r.get("sample", 0)): r for r in base if r["kind"] == kind}
    b = {(r["suite"], r["prompt_id"], r.get("sample", 0)): r for r in other if r["kind"] == kind}
    keys = sorted(set(a) & set(b))
    groups: dict[str, list[tuple[bool, bool]]] = {}
    flips: list[dict[str, Any]] = []
    for k in keys:
        ra, rb = a[k]["label"] == "refusal", b[k]["label"] == "refusal"
        groups.setdefault(a[k]["group"], []).append((ra, rb))
        groups.setdefault("__all__", []).append((ra, rb))
        if ra != rb:
            flips.append(
                {
                    "suite": k[0],
                    "prompt_id": k[1],
                    "group": a[k]["group"],
                    "prompt": a[k]["prompt"],
                    "before": a[k]["label"],
                    "after": b[k]["label"],
                    "response_before": a[k]["response"],
                    "response_after": b[k]["response"],
                }
            )
    out = {}
    for g, pairs in groups.items():
        gained = sum((not x) and y for x, y in pairs)
        lost = sum(x and (not y) for x, y in pairs)
        out[g] = {
            "n": len(pairs),
            "now_refuses": gained,
            "no_longer_refuses": lost,
            "p_value": mcnemar_exact(gained, lost),
        }
    out["__flips__"] = flips  # type: ignore[assignment]
    return out


def load_retention(eval_dir: str | Path) -> dict[str, Any] | None:
    """The eval dir's per-example retention values (``retention.json``), or None when retention was not run."""
    p = Path(eval_dir) / "retention.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p}: not valid JSON ({e.msg}); delete it and re-run safetune-eval to recompute.") from e


def paired_binary(base: list[dict[str, Any]], other: list[dict[str, Any]], kind: str, positive: Any) -> float:
    """Exact McNemar p for a per-record yes/no (``positive(record)``) on the same (suite, prompt, sample)."""
    a = {(r["suite"], r["prompt_id"], r.get("sample", 0)): positive(r) for r in base if r["kind"] == kind}
    b = {(r["suite"], r["prompt_id"], r.get("sample", 0)): positive(r) for r in other if r["kind"] == kind}
    keys = set(a) & set(b)
    return mcnemar_exact(sum(b[k] and not a[k] for k in keys), sum(a[k] and not b[k] for k in keys))


def _change(base: float | None, other: float | None, p_value: float | None = None) -> dict[str, Any]:
    ok = base is not None and other is not None and base == base and other == other
    out = {"base": base, "other": other, "delta": (other - base) if ok else None}  # type: ignore[operator]
    if p_value is not None:
        out["p_value"] = p_value
    return out


def _get(d: dict[str, Any] | None, *keys: str) -> Any:
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _refused(r: dict[str, Any]) -> bool:
    return r["label"] == "refusal"


def _answered(r: dict[str, Any]) -> bool:
    return r["label"] == "compliance"


def _not_answered(r: dict[str, Any]) -> bool:
    return r["label"] != "compliance"


def tradeoff(
    summaries: list[dict[str, Any]],
    verdicts: list[list[dict[str, Any]]],
    retentions: list[dict[str, Any] | None],
    names: list[str],
    retention_kw: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Safety gain and helpfulness cost of each checkpoint against the first (see the module docstring)."""
    out = []
    b, vb = summaries[0], verdicts[0]
    for i in range(1, len(summaries)):
        o, vo = summaries[i], verdicts[i]
        entry: dict[str, Any] = {
            "baseline": names[0],
            "other": names[i],
            "refusal_rate": _change(
                _get(b, "overall", "harmful", "micro", "rate"),
                _get(o, "overall", "harmful", "micro", "rate"),
                paired_binary(vb, vo, "harmful", _refused),
            ),
            "over_refusal_rate": _change(
                _get(b, "overall", "benign", "micro", "rate"),
                _get(o, "overall", "benign", "micro", "rate"),
                paired_binary(vb, vo, "benign", _not_answered),
            ),
            "rubric_mean_score": _change(
                _get(b, "rubric", "overall", "mean_score"), _get(o, "rubric", "overall", "mean_score")
            ),
            "rubric_alternative_rate": _change(
                _get(b, "rubric", "overall", "alternative_rate"), _get(o, "rubric", "overall", "alternative_rate")
            ),
            "rubric_lecturing_rate": _change(
                _get(b, "rubric", "overall", "lecturing_rate"), _get(o, "rubric", "overall", "lecturing_rate")
            ),
            "answer_rate": _change(
                _get(b, "answers", "answer_rate", "rate"),
                _get(o, "answers", "answer_rate", "rate"),
                paired_binary(vb, vo, "benign", _answered),
            ),
            "mean_answer_words": _change(_get(b, "answers", "mean_words"), _get(o, "answers", "mean_words")),
            "retention": {},
        }
        if retentions[0] and retentions[i]:
            entry["retention"] = compare_retention(retentions[0], retentions[i], **(retention_kw or {}))["sources"]
        out.append(entry)
    return out


def rubric_rows(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per harm category (and ALL): refusals scored, mean score, alternative and lecturing shares per checkpoint."""
    groups = sorted({g for s in summaries for g in (_get(s, "rubric", "per_group") or {})})
    rows = []
    for g in [*groups, "ALL"]:
        es = [_get(s, "rubric", "overall") if g == "ALL" else _get(s, "rubric", "per_group", g) for s in summaries]
        rows.append(
            {
                "group": g,
                "n": [e["n"] if e else None for e in es],
                "mean_score": [e["mean_score"] if e else None for e in es],
                "alternative_rate": [e["alternative_rate"] if e else None for e in es],
                "lecturing_rate": [e["lecturing_rate"] if e else None for e in es],
            }
        )
    return rows


def compare(
    eval_dirs: list[str | Path], labels: list[str] | None = None, retention_kw: dict[str, Any] | None = None
) -> dict[str, Any]:
    dirs = expand_eval_dirs([str(d) for d in eval_dirs])
    if len(dirs) < 2:
        raise ValueError(f"safetune-compare needs at least two evaluations, got {len(dirs)}.")
    results = [load_results(d) for d in dirs]
    names = labels or [r["meta"].get("label") or d.name for r, d in zip(results, dirs)]
    if len(set(names)) < len(names):
        names = [f"{n} ({d.parent.name}/{d.name})" for n, d in zip(names, dirs)]
    verdicts = [load_verdicts(d) for d in dirs]
    rows: list[dict[str, Any]] = []
    suites = sorted({s for r in results for s in r["summary"]["suites"]})
    for suite in suites:
        for kind, key in (("harmful", "per_category"), ("benign", "per_type")):
            groups = sorted(
                {g for r in results for g in r["summary"]["suites"].get(suite, {}).get(kind, {}).get(key, {})}
            )
            for g in [*groups, "__all__"]:
                vals = []
                for r in results:
                    s = r["summary"]["suites"].get(suite, {}).get(kind)
                    v = (s or {}).get("micro") if g == "__all__" else (s or {}).get(key, {}).get(g)
                    vals.append(v["rate"] if v else None)
                if all(v is None for v in vals):
                    continue  # this suite has no prompts of this kind (e.g. the benign suite's harmful row)
                rows.append({"suite": suite, "kind": kind, "group": "ALL" if g == "__all__" else g, "rates": vals})
    tests = []
    for i in range(1, len(dirs)):
        for kind in ("harmful", "benign"):
            pr = paired(verdicts[0], verdicts[i], kind)
            flips = pr.pop("__flips__")
            tests.append({"baseline": names[0], "other": names[i], "kind": kind, "per_group": pr, "flips": flips})
    overall = {n: r["summary"].get("overall", {}) for n, r in zip(names, results)}
    summaries = [r["summary"] for r in results]
    retentions = [load_retention(d) for d in dirs]
    quality = {
        n: {k: s.get(k) for k in ("rubric", "answers", "retention") if s.get(k) is not None}
        for n, s in zip(names, summaries)
    }
    return {
        "names": names,
        "dirs": [str(d) for d in dirs],
        "rows": rows,
        "tests": tests,
        "overall": overall,
        "tradeoff": tradeoff(summaries, verdicts, retentions, names, retention_kw),
        "rubric_rows": rubric_rows(summaries),
        "quality": quality,
    }


def _pp(c: dict[str, Any]) -> str:
    """A change of a rate in percentage points (with its McNemar p when there is one)."""
    if c["delta"] is None:
        return "–"
    p = f" (p={c['p_value']:.3g})" if "p_value" in c else ""
    return f"{100 * c['delta']:+.1f} pp{p}"


def _num(x: float | None, fmt: str = "{:.2f}") -> str:
    return "–" if x is None or x != x else fmt.format(x)


def _ci(r: dict[str, Any], scale: float = 1.0, fmt: str = "{:+.3f}", p: bool = False) -> str:
    s = f"{fmt.format(scale * r['delta'])} [{fmt.format(scale * r['ci_low'])}, {fmt.format(scale * r['ci_high'])}]"
    return s + (f" (p={r['p_value']:.3g})" if p and "p_value" in r else "")


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


def rubric_markdown(cmp: dict[str, Any]) -> list[str]:
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


def markdown(cmp: dict[str, Any], max_per_direction: int = 5) -> str:
    names = cmp["names"]
    head = "| suite | kind | group | " + " | ".join(names) + " | " + " | ".join(f"Δ {n}" for n in names[1:]) + " |"
    sep = "|---|---|---|" + "---:|" * (2 * len(names) - 1)
    lines = [
        "# safetune comparison",
        "",
        "Harmful rows: refusal rate (higher is safer). Benign rows: over-refusal rate (lower is better).",
        "",
        head,
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
        "| baseline → other | kind | group | n | now refuses | no longer refuses | p |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for t in cmp["tests"]:
        for g, v in sorted(t["per_group"].items(), key=lambda kv: (kv[0] != "__all__", kv[0])):
            gname = "**ALL**" if g == "__all__" else g
            lines.append(
                f"| {t['baseline']} → {t['other']} | {t['kind']} | {gname} | {v['n']} | {v['now_refuses']} | {v['no_longer_refuses']} | {v['p_value']:.3g} |"
            )
    lines += tradeoff_markdown(cmp)
    lines += rubric_markdown(cmp)
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


def run_compare(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    evals = list(OmegaConf.to_container(cfg.evals, resolve=True) or [])
    labels = OmegaConf.to_container(cfg.labels, resolve=True) if cfg.get("labels") else None
    ret_kw = OmegaConf.to_container(cfg.retention, resolve=True) if cfg.get("retention") else None
    cmp = compare(evals, labels, ret_kw)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.evals) / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetune.eval.html import render_html
    from safetune.runs import write_json

    write_json(out_dir / "compare.json", cmp)
    md = markdown(cmp, int(cfg.get("max_flips") or 5))
    (out_dir / "compare.md").write_text(md)
    rubric = [(n, q["rubric"]) for n, q in cmp["quality"].items() if q.get("rubric")]
    (out_dir / "compare.html").write_text(
        render_html(
            "safetune comparison",
            md,
            list(cmp["overall"].items()),
            rubric=rubric or None,
            tradeoff=tradeoff_points(cmp),
        )
    )
    overall = {
        f"{r['suite']}/{r['kind']}/{n}": v
        for r in cmp["rows"]
        if r["group"] == "ALL"
        for n, v in zip(cmp["names"], r["rates"])
    }
    for t in cmp["tradeoff"]:
        for key in ("refusal_rate", "over_refusal_rate", "rubric_mean_score", "answer_rate", "mean_answer_words"):
            overall[f"delta/{t['other']}/{key}"] = t[key]["delta"]
        for src, r in t["retention"].items():
            overall[f"delta/{t['other']}/{src}/loglik"] = r["loglik"]["delta"]
            if "preference" in r:
                overall[f"delta/{t['other']}/{src}/preference_accuracy"] = r["preference"]["delta"]
    return overall, {
        "compare_md": str(out_dir / "compare.md"),
        "compare_json": str(out_dir / "compare.json"),
        "compare_html": str(out_dir / "compare.html"),
    }


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def _hydra_main(cfg: DictConfig) -> None:
    _, artifacts = run_compare(cfg)
    from safetune.console import console

    console.print(Path(artifacts["compare_md"]).read_text())
    console.print(f"written: {artifacts['compare_md']}")


def positional_to_overrides(argv: list[str]) -> list[str]:
    """``safetune-compare evals/base evals/tuned`` == ``safetune-compare 'evals=[evals/base,evals/tuned]'``."""
    dirs = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in dirs]
    return [*rest, f"evals=[{','.join(dirs)}]"] if dirs else rest


def main() -> None:
    import sys

    sys.argv = [sys.argv[0], *positional_to_overrides(sys.argv[1:])]
    _hydra_main()


if __name__ == "__main__":
    main()
