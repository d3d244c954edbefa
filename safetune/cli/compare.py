"""``safetune-compare A B C ...``: several evaluations side by side (first = baseline), deltas, McNemar tests."""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from safetune import CONF_DIR
from safetune.cli.common import check_config, rewrite_aliases
from safetune.cli.console import console
from safetune.eval.compare import run_compare


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="compare")
def _hydra_main(cfg: DictConfig) -> None:
    check_config(cfg)
    _, artifacts = run_compare(cfg)
    console.print(Path(artifacts["compare_md"]).read_text())
    console.print(f"written: {artifacts['compare_md']}")


def positional_to_overrides(argv: list[str]) -> list[str]:
    """``safetune-compare evals/base evals/tuned`` == ``safetune-compare 'evals=[evals/base,evals/tuned]'``."""
    dirs = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in dirs]
    return [*rest, f"evals=[{','.join(dirs)}]"] if dirs else rest


def main() -> None:
    sys.argv = [sys.argv[0], *rewrite_aliases(positional_to_overrides(sys.argv[1:]))]
    _hydra_main()


if __name__ == "__main__":
    main()
