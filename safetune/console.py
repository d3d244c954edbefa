"""Terminal output (rich tables). The library logs; only entry points print, through here."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()


def print_metrics(stage: str, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    table = Table(title=f"safetune {stage}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    for k, v in artifacts.items():
        console.print(f"[bold]{k}[/bold]: {v}")
