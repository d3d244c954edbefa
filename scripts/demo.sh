#!/usr/bin/env bash
# The main job: install, then evaluate the base model, DPO-train a LoRA adapter on the bundled set,
# evaluate the tuned model and print the side-by-side per-category comparison.
# Extra arguments are Hydra overrides, e.g. `scripts/demo.sh trainer.num_train_epochs=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Public XSTest is read from ../shared/data when it is there (developers, CI); otherwise from SAFETUNE_XSTEST
# (a local CSV) or the hub.
if [ -z "${SAFETUNE_XSTEST:-}" ] && [ -f ../shared/data/xstest/xstest_prompts.csv ]; then
  export SAFETUNE_XSTEST="$(cd ../shared/data/xstest && pwd)/xstest_prompts.csv"
fi
exec python3 -m safetune.cli.demo "$@"
