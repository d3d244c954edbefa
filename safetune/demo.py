"""The demo (README's main command): evaluate the base model, train a DPO LoRA adapter on the bundled
preference set, evaluate the tuned model, and print the side-by-side per-category comparison.

``safetune-demo [hydra overrides...]`` — overrides apply to both train and eval configs where the key
exists (e.g. ``trainer.max_steps=10 limit_per_group=2``).
"""

from __future__ import annotations

import logging
import re
import sys
import time
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from safetune import CONF_DIR
from safetune.runs import timestamp

log = logging.getLogger(__name__)


TRAIN_ONLY = {"trainer", "data", "peft", "run_dir", "resume"}
EVAL_ONLY = {"generation", "limit_per_group", "eval", "checkpoint", "out_dir", "mode", "judge_check"}


def _top_key(override: str) -> str:
    return re.split(r"[./=]", override.lstrip("+~"), maxsplit=1)[0]


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Route each override to the configs that have its top-level key (model/template/... go to both)."""
    train = [o for o in overrides if _top_key(o) not in EVAL_ONLY]
    ev = [o for o in overrides if _top_key(o) not in TRAIN_ONLY]
    return train, ev


def run_demo(overrides: list[str] | None = None, out_root: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetune.eval.compare import run_compare
    from safetune.eval.evaluate import run_eval
    from safetune.train import run_train

    overrides = list(overrides or [])
    root = Path(out_root or f"demo-{timestamp()}")
    train_ov, eval_ov = _split_overrides(overrides)
    # The demo suite: bundled harmful + benign, plus XSTest when SAFETUNE_XSTEST (or the hub) provides it.
    if not any(o.startswith("eval/suite=") for o in eval_ov):
        eval_ov = ["eval/suite=demo", *eval_ov]
    times: dict[str, float] = {}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        ecfg = compose(
            "eval", overrides=["experiment=demo", *eval_ov, "checkpoint=base", f"out_dir={root / 'eval-base'}"]
        )
        tcfg = compose("train", overrides=["experiment=demo", *train_ov, f"run_dir={root / 'run'}"])
        ecfg2 = compose(
            "eval",
            overrides=["experiment=demo", *eval_ov, f"checkpoint={root / 'run'}", f"out_dir={root / 'eval-tuned'}"],
        )
        ccfg = compose(
            "compare",
            overrides=[
                f"evals=[{root / 'eval-base'},{root / 'eval-tuned'}]",
                "labels=[base,tuned]",
                f"out_dir={root / 'compare'}",
            ],
        )
    t = time.time()
    log.info("[1/4] evaluating the base model")
    base_metrics, base_art = run_eval(ecfg)
    times["eval_base_s"] = time.time() - t
    t = time.time()
    log.info("[2/4] DPO training (LoRA) on %s", OmegaConf.to_container(tcfg.data.sources, resolve=True))
    train_metrics, train_art = run_train(tcfg)
    times["train_s"] = time.time() - t
    t = time.time()
    log.info("[3/4] evaluating the tuned model")
    tuned_metrics, tuned_art = run_eval(ecfg2)
    times["eval_tuned_s"] = time.time() - t
    log.info("[4/4] comparing")
    cmp_metrics, cmp_art = run_compare(ccfg)
    metrics = {
        **{f"base/{k}": v for k, v in base_metrics.items() if isinstance(v, float)},
        **{f"tuned/{k}": v for k, v in tuned_metrics.items() if isinstance(v, float)},
        **{f"train/{k}": v for k, v in train_metrics.items() if k.startswith("final/") or k == "train_runtime"},
        **times,
    }
    from safetune.runs import write_json

    write_json(root / "demo_metrics.json", metrics)
    artifacts = {
        "root": str(root),
        **{f"base_{k}": v for k, v in base_art.items()},
        **train_art,
        **{f"tuned_{k}": v for k, v in tuned_art.items()},
        **cmp_art,
    }
    return metrics, artifacts


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    args = sys.argv[1:]
    out_root = None
    for a in list(args):
        if a.startswith("demo_dir="):
            out_root = a.split("=", 1)[1]
            args.remove(a)
    metrics, artifacts = run_demo(args, out_root)
    from safetune.console import console, print_metrics

    console.print(Path(artifacts["compare_md"]).read_text())
    print_metrics("demo", metrics, {"demo directory": artifacts["root"], "comparison": artifacts["compare_md"]})


if __name__ == "__main__":
    main()
