"""Real user requests: the first human turn of Anthropic hh-rlhf helpful-base *test* conversations (local
``test.jsonl.gz`` via ``SAFETUNE_HH_HELPFUL``, or hub ``Anthropic/hh-rlhf`` with ``data_dir=helpful-base``), all
benign, for over-refusal on requests written by people rather than by this project."""

from __future__ import annotations

import re
from typing import Any

from safetune.core.schema import EvalPrompt, SchemaError
from safetune.data.io import iter_rows
from safetune.eval.suites.common import user_turn

_FIRST_HUMAN = re.compile(r"^\s*(?:\n\nHuman:|Human:)\s*(.*?)(?:\n\nAssistant:|$)", re.S)


def load(
    path: str = "Anthropic/hh-rlhf",
    *,
    name: str = "hh_helpful",
    split: str = "test",
    data_dir: str | None = "helpful-base",
    max_rows: int | None = 400,
    **_: Any,
) -> list[EvalPrompt]:
    """The first ``max_rows`` distinct first human turns, in file order."""
    out: list[EvalPrompt] = []
    seen: set[str] = set()
    hub = {} if path.endswith((".gz", ".jsonl", ".json")) else {"data_dir": data_dir}
    for where, row in iter_rows(path, split=split, **hub):
        text = row.get("chosen")
        if not isinstance(text, str):
            raise SchemaError(f"{where}: field 'chosen' must be an hh-rlhf transcript string.")
        m = _FIRST_HUMAN.match(text)
        first = (m.group(1) if m else "").strip()
        if not first or first.lower() in seen:
            continue
        seen.add(first.lower())
        out.append(
            EvalPrompt(
                id=f"hh-helpful-{len(out)}", prompt=user_turn(first), kind="benign", suite=name, type="real_requests"
            )
        )
        if max_rows is not None and len(out) >= max_rows:
            break
    return out
