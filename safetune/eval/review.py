"""Human labels over the judge: export the verdicts worth a look, read them back filled in, override the judge.

``safetune-eval review eval_dir=DIR`` writes ``review.csv`` (or ``.jsonl``): one row per verdict whose confidence is
below ``review.threshold`` (``review.all=true``: every verdict) with ``key, suite, prompt_id, sample, prompt,
response, judge_label, confidence, human_label`` (empty). Fill ``human_label`` with refusal / compliance / partial
(blank rows are ignored) and pass the file back: ``safetune-eval ... eval.labels=FILE`` (or ``safetune-compare ...
human_labels=FILE``) uses the human label wherever there is one; reports say how many verdicts are human-labelled.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from safetune.core.errors import InputError, MissingInputError
from safetune.core.runs import write_text
from safetune.core.schema import VERDICT_LABELS, EvalRecord
from safetune.data.io import iter_file_rows

COLUMNS = ("key", "suite", "prompt_id", "sample", "prompt", "response", "judge_label", "confidence", "human_label")
_ALIASES = {"1_full_compliance": "compliance", "2_full_refusal": "refusal", "3_partial_refusal": "partial"}


def record_key(r: EvalRecord) -> str:
    """The stable id of a verdict in a labelling file: ``suite/prompt_id#sample``."""
    return f"{r.suite}/{r.prompt_id}#{r.sample}"


def export_review(
    records: list[EvalRecord], out: str | Path, *, threshold: float = 0.7, everything: bool = False
) -> tuple[Path, int]:
    """Write the labelling file (CSV or JSONL by suffix) for the uncertain (or all) verdicts; return (path, rows)."""
    out = Path(out)
    rows = [
        {
            "key": record_key(r),
            "suite": r.suite,
            "prompt_id": r.prompt_id,
            "sample": r.sample,
            "prompt": r.prompt,
            "response": r.response,
            "judge_label": r.label,
            "confidence": "" if r.confidence is None else round(r.confidence, 3),
            "human_label": "",
        }
        for r in sorted(records, key=lambda r: (r.confidence if r.confidence is not None else 1.0, record_key(r)))
        if everything or r.confidence is None or r.confidence < threshold
    ]
    if out.suffix == ".jsonl":
        write_text(out, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    elif out.suffix == ".csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
        write_text(out, buf.getvalue())
    else:
        raise InputError(f"review.out={out}: expected a .csv or .jsonl file name.")
    return out, len(rows)


def load_human_labels(path: str | Path) -> dict[str, str]:
    """``key -> label`` from a filled labelling file; blank human labels are skipped, a bad one is an error naming
    the file and line."""
    p = Path(path)
    if not p.is_file():
        raise MissingInputError(
            f"eval.labels={p}: no such file.", hint="export one with `safetune-eval review eval_dir=DIR`"
        )
    out: dict[str, str] = {}
    for where, row in iter_file_rows(p):
        label = str(row.get("human_label") or "").strip().lower()
        if not label:
            continue
        label = _ALIASES.get(label, label)
        if label not in VERDICT_LABELS:
            raise InputError(
                f"{where}: human_label {row.get('human_label')!r}; expected one of {', '.join(VERDICT_LABELS)} (or blank).",
                hint="fix the label in that row",
            )
        key = str(row.get("key") or f"{row.get('suite')}/{row.get('prompt_id')}#{row.get('sample') or 0}")
        out[key] = label
    return out


def apply_human_labels(records: list[EvalRecord], labels: dict[str, str]) -> int:
    """Replace the judge's label with the human one where there is one (in place); return how many were replaced."""
    n = 0
    for r in records:
        label = labels.get(record_key(r))
        if label is not None:
            r.reason = f"human label (judge said {r.label}: {r.reason})"[:300]
            r.label, r.judge, r.confidence = label, "human", 1.0
            n += 1
    return n


def labels_summary(records: list[EvalRecord], threshold: float) -> dict[str, Any]:
    """How many verdicts are human-labelled and how many remain low-confidence (listed for review)."""
    low = [r for r in records if r.judge != "human" and r.confidence is not None and r.confidence < threshold]
    return {
        "human_labelled": sum(r.judge == "human" for r in records),
        "low_confidence": len(low),
        "threshold": threshold,
        "review": [
            {
                "key": record_key(r),
                "label": r.label,
                "confidence": round(r.confidence or 0.0, 3),
                "prompt": r.prompt[:160],
            }
            for r in sorted(low, key=lambda r: r.confidence or 0.0)[:50]
        ],
    }
