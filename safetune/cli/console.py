"""Terminal output (rich tables). The library logs; only entry points print, through here."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from safetune.train.preflight import FAIL, PASS, WARN, PreflightReport

console = Console()
_console = console


def print_metrics(stage: str, metrics: dict[str, Any], artifacts: dict[str, Any]) -> None:
    table = Table(title=f"safetune {stage}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in metrics.items():
        table.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    for k, v in artifacts.items():
        console.print(f"[bold]{k}[/bold]: {v}")


def _boundary_text(tokenizer: Any, ids: Sequence[int], split: int, closers: set[int]) -> Text:
    text = Text()
    for k, i in enumerate(ids):
        piece = tokenizer.decode([i], skip_special_tokens=False).replace("\n", "\\n\n")
        if i in closers and k >= split:
            style = "bold white on red"
        elif k < split:
            style = ("cyan", "blue")[k % 2]
        else:
            style = ("green", "yellow")[k % 2]
        text.append(piece, style=style)
        text.append("|", style="dim")
    return text


def print_report(report: PreflightReport, tokenizer: Any, console: Console | None = None) -> None:
    """Rules table, one fully rendered example with token boundaries, and length statistics."""
    console = console or _console
    colour = {PASS: "green", WARN: "yellow", FAIL: "bold red"}
    table = Table(
        title=f"Chat-template preflight: template={report.template} ({report.n_sampled}/{report.n_rows} rows)"
    )
    for col in ("rule", "status", "rows", "example id", "detail"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        table.add_row(
            r.rule,
            f"[{colour[r.status]}]{r.status.upper()}[/]",
            f"{r.failing}/{r.checked}",
            r.example_id or "",
            Text(r.detail),
        )
    console.print(table)
    if report.example is not None:
        t = report.example
        closers = set(report.probe.eot_ids if report.probe else []) | {tokenizer.eos_token_id}
        console.print(
            f"[bold]Example row {t.id!r}[/] (prompt+chosen; prompt tokens cyan/blue, response tokens green/yellow, "
            "end-of-turn/EOS white on red, '|' = token boundary):"
        )
        console.print(_boundary_text(tokenizer, t.prompt_chosen_ids, t.split, closers))
    stats = Table(title="Token lengths (as TRL splits them)")
    for col in ("part", "min", "mean", "p50", "p95", "max"):
        stats.add_column(col, justify="right" if col != "part" else "left")
    for part, d in report.stats.items():
        if d:
            stats.add_row(part, *(str(d[k]) for k in ("min", "mean", "p50", "p95", "max")))
    console.print(stats)
    tr = report.truncation
    if tr:
        console.print(
            f"truncation: {tr['rows_truncated']} rows lose response tokens (mean {tr['tokens_lost_mean']}, "
            f"max {tr['tokens_lost_max']}), {tr['rows_dropped']} rows dropped."
        )
    console.print("[green]Preflight passed.[/]" if report.passed else f"[bold red]{report.error_message()}[/]")


def print_preflight(report: PreflightReport, tokenizer: Any) -> None:
    """The training run's preflight hook: the rules table, the example row and the length statistics."""
    print_report(report, tokenizer)
