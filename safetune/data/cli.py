"""``safetune-data``: validate, describe and preflight preference data.

Usage::

    safetune-data validate data=bundled                      # a data config group (Hydra overrides)
    safetune-data validate data=pku_saferlhf data.sources.0.path=/path/to/file.jsonl
    safetune-data validate my_triplets.jsonl --loader triplets  # files (each becomes one source)
    safetune-data stats data=bundled
    safetune-data preflight ...                              # safetune.preflight.run_preflight_cli

Arguments containing ``=`` are Hydra overrides of the ``train`` config (so ``data=<group>`` and
``data.<key>=...`` work); other arguments are data files. ``validate`` exits 1 when it finds errors
(each names the file, line/row, field and rule) and 0 otherwise; warnings are summarised.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import defaultdict
from typing import Any

from rich.markup import escape

from safetune.console import console
from safetune.schema import SchemaError

DEFAULT_SUITES = ["suite://harmful", "suite://benign"]


def data_config(targets: list[str], *, loader: str = "triplets", suites: list[str] | None = None) -> dict[str, Any]:
    """Compose ``cfg.data`` from Hydra overrides, or build a one-source-per-file config from paths."""
    from safetune.data.mix import to_plain

    overrides = [t for t in targets if "=" in t]
    files = [t for t in targets if "=" not in t]
    if files and overrides:
        raise SystemExit("Give either data files or Hydra overrides (data=...), not both.")
    if files:
        cfg: dict[str, Any] = {
            "sources": [{"name": f, "loader": loader, "path": f} for f in files],
            "seed": 42,
            "dedup": True,
            "eval_fraction": 0.0,
            "leakage_suites": list(DEFAULT_SUITES),
        }
    else:
        from hydra import compose, initialize_config_dir

        from safetune import CONF_DIR

        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = to_plain(compose(config_name="train", overrides=overrides or ["data=bundled"]).data)
    if suites is not None:
        cfg["leakage_suites"] = list(cfg.get("leakage_suites") or []) + suites
    return cfg


def _print_report(report: Any, show: int) -> None:
    from rich.table import Table

    for issue in report.errors[:show]:
        console.print(f"[red]{escape(str(issue))}[/red]", highlight=False, soft_wrap=True)
    if len(report.errors) > show:
        console.print(f"[red]... {len(report.errors) - show} more error(s); use --show or --json.[/red]")
    by_rule: dict[str, list[Any]] = defaultdict(list)
    for issue in report.warnings:
        by_rule[issue.rule].append(issue)
    if by_rule:
        t = Table(title="warnings")
        t.add_column("rule")
        t.add_column("count", justify="right")
        t.add_column("first locations / message")
        for rule, issues in sorted(by_rule.items(), key=lambda kv: -len(kv[1])):
            first = issues[0]
            detail = first.message if len(issues) == 1 else ", ".join(i.where for i in issues[:3])
            t.add_row(rule, str(len(issues)), escape(detail))
        console.print(t)
    status = "[green]OK[/green]" if report.ok else "[red]INVALID[/red]"
    console.print(f"{status}: {report.rows} rows, {len(report.errors)} error(s), {len(report.warnings)} warning(s)")


def cmd_validate(args: argparse.Namespace) -> int:
    from safetune.data.validate import validate_config

    cfg = data_config(args.targets, loader=args.loader, suites=args.suite)
    if args.no_leakage:
        cfg["leakage_suites"] = []
    try:
        _, report = validate_config(cfg)
    except (SchemaError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error: {escape(str(e))}[/red]", highlight=False, soft_wrap=True)
        return 1
    _print_report(report, args.show)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2, ensure_ascii=False)
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    from safetune.data.mix import build_preference_data
    from safetune.data.stats import compute_stats, stats_tables

    cfg = data_config(args.targets, loader=args.loader)
    cfg["leakage_suites"] = []
    try:
        bundle = build_preference_data(cfg, on_error="collect")
    except (SchemaError, FileNotFoundError, ValueError) as e:
        console.print(f"[red]error: {escape(str(e))}[/red]", highlight=False, soft_wrap=True)
        return 1
    stats = compute_stats(bundle.train + bundle.eval)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(stats, f, indent=2, ensure_ascii=False)
    for table in stats_tables(stats):
        console.print(table)
    if bundle.errors:
        console.print(
            f"[yellow]{len(bundle.errors)} invalid row(s) not counted; run `safetune-data validate`.[/yellow]"
        )
    return 0


def cmd_preflight(argv: list[str]) -> int:
    try:
        from safetune.preflight import run_preflight_cli
    except ImportError as e:
        console.print(
            f"[red]error: `safetune-data preflight` needs safetune.preflight.run_preflight_cli, which could not be "
            f"imported ({e}). Update or reinstall safetune.[/red]",
            highlight=False,
        )
        return 2
    return int(run_preflight_cli(argv) or 0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="safetune-data", description="Validate and describe preference data.")
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_text in (("validate", "check rows and the dataset; exit 1 on errors"), ("stats", "print tables")):
        sp = sub.add_parser(name, help=help_text)
        sp.add_argument("targets", nargs="*", help="Hydra overrides (data=bundled, data.x=...) or data files")
        sp.add_argument("--loader", default="triplets", help="loader for file targets: triplets|pku_saferlhf|hh_rlhf")
        sp.add_argument("--json", default=None, help="also write the full result as JSON to this path")
        if name == "validate":
            sp.add_argument("--suite", action="append", default=None, help="extra eval suite for the leakage check")
            sp.add_argument("--no-leakage", action="store_true", help="skip the eval-suite leakage check")
            sp.add_argument("--show", type=int, default=50, help="errors to print (default 50)")
    sub.add_parser("preflight", help="check a training config before a run (safetune.preflight)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["preflight"]:
        return cmd_preflight(argv[1:])
    args = build_parser().parse_args(argv)
    return cmd_validate(args) if args.command == "validate" else cmd_stats(args)


if __name__ == "__main__":
    sys.exit(main())
