#!/usr/bin/env bash
# One-shot GPU check (< 8 minutes where a CUDA device is present): HF vs vLLM generation, bf16 LoRA DPO, QLoRA 4-bit,
# single-process DeepSpeed ZeRO-2/ZeRO-3 and FSDP, export; prints one table (also written to $OUT/gpu_check.md).
# Without a GPU it says so and exits 0. Assumes the project is installed (bash scripts/install.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/gpu_check.py "$@"
