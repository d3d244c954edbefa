#!/usr/bin/env bash
# The main job: install, then evaluate the base model, DPO-train a LoRA adapter on the bundled set,
# evaluate the tuned model and print the side-by-side per-category comparison.
# Extra arguments are Hydra overrides, e.g. `scripts/demo.sh trainer.num_train_epochs=1`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# Public XSTest and hh-rlhf helpful-base are read from ../shared/data when they are there (developers, CI); otherwise
# from SAFETUNE_XSTEST / SAFETUNE_HH_HELPFUL (local files) or the hub; offline without them the demo leaves them out.
if [ -z "${SAFETUNE_XSTEST:-}" ] && [ -f ../shared/data/xstest/xstest_prompts.csv ]; then
  export SAFETUNE_XSTEST="$(cd ../shared/data/xstest && pwd)/xstest_prompts.csv"
fi
if [ -z "${SAFETUNE_HH_HELPFUL:-}" ] && [ -f ../shared/data/hh-rlhf/helpful-base/test.jsonl.gz ]; then
  export SAFETUNE_HH_HELPFUL="$(cd ../shared/data/hh-rlhf/helpful-base && pwd)/test.jsonl.gz"
fi
exec python3 -m safetune.cli.demo "$@"
