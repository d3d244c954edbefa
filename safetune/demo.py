"""Deprecated: `python -m safetune.demo` runs `python -m safetune.cli.demo` (with a deprecation message)."""

if __name__ == "__main__":
    from safetune.cli.deprecated import forward

    forward("safetune.demo")
