"""``python -m safetune.cli.judge_train [--out DIR]``: rebuild the learned judge's shipped weights.

Trains the default learned judge (deterministic for a given machine and thread count) on the bundled training files
and writes ``safetune/eval/judges/weights/learned-<key>.safetensors`` (or into ``--out``), replacing older files
there. About 5 minutes on a quiet 2-core AVX512-BF16 CPU, about 10 on a 2-core AVX2 one; much longer on a busy one.
"""

from __future__ import annotations

import argparse
import logging
import sys

from safetune.cli.console import console
from safetune.cli.errors import guarded, strip_debug
from safetune.eval.judges.learned import build_shipped_weights


def main(argv: list[str] | None = None) -> None:
    argv = strip_debug(list(sys.argv[1:] if argv is None else argv))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="directory to write into (default: the package's weights dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    path = guarded(lambda: build_shipped_weights(out_dir=args.out))
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
