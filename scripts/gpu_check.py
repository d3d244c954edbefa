"""One-shot GPU check (scripts/gpu_check.sh): the paths a CPU machine cannot exercise, a few steps each, in one table.

Rows: HF vs vLLM generation (answer and verdict agreement, answers/s), a bf16 LoRA DPO run, the same run with packed
sequences through flash-attention 2 (``model.attn_implementation=flash_attention_2``: transformers reads the packed
layout from the restarted ``position_ids``) and with TRL's Liger kernels (``+trainer.use_liger_kernel=true``), QLoRA
4-bit, single-process DeepSpeed ZeRO-2 and ZeRO-3 and FSDP runs through `accelerate launch`, and exporting the LoRA
run. Each step is its own subprocess with a time limit; a step whose package is missing (vllm, flash_attn,
liger_kernel, deepspeed) is reported as skipped. Without a CUDA
device it says so and exits 0. Everything is written under $OUT (or ./gpu-check-<time>).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_LIMIT_S = 150
TINY = [
    "experiment=demo",
    "data.sources=[{name: b, _target_: safetune.data.sources.triplets.load, path: 'bundled://safety_prefs', max_rows: 32}]",
    "trainer.max_steps=4",
    "trainer.per_device_train_batch_size=4",
    "template.preflight.sample=8",
]


def run(name: str, cmd: list[str], out: Path, limit: int = STEP_LIMIT_S) -> dict:
    t = time.time()
    log = out / f"{name}.log"
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=limit)
        log.write_text(p.stdout + p.stderr)
        ok = p.returncode == 0
        detail = "ok" if ok else (p.stdout + p.stderr).strip().splitlines()[-1][:160]
    except subprocess.TimeoutExpired:
        ok, detail = False, f"timed out after {limit}s"
    return {"step": name, "ok": ok, "seconds": round(time.time() - t, 1), "detail": detail, "log": str(log)}


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def generation_agreement(out: Path) -> dict:
    """safetune-eval on the bundled suites with the HF and the vLLM backend; compare answers and verdicts."""
    base = [
        sys.executable,
        "-m",
        "safetune.cli.eval",
        "checkpoint=base",
        "limit_per_group=3",
        "eval.retention.enabled=false",
    ]
    rows = {}
    for backend in ("hf", "vllm"):
        r = run(
            f"eval_{backend}", [*base, f"generation.backend={backend}", f"out_dir={out / ('eval-' + backend)}"], out
        )
        rows[backend] = r
        if not r["ok"]:
            return {
                "step": "HF vs vLLM generation",
                "ok": False,
                "seconds": r["seconds"],
                "detail": f"{backend}: {r['detail']}",
            }
    ans = {
        b: {(v["suite"], v["prompt_id"]): (v["response"], v["label"]) for v in map(json.loads, open(out / f"eval-{b}" / "verdicts.jsonl"))}
        for b in ("hf", "vllm")
    }  # fmt: skip
    keys = ans["hf"].keys() & ans["vllm"].keys()
    same_text = sum(ans["hf"][k][0] == ans["vllm"][k][0] for k in keys) / max(1, len(keys))
    same_verdict = sum(ans["hf"][k][1] == ans["vllm"][k][1] for k in keys) / max(1, len(keys))
    speed = {b: len(keys) / max(rows[b]["seconds"], 1e-9) for b in ("hf", "vllm")}
    return {
        "step": "HF vs vLLM generation",
        "ok": True,
        "seconds": round(rows["hf"]["seconds"] + rows["vllm"]["seconds"], 1),
        "detail": f"{len(keys)} prompts: identical answers {same_text:.0%}, same verdict {same_verdict:.0%}; "
        f"answers/s incl. start-up hf {speed['hf']:.1f} vs vllm {speed['vllm']:.1f}",
    }


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible; nothing to check on this machine (exit 0).")
        return 0
    out = Path(os.environ.get("OUT") or ROOT / f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}")
    out.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    train = [sys.executable, "-m", "safetune.cli.train", *TINY]
    accel = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1"]
    steps = []
    if have("vllm"):
        steps.append(generation_agreement(out))
    else:
        steps.append(
            {"step": "HF vs vLLM generation", "ok": None, "seconds": 0, "detail": "skipped: vllm not installed"}
        )
    lora = out / "run-lora-bf16"
    steps.append(run("lora_bf16", [*train, f"run_dir={lora}", "trainer.bf16=true"], out))
    for name, module, extra in (
        ("packed_flash_attention_2", "flash_attn", ["model.attn_implementation=flash_attention_2"]),
        ("liger_kernels", "liger_kernel", ["+trainer.use_liger_kernel=true"]),
    ):
        if not have(module):
            steps.append({"step": name, "ok": None, "seconds": 0, "detail": f"skipped: {module} not installed"})
            continue
        cmd = [*train, f"run_dir={out / ('run-' + name)}", "trainer.bf16=true", "trainer.pack_sequences=true", *extra]
        steps.append(run(name, cmd, out))
    steps.append(run("qlora_4bit", [*train, f"run_dir={out / 'run-qlora'}", "peft=qlora"], out))
    for name, conf, extra in (
        ("deepspeed_zero2", "zero2", []),
        ("deepspeed_zero3", "zero3", ["peft=none", "peft.reference=explicit"]),
        ("fsdp", "fsdp", []),
    ):
        if name.startswith("deepspeed") and not have("deepspeed"):
            steps.append({"step": name, "ok": None, "seconds": 0, "detail": "skipped: deepspeed not installed"})
            continue
        cmd = [
            *accel,
            "--config_file",
            f"conf/accelerate/{conf}.yaml",
            "-m",
            "safetune.train",
            *TINY,
            f"run_dir={out / ('run-' + name)}",
            *extra,
        ]
        steps.append(run(name, cmd, out))
    if (lora / "adapter").is_dir():
        steps.append(
            run(
                "export",
                [sys.executable, "-m", "safetune.cli.export", f"run_dir={lora}", f"out_dir={out / 'merged'}"],
                out,
            )
        )
    lines = [f"# safetune GPU check — {gpu}", "", "| step | result | seconds | detail |", "|---|---|---:|---|"]
    for s in steps:
        result = "skipped" if s["ok"] is None else ("ok" if s["ok"] else "FAILED")
        lines.append(f"| {s['step']} | {result} | {s['seconds']} | {s['detail']} |")
    table = "\n".join(lines)
    (out / "gpu_check.md").write_text(table + "\n")
    print(table)
    return 0 if all(s["ok"] is not False for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
