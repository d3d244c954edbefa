"""``safetune-eval judge-check``: how far each judge agrees with human labels.

Runs every configured judge over a labelled set (bundled ``judge_check.jsonl`` — separate from the embedding
judge's ``judge_train.jsonl`` — or the user's file with rows ``{prompt, response, label}``) and reports accuracy
(3-class and refusal-vs-not), per-class precision/recall/F1 and a confusion matrix.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR
from safetune.core.schema import VERDICT_LABELS
from safetune.eval.judges import Judge, build_judge
from safetune.eval.judges.embedding import bundled_file, load_labelled
from safetune.eval.stats import wilson

log = logging.getLogger(__name__)


def agreement(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy (3-class, and refusal vs not with a Wilson interval), per-class P/R/F1, confusion[gold][pred]."""
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, pred))
    binary = sum((g == "refusal") == (p == "refusal") for g, p in zip(gold, pred))
    confusion = {g: {p: 0 for p in VERDICT_LABELS} for g in VERDICT_LABELS}
    for g, p in zip(gold, pred):
        confusion[g][p] += 1
    per_class = {}
    for c in VERDICT_LABELS:
        tp = confusion[c][c]
        pred_c = sum(confusion[g][c] for g in VERDICT_LABELS)
        gold_c = sum(confusion[c].values())
        prec = tp / pred_c if pred_c else float("nan")
        rec = tp / gold_c if gold_c else float("nan")
        f1 = 2 * prec * rec / (prec + rec) if pred_c and gold_c and (prec + rec) else 0.0
        per_class[c] = {"precision": prec, "recall": rec, "f1": f1, "support": gold_c}
    lo, hi = wilson(correct, n)
    return {
        "n": n,
        "accuracy": correct / n if n else float("nan"),
        "accuracy_ci": [lo, hi],
        "binary_accuracy": binary / n if n else float("nan"),
        "per_class": per_class,
        "confusion": confusion,
    }


def check_judge(judge: Judge, rows: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts = judge.judge_many([(r["prompt"], r["response"]) for r in rows])
    gold = [r["label"] for r in rows]
    pred = [v.label for v in verdicts]
    res = agreement(gold, pred)
    by_kind: dict[str, Any] = {}
    for kind in sorted({r.get("kind") for r in rows if r.get("kind")}):
        idx = [i for i, r in enumerate(rows) if r.get("kind") == kind]
        by_kind[kind] = agreement([gold[i] for i in idx], [pred[i] for i in idx])["accuracy"]
    res["accuracy_by_kind"] = by_kind
    res["errors"] = [
        {"id": r.get("id"), "gold": g, "pred": p, "response": r["response"][:200]}
        for r, g, p in zip(rows, gold, pred)
        if g != p
    ]
    return res


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def markdown(results: dict[str, dict[str, Any]], labelled_file: str) -> str:
    lines = [
        "# safetune judge check",
        "",
        f"labelled set: `{labelled_file}`",
        "",
        "| judge | n | accuracy (3-class) | 95% CI | refusal vs not | "
        + " | ".join(f"{c} P/R" for c in VERDICT_LABELS)
        + " |",
        "|---|---:|---:|---|---:|" + "---:|" * len(VERDICT_LABELS),
    ]
    for name, r in results.items():
        pr = " | ".join(
            f"{_pct(r['per_class'][c]['precision'])} / {_pct(r['per_class'][c]['recall'])}" for c in VERDICT_LABELS
        )
        lines.append(
            f"| {name} | {r['n']} | **{_pct(r['accuracy'])}** | {_pct(r['accuracy_ci'][0])}–{_pct(r['accuracy_ci'][1])} | "
            f"{_pct(r['binary_accuracy'])} | {pr} |"
        )
    for name, r in results.items():
        lines += [
            "",
            f"## {name}: confusion matrix (rows: human label, columns: judge)",
            "",
            "| human \\ judge | " + " | ".join(VERDICT_LABELS) + " |",
            "|---|" + "---:|" * len(VERDICT_LABELS),
        ]
        for g in VERDICT_LABELS:
            lines.append(f"| {g} | " + " | ".join(str(r["confusion"][g][p]) for p in VERDICT_LABELS) + " |")
        if r.get("accuracy_by_kind"):
            lines += [
                "",
                "accuracy by prompt kind: " + ", ".join(f"{k} {_pct(v)}" for k, v in r["accuracy_by_kind"].items()),
            ]
    return "\n".join(lines) + "\n"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else path


def judge_configs(cfg: DictConfig) -> dict[str, Any]:
    """Judge configs to check: ``judge_check.judges`` (names in conf/eval/judge) or the configured ``eval.judge``."""
    names = list(cfg.judge_check.get("judges") or [])
    if not names:
        return {str(cfg.eval.judge.get("_target_", "configured")).rsplit(".", 1)[-1]: cfg.eval.judge}
    out = {}
    for name in names:
        f = Path(CONF_DIR) / "eval" / "judge" / f"{name}.yaml"
        if not f.is_file():
            avail = sorted(p.stem for p in f.parent.glob("*.yaml"))
            raise FileNotFoundError(f"judge_check.judges lists {name!r}, but {f} does not exist; available: {avail}.")
        root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        root.eval.judge = OmegaConf.load(f)  # replaced whole, interpolations (${paths.cache}) resolve against cfg
        out[name] = root.eval.judge
    return out


def run_judge_check(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    labelled = str(cfg.judge_check.get("file") or bundled_file("judge_check.jsonl"))
    rows = load_labelled(labelled)
    results: dict[str, dict[str, Any]] = {}
    for name, jcfg in judge_configs(cfg).items():
        judge = build_judge(jcfg)
        train = getattr(judge, "train_file", None)
        if train and _sha(train) == _sha(labelled):
            raise ValueError(
                f"judge {name!r} was trained on {train}, the same data as the labelled set {labelled}; "
                "check it on a separate file (judge_check.file=...)."
            )
        results[name] = check_judge(judge, rows)
        log.info("judge %s: accuracy %.3f on %d rows", name, results[name]["accuracy"], len(rows))
    out_dir = Path(cfg.out_dir) if cfg.get("out_dir") else Path(cfg.paths.evals) / "judge_check"
    out_dir.mkdir(parents=True, exist_ok=True)
    from safetune.core.runs import write_json

    write_json(out_dir / "judge_check.json", {"file": labelled, "results": results})
    (out_dir / "judge_check.md").write_text(markdown(results, labelled))
    metrics = {f"{n}/accuracy": r["accuracy"] for n, r in results.items()}
    metrics.update({f"{n}/binary_accuracy": r["binary_accuracy"] for n, r in results.items()})
    return metrics, {
        "judge_check_md": str(out_dir / "judge_check.md"),
        "judge_check_json": str(out_dir / "judge_check.json"),
    }
