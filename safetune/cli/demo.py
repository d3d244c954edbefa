"""The demo (README's main command): evaluate the base model, train a DPO LoRA adapter on the bundled preference
set, evaluate the tuned model, and print the side-by-side per-category comparison.

``safetune-demo [demo_dir=DIR] [hydra overrides...]``. ``experiment=demo`` composes the shared demo settings plus
each stage's own delta (``conf/experiment/{train,eval}/demo.yaml``). Each override goes to every stage whose config
accepts it (``trainer.beta=0.1`` to training, ``generation.max_new_tokens=32`` to both evaluations,
``model=hub ...`` to all); one that no stage accepts is an error naming the key.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict

from safetune.cli.common import compose, rewrite_aliases
from safetune.cli.console import console, print_metrics
from safetune.cli.errors import guarded, strip_debug
from safetune.core.config import ConfigError
from safetune.core.hub import HUB_ENV, hub_reachable
from safetune.core.runs import timestamp, write_json
from safetune.data.io import is_local
from safetune.eval.compare import run_compare
from safetune.eval.pipeline import run_eval
from safetune.train.recipe import run_train

log = logging.getLogger(__name__)

STAGES = ("train", "eval")


def route_overrides(overrides: list[str], base: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each override to the stages (root configs) that accept it, found by composing each stage with it.

    ``base``: overrides every stage's composition starts from (e.g. the experiment). Raises :class:`ConfigError`
    naming the override when no stage accepts it.
    """
    base = base or {s: [] for s in STAGES}
    routed: dict[str, list[str]] = {s: [] for s in STAGES}
    plain = {s: compose(s, base[s]) for s in STAGES}
    for o in overrides:
        errors = {}
        for stage in STAGES:
            key = o.split("=", 1)[0]
            if key.startswith("+") and not key.startswith("++") and "." in key:
                parent = key.lstrip("+").rsplit(".", 1)[0]
                if OmegaConf.select(plain[stage], parent) is None:  # `+a.b=v` adds b where a is this stage's
                    errors[stage] = f"{stage} has no {parent!r}"
                    continue
            try:
                compose(stage, [*base[stage], o])
            except (HydraException, ConfigError, ValueError) as e:
                errors[stage] = str(e).splitlines()[0]
                continue
            routed[stage].append(o)
        if len(errors) == len(STAGES):
            raise ConfigError(
                f"override {o!r} fits neither the training nor the evaluation config: "
                + "; ".join(f"{s}: {m}" for s, m in errors.items())
            )
    return routed


def drop_unreachable_suites(cfg: Any) -> list[str]:
    """Keep the suites this machine can read (bundled, local files, or the hub when reachable); return one line per
    suite left out, saying how to add it from a local file."""
    kept, notes = [], []
    for node in cfg.eval.suite.suites:
        path = str(node.get("path") or "")
        if str(node.get("_target_", "")).endswith("bundled.load") or is_local(path) or hub_reachable():
            kept.append(node)
            continue
        env = HUB_ENV.get(path, "the suite's path (a local file)")
        notes.append(f"{node.get('name')} ({path}) left out: the hub is unreachable from here; set {env} to add it.")
    if notes:
        with open_dict(cfg):
            cfg.eval.suite.suites = kept
    return notes


def run_demo(overrides: list[str] | None = None, out_root: str | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    root = Path(out_root or f"demo-{timestamp()}")
    overrides = rewrite_aliases(list(overrides or []))
    exp = [o for o in overrides if o.startswith("experiment=")] or ["experiment=demo"]
    # The demo suite: bundled harmful + benign, plus XSTest when SAFETUNE_XSTEST (or the hub) provides it.
    suite = [] if any(o.startswith("eval/suite=") for o in overrides) else ["eval/suite=demo"]
    routed = route_overrides([o for o in overrides if not o.startswith("experiment=")], {s: exp for s in STAGES})
    ev = [*exp, *suite, *routed["eval"]]
    ecfg = compose("eval", [*ev, "checkpoint=base", f"out_dir={root / 'eval-base'}"])
    tcfg = compose("train", [*exp, *routed["train"], f"run_dir={root / 'run'}"])
    ecfg2 = compose("eval", [*ev, f"checkpoint={root / 'run'}", f"out_dir={root / 'eval-tuned'}"])
    notes = drop_unreachable_suites(ecfg)
    drop_unreachable_suites(ecfg2)  # the same suites for the tuned model
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    ccfg = compose(
        "compare",
        [f"evals=[{root / 'eval-base'},{root / 'eval-tuned'}]", "labels=[base,tuned]", f"out_dir={root / 'compare'}"],
    )
    times: dict[str, float] = {}
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
    _, cmp_art = run_compare(ccfg)
    metrics = {
        **{f"base/{k}": v for k, v in base_metrics.items() if isinstance(v, float)},
        **{f"tuned/{k}": v for k, v in tuned_metrics.items() if isinstance(v, float)},
        **{f"train/{k}": v for k, v in train_metrics.items() if k.startswith("final/") or k == "train_runtime"},
        **times,
    }
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
    args = strip_debug(sys.argv[1:])
    out_root = None
    for a in list(args):
        if a.startswith("demo_dir="):
            out_root = a.split("=", 1)[1]
            args.remove(a)
    metrics, artifacts = guarded(lambda: run_demo(args, out_root))
    console.print(Path(artifacts["compare_md"]).read_text())
    print_metrics("demo", metrics, {"demo directory": artifacts["root"], "comparison": artifacts["compare_md"]})


if __name__ == "__main__":
    main()
