"""The demo (README's main command): evaluate the base model, synthesise on-policy preference pairs, train a DPO LoRA
adapter, evaluate the tuned model, and print the side-by-side comparison. One round of :mod:`safetune.cli.rounds`.

``safetune-demo [demo_dir=DIR] [rounds=N] [hydra overrides...]``. ``experiment=demo`` composes the shared demo settings
plus each stage's own delta (``conf/experiment/{train,eval,synth}/demo.yaml``). Each override goes to every stage
whose config accepts it (``trainer.beta=0.1`` to training, ``generation.max_new_tokens=32`` to both evaluations,
``model=hub ...`` to all); one that no stage accepts is an error naming the key.
"""

from __future__ import annotations

from typing import Any

from safetune.cli.rounds import drop_unreachable_suites, route_overrides, run_rounds
from safetune.cli.rounds import main as rounds_main

__all__ = ["drop_unreachable_suites", "route_overrides", "run_demo", "main"]


def run_demo(overrides: list[str] | None = None, out_root: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """One round: base evaluation, synthesis (when the experiment trains on it), training, evaluation, comparison."""
    return run_rounds(overrides, out_root, rounds=1)


def main() -> None:
    rounds_main(default_rounds=1)


if __name__ == "__main__":
    main()
