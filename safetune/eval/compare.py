"""``safetune-compare``: several evaluations side by side, with deltas and paired exact McNemar tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR
from safetune.eval.metrics import mcnemar_exact
from safetune.eval.report import load_results, load_verdicts


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


def compare(eval_dirs: list[str | Path], labels: list[str] | None = None) -> dict[str, Any]:
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
                rows.append({"suite": suite, "kind": kind, "group": "ALL" if g == "__all__" else g, "rates": vals})
    tests = []
    for i in range(1, len(dirs)):
        for kind in ("harmful", "benign"):
            pr = paired(verdicts[0], verdicts[i], kind)
            flips = pr.pop("__flips__")
            tests.append({"baseline": names[0], "other": names[i], "kind": kind, "per_group": pr, "flips": flips})
    overall = {n: r["summary"].get("overall", {}) for n, r in zip(names, results)}
    return {"names": names, "dirs": [str(d) for d in dirs], "rows": rows, "tests": tests, "overall": overall}


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
    cmp = compare(evals, labels)
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.evals) / "compare"
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetune.eval.html import render_html
    from safetune.runs import write_json

    write_json(out_dir / "compare.json", cmp)
    md = markdown(cmp, int(cfg.get("max_flips") or 5))
    (out_dir / "compare.md").write_text(md)
    (out_dir / "compare.html").write_text(render_html("safetune comparison", md, list(cmp["overall"].items())))
    overall = {
        f"{r['suite']}/{r['kind']}/{n}": v
        for r in cmp["rows"]
        if r["group"] == "ALL"
        for n, v in zip(cmp["names"], r["rates"])
    }
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
