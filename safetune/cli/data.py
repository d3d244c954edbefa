"""``safetune-data``: validate, describe and preflight preference data.

Usage::

    safetune-data validate data=bundled                      # a data config group (Hydra overrides)
    safetune-data validate data=pku_saferlhf data.sources.0.path=/path/to/file.jsonl
    safetune-data validate my_triplets.jsonl --loader triplets  # files (each becomes one source)
    safetune-data stats data=bundled
    safetune-data preflight ...                              # the chat-template preflight (safetune.train.preflight)

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
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from rich.markup import escape
from rich.table import Table

from safetune import CONF_DIR
from safetune.cli.common import compose
from safetune.cli.console import console, print_metrics, print_report
from safetune.cli.errors import guarded, print_error, strip_debug
from safetune.core.config import to_plain
from safetune.core.errors import InputError, MissingInputError, SafetuneError
from safetune.core.formatting import ChatFormatter
from safetune.core.modeling import ModelSpec, load_tokenizer, resolve_model_path
from safetune.core.runs import write_json
from safetune.core.schema import PreferenceExample
from safetune.data import build_preference_data
from safetune.data.mix import LEGACY_LOADERS
from safetune.data.sources import triplets
from safetune.data.stats import compute_stats, stats_tables
from safetune.data.validate import validate_config
from safetune.train.preflight import run_preflight, settings_from_cfg

DEFAULT_SUITES = ["suite://harmful", "suite://benign"]


def data_config(targets: list[str], *, loader: str = "triplets", suites: list[str] | None = None) -> dict[str, Any]:
    """Compose ``cfg.data`` from Hydra overrides, or build a one-source-per-file config from paths."""
    overrides = [t for t in targets if "=" in t]
    files = [t for t in targets if "=" not in t]
    if files and overrides:
        raise SystemExit("Give either data files or Hydra overrides (data=...), not both.")
    if files:
        target = LEGACY_LOADERS.get(loader, loader)
        cfg: dict[str, Any] = {
            "sources": [{"name": f, "_target_": target, "path": f} for f in files],
            "seed": 42,
            "dedup": True,
            "eval_fraction": 0.0,
            "leakage_suites": list(DEFAULT_SUITES),
        }
    else:
        cfg = to_plain(compose("train", overrides or ["data=bundled"]).data)
    if suites is not None:
        cfg["leakage_suites"] = list(cfg.get("leakage_suites") or []) + suites
    return cfg


def _line_key(issue: Any) -> tuple[str, int, str]:
    """Sort issues by file, then line number (``file.jsonl:12``), then text."""
    file, _, rest = str(issue.where).rpartition(":")
    num = int(rest) if rest.isdigit() else -1
    return (file if num >= 0 else str(issue.where), num, issue.message)


def _print_report(report: Any, show: int) -> None:
    """Errors first, grouped by rule (count, then the first ``show`` of each in file order), then warnings."""
    for level, issues in (("error", report.errors), ("warning", report.warnings)):
        by_rule: dict[str, list[Any]] = defaultdict(list)
        for issue in sorted(issues, key=_line_key):
            by_rule[issue.rule].append(issue)
        colour = "red" if level == "error" else "yellow"
        for rule, rows in sorted(by_rule.items(), key=lambda kv: -len(kv[1])):
            console.print(f"[{colour}]{level}[/] [bold]{rule}[/]: {len(rows)} row(s)", highlight=False)
            for i in rows[:show]:
                fld = f" field '{i.field}'" if i.field else ""
                line = f"  {i.where}:{fld} [{rule}] {i.message}"
                console.print(escape(line), highlight=False, soft_wrap=True)
            if len(rows) > show:
                console.print(f"  ... {len(rows) - show} more ({rule}); --show N or --json for all", highlight=False)
    status = "[green]OK[/green]" if report.ok else "[red]INVALID[/red]"
    console.print(f"{status}: {report.rows} rows, {len(report.errors)} error(s), {len(report.warnings)} warning(s)")


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = data_config(args.targets, loader=args.loader, suites=args.suite)
    if args.no_leakage:
        cfg["leakage_suites"] = []
    _, report = validate_config(cfg)
    _print_report(report, args.show)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.to_dict(), f, indent=2, ensure_ascii=False)
    return 0 if report.ok else 1


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = data_config(args.targets, loader=args.loader)
    cfg["leakage_suites"] = []
    bundle = build_preference_data(cfg, on_error="collect")
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
    return int(run_preflight_cli(argv) or 0)


def _load_examples(data: str, cfg: Any) -> list[PreferenceExample]:
    p = Path(data).expanduser()
    if p.suffix in (".jsonl", ".json") or p.is_file() or data.startswith("bundled://"):
        if not data.startswith("bundled://") and not p.is_file():
            raise MissingInputError(f"--data {data}: no such file; expected a data config name or a .jsonl path.")
        return triplets.load(str(p) if p.is_file() else data)
    bundle = build_preference_data(cfg.data)
    return [*bundle.train, *bundle.eval]


def _compose(overrides: list[str]) -> Any:
    return compose("train", overrides)


def run_preflight_cli(argv: list[str]) -> int:
    """``safetune-data preflight``: 0 when every rule passes (or --force), 1 on failures, 2 on bad arguments."""
    ap = argparse.ArgumentParser(
        prog="safetune-data preflight", description="Check the chat template on a sample of preference rows."
    )
    ap.add_argument(
        "--data", "-d", default="bundled", help="A data config name (conf/data/<name>.yaml) or a .jsonl path."
    )
    ap.add_argument("--template", "-t", default=None, help="'auto', a shipped template name, or a .jinja path.")
    ap.add_argument("--system-prompt", default=None, help="System prompt added when a row has none.")
    ap.add_argument("--model", "-m", default=None, help="A model config name (conf/model/) or a checkpoint dir/hub id.")
    ap.add_argument("--max-length", type=int, default=None, help="Default: trainer.max_length from the config.")
    ap.add_argument(
        "--sample", "-n", type=int, default=None, help="Rows to check (0 = all). Default: template.preflight.sample."
    )
    ap.add_argument("--force", action="store_true", help="Exit 0 even when rules fail (experts only).")
    args = ap.parse_args(argv)
    conf = Path(CONF_DIR)
    overrides: list[str] = []
    data_is_config = (conf / "data" / f"{args.data}.yaml").is_file()
    if data_is_config:
        overrides.append(f"data={args.data}")
    if args.template and (conf / "template" / f"{args.template}.yaml").is_file():
        overrides.append(f"template={args.template}")
    if args.model and (conf / "model" / f"{args.model}.yaml").is_file():
        overrides.append(f"model={args.model}")
    try:
        cfg = _compose(overrides)
        template_cfg = OmegaConf.to_container(cfg.template, resolve=True)
        if args.template and not (conf / "template" / f"{args.template}.yaml").is_file():
            template_cfg["name"] = args.template
        if args.system_prompt is not None:
            template_cfg["system_prompt"] = args.system_prompt
        model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
        if args.model and not (conf / "model" / f"{args.model}.yaml").is_file():
            model_cfg["name_or_path"] = args.model
        spec = ModelSpec.from_cfg(model_cfg)
        tokenizer = load_tokenizer(spec, resolve_model_path(spec))
        formatter = ChatFormatter.from_cfg(tokenizer, template_cfg)
        examples = (
            _load_examples(args.data, cfg)
            if data_is_config or Path(args.data).suffix or Path(args.data).is_file() or "://" in args.data
            else None
        )
        if examples is None:
            raise InputError(
                f"--data {args.data!r}: not a data config ({', '.join(sorted(p.stem for p in (conf / 'data').glob('*.yaml')))}) "
                "nor a .jsonl file."
            )
        settings = settings_from_cfg(template_cfg, OmegaConf.to_container(cfg.trainer, resolve=True))
    except (SafetuneError, ValueError, OSError) as e:
        print_error(
            e
            if isinstance(e, SafetuneError)
            else InputError(str(e), hint="check the --data/--template/--model arguments")
        )
        return 2
    if args.max_length is not None:
        settings.max_length = args.max_length if args.max_length > 0 else None
    if args.sample is not None:
        settings.sample = args.sample
    report = run_preflight(formatter, examples, settings)
    print_report(report, tokenizer, console)
    if not report.passed and args.force:
        console.print("[yellow]--force: failures reported, exit status 0.[/]")
        return 0
    return 0 if report.passed else 1


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
            sp.add_argument("--show", type=int, default=5, help="issues shown per rule (default 5)")
        if name == "stats":
            sp.add_argument("--pools", action="store_true", help="describe the synthesis prompt pools (synth.pools)")
    sub.add_parser(
        "preflight", help="check the chat template on a sample of rows (safetune.train.preflight)", add_help=False
    )
    sub.add_parser(
        "synthesize", help="on-policy preference pairs from the prompt pools (Hydra overrides)", add_help=False
    )
    return p


def cmd_synthesize(overrides: list[str]) -> int:
    """``safetune-data synthesize [overrides]``: compose conf/synthesize.yaml, answer, judge, pair, write pairs.jsonl."""
    from safetune.synth.run import run_synthesis  # heavy (torch): after the config is checked

    cfg = compose("synthesize", overrides)
    logging.getLogger().setLevel(logging.INFO)
    metrics, artifacts = run_synthesis(cfg)
    if artifacts:
        print_metrics("synthesize", metrics, artifacts)
    return 0


def cmd_pool_stats(targets: list[str], json_path: str | None) -> int:
    """Coverage of the synthesis prompt pools (the configured ``synth.pools``, overridable)."""
    from safetune.synth.pools import pool_coverage
    from safetune.synth.run import load_pools

    cfg = compose("synthesize", [t for t in targets if "=" in t])
    cov = pool_coverage(load_pools(cfg.synth))
    if json_path:
        write_json(json_path, cov)
    console.print(f"[bold]{cov['prompts']} pool prompts[/] ({cov['multi_turn']} multi-turn): {cov['kind']}")
    for key in ("area", "type", "category", "tactic", "style"):
        t = Table(title=f"{key} ({len(cov[key])})")
        t.add_column(key)
        t.add_column("prompts", justify="right")
        for name, n in cov[key].items():
            t.add_row(str(name), str(n))
        console.print(t)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = strip_debug(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if argv[:1] == ["preflight"]:
        return guarded(lambda: cmd_preflight(argv[1:]))
    if argv[:1] == ["synthesize"]:
        return guarded(lambda: cmd_synthesize(argv[1:]))
    args = build_parser().parse_args(argv)
    if args.command == "stats" and args.pools:
        return guarded(lambda: cmd_pool_stats(args.targets, args.json))
    return guarded(lambda: cmd_validate(args) if args.command == "validate" else cmd_stats(args))


if __name__ == "__main__":
    sys.exit(main())
