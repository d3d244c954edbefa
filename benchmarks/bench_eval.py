"""Generation throughput of the eval stage vs a plain one-prompt-at-a-time ``generate`` loop (not a timed test).

Both sides use the embedded SmolLM2-135M-Instruct, the same chat formatter, greedy decoding and the same
prompts (bundled harmful + benign suites). The eval stage batches length-sorted, left-padded prompts and runs the
prefix they share (the chat template's system turn) once per batch (``generation.share_prefix``; also timed
without it, at fp32, to measure that lever alone). It runs at the weights' precision (``generation.precision=model``, fp32 here: same arithmetic as the loop, so the
answers must match) and at the eval stage's default (``generation.precision=auto``: bf16 autocast on CPUs with
native bf16), there also without ``generation.cast_weights`` (autocast re-casting every weight at each step).
Both ratios are measured in one run against the same fp32 loop:

    PYTHONPATH=$PWD python benchmarks/bench_eval.py --prompts 64 --max-new-tokens 32 --batch-size 32

Judge throughput (pairs/s) of each configured judge on the bundled human-labelled ``judge_check.jsonl`` rows
(repeated up to ``--judge-pairs``): ``judge_many`` (batched) vs a one-pair-at-a-time ``judge`` loop, with the
judge's set-up time (encoder load, head fit or cache hit) reported apart and its agreement with the labels:

    PYTHONPATH=$PWD python benchmarks/bench_eval.py --skip-generation --judges keyword,embedding
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import torch

from safetune.core.formatting import ChatFormatter
from safetune.core.modeling import ModelSpec, load_model, load_tokenizer, resolve_model_path
from safetune.eval.generate import generate_texts
from safetune.eval.suites import load_suite


def judge_throughput(names: list[str], n_pairs: int) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir

    from safetune import CONF_DIR
    from safetune.eval.judges import build_judge
    from safetune.eval.judges.embedding import bundled_file, load_labelled

    rows = load_labelled(bundled_file("judge_check.jsonl"))
    rows = (rows * (n_pairs // len(rows) + 1))[:n_pairs]
    pairs = [(r["prompt"], r["response"]) for r in rows]
    out: dict[str, Any] = {}
    for name in names:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose("eval", overrides=[f"eval/judge={name}"])
        t0 = time.perf_counter()
        judge = build_judge(cfg.eval.judge)
        judge.judge_many(pairs[:2])  # set-up: encoder load / head fit or cache hit
        t_setup = time.perf_counter() - t0
        t0 = time.perf_counter()
        batched = judge.judge_many(pairs)
        t_batched = time.perf_counter() - t0
        n_loop = min(len(pairs), 150)
        t0 = time.perf_counter()
        looped = [judge.judge(p, r) for p, r in pairs[:n_loop]]
        t_loop = time.perf_counter() - t0
        out[name] = {
            "pairs": len(pairs),
            "setup_s": round(t_setup, 2),
            "judge_many_pairs_per_s": round(len(pairs) / t_batched, 1),
            "loop_pairs": n_loop,
            "loop_pairs_per_s": round(n_loop / t_loop, 1),
            "speedup": round((len(pairs) / t_batched) / (n_loop / t_loop), 2),
            "agreement_with_labels": round(sum(v.label == r["label"] for v, r in zip(batched, rows)) / len(rows), 3),
            "loop_matches_batched": f"{sum(a.label == b.label for a, b in zip(looped, batched))}/{n_loop}",
        }
    return out


def bench_generation(args: argparse.Namespace) -> dict[str, Any]:
    spec = ModelSpec(name_or_path=args.model)
    path = resolve_model_path(spec)
    tok = load_tokenizer(spec, path)
    model = load_model(spec, path).eval()
    fmt = ChatFormatter(tok)
    prompts = load_suite(
        {"name": "h", "_target_": "safetune.eval.suites.bundled.load", "path": "harmful"}
    ) + load_suite({"name": "b", "_target_": "safetune.eval.suites.bundled.load", "path": "benign"})
    # every 5th prompt: a spread of both suites and all lengths
    chosen = prompts[:: max(1, len(prompts) // args.prompts)][: args.prompts]
    texts = [fmt.render_prompt(p.prompt) for p in chosen]

    from safetune.eval.generate import resolve_precision

    def eval_stage(
        precision: str, share_prefix: bool = True, chunked: bool = True, cast: bool = True, compile: str | None = None
    ) -> tuple[list[str], float]:
        t0 = time.perf_counter()
        out = generate_texts(
            model,
            tok,
            texts,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            precision=precision,
            share_prefix=share_prefix,
            chunked_prefill=chunked,
            cast_weights=cast,
            compile=compile,
        )
        return out, time.perf_counter() - t0

    # each lever on its own, at the weights' precision: a plain left-padded batch, + the shared prefix, + chunks
    unshared, t_unshared = eval_stage("model", share_prefix=False, chunked=False)
    unchunked, t_unchunked = eval_stage("model", chunked=False)
    batched, t_batched = eval_stage("model")
    default_precision = resolve_precision("auto", model)
    fast, t_fast = eval_stage("auto") if default_precision != "model" else (batched, t_batched)
    # generation.cast_weights on its own, at the default precision (a no-op without autocast)
    uncast, t_uncast = eval_stage("auto", cast=False) if default_precision != "model" else (fast, t_fast)

    n_base = args.baseline_prompts or len(texts)
    t0 = time.perf_counter()
    plain = []
    with torch.no_grad():
        for t in texts[:n_base]:
            enc = tok(t, return_tensors="pt", add_special_tokens=False)
            out = model.generate(
                **enc, max_new_tokens=args.max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id
            )
            plain.append(tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip())
    t_plain = time.perf_counter() - t0

    compiled = {}
    if args.compile != "none":  # last: compiling changes the model in place
        first, t_first = eval_stage("auto", compile=args.compile)  # includes compiling
        again, t_again = eval_stage("auto", compile=args.compile)
        state = model._safetune_compile
        compiled = {
            "compile": args.compile,
            "compile_in_effect": state.scope or f"eager ({state.fallback_reason})",
            "eval_stage_default_compiled_first_s": round(t_first, 2),
            "eval_stage_default_compiled_s": round(t_again, 2),
            "compile_speedup_steady": round(t_fast / t_again, 2),
            "compile_speedup_with_compiling": round(t_fast / t_first, 2),
            "compile_identical_answers": f"{sum(a == b for a, b in zip(again, fast))}/{len(texts)}",
            "compile_first_equals_again": first == again,
        }

    same = sum(a == b for a, b in zip(batched, plain))
    from safetune.eval.judges.keyword import KeywordJudge

    judge = KeywordJudge()
    same_verdicts = sum(
        judge.judge(p.user_text, a).label == judge.judge(p.user_text, b).label
        for p, a, b in zip(chosen, fast, batched, strict=True)
    )
    rate_plain = n_base / t_plain
    return {
        "prompts": len(texts),
        "baseline_prompts": n_base,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "eval_stage_s": round(t_batched, 2),
        "eval_stage_answers_per_s": round(len(texts) / t_batched, 3),
        "plain_loop_s": round(t_plain, 2),
        "plain_loop_answers_per_s": round(n_base / t_plain, 3),
        "speedup": round((len(texts) / t_batched) / rate_plain, 2),
        "identical_answers": f"{same}/{n_base}",
        "eval_stage_no_shared_prefix_s": round(t_unshared, 2),
        "both_speedup_over_plain_batch": round(t_unshared / t_batched, 2),
        "shared_prefix_identical_answers": f"{sum(a == b for a, b in zip(unchunked, unshared))}/{len(texts)}",
        "eval_stage_no_chunked_prefill_s": round(t_unchunked, 2),
        "shared_prefix_speedup_over_plain_batch": round(t_unshared / t_unchunked, 2),
        "chunked_prefill_speedup_over_shared_prefix": round(t_unchunked / t_batched, 2),
        "chunked_prefill_identical_answers": f"{sum(a == b for a, b in zip(batched, unshared))}/{len(texts)}",
        "default_precision": default_precision,
        "eval_stage_default_s": round(t_fast, 2),
        "eval_stage_default_answers_per_s": round(len(texts) / t_fast, 3),
        "speedup_default": round((len(texts) / t_fast) / rate_plain, 2),
        "default_vs_fp32_identical_answers": f"{sum(a == b for a, b in zip(fast, batched))}/{len(texts)}",
        "default_vs_fp32_same_keyword_verdict": f"{same_verdicts}/{len(texts)}",
        "eval_stage_default_without_cast_weights_s": round(t_uncast, 2),
        "cast_weights_speedup": round(t_uncast / t_fast, 2),
        "cast_weights_identical_answers": f"{sum(a == b for a, b in zip(fast, uncast))}/{len(texts)}",
        "speedup_default_without_cast_weights": round((len(texts) / t_uncast) / rate_plain, 2),
        **compiled,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--baseline-prompts", type=int, default=None, help="time the loop on fewer prompts (rate is per answer)"
    )
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--judges", default="keyword,embedding", help="judge configs (conf/eval/judge/<name>.yaml); '' skips"
    )
    ap.add_argument("--judge-pairs", type=int, default=600)
    ap.add_argument(
        "--compile",
        default="regions",
        choices=["regions", "model", "none"],
        help="also time generation.compile at the default precision (compiled last: it changes the model in place)",
    )
    ap.add_argument("--skip-generation", action="store_true", help="only the judge throughput")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    res: dict[str, Any] = {"threads": torch.get_num_threads()}
    if not args.skip_generation:
        res.update(bench_generation(args))
    if args.judges:
        res["judges"] = judge_throughput([j for j in args.judges.split(",") if j], args.judge_pairs)
    print(json.dumps(res, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
