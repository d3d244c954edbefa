"""Refusal-judge throughput (pairs/s) of the keyword, embedding and learned judges, side by side (not a timed test).

One invocation measures every judge on the same pairs — the bundled held-out labelled set
``judge_heldout.jsonl`` (real-model styles, 609 rows) repeated up to ``--pairs`` — with ``judge_many`` at
``--batch-size`` (64 by default), after a set-up call that loads the encoder and the weights (or trains/fits them
at first use; the set-up time is reported apart). It also reports each judge's agreement with the labels on the
first pass over the set, the machine's fp32 (and, where native, bf16) matmul peak, the thread count and the load
average before and after, and the process's peak RSS:

    PYTHONPATH=$PWD python benchmarks/bench_judge.py --pairs 1024 --batch-size 64 --json bench_judge.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from typing import Any

import torch


def matmul_gflops(n: int = 1024, seconds: float = 2.0, dtype: torch.dtype = torch.float32) -> float:
    """Sustained ``torch.matmul`` throughput (2 n^3 FLOPs per product) with the current thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    torch.matmul(a, b)
    t0, k = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0) / 1e9


def peaks() -> dict[str, Any]:
    from safetune.core.precision import cpu_bf16_supported

    out: dict[str, Any] = {"fp32_gflops": round(matmul_gflops(), 1), "cpu_native_bf16": cpu_bf16_supported()}
    if out["cpu_native_bf16"]:
        out["bf16_gflops"] = round(matmul_gflops(dtype=torch.bfloat16), 1)
    return out


def build(name: str, batch_size: int, cache: str | None) -> Any:
    from hydra import compose, initialize_config_dir

    from safetune import CONF_DIR
    from safetune.eval.judges import build_judge

    overrides = [f"eval/judge={name}"]
    if name in ("embedding", "learned"):
        overrides.append(f"++eval.judge.batch_size={batch_size}")
    if cache:
        overrides.append(f"paths.cache={cache}")
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=overrides)
    return build_judge(cfg.eval.judge)


def bench(names: list[str], n_pairs: int, batch_size: int, repeats: int, cache: str | None) -> dict[str, Any]:
    from safetune.eval.judges.embedding import bundled_file, load_labelled

    rows = load_labelled(bundled_file("judge_heldout.jsonl"))
    reps = (rows * (n_pairs // len(rows) + 1))[:n_pairs]
    pairs = [(r["prompt"], r["response"]) for r in reps]
    out: dict[str, Any] = {}
    for name in names:
        t0 = time.perf_counter()
        judge = build(name, batch_size, cache)
        judge.judge_many(pairs[:2])  # set-up: encoder load, weights load / head fit or training at first use
        setup = time.perf_counter() - t0
        best, verdicts = float("inf"), []
        for _ in range(repeats):
            t0 = time.perf_counter()
            verdicts = judge.judge_many(pairs)
            best = min(best, time.perf_counter() - t0)
        first = verdicts[: len(rows)]
        gold = [r["label"] for r in reps[: len(rows)]]
        out[name] = {
            "pairs": len(pairs),
            "setup_s": round(setup, 2),
            "seconds": round(best, 2),
            "pairs_per_s": round(len(pairs) / best, 1),
            "accuracy_3class": round(sum(v.label == g for v, g in zip(first, gold)) / len(gold), 4),
            "binary_refusal_vs_not": round(
                sum((v.label == "refusal") == (g == "refusal") for v, g in zip(first, gold)) / len(gold), 4
            ),
            "binary_refusal_incl_partial": round(
                sum((v.label != "compliance") == (g != "compliance") for v, g in zip(first, gold)) / len(gold), 4
            ),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--judges", default="keyword,embedding,learned", help="conf/eval/judge/<name>.yaml names")
    ap.add_argument("--pairs", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per judge; the fastest counts")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", default=None, help="paths.cache for the run (default: the configured one)")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load0 = os.getloadavg()
    machine = peaks()
    res = bench([j for j in args.judges.split(",") if j], args.pairs, args.batch_size, args.repeats, args.cache)
    load1 = os.getloadavg()
    machine.update(
        threads=torch.get_num_threads(),
        load_avg_before=round(load0[0], 2),
        load_avg_after=round(load1[0], 2),
        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    )
    print(
        f"threads={machine['threads']} matmul fp32 {machine['fp32_gflops']} GFLOP/s"
        + (f", bf16 {machine['bf16_gflops']} GFLOP/s" if "bf16_gflops" in machine else ", no native bf16")
        + f"; load avg {machine['load_avg_before']} -> {machine['load_avg_after']}; peak RSS {machine['peak_rss_mb']} MB"
    )
    print(
        f"| judge | set-up (s) | pairs | pairs/s at batch {args.batch_size} | 3-class accuracy | refusal vs not | "
        "refusal incl. partial vs compliance |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        print(
            f"| {name} | {r['setup_s']} | {r['pairs']} | **{r['pairs_per_s']}** | {r['accuracy_3class']:.3f} | "
            f"{r['binary_refusal_vs_not']:.3f} | {r['binary_refusal_incl_partial']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "judges": res}, f, indent=2)


if __name__ == "__main__":
    main()
