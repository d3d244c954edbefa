"""Deprecated: `python -m safetune.eval.evaluate` runs `python -m safetune.cli.eval` (with a deprecation message)."""

if __name__ == "__main__":
    from safetune.cli.deprecated import forward

    forward("safetune.eval.evaluate")
