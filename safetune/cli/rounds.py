"""Iterative on-policy rounds (``safetune-rounds rounds=N [overrides]``; the demo is one round).

Round k: the checkpoint of round k-1 (the base model for k = 1) answers the prompt pools and its new failures
become pairs (``safetune-data synthesize``); a LoRA adapter is trained from the base on the curated data plus every
round's pairs so far; the result is evaluated on the experiment's suites. At the end ``safetune-compare`` puts the
base and every round side by side (trade-off chart, selectivity) and marks the checkpoint the selection bounds pick.

Overrides go to every stage whose config accepts them (found from the configs, no key lists): ``trainer.*`` to
training, ``synth.*`` to synthesis, ``generation.*`` and ``eval/*`` to evaluation, ``model.*`` to all.
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
from safetune.core.config import ConfigError, iter_targets
from safetune.core.hub import HUB_ENV, hub_reachable
from safetune.core.memory import release_memory
from safetune.core.runs import timestamp, write_json
from safetune.data.io import is_local

log = logging.getLogger(__name__)

STAGES = ("train", "eval", "synthesize")
SYNTH_SOURCE = "safetune.synth.source.load"


def route_overrides(overrides: list[str], base: dict[str, list[str]] | None = None) -> dict[str, list[str]]:
    """Each override to the stages (root configs) that accept it, found by composing each stage with it.

    ``base``: overrides every stage's composition starts from (e.g. the experiment). Raises :class:`ConfigError`
    naming the override when no stage accepts it.
    """
    base = base or {s: [] for s in STAGES}
    routed: dict[str, list[str]] = {s: [] for s in base}
    plain = {s: compose(s, base[s]) for s in base}
    for o in overrides:
        errors = {}
        for stage in base:
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
        if len(errors) == len(base):
            raise ConfigError(
                f"override {o!r} fits none of the {', '.join(base)} configs: "
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


def uses_synthesis(train_cfg: Any) -> bool:
    return any(t == SYNTH_SOURCE for _, t in iter_targets(OmegaConf.to_container(train_cfg.data, resolve=False)))


def run_rounds(
    overrides: list[str] | None = None, out_root: str | None = None, rounds: int = 1
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the base, then ``rounds`` x (synthesise with the previous checkpoint, train, evaluate), then compare."""
    from safetune.eval.compare import run_compare  # heavy (torch): after the configs are checked
    from safetune.eval.pipeline import run_eval
    from safetune.synth.run import run_synthesis
    from safetune.train.recipe import run_train

    if rounds < 1:
        raise ConfigError(f"rounds={rounds}: expected a whole number >= 1.")
    root = Path(out_root or f"demo-{timestamp()}")
    overrides = rewrite_aliases(list(overrides or []))
    exp = [o for o in overrides if o.startswith("experiment=")] or ["experiment=demo"]
    # The experiment's suites; the demo's are bundled + XSTest + real requests (when their files or the hub are there).
    suite = [] if any(o.startswith("eval/suite=") for o in overrides) else ["eval/suite=demo"]
    routed = route_overrides([o for o in overrides if not o.startswith("experiment=")], {s: exp for s in STAGES})
    ev = [*exp, *suite, *routed["eval"]]
    one = rounds == 1
    names = ["tuned"] if one else [f"round-{k}" for k in range(1, rounds + 1)]
    dirs = [root] if one else [root / n for n in names]
    evals = [root / "eval-base", *[(d / "eval-tuned" if one else d / "eval") for d in dirs]]
    eval_cfgs = [compose("eval", [*ev, "checkpoint=base", f"out_dir={evals[0]}"])]
    notes = drop_unreachable_suites(eval_cfgs[0])
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    times: dict[str, float] = {}
    t = time.time()
    log.info("[base] evaluating the base model")
    base_metrics, base_art = run_eval(eval_cfgs[0])
    times["eval_base_s"] = time.time() - t
    times["eval_base_peak_rss_mb"] = peak_rss_mb()
    release_memory()
    policy, synth_dirs, metrics, artifacts = (
        "base",
        [],
        {},
        {"root": str(root), **{f"base_{k}": v for k, v in base_art.items()}},
    )
    for k, (name, d, out) in enumerate(zip(names, dirs, evals[1:]), 1):
        train_ov = [*exp, *routed["train"], f"run_dir={d / 'run'}"]
        if uses_synthesis(compose("train", train_ov)):
            t = time.time()
            log.info("[%s] synthesising on-policy pairs with %s", name, policy)
            synth_dir = d / "synth"
            scfg = compose(
                "synthesize", [*exp, *routed["synthesize"], f"policy={policy}", f"round={k}", f"out_dir={synth_dir}"]
            )
            s_metrics, _ = run_synthesis(scfg)
            synth_dirs.append(str(synth_dir))
            times[f"{name}/synth_s"] = time.time() - t
            times[f"{name}/synth_peak_rss_mb"] = peak_rss_mb()
            release_memory()
            metrics.update({f"{name}/synth/{key}": v for key, v in s_metrics.items()})
            train_ov.append(f"synth_dir=[{','.join(synth_dirs)}]")
        t = time.time()
        tcfg = compose("train", train_ov)
        log.info(
            "[%s] DPO training (LoRA) on %s", name, [s.get("name") for s in OmegaConf.to_container(tcfg.data.sources)]
        )
        train_metrics, train_art = run_train(tcfg)
        times[f"{name}/train_s"] = time.time() - t
        times[f"{name}/train_peak_rss_mb"] = peak_rss_mb()
        release_memory()
        t = time.time()
        ecfg = compose("eval", [*ev, f"checkpoint={d / 'run'}", f"out_dir={out}"])
        drop_unreachable_suites(ecfg)  # the same suites as the base
        log.info("[%s] evaluating", name)
        tuned_metrics, tuned_art = run_eval(ecfg)
        times[f"{name}/eval_s"] = time.time() - t
        times[f"{name}/eval_peak_rss_mb"] = peak_rss_mb()
        prefix = name + "/"
        metrics.update({f"{prefix}{key}": v for key, v in tuned_metrics.items() if isinstance(v, float)})
        metrics.update({f"{prefix}train/{key}": v for key, v in train_metrics.items() if key.startswith("final/")})
        artifacts.update({f"{name}_{key}": v for key, v in {**train_art, **tuned_art}.items()})
        policy = str(d / "run")
    log.info("[compare] base vs %s", ", ".join(names))
    ccfg = compose(
        "compare",
        [f"evals=[{','.join(map(str, evals))}]", f"labels=[base,{','.join(names)}]", f"out_dir={root / 'compare'}"],
    )
    _, cmp_art = run_compare(ccfg)
    metrics = {**{f"base/{k}": v for k, v in base_metrics.items() if isinstance(v, float)}, **metrics, **times}
    write_json(root / "demo_metrics.json", metrics)
    return metrics, {**artifacts, **cmp_art, "notes": notes}


def main(default_rounds: int = 2) -> None:
    """``safetune-rounds [rounds=N] [demo_dir=DIR] [overrides]`` (default 2 rounds; ``safetune-demo`` is one)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s][%(name)s] %(message)s")
    args = strip_debug(sys.argv[1:])
    out_root, rounds = None, default_rounds
    for a in list(args):
        if a.startswith("demo_dir="):
            out_root = a.split("=", 1)[1]
            args.remove(a)
        elif a.startswith("rounds="):
            rounds = guarded(lambda a=a: _int("rounds", a.split("=", 1)[1]))
            args.remove(a)
    metrics, artifacts = guarded(lambda: run_rounds(args, out_root, rounds))
    console.print(Path(artifacts["compare_md"]).read_text())
    print_metrics("demo", metrics, {"demo directory": artifacts["root"], "comparison": artifacts["compare_md"]})


def peak_rss_mb() -> float:
    """This process's peak resident memory so far in MB (0.0 where the platform does not report it).

    The stages run in one process, so the value after each stage is the peak up to its end: the first stage whose
    value jumps is the one that needs the memory."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return 0.0
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kb / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)  # bytes on macOS, KiB on Linux


def _int(key: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ConfigError(f"{key}={value!r}: expected a whole number.") from e


if __name__ == "__main__":
    main()
