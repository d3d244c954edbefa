#!/usr/bin/env bash
# Install, lint, and run the whole test suite (slow real-model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
python3 -m ruff check safetune tests benchmarks scripts
export TOKENIZERS_PARALLELISM=false
python3 -m pytest -q -p no:cacheprovider "$@"
