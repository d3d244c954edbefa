#!/usr/bin/env bash
# Install, lint, and run the whole test suite (slow real-model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# headless Chromium for tests/test_html_browser.py (Debian packages)
command -v chromium || (apt-get update -qq && apt-get install -y -qq chromium chromium-driver)
python3 -m ruff check safetune tests benchmarks scripts
export TOKENIZERS_PARALLELISM=false
python3 -m pytest -q -p no:cacheprovider "$@"
