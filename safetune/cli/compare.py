"""``safetune-compare A B C ...``: several evaluations side by side (first = baseline), deltas, McNemar tests."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from safetune.cli.common import hydra_entry
from safetune.cli.console import console


def run(cfg: DictConfig) -> None:
    from safetune.eval.compare import run_compare  # heavy (torch, transformers): after the config is checked

    _, artifacts = run_compare(cfg)
    console.print(Path(artifacts["compare_md"]).read_text())
    console.print(f"written: {artifacts['compare_md']}")


def positional_to_overrides(argv: list[str]) -> list[str]:
    """``safetune-compare evals/base evals/tuned`` == ``safetune-compare 'evals=[evals/base,evals/tuned]'``."""
    dirs = [a for a in argv if "=" not in a and not a.startswith("-")]
    rest = [a for a in argv if a not in dirs]
    return [*rest, f"evals=[{','.join(dirs)}]"] if dirs else rest


main = hydra_entry("compare", run, positional_to_overrides)

if __name__ == "__main__":
    main()
