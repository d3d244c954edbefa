"""``python -m safetune.cli.judge_train [--out DIR]``: rebuild the learned judge's shipped weights.

Trains the default learned judge (deterministic) on the bundled training files and writes
``safetune/eval/judges/weights/learned-<key>.safetensors`` (or into ``--out``), replacing older files there.
"""

from __future__ import annotations

import argparse
import logging

from safetune.cli.console import console
from safetune.eval.judges.learned import build_shipped_weights


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="directory to write into (default: the package's weights dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    console.print(f"wrote {build_shipped_weights(out_dir=args.out)}")


if __name__ == "__main__":
    main()
