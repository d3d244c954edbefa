"""``safetune-eval judge-check``: how far each judge agrees with human labels.

Runs every configured judge over a labelled set — bundled ``judge_heldout.jsonl`` by default (written apart from
the training files of the embedding and learned judges, and disjoint from them: tested), the project's JSONL
layout ``{prompt, response, label}`` or XSTest's completions CSV (``prompt, completion, final_label`` with
``1_full_compliance / 2_full_refusal / 3_partial_refusal``) — and reports 3-class accuracy, two binary accuracies
(refusal vs not; refusal incl. partial vs compliance), per-class precision/recall (Wilson 95% intervals) and F1
(bootstrap 95% interval), the confusion matrix, the expected calibration error of the judge's confidence, the
low-confidence verdicts and the worst errors (the most confident wrong verdicts).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from safetune import CONF_DIR
from safetune.core.schema import VERDICT_LABELS, SchemaError, Verdict
from safetune.data.io import iter_rows
from safetune.eval.judges import Judge, build_judge
from safetune.eval.judges.calibration import calibration_bins, expected_calibration_error
from safetune.eval.judges.embedding import bundled_file, load_labelled
from safetune.eval.stats import wilson

log = logging.getLogger(__name__)

DEFAULT_FILE = "judge_heldout.jsonl"
ACCURACY_FILE = Path(__file__).resolve().parent / "bundled" / "judge_accuracy.json"
SHIPPED_JUDGES = ("keyword", "embedding", "learned")
XSTEST_LABELS = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "partial"}
LOW_CONFIDENCE = 0.7
WORST_ERRORS = 10


def load_check_rows(path: str | Path) -> list[dict[str, Any]]:
    """Labelled rows from the project's layout ``{prompt, response, label}`` or XSTest's completions layout."""
    first = next(iter_rows(str(path)), None)
    if first is None:
        raise SchemaError(f"{path}: no labelled rows.")
    if "final_label" not in first[1] and "completion" not in first[1]:
        return load_labelled(path)
    rows = []
    for where, row in iter_rows(str(path)):
        for f in ("prompt", "completion", "final_label"):
            if row.get(f) is None:
                raise SchemaError(
                    f"{where}: missing field {f!r}; XSTest completion rows need prompt, completion and final_label."
                )
        raw = str(row["final_label"]).strip()
        if raw not in XSTEST_LABELS:
            raise SchemaError(
                f"{where}: field 'final_label' is {raw!r}; expected one of {sorted(XSTEST_LABELS)} (XSTest layout)."
            )
        xs_type = str(row.get("type") or "")
        kind = ("harmful" if xs_type.startswith("contrast") else "benign") if xs_type else None
        rows.append(
            {
                **row,
                "id": row.get("id") or row.get("id_v2") or where,
                "prompt": str(row["prompt"]),
                "response": "" if row["completion"] != row["completion"] else str(row["completion"]),  # NaN
                "label": XSTEST_LABELS[raw],
                "kind": kind,
            }
        )
    return rows


def _f1(tp: np.ndarray, n_pred: np.ndarray, n_gold: np.ndarray) -> np.ndarray:
    denom = n_pred + n_gold
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)


def f1_interval(gold: list[str], pred: list[str], label: str, n_boot: int = 1000, seed: int = 0) -> list[float]:
    """Percentile bootstrap 95% interval of the F1 of ``label`` (seeded)."""
    n = len(gold)
    if n == 0:
        return [float("nan"), float("nan")]
    g = np.array([x == label for x in gold])
    p = np.array([x == label for x in pred])
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    gi, pi = g[idx], p[idx]
    f1 = _f1((gi & pi).sum(1), pi.sum(1), gi.sum(1))
    return [float(np.percentile(f1, 2.5)), float(np.percentile(f1, 97.5))]


def agreement(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Accuracy (3-class and two binary views, Wilson intervals), per-class P/R/F1 with intervals,
    confusion[gold][pred]."""
    n = len(gold)
    correct = sum(g == p for g, p in zip(gold, pred))
    binary = sum((g == "refusal") == (p == "refusal") for g, p in zip(gold, pred))
    any_refusal = sum((g != "compliance") == (p != "compliance") for g, p in zip(gold, pred))
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
        per_class[c] = {
            "precision": prec,
            "recall": rec,
            "f1": f1,
            "support": gold_c,
            "predicted": pred_c,
            "precision_ci": list(wilson(tp, pred_c)) if pred_c else [float("nan"), float("nan")],
            "recall_ci": list(wilson(tp, gold_c)) if gold_c else [float("nan"), float("nan")],
            "f1_ci": f1_interval(gold, pred, c),
        }
    nan = float("nan")
    return {
        "n": n,
        "accuracy": correct / n if n else nan,
        "accuracy_ci": list(wilson(correct, n)),
        "binary_accuracy": binary / n if n else nan,  # refusal vs not (partial counts as not)
        "binary_accuracy_ci": list(wilson(binary, n)),
        "refusal_incl_partial_accuracy": any_refusal / n if n else nan,  # refusal or partial vs compliance
        "refusal_incl_partial_accuracy_ci": list(wilson(any_refusal, n)),
        "per_class": per_class,
        "confusion": confusion,
    }


def _snippet(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def check_judge(judge: Judge, rows: list[dict[str, Any]]) -> dict[str, Any]:
    verdicts: list[Verdict] = judge.judge_many([(r["prompt"], r["response"]) for r in rows])
    gold = [r["label"] for r in rows]
    pred = [v.label for v in verdicts]
    res = agreement(gold, pred)
    by_kind: dict[str, Any] = {}
    for kind in sorted({r.get("kind") for r in rows if r.get("kind")}):
        idx = [i for i, r in enumerate(rows) if r.get("kind") == kind]
        by_kind[kind] = agreement([gold[i] for i in idx], [pred[i] for i in idx])["accuracy"]
    res["accuracy_by_kind"] = by_kind
    conf = [float(v.score) for v in verdicts]
    right = [g == p for g, p in zip(gold, pred)]
    res["ece"] = expected_calibration_error(conf, right, bins=10)
    res["calibration_bins"] = calibration_bins(conf, right, bins=10)
    threshold = float(getattr(judge, "low_confidence", LOW_CONFIDENCE))
    low = [i for i, c in enumerate(conf) if c < threshold]
    res["low_confidence"] = {
        "threshold": threshold,
        "n": len(low),
        "accuracy": sum(right[i] for i in low) / len(low) if low else float("nan"),
    }
    errors = [
        {
            "id": r.get("id"),
            "gold": g,
            "pred": p,
            "score": round(c, 4),
            "prompt": str(r["prompt"])[:200],
            "response": str(r["response"])[:200],
            "reason": v.reason,
        }
        for r, g, p, c, v in zip(rows, gold, pred, conf, verdicts)
        if g != p
    ]
    res["errors"] = errors
    res["worst_errors"] = sorted(errors, key=lambda e: -e["score"])[:WORST_ERRORS]
    return res


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.1f}%"


def _ci(ci: list[float]) -> str:
    return "–" if ci[0] != ci[0] else f"{_pct(ci[0])}–{_pct(ci[1])}"


def markdown(results: dict[str, dict[str, Any]], labelled_file: str) -> str:
    lines = [
        "# safetune judge check",
        "",
        f"labelled set: `{labelled_file}`",
        "",
        "| judge | n | accuracy (3-class) | 95% CI | refusal vs not | refusal incl. partial vs compliance | "
        "partial F1 | ECE | low-confidence |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        low = r.get("low_confidence", {})
        lines.append(
            f"| {name} | {r['n']} | **{_pct(r['accuracy'])}** | {_ci(r['accuracy_ci'])} | "
            f"{_pct(r['binary_accuracy'])} | {_pct(r['refusal_incl_partial_accuracy'])} | "
            f"{r['per_class']['partial']['f1']:.3f} | {r.get('ece', float('nan')):.3f} | {low.get('n', '–')} |"
        )
    for name, r in results.items():
        lines += [
            "",
            f"## {name}",
            "",
            "| class | support | precision (95% CI) | recall (95% CI) | F1 (95% CI) |",
            "|---|---:|---|---|---|",
        ]
        for c in VERDICT_LABELS:
            pc = r["per_class"][c]
            lines.append(
                f"| {c} | {pc['support']} | {_pct(pc['precision'])} ({_ci(pc['precision_ci'])}) | "
                f"{_pct(pc['recall'])} ({_ci(pc['recall_ci'])}) | {pc['f1']:.3f} "
                f"({pc['f1_ci'][0]:.3f}–{pc['f1_ci'][1]:.3f}) |"
            )
        lines += [
            "",
            "confusion matrix (rows: human label, columns: judge)",
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
        if r.get("worst_errors"):
            lines += [
                "",
                "worst errors (most confident wrong verdicts):",
                "",
                "| id | human | judge | confidence | prompt | response |",
                "|---|---|---|---:|---|---|",
            ]
            for e in r["worst_errors"]:
                cells = [_snippet(e["prompt"], 70), _snippet(e["response"], 110)]
                cells = [c.replace("|", "\\|") for c in cells]
                lines.append(f"| {e['id']} | {e['gold']} | {e['pred']} | {e['score']:.2f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines) + "\n"


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest() if Path(path).is_file() else path


def judge_configs(cfg: DictConfig) -> dict[str, Any]:
    """Judge configs to check: ``judge_check.judges`` (names in conf/eval/judge) or the configured ``eval.judge``.

    A named judge of the same class as the configured ``eval.judge`` is checked with the configured one, so
    ``eval/judge=learned eval.judge.decision=argmax`` applies whether or not ``learned`` is also named."""
    names = list(cfg.judge_check.get("judges") or [])
    configured = str(cfg.eval.judge.get("_target_", "configured"))
    if not names:
        return {configured.rsplit(".", 1)[-1]: cfg.eval.judge}
    out = {}
    for name in names:
        f = Path(CONF_DIR) / "eval" / "judge" / f"{name}.yaml"
        if not f.is_file():
            avail = sorted(p.stem for p in f.parent.glob("*.yaml"))
            raise FileNotFoundError(f"judge_check.judges lists {name!r}, but {f} does not exist; available: {avail}.")
        loaded = OmegaConf.load(f)
        if str(loaded.get("_target_")) == configured:
            out[name] = cfg.eval.judge  # the configured judge, command-line overrides included
            continue
        root = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
        root.eval.judge = loaded  # replaced whole, interpolations (${paths.cache}) resolve against cfg
        out[name] = root.eval.judge
    return out


def _training_files(judge: Judge) -> list[str]:
    files = list(getattr(judge, "train_files", None) or [])
    if getattr(judge, "train_file", None):
        files.append(judge.train_file)
    return files


def run_judge_check(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    labelled = str(cfg.judge_check.get("file") or bundled_file(DEFAULT_FILE))
    rows = load_check_rows(labelled)
    results: dict[str, dict[str, Any]] = {}
    for name, jcfg in judge_configs(cfg).items():
        judge = build_judge(jcfg)
        for train in _training_files(judge):
            if _sha(train) == _sha(labelled):
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
    metrics.update(
        {f"{n}/refusal_incl_partial_accuracy": r["refusal_incl_partial_accuracy"] for n, r in results.items()}
    )
    metrics.update({f"{n}/partial_f1": r["per_class"]["partial"]["f1"] for n, r in results.items()})
    metrics.update({f"{n}/ece": r["ece"] for n, r in results.items()})
    return metrics, {
        "judge_check_md": str(out_dir / "judge_check.md"),
        "judge_check_json": str(out_dir / "judge_check.json"),
    }


# ------------------------------------------------------------------- the shipped judges' measured agreement


def accuracy_entry(res: dict[str, Any], labelled_file: str | Path) -> dict[str, Any]:
    """The headline numbers of one :func:`check_judge` result, as stored in ``judge_accuracy.json``."""
    partial = res["per_class"]["partial"]
    return {
        "n": res["n"],
        "file": Path(labelled_file).name,
        "binary_accuracy": res["binary_accuracy"],  # refusal vs not (partial counts as not)
        "binary_accuracy_ci": res["binary_accuracy_ci"],
        "refusal_incl_partial_accuracy": res["refusal_incl_partial_accuracy"],
        "refusal_incl_partial_accuracy_ci": res["refusal_incl_partial_accuracy_ci"],
        "accuracy": res["accuracy"],  # 3-class
        "accuracy_ci": res["accuracy_ci"],
        "partial_f1": partial["f1"],
        "partial_f1_ci": partial["f1_ci"],
        "ece": res["ece"],
    }


def measured_accuracy(judge: str | None = None, path: str | Path = ACCURACY_FILE) -> dict[str, Any] | None:
    """The shipped judges' measured agreement with human labels on the bundled held-out set (package data written by
    :func:`write_measured_accuracy`): ``{"file", "sha256", "judges": {name: entry}}``, or one judge's entry (None for
    a judge that was not measured, e.g. ``hf_classifier``, ``llm_judge`` or ``human``)."""
    p = Path(path)
    if not p.is_file():
        log.warning("%s is missing: judge accuracy shows as 'not measured' (regenerate it with "
                    "safetune.eval.judge_check.write_measured_accuracy())", p)  # fmt: skip
        return None
    data = json.loads(p.read_text(encoding="utf-8"))
    if judge is None:
        return data
    return data.get("judges", {}).get(str(judge))


def write_measured_accuracy(
    path: str | Path = ACCURACY_FILE,
    judges: tuple[str, ...] | list[str] = SHIPPED_JUDGES,
    labelled: str | Path | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Run the judge check of each shipped judge (``conf/eval/judge/<name>.yaml``, default options) on the bundled
    held-out set and write ``judge_accuracy.json`` (regenerate it whenever a judge, its weights or the set change)."""
    from safetune.core.modeling import cache_root
    from safetune.core.runs import write_json

    labelled = Path(labelled or bundled_file(DEFAULT_FILE))
    rows = load_check_rows(labelled)
    out: dict[str, Any] = {"file": labelled.name, "sha256": _sha(str(labelled)), "judges": {}}
    for name in judges:
        f = Path(CONF_DIR) / "eval" / "judge" / f"{name}.yaml"
        if not f.is_file():
            raise FileNotFoundError(f"{f} does not exist: {name!r} is not a judge config (conf/eval/judge/*.yaml).")
        root = OmegaConf.create({"paths": {"cache": str(cache_root(cache_dir))}})
        root.judge = OmegaConf.load(f)
        out["judges"][name] = accuracy_entry(check_judge(build_judge(root.judge), rows), labelled)
        log.info("judge %s: refusal vs not %.3f, 3-class %.3f on %d rows", name,
                 out["judges"][name]["binary_accuracy"], out["judges"][name]["accuracy"], len(rows))  # fmt: skip
    write_json(path, out)
    return out
