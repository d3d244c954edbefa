"""Synthesised pairs as a training data source (``_target_: safetune.synth.source.load``).

``path`` is a synthesis output directory (``safetune-data synthesize out_dir=...``) or its ``pairs.jsonl``::

    data:
      sources:
        - {name: curated, _target_: safetune.data.sources.triplets.load, path: bundled://safety_prefs}
        - {name: on_policy, _target_: safetune.synth.source.load, path: runs/synth-base}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safetune.core.errors import MissingInputError
from safetune.data.io import Loaded
from safetune.data.sources import triplets
from safetune.synth import pairs_file


def load(
    path: str | list[str] | None,
    *,
    on_error: str = "raise",
    rules: list[str] | None = None,
    pools: list[str] | None = None,
    **_: Any,
) -> Loaded:
    """The pairs of a synthesis run, or of several (a list: every round so far); rows keep their provenance in
    ``metadata['synth']``. ``rules`` / ``pools`` keep only the pairs one of those rules made (``harmful_complied``,
    ``benign_anchor``, ...) or that come from one of those pools (``ordinary``, ``lookalikes``, ``harmful``)."""
    if isinstance(path, Sequence) and not isinstance(path, str):  # a list, tuple or Hydra ListConfig
        out = Loaded()
        for p in path:
            part = load(p, on_error=on_error, rules=rules, pools=pools)
            out.extend(part)
            out.errors.extend(part.errors)
        return out
    if not path:
        raise MissingInputError(
            "this data source reads synthesised pairs, but no directory is set.",
            hint="run `safetune-data synthesize out_dir=DIR` and pass synth_dir=DIR (or the source's path=DIR)",
        )
    f = pairs_file(path)
    if not f.is_file():
        raise MissingInputError(
            f"{f}: no synthesised pairs there.",
            hint="run `safetune-data synthesize out_dir=...` first (or point path at its output directory)",
        )
    rows = triplets.load(str(f), on_error=on_error, source="synth")
    if rules or pools:
        keep = Loaded(
            ex
            for ex in rows
            if (not rules or ex.metadata.get("synth", {}).get("rule") in rules)
            and (not pools or str(ex.metadata.get("synth", {}).get("pool", "")).removeprefix("pool:") in pools)
        )
        keep.errors.extend(rows.errors)
        keep.skipped.update({"filtered out by rules/pools": len(rows) - len(keep)})
        return keep
    return rows
