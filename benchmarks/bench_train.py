"""DPO training-step throughput: safetune vs a plain TRL ``DPOTrainer`` script, plus model-FLOPs utilisation.

Not a timed test: run on demand. Every variant trains in its own subprocess (so peak RSS is that variant's own),
one after another in one invocation, on the same rows, model, batch size, max length, beta, loss and LoRA settings:

* ``trl_plain``         — a plain TRL script: ``DPOConfig`` with TRL's defaults (gradient checkpointing on, the
                          reference forward pass every step), ``peft_config=LoraConfig(...)``. The baseline.
* ``safetune_as_trl``   — ``safetune.train.run_train`` with the same TRL defaults forced
                          (``trainer.gradient_checkpointing=true trainer.precompute_ref_log_probs=false``): safetune's
                          own overhead (data validation, chat-template preflight, run-dir writing excluded from the
                          timed ``train()`` call, so this ratio should be ~1.0).
* ``safetune_default``  — safetune's defaults: reference log-probs precomputed once (the shared reference cache,
                          length-sorted batches), no gradient checkpointing, LM head scored on completion positions
                          only.
* ``safetune_default_ckpt`` — safetune's defaults with ``trainer.gradient_checkpointing=true`` (the memory lever:
                          activations of every decoder layer recomputed in backward); ``safetune_default_ckpt3``
                          checkpoints every third layer only (``gradient_checkpointing_kwargs.every_n_layers=3``).
* ``safetune_top4``     — safetune's defaults with ``peft.top_layers=4``: backward stops below the top 4 layers, and
                          (``trainer.share_frozen_trunk``, default) the reference runs in each step while the policy
                          starts from its hidden state at layer 26: no separate reference pass, no second trunk pass.
* ``safetune_top4_separate`` — the same with ``trainer.share_frozen_trunk=false`` (separate reference pass, full
                          policy forward): what the shared trunk saves.
* ``safetune_top10`` / ``safetune_top10_separate`` — the same pair with the demo's ``peft.top_layers=10``;
  ``safetune_top10_before`` also without ``trainer.share_prompt`` (the demo's training before both existed).
* ``safetune_flatpack`` — safetune's defaults with ``trainer.share_prompt=false``: flat packing, each pair's prompt
                          computed twice (once with the chosen, once with the rejected answer).
* ``safetune_grouped``  — safetune's defaults with ``trainer.train_sampling_strategy=group_by_length`` (batches of
                          similar length: less padding, a different data order). TRL 1.16's ``padding_free`` is
                          not a variant: TRL disables it ("temporarily unavailable") and pads anyway.
* ``safetune_packed``   — safetune's defaults with ``trainer.pack_sequences=true``: each batch's sequences laid end
                          to end in rows of ``max_length`` with block-diagonal attention (no padding; same data
                          order and the same loss within fp32 tolerance).
* ``trl_plain_bf16``    — the plain TRL script with ``bf16=True`` (CPU autocast).
* ``safetune_bf16``     — safetune's defaults with bf16 autocast (its default on CPUs with native bf16), the frozen
                          base weights held in bf16 for the run (``trainer.cast_frozen_weights``, default).
* ``safetune_autocast_bf16`` — the same with ``trainer.cast_frozen_weights=false``: autocast re-casts every frozen
                          fp32 weight at each op (what that lever saves).
* ``safetune_top10_bf16`` / ``safetune_top10_autocast_bf16`` — the demo's training (``peft.top_layers=10``) in bf16
                          with and without ``trainer.cast_frozen_weights``.
* ``safetune_attnbf16_bf16`` / ``safetune_top10_compiled_attnbf16_bf16`` — ``safetune_bf16`` / the demo's compiled
                          top-10 training with ``trainer.cpu_attention_fp32=false`` (attention in bf16 under CPU
                          autocast, as before that option): what the fp32 attention saves.
* ``safetune_as_trl_bf16`` — ``safetune_as_trl`` in bf16 (TRL's settings, safetune's speed paths): the same
                          arithmetic as ``trl_plain_bf16``.

* ``*_nokeep`` — the row with ``trainer.keep_freed_pages=false`` (glibc's default: freed large blocks are unmapped
                          and page-faulted in again every step; the default keeps them in the heap);
                          ``trl_plain_malloc`` — the plain TRL script with safetune's allocator setting.

Every variant except the ``*bf16*`` rows computes in fp32, so they do the same arithmetic.

Timed: from ``DPOTrainer.__init__`` (where TRL 1.x tokenises and runs the reference pre-pass) to the end of
``train()``, with an empty reference cache per variant, so precomputed reference log-probs are paid for.
Tokens: non-padding tokens of prompt+chosen and prompt+rejected of the rows trained on (truncated at
``max_length``), the same count for every variant. MFU: useful model FLOPs (see ``flops_per_token``; the LM head
counts at completion positions only, each pair's prompt once, a frozen trunk once) x tokens/s against a ``torch.matmul`` GFLOP/s of the row's precision (fp32,
or bf16 for the ``*_bf16`` rows) measured in the same run.

    PYTHONPATH=$PWD python benchmarks/bench_train.py                    # SmolLM2-135M, 4 steps x batch 4
    PYTHONPATH=$PWD python benchmarks/bench_train.py --model tiny       # tiny random Llama: a 1-minute smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
VARIANTS = [
    "trl_plain",
    "safetune_default",
    "safetune_as_trl",
    "safetune_top4",
    "safetune_top4_separate",
    "safetune_top10",
    "safetune_top10_separate",
    "safetune_top10_before",
    "safetune_flatpack",
    "safetune_grouped",
    "safetune_packed",
    "safetune_compiled",
    "safetune_compiled_model",
    "trl_plain_bf16",
    "safetune_bf16",
    "safetune_autocast_bf16",
    "safetune_as_trl_bf16",
    "safetune_top10_bf16",
    "safetune_top10_autocast_bf16",
    "safetune_compiled_bf16",
    "safetune_compiled_model_bf16",
    "safetune_top10_compiled_bf16",
    "safetune_attnbf16_bf16",
    "safetune_top10_compiled_attnbf16_bf16",
    # trainer.keep_freed_pages=false (glibc's default allocator behaviour); trl_plain_malloc: the plain TRL script
    # with safetune's allocator setting (what trainer.keep_freed_pages=true does)
    "safetune_default_nokeep",
    "safetune_default_ckpt",
    "safetune_default_ckpt3",
    "safetune_as_trl_nokeep",
    "safetune_bf16_nokeep",
    "safetune_as_trl_bf16_nokeep",
    "trl_plain_malloc",
]
BASELINE = "trl_plain"
LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# ---------------------------------------------------------------- shared settings


def train_overrides(a: argparse.Namespace, model: str, data_file: str, run_dir: str) -> list[str]:
    return [
        f"model.name_or_path={model}",
        f"data.sources=[{{name: bench, _target_: safetune.data.sources.triplets.load, path: {data_file}}}]",
        "data.leakage_suites=[]",
        f"trainer.max_steps={a.steps}",
        f"trainer.per_device_train_batch_size={a.batch_size}",
        f"trainer.max_length={a.max_length}",
        "trainer.report_to=[]",
        "trainer.logging_steps=1",
        "trainer.bf16=false",  # fp32 like the plain TRL baseline; the safetune_bf16 variant overrides it
        f"ref_cache.dir={run_dir}/ref_cache",  # empty: every variant pays for its reference pass
        f"run_dir={run_dir}",
    ]


def compose_train(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("train", overrides=overrides)


def write_rows(n: int, path: Path) -> None:
    """The first ``n`` bundled preference rows (harmful and benign interleaved), as a triplets JSONL file."""
    from safetune.data import build_preference_data

    cfg = compose_train([])
    rows = build_preference_data(cfg.data).train
    harmful = [r for r in rows if r.is_harmful]
    benign = [r for r in rows if not r.is_harmful]
    picked = [r for pair in zip(harmful, benign) for r in pair][:n]
    with open(path, "w") as f:
        for r in picked:
            d = r.to_dict()
            d.pop("source", None)
            f.write(json.dumps(d, ensure_ascii=False) + "\n")


def make_tiny_model(out: Path) -> str:
    """A random 4-layer Llama with the embedded tokenizer (for a quick smoke of the benchmark itself)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from safetune.core.modeling import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("embedded:smollm2-135m-instruct"))
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


# ---------------------------------------------------------------- FLOPs


def matmul_gflops(n: int = 1024, seconds: float = 3.0, dtype: torch.dtype = torch.float32) -> float:
    """Sustained ``torch.matmul`` throughput (2 n^3 FLOPs per product) in ``dtype`` with the current thread count."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        torch.matmul(a, b)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def peak_gflops() -> dict[str, float]:
    """fp32 and (where the CPU has native bf16) bf16 matmul rates: each row's MFU uses its own precision's peak."""
    from safetune.core.precision import cpu_bf16_supported

    out = {"fp32": matmul_gflops()}
    if cpu_bf16_supported():
        out["bf16"] = matmul_gflops(dtype=torch.bfloat16)
    return out


def flops_per_token(model: Any, adapted_layers: list[int] | None, reference_forward: bool = True) -> dict[str, float]:
    """Useful model FLOPs (matmuls only; attention scores and gradient-checkpoint recompute excluded).

    With N = parameters in matmuls (every ``nn.Linear`` incl. ``lm_head``; embedding look-ups are free):
      reference forward 2N (no grad; paid once either way: per step, or once when precomputed); policy forward
      2 N_act (below the lowest adapted layer the policy's hidden states are the reference's, so that trunk counts
      once);
      backward = activation gradients 2 N_act + weight gradients 2 N_train, where N_act is the matmul parameters
      from the lowest adapted layer up (all of N for full or all-layer LoRA; far less with ``peft.top_layers``),
      and N_train the trainable LoRA parameters. Full fine-tuning would be 2N + 4N (+2N reference).
    The LM head's share (forward, activation gradient, reference: 6 N_head) is useful only at completion positions,
    which are the only ones DPO scores, so it is counted per completion token (``head_flops_per_completion_token``)
    and everything else per token (``body_flops_per_token``).
    """
    lin = {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    n_all = sum(lin.values())
    head = model.get_output_embeddings()
    n_head = head.weight.numel() if isinstance(head, torch.nn.Linear) else 0
    lowest = min(adapted_layers) if adapted_layers else 0

    def layer_of(name: str) -> int | None:
        parts = name.split(".")
        return next(
            (int(parts[i + 1]) for i, p in enumerate(parts[:-1]) if p == "layers" and parts[i + 1].isdigit()), None
        )

    n_act = sum(v for n, v in lin.items() if (layer_of(n) is None or layer_of(n) >= lowest))
    n_lora = 0
    r = 16
    for n, m in model.named_modules():
        li = layer_of(n)
        if isinstance(m, torch.nn.Linear) and li is not None and li >= lowest:
            n_lora += r * (m.in_features + m.out_features)
    ref = 2 if reference_forward else 0
    # below the lowest adapted layer the policy computes exactly the reference's hidden states: that trunk is useful
    # once (in the reference forward), however an implementation schedules it (trainer.share_frozen_trunk)
    policy_forward = 2 * (n_act - n_head) if reference_forward else 2 * (n_all - n_head)
    body = policy_forward + 2 * (n_act - n_head) + 2 * n_lora + ref * (n_all - n_head)
    return {
        "matmul_params": n_all,
        "lm_head_params": n_head,
        "backward_params": n_act,
        "lora_params": n_lora,
        "body_flops_per_token": body,
        "head_flops_per_completion_token": (4 + ref) * n_head,
    }


# ---------------------------------------------------------------- one variant (runs in a subprocess)


def count_tokens(tok: Any, rows: list[dict[str, Any]], max_length: int) -> tuple[int, int, int]:
    """(non-padding tokens, completion tokens, prompt tokens counted twice) of prompt+chosen and prompt+rejected,
    truncated at ``max_length``. The last: a pair's chosen and rejected sequences share their prompt, whose hidden
    states are the same in both, so computing it once is enough (``trainer.share_prompt``); useful FLOPs count it once.
    """
    total = completion = repeated = 0
    for r in rows:
        p = tok.apply_chat_template(r["prompt"], tokenize=True, add_generation_prompt=True, return_dict=False)
        for side in ("chosen", "rejected"):
            c = tok(r[side][0]["content"] + (tok.eos_token or ""), add_special_tokens=False)["input_ids"]
            n = min(len(p) + len(c), max_length)
            total += n
            completion += max(0, n - len(p))
        repeated += min(len(p), max_length)
    return total, completion, repeated


def _timed_train(trainer_cls: Any, box: dict[str, Any]) -> None:
    from transformers import TrainerCallback

    real = trainer_cls.train
    real_init = trainer_cls.__init__
    step_s: list[float] = []

    def init(self, *a, **kw):
        # The clock starts here: TRL 1.x tokenises and runs the reference pre-pass inside __init__.
        box.setdefault("t_init", time.perf_counter())
        real_init(self, *a, **kw)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_s.append(time.perf_counter() - self.t)

    def train(self, *a, **kw):
        self.add_callback(StepTimer())
        out = real(self, *a, **kw)
        box["train_s"] = time.perf_counter() - box["t_init"]
        box["steps"] = self.state.global_step
        box["step_s"] = step_s
        box["loss"] = next((h["loss"] for h in reversed(self.state.log_history) if "loss" in h), None)
        return out

    trainer_cls.train = train
    trainer_cls.__init__ = init


def run_variant(name: str, a: argparse.Namespace, model: str, data_file: str, work: Path) -> dict[str, Any]:
    import trl
    from datasets import Dataset
    from peft import LoraConfig

    from safetune.core.formatting import ChatFormatter
    from safetune.core.modeling import ModelSpec, load_model, load_tokenizer, resolve_model_path
    from safetune.data import build_preference_data

    variant = name
    if name.endswith("_malloc"):  # what trainer.keep_freed_pages=true does, for the plain script
        from safetune.core.memory import keep_freed_pages

        keep_freed_pages()
        name = name.removesuffix("_malloc")
    keep = not name.endswith("_nokeep")
    name = name.removesuffix("_nokeep")
    box: dict[str, Any] = {}
    _timed_train(trl.DPOTrainer, box)
    base_cfg = compose_train(train_overrides(a, model, data_file, str(work / variant)))
    spec = ModelSpec(name_or_path=model)
    path = resolve_model_path(spec)
    tok = load_tokenizer(spec, path)
    rows = [ChatFormatter(tok).to_trl(ex) for ex in build_preference_data(base_cfg.data).train]
    tr = base_cfg.trainer
    if name.startswith("trl_plain"):
        # The plain TRL script: same hyperparameters, TRL's defaults for everything else.
        mdl = load_model(spec, path)
        args = trl.DPOConfig(
            output_dir=str(work / variant),
            per_device_train_batch_size=a.batch_size,
            max_steps=a.steps,
            max_length=a.max_length,
            learning_rate=tr.learning_rate,
            beta=tr.beta,
            loss_type=list(tr.loss_type),
            lr_scheduler_type=tr.lr_scheduler_type,
            warmup_steps=tr.warmup_steps,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=tr.seed,
            use_cpu=not torch.cuda.is_available(),
            bf16=name.endswith("bf16"),
        )
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        trainer = trl.DPOTrainer(
            model=mdl, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok, peft_config=lora
        )
        trainer.train()
        gc, pre, top = True, False, None
    else:
        from safetune.train.recipe import run_train

        extra = {
            "safetune_as_trl": ["trainer.gradient_checkpointing=true", "trainer.precompute_ref_log_probs=false"],
            "safetune_default": [],
            "safetune_default_ckpt": ["trainer.gradient_checkpointing=true"],
            "safetune_default_ckpt3": [
                "trainer.gradient_checkpointing=true",
                "+trainer.gradient_checkpointing_kwargs={every_n_layers:3}",
            ],
            # peft.top_layers needs a module list: with target_modules=all-linear (a str) PEFT rejects layers_to_transform
            "safetune_top4": ["peft.top_layers=4", f"peft.target_modules=[{','.join(LINEAR)}]"],
            "safetune_top4_separate": [
                "peft.top_layers=4",
                f"peft.target_modules=[{','.join(LINEAR)}]",
                "trainer.share_frozen_trunk=false",
            ],
            "safetune_top10": ["peft.top_layers=10", f"peft.target_modules=[{','.join(LINEAR)}]"],
            "safetune_top10_separate": [
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
                "trainer.share_frozen_trunk=false",
            ],
            "safetune_top10_before": [
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
                "trainer.share_frozen_trunk=false",
                "trainer.share_prompt=false",
            ],
            "safetune_flatpack": ["trainer.share_prompt=false"],
            "safetune_grouped": ["+trainer.train_sampling_strategy=group_by_length"],
            "safetune_packed": ["trainer.pack_sequences=true"],
            "safetune_compiled": ["trainer.compile=regions"],
            "safetune_compiled_model": ["trainer.compile=model"],
            "safetune_compiled_bf16": ["trainer.bf16=null", "trainer.compile=regions"],
            "safetune_compiled_model_bf16": ["trainer.bf16=null", "trainer.compile=model"],
            "safetune_top10_compiled_bf16": [
                "trainer.bf16=null",
                "trainer.compile=regions",
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
            ],
            "safetune_bf16": ["trainer.bf16=null"],
            "safetune_attnbf16_bf16": ["trainer.bf16=null", "trainer.cpu_attention_fp32=false"],
            "safetune_top10_compiled_attnbf16_bf16": [
                "trainer.bf16=null",
                "trainer.cpu_attention_fp32=false",
                "trainer.compile=regions",
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
            ],
            "safetune_autocast_bf16": ["trainer.bf16=null", "trainer.cast_frozen_weights=false"],
            "safetune_top10_bf16": [
                "trainer.bf16=null",
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
            ],
            "safetune_top10_autocast_bf16": [
                "trainer.bf16=null",
                "trainer.cast_frozen_weights=false",
                "peft.top_layers=10",
                f"peft.target_modules=[{','.join(LINEAR)}]",
            ],
            "safetune_as_trl_bf16": [
                "trainer.bf16=null",
                "trainer.gradient_checkpointing=true",
                "trainer.precompute_ref_log_probs=false",
            ],
        }[name] + ([] if keep else ["trainer.keep_freed_pages=false"])
        cfg = compose_train(train_overrides(a, model, data_file, str(work / variant)) + extra)
        run_train(cfg)
        gc, pre = bool(cfg.trainer.gradient_checkpointing), bool(cfg.trainer.precompute_ref_log_probs)
        top = cfg.peft.get("top_layers")
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the FLOPs-count load below
    used = rows[: a.steps * a.batch_size]  # max_steps x batch = exactly the rows written (one epoch)
    mdl_cfg = load_model(spec, path)
    n_layers = mdl_cfg.config.num_hidden_layers
    adapted = list(range(n_layers - int(top), n_layers)) if top else None
    fl = flops_per_token(mdl_cfg, adapted)
    tokens, completion_tokens, repeated_prompt = count_tokens(tok, used, a.max_length)
    return {
        "variant": variant,
        "gradient_checkpointing": gc,
        "precompute_ref": pre,
        "top_layers": top,
        "train_s": box["train_s"],
        "steps": box["steps"],
        "step_s": box["step_s"],
        "final_loss": box["loss"],
        "tokens": tokens,
        "completion_tokens": completion_tokens,
        # useful FLOPs per (conventional) token: each pair's prompt through the body once, LM head at completions
        "flops_per_token": (
            (tokens - repeated_prompt) * fl["body_flops_per_token"]
            + completion_tokens * fl["head_flops_per_completion_token"]
        )
        / tokens,
        "repeated_prompt_tokens": repeated_prompt,
        "peak_rss_mb": peak_rss_mb,
        **fl,
    }


# ---------------------------------------------------------------- driver


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:smollm2-135m-instruct", help="model id/dir, or 'tiny' (random)")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None, help="also write the numbers here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data-file", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    if a.worker:
        res = run_variant(a.worker, a, a.model, a.data_file, Path(a.workdir))
        print("BENCH_RESULT " + json.dumps(res))
        return

    work = Path(tempfile.mkdtemp(prefix="bench_train-"))
    model = make_tiny_model(work / "tiny") if a.model == "tiny" else a.model
    data_file = str(work / "rows.jsonl")
    write_rows(a.steps * a.batch_size, Path(data_file))
    load0 = os.getloadavg()
    gflops_before = peak_gflops()
    results = []
    env = {**os.environ, "PYTHONPATH": str(REPO), "TOKENIZERS_PARALLELISM": "false"}
    for v in a.variants.split(","):
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            v,
            "--model",
            model,
            "--workdir",
            str(work),
            "--data-file",
            data_file,
            "--steps",
            str(a.steps),
            "--batch-size",
            str(a.batch_size),
            "--max-length",
            str(a.max_length),
        ]
        if a.threads:
            cmd += ["--threads", str(a.threads)]
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in p.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
        if p.returncode != 0 or line is None:
            err = (p.stderr.strip().splitlines() or ["?"])[-1]
            print(f"[{v}] failed ({time.perf_counter() - t0:.0f}s): {err}", file=sys.stderr)
            results.append({"variant": v, "error": err})
            continue
        results.append(json.loads(line[len("BENCH_RESULT ") :]))
        print(f"[{v}] done in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        if a.json:  # partial results survive an interrupted run
            Path(a.json + ".partial").write_text(
                json.dumps({"matmul_gflops_before": gflops_before, "results": results})
            )
    gflops_after = peak_gflops()
    gflops = {k: (gflops_before[k] + gflops_after[k]) / 2 for k in gflops_before}
    load1 = os.getloadavg()

    base = next((r for r in results if r["variant"] == BASELINE and "error" not in r), None)
    for r in results:
        if "error" in r:
            continue
        r["tokens_per_s"] = r["tokens"] / r["train_s"]
        r["s_per_step"] = r["train_s"] / max(r["steps"], 1)
        later = sorted(r["step_s"][1:]) or r["step_s"]  # steady state: steps after the first
        r["steady_s_per_step"] = later[len(later) // 2]
        r["steady_tokens_per_s"] = r["tokens"] / max(r["steps"], 1) / r["steady_s_per_step"]
        r["precision"] = "bf16" if "bf16" in r["variant"] else "fp32"
        r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / (gflops.get(r["precision"], gflops["fp32"]) * 1e9)
        if base:
            r["speedup_vs_trl"] = r["tokens_per_s"] / (base["tokens"] / base["train_s"])
            r["rss_vs_trl"] = r["peak_rss_mb"] / base["peak_rss_mb"]

    print(
        f"\nmodel={a.model} steps={a.steps} batch={a.batch_size} max_length={a.max_length} "
        f"threads={torch.get_num_threads()} matmul GFLOP/s "
        + ", ".join(
            f"{k}={v:.1f} (before {gflops_before[k]:.1f}, after {gflops_after[k]:.1f})" for k, v in gflops.items()
        )
        + f" load avg {load0[0]:.2f} -> {load1[0]:.2f}"
    )
    head = f"{'variant':<18} {'gc':>3} {'pre':>4} {'top':>4} {'s/step':>7} {'tok/s':>7} {'steady':>7} {'x TRL':>6} {'RSS MB':>7} {'x RSS':>6} {'GF/tok':>7} {'MFU':>6} {'loss':>7}"
    print(head)
    print("-" * len(head))
    for r in results:
        if "error" in r:
            print(f"{r['variant']:<18} failed: {r['error'][:90]}")
            continue
        print(
            f"{r['variant']:<18} {'y' if r['gradient_checkpointing'] else 'n':>3} {'y' if r['precompute_ref'] else 'n':>4} "
            f"{str(r['top_layers'] or '-'):>4} {r['s_per_step']:>7.2f} {r['tokens_per_s']:>7.1f} {r['steady_tokens_per_s']:>7.1f} "
            f"{r.get('speedup_vs_trl', float('nan')):>6.2f} {r['peak_rss_mb']:>7.0f} {r.get('rss_vs_trl', float('nan')):>6.2f} "
            f"{r['flops_per_token'] / 1e9:>7.3f} {100 * r['mfu']:>5.1f}% {r['final_loss'] or float('nan'):>7.4f}"
        )
    if a.json:
        meta = {
            "model": a.model,
            "steps": a.steps,
            "batch_size": a.batch_size,
            "max_length": a.max_length,
            "threads": torch.get_num_threads(),
            "matmul_gflops": gflops,
            "loadavg_before": load0,
            "loadavg_after": load1,
        }
        Path(a.json).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
