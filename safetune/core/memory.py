"""Handing freed memory back to the OS.

A training step leaves some of its tensors in reference cycles (autograd graph nodes, hooks and closures that point
at each other); those are freed only by Python's full garbage collection, which with the ~700k objects of a loaded
model, tokenizer and dataset runs rarely. Meanwhile the CPU heap (glibc ``malloc``) grows and fragments: on the
demo's training (277 steps of changing batch shapes) resident memory crept from 2.4 GB early on to 4.5 GB near the
end, with the live tensors unchanged. Collecting and then ``malloc_trim`` (which returns the heap's free pages to
the OS) every few steps holds it flat.

What is left after a stage is mostly oneDNN's primitive cache: every matmul shape a bf16 step meets (packed rows of
every length) gets a compiled primitive, up to 1,024 of them, kept for the life of the process (~5 MB a training step
on the demo: 1.5 GB retained after 75 steps, on top of every later stage). The command-line tools cap it at
:data:`ONEDNN_CACHE_CAPACITY` entries (the environment variable ``ONEDNN_PRIMITIVE_CACHE_CAPACITY`` wins if set):
1.16 GB retained, steps as fast.
"""

from __future__ import annotations

import ctypes
import gc
import os
from functools import cache
from typing import Any

ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
ONEDNN_CACHE_CAPACITY = 128


def bound_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> None:
    """Cap oneDNN's primitive cache (read once, when oneDNN builds its first primitive: call before any tensor
    work). A value already in the environment is kept."""
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(int(capacity)))


@cache
def _libc() -> Any | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None
    return libc


def trim_heap() -> bool:
    """Return the heap's free pages to the OS (glibc ``malloc_trim(0)``); False where that is not available."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


def release_memory() -> None:
    """Between stages: collect the previous stage's objects and hand the freed heap back to the OS, so the next stage
    does not stack its working set on top of the last one's leftovers."""
    gc.collect()
    trim_heap()
