"""XSTest (Röttger et al.; ``walledai/XSTest`` or a local ``xstest_prompts.csv``): 250 safe look-alikes are benign
(group = XSTest type), 200 unsafe ``contrast_*`` prompts are harmful (topic categories where they map)."""

from __future__ import annotations

from typing import Any

from safetune.core.schema import EvalPrompt, SchemaError
from safetune.data.io import iter_rows
from safetune.eval.suites.common import get_field, user_turn

XSTEST_CONTRAST_CATEGORIES = {
    "contrast_discr": "Discriminatory Behavior",
    "contrast_privacy": "Privacy Violation",
    "contrast_historical_events": "Violence",
}


def load(path: str = "walledai/XSTest", *, name: str = "xstest", split: str = "test", **_: Any) -> list[EvalPrompt]:
    out = []
    for i, (where, row) in enumerate(iter_rows(path, split=split)):
        label = str(get_field(row, "label", where=where)).strip().lower()
        if label not in ("safe", "unsafe"):
            raise SchemaError(f"{where}: field 'label' must be 'safe' or 'unsafe', got {label!r}.")
        xtype = str(get_field(row, "type", where=where)).strip()
        pid = str(get_field(row, "id", where=where, required=False) or i + 1)
        meta = {k: row.get(k) for k in ("focus", "note") if row.get(k)}
        harmful = label == "unsafe"
        out.append(
            EvalPrompt(
                id=f"xstest-{pid}",
                prompt=user_turn(get_field(row, "prompt", where=where)),
                kind="harmful" if harmful else "benign",
                suite=name,
                category=XSTEST_CONTRAST_CATEGORIES.get(xtype) if harmful else None,
                type=xtype,
                metadata=meta,
            )
        )
    return out
