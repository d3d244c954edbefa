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

from safetune.core.config import to_plain
from safetune.core.errors import InputError, MissingInputError
from safetune.core.runs import write_json, write_text
from safetune.core.schema import EvalRecord
from safetune.eval.metrics import selectivity, summarise
from safetune.eval.render.browser import BROWSER_CSS, browser_html
from safetune.eval.render.headline import HEADLINE_CSS, compare_cards, headline_html, headline_markdown
from safetune.eval.render.html import render_html, tradeoff_points
from safetune.eval.render.markdown import compare_markdown
from safetune.eval.report import REVIEW_THRESHOLD, checkpoint_view, load_results, load_verdicts
from safetune.eval.retention import compare_retention
from safetune.eval.review import apply_human_labels, labels_summary, load_human_labels
from safetune.eval.stats import mcnemar_exact

log = logging.getLogger(__name__)


def expand_eval_dirs(paths: list[str]) -> list[Path]:
    """Eval dirs as given; a directory of eval dirs (e.g. a sweep) expands to its members."""
    out = []
    for p in map(Path, paths):
        if (p / "results.json").is_file():
            out.append(p)
        elif p.is_dir():
            found = sorted(q.parent for q in p.rglob("results.json"))
            if not found:
                raise MissingInputError(f"{p} holds no evaluation (no results.json below it).")
            out.extend(found)
        else:
            what = "is a file" if p.exists() else "does not exist"
            raise MissingInputError(
                f"evals: {p} {what}; expected an evaluation directory (written by safetune-eval, holding results.json "
                "and verdicts.jsonl) or a directory above several.",
                hint="pass the out_dir of each safetune-eval run (e.g. runs/<name>/eval-tuned), first the baseline",
            )
    return out


def paired(
    base: list[EvalRecord], other: list[EvalRecord], kind: str
) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
    """Per group and overall (``__all__``): discordant counts (refused before / not now and the reverse) and the
    exact McNemar p on the (suite, prompt, sample) keys both evaluations share; plus the flipped examples."""
    a = {r.key: r for r in base if r.kind == kind}
    b = {r.key: r for r in other if r.kind == kind}
    keys = sorted(set(a) & set(b))
    groups: dict[str, list[tuple[bool, bool]]] = {}
    flips: list[dict[str, Any]] = []
    for k in keys:
        ra, rb = a[k].refused, b[k].refused
        groups.setdefault(a[k].group, []).append((ra, rb))
        groups.setdefault("__all__", []).append((ra, rb))
        if ra != rb:
            flips.append(
                {
                    "suite": k[0],
                    "prompt_id": k[1],
                    "group": a[k].group,
                    "prompt": a[k].prompt,
                    "before": a[k].label,
                    "after": b[k].label,
                    "response_before": a[k].response,
                    "response_after": b[k].response,
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
    return out, flips


def load_retention(eval_dir: str | Path) -> dict[str, Any] | None:
    """The eval dir's per-example retention values (``retention.json``), or None when retention was not run."""
    p = Path(eval_dir) / "retention.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{p}: not valid JSON ({e.msg}); delete it and re-run safetune-eval to recompute.") from e


def paired_binary(base: list[EvalRecord], other: list[EvalRecord], kind: str, positive: Any) -> float:
    """Exact McNemar p for a per-record yes/no (``positive(record)``) on the same (suite, prompt, sample)."""
    a = {r.key: positive(r) for r in base if r.kind == kind}
    b = {r.key: positive(r) for r in other if r.kind == kind}
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


def _refused(r: EvalRecord) -> bool:
    return r.label == "refusal"


def _answered(r: EvalRecord) -> bool:
    return r.label == "compliance"


def _not_answered(r: EvalRecord) -> bool:
    return r.label != "compliance"


def tradeoff(
    summaries: list[dict[str, Any]],
    verdicts: list[list[EvalRecord]],
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


def check_overlap(verdicts: list[list[EvalRecord]], names: list[str]) -> list[dict[str, Any]]:
    """How many (suite, prompt, sample) keys each evaluation shares with the baseline; none shared is an error
    (paired tests on no common prompts mean nothing), a partial overlap is logged and reported."""
    base = {r.key for r in verdicts[0]}
    out = []
    for name, v in zip(names[1:], verdicts[1:]):
        keys = {r.key for r in v}
        shared = len(base & keys)
        if not shared:
            raise InputError(
                f"{names[0]} and {name} share no prompts ({len(base)} vs {len(keys)} answered; suites "
                f"{sorted({k[0] for k in base})} vs {sorted({k[0] for k in keys})}): there is nothing to compare.",
                hint="compare evaluations of the same suites (safetune-eval eval/suite=... for each checkpoint)",
            )
        if shared < max(len(base), len(keys)):
            log.warning("%s vs %s: %d shared prompts (of %d and %d); paired tests use the shared ones only",
                        names[0], name, shared, len(base), len(keys))  # fmt: skip
        out.append(
            {"baseline": names[0], "other": name, "shared": shared, "baseline_n": len(base), "other_n": len(keys)}
        )
    return out


def distinct_names(names: list[str], dirs: list[Path]) -> list[str]:
    """Names that tell the evaluations apart: a repeated name gets the shortest path suffix that is unique among
    the evaluations sharing it (``run (seed1/eval-tuned)``, ``run (seed2/eval-tuned)``); the same directory given
    twice gets ``#2``, ``#3``."""
    out = list(names)
    for name in set(names):
        idx = [i for i, n in enumerate(names) if n == name]
        if len(idx) < 2:
            continue
        parts = [Path(dirs[i]).resolve().parts[1:] for i in idx]  # without the root
        depth = max(len(p) for p in parts)
        for k in range(1, depth + 1):
            tails = ["/".join(p[-k:]) for p in parts]
            if len(set(tails)) == len(tails) or k == depth:
                break
        for j, (i, tail) in enumerate(zip(idx, tails)):
            repeat = tails[:j].count(tail)
            out[i] = f"{name} ({tail})" + (f" #{repeat + 1}" if repeat else "")
    return out


def compare(
    eval_dirs: list[str | Path],
    labels: list[str] | None = None,
    retention_kw: dict[str, Any] | None = None,
    human_labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Side-by-side comparison of evaluation directories (the first is the baseline). ``human_labels`` (from a
    filled ``safetune-eval review`` file) override the judge in every evaluation before anything is counted."""
    dirs = expand_eval_dirs([str(d) for d in eval_dirs])
    if len(dirs) < 2:
        raise InputError(f"safetune-compare needs at least two evaluations, got {len(dirs)}.")
    results = [load_results(d) for d in dirs]
    names = labels or [r["meta"].get("label") or d.name for r, d in zip(results, dirs)]
    names = distinct_names(names, dirs)
    verdicts = [load_verdicts(d) for d in dirs]
    if human_labels:
        for res, recs in zip(results, verdicts):
            if apply_human_labels(recs, human_labels):
                res["summary"] = {**res["summary"], **summarise(recs)}
    overlap = check_overlap(verdicts, names)
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
            pr, flips = paired(verdicts[0], verdicts[i], kind)
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
        "overlap": overlap,
        "quality": quality,
    }


def checkpoint_points(cmp: dict[str, Any]) -> list[dict[str, Any]]:
    """Per checkpoint: harmful refusal, benign over-refusal, selectivity and helpful-answer retention (Δ log-lik per
    token vs the baseline, hh-rlhf pairs preferred, else the bundled helpful answers) from a :func:`compare` result."""
    pts = []
    for i, name in enumerate(cmp["names"]):
        ov = cmp["overall"][name]
        h, b = ov.get("harmful", {}).get("micro"), ov.get("benign", {}).get("micro")
        ret = None
        if i > 0:
            src = cmp["tradeoff"][i - 1]["retention"]
            key = next((k for k in ("hh_rlhf_helpful", "helpful_reference") if k in src), None)
            ret = src[key]["loglik"]["delta"] if key else None
        pts.append(
            {
                "name": name,
                "harmful_refusal": h["rate"] if h else None,
                "over_refusal": b["rate"] if b else None,
                "selectivity": (h["rate"] - b["rate"]) if h and b else None,
                "retention_delta": 0.0 if i == 0 else ret,
            }
        )
    return pts


def select_checkpoint(
    cmp: dict[str, Any], *, max_over_refusal: float | None = 0.05, min_retention_delta: float | None = -0.3
) -> dict[str, Any]:
    """The checkpoint with the highest harmful refusal among those within the bounds (over-refusal at most
    ``max_over_refusal``, retention Δ at least ``min_retention_delta``; None = no bound). Without any checkpoint
    inside the bounds, the one with the highest selectivity, marked as out of bounds."""
    pts = checkpoint_points(cmp)

    def ok(p: dict[str, Any]) -> bool:
        if p["harmful_refusal"] is None:
            return False
        if max_over_refusal is not None and (p["over_refusal"] is None or p["over_refusal"] > max_over_refusal):
            return False
        return (
            min_retention_delta is None or p["retention_delta"] is None or p["retention_delta"] >= min_retention_delta
        )

    inside = [p for p in pts if ok(p)]
    if inside:
        best = max(inside, key=lambda p: (p["harmful_refusal"], p["selectivity"] or 0))
        why = "highest harmful refusal within the bounds"
    else:
        best = max(pts, key=lambda p: p["selectivity"] if p["selectivity"] is not None else -2)
        why = "no checkpoint within the bounds: the highest selectivity"
    bounds = {"max_over_refusal": max_over_refusal, "min_retention_delta": min_retention_delta}
    return {"selected": best["name"], "reason": why, "within_bounds": bool(inside), "bounds": bounds, "points": pts}


def report_inputs(
    cmp: dict[str, Any], human_labels: dict[str, str] | None = None
) -> tuple[list[dict[str, Any]], list[list[EvalRecord]]]:
    """Per checkpoint of ``cmp``: the headline's view (judge, its measured accuracy, labels, selectivity) and the
    judged answers for the example browser, with the same human labels :func:`compare` applied."""
    views, verdicts = [], []
    for name, d in zip(cmp["names"], cmp["dirs"]):
        res, recs = load_results(d), load_verdicts(d)
        summary = res["summary"]
        if human_labels and apply_human_labels(recs, human_labels):
            thr = float((summary.get("labels") or {}).get("threshold") or REVIEW_THRESHOLD)
            summary = {**summary, "selectivity": selectivity(recs), "labels": labels_summary(recs, thr)}
        views.append(checkpoint_view(name, res["meta"], summary, recs))
        verdicts.append(recs)
    return views, verdicts


def run_compare(cfg: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``safetune-compare``: compare the configured eval dirs; write compare.json/md/html; return flat metrics."""
    evals = list(to_plain(cfg.evals) or [])
    labels = to_plain(cfg.labels) if cfg.get("labels") else None
    ret_kw = to_plain(cfg.retention) if cfg.get("retention") else None
    human = load_human_labels(cfg.human_labels) if cfg.get("human_labels") else None
    cmp = compare(evals, labels, ret_kw, human)
    sel = to_plain(cfg.get("selection")) or {}
    cmp["selection"] = select_checkpoint(
        cmp, max_over_refusal=sel.get("max_over_refusal"), min_retention_delta=sel.get("min_retention_delta")
    )
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.evals) / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", cmp)
    views, verdicts = report_inputs(cmp, human)
    cards = compare_cards(cmp, views)
    max_flips = int(cfg.get("max_flips") or 5)
    write_text(out_dir / "compare.md", compare_markdown(cmp, max_flips, head=headline_markdown(cards, cmp)))
    rubric = [(n, q["rubric"]) for n, q in cmp["quality"].items() if q.get("rubric")]
    threshold = float((views[0].get("labels") or {}).get("threshold") or REVIEW_THRESHOLD)
    write_text(
        out_dir / "compare.html",
        render_html(
            "safetune comparison",
            compare_markdown(cmp, max_flips, tables_only=True),
            list(cmp["overall"].items()),
            rubric=rubric or None,
            tradeoff=tradeoff_points(cmp),
            headline=headline_html(cards, cmp),
            browser=browser_html(verdicts, cmp["names"], threshold),
            css=HEADLINE_CSS + "\n" + BROWSER_CSS,
        ),
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
