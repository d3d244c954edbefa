"""Dataset statistics for ``safetune-data stats``: counts per source/category/severity/tactic and lengths."""

from __future__ import annotations

from collections import Counter
from typing import Any

from safetune.core.schema import PreferenceExample

PERCENTILES = (5, 25, 50, 75, 95, 100)


def percentiles(values: list[int], qs: tuple[int, ...] = PERCENTILES) -> dict[str, int]:
    """Nearest-rank percentiles (``p100`` is the maximum); zeros for an empty list."""
    if not values:
        return {f"p{q}": 0 for q in qs}
    ordered = sorted(values)
    n = len(ordered)
    return {f"p{q}": ordered[min(n - 1, max(0, -(-q * n // 100) - 1))] for q in qs}


def compute_stats(examples: list[PreferenceExample]) -> dict[str, Any]:
    """Counts and character-length percentiles (prompt = all prompt turns joined)."""
    return {
        "rows": len(examples),
        "harmful_rows": sum(ex.is_harmful for ex in examples),
        "benign_rows": sum(not ex.is_harmful for ex in examples),
        "source": dict(Counter(ex.source for ex in examples).most_common()),
        "category": dict(Counter(c for ex in examples for c in ex.categories).most_common()),
        "severity": dict(
            sorted(Counter("unknown" if ex.severity is None else str(ex.severity) for ex in examples).items())
        ),
        "tactic": dict(Counter(ex.tactic for ex in examples).most_common()),
        "turns": dict(sorted(Counter(str(len(ex.prompt)) for ex in examples).items(), key=lambda kv: int(kv[0]))),
        "length_chars": {
            "prompt": percentiles([sum(len(m["content"]) for m in ex.prompt) for ex in examples]),
            "chosen": percentiles([len(ex.chosen) for ex in examples]),
            "rejected": percentiles([len(ex.rejected) for ex in examples]),
        },
    }


def stats_tables(stats: dict[str, Any]) -> list[Any]:
    """Rich tables for the stats dict (rendered by the CLI)."""
    from rich.table import Table

    tables = []
    n = max(stats["rows"], 1)
    for key in ("source", "category", "severity", "tactic", "turns"):
        t = Table(title=f"{key} ({stats['rows']} rows)")
        t.add_column(key)
        t.add_column("rows", justify="right")
        t.add_column("share", justify="right")
        for name, count in stats[key].items():
            t.add_row(str(name), str(count), f"{count / n:.1%}")
        tables.append(t)
    t = Table(title="length (characters)")
    t.add_column("field")
    qs = list(next(iter(stats["length_chars"].values())))
    for q in qs:
        t.add_column(q, justify="right")
    for name, pct in stats["length_chars"].items():
        t.add_row(name, *(str(pct[q]) for q in qs))
    tables.append(t)
    return tables
