"""Deprecated: `python -m safetune.sweep` runs `python -m safetune.cli.sweep` (with a deprecation message)."""

if __name__ == "__main__":
    from safetune.cli.deprecated import forward

    forward("safetune.sweep")
