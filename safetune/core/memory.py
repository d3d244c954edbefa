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

The opposite problem is the heap handing memory back too eagerly. glibc serves every block above its mmap threshold
(at most 32 MB) with a fresh ``mmap``, so the large, short-lived tensors of every step (activations kept for
backward, the LM head's log-softmax over a 49k-word vocabulary) are unmapped when freed and page-faulted and zeroed
again at the next step: 8 million minor page faults (32 GB of zeroed pages) in an 8-step fp32 benchmark of 32 pairs
with LoRA on every layer. :func:`keep_freed_pages` (``trainer.keep_freed_pages``, on by default) makes the heap keep
them: those runs were 1.2-1.6x faster (fp32 and bf16) for 0.1-0.3 GB more peak memory; on the demo's setting
(bf16, top layers only, compiled) nothing was faster and the demo peaked 0.4 GB higher, so the demo turns it off
(benchmarks/README.md).
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


MALLOC_TUNING_ENV = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_MMAP_MAX_")
ALLOCATOR_ENV = "SAFETUNE_MALLOC"
# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4


def keep_freed_pages(trim_threshold: int = 1 << 30, top_pad: int = 256 << 20) -> bool:
    """Keep freed large blocks in the heap instead of unmapping them (glibc ``mallopt``: ``M_MMAP_MAX=0``,
    ``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), so a step's big temporaries reuse pages instead of faulting in new ones.

    Process-wide and for the rest of the process (glibc cannot go back to its adaptive thresholds). Returns whether
    it was applied: not where ``malloc`` is not glibc's, not when the environment already tunes glibc (any of
    :data:`MALLOC_TUNING_ENV`), and not with ``SAFETUNE_MALLOC=default`` (or ``0``/``off``).
    """
    if os.environ.get(ALLOCATOR_ENV, "").strip().lower() in ("default", "0", "off", "false", "glibc"):
        return False
    if any(name in os.environ for name in MALLOC_TUNING_ENV):
        return False
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    limit = (1 << 31) - 1  # mallopt takes an int
    settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, min(trim_threshold, limit)), (_M_TOP_PAD, min(top_pad, limit)))
    return all(libc.mallopt(param, int(value)) == 1 for param, value in settings)


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
