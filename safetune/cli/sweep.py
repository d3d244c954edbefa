"""``python -m safetune.cli.sweep <sweep dir>``: (re)write and show a training sweep's summary table."""

from __future__ import annotations

import sys
from pathlib import Path

from safetune.cli.console import console
from safetune.train.sweep import summarise_sweep


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        raise SystemExit("usage: python -m safetune.cli.sweep <sweep dir>")
    summarise_sweep(args[0])
    console.print((Path(args[0]) / "sweep_summary.md").read_text())


if __name__ == "__main__":
    main()
