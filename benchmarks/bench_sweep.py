"""Benchmark: a 3-value beta sweep with the shared reference cache vs without (not a timed test).

Each job runs as its own ``python -m safetune.train`` process, as a sweep job does. With the cache, job 1
computes the reference log-probs and jobs 2-3 read them; without it, every job recomputes them.

    python benchmarks/bench_sweep.py                       # embedded SmolLM2-135M, 64 bundled rows
    python benchmarks/bench_sweep.py --rows 128 --max-steps 4 --betas 0.05 0.1 0.3

Prints per-job seconds and the ratio (no cache / cache) of total sweep time and of the reference passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_job(args: argparse.Namespace, beta: float, run_dir: Path, cache: Path | None) -> float:
    cmd = [
        sys.executable,
        "-m",
        "safetune.train",
        f"model.name_or_path={args.model}",
        f"run_dir={run_dir}",
        f"data.sources=[{{name: bundled, _target_: safetune.data.sources.triplets.load, path: 'bundled://safety_prefs', max_rows: {args.rows}}}]",
        f"trainer.beta={beta}",
        f"trainer.max_steps={args.max_steps}",
        f"trainer.max_length={args.max_length}",
        f"trainer.per_device_train_batch_size={args.batch_size}",
        "trainer.report_to=[]",
    ]
    cmd += [f"ref_cache.dir={cache}"] if cache else ["ref_cache.enabled=false"]
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", TQDM_DISABLE="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    dt = time.perf_counter() - t0
    print(f"beta={beta} cache={'on' if cache else 'off'}: {dt:.1f} s", file=sys.stderr, flush=True)
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--max-steps", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--betas", type=float, nargs="+", default=[0.05, 0.1, 0.3])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_job(args, args.betas[0], tmp / "warmup", None)  # de-quantise/cache the model, warm the OS file cache
        cached = [run_job(args, b, tmp / f"c{i}", tmp / "refcache") for i, b in enumerate(args.betas)]
        fresh = [run_job(args, b, tmp / f"n{i}", None) for i, b in enumerate(args.betas)]
        hits = [
            json.loads((tmp / f"c{i}" / "metrics.json").read_text()).get("ref_cache/hits")
            for i in range(len(args.betas))
        ]
    result = {
        "settings": vars(args),
        "with_cache_s": [round(x, 2) for x in cached],
        "without_cache_s": [round(x, 2) for x in fresh],
        "cache_hits_per_job": hits,
        "total_with_cache_s": round(sum(cached), 2),
        "total_without_cache_s": round(sum(fresh), 2),
        "ratio_without_over_with": round(sum(fresh) / sum(cached), 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
