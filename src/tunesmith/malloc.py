"""Keep CPU training's resident memory at what its tensors need (glibc only).

glibc serves allocations above its mmap threshold with mmap and returns them on free, but it raises
that threshold (up to 32 MiB) each time such a block is freed. After the first training step every
activation (a few MiB each) therefore comes from the heap, where freed blocks stay resident and small
long-lived tensors (LoRA's rank-r activations, for one) pin the holes between them. Measured on
SmolLM2-135M over 16 steps of the support-tickets example: peak RSS 4.8 GiB for full fine-tuning and
4.2+ GiB for LoRA with the default, against ~2.9 GiB of live memory for LoRA (benchmarks/memory_plan.py).
A fixed threshold stops the drift, so the memory plan holds and a run refused as too big really is.

It costs speed: every activation is then a fresh mmap, page-faulted and zeroed, and unmapped on free. On the
same example a LoRA step runs at 144 real tokens/s with it and 248 without (peak RSS 2.80 vs 4.17 GiB; 12
steps, benchmarks/train_throughput.py). So training chooses (`train.heap`, `choose_heap`): the compact
threshold when memory is tight, glibc's own ceiling (32 MiB, as fast as its default) when 1.5x the plan's
peak fits.

Serving decodes the other way round: the same few activation sizes every step and nothing long-lived
between them, so the fast threshold costs little memory and the compact one a page-faulted mmap per
activation per step. `tunesmith serve` (and `ui`, whose playground decodes in-process) use `fast` unless
`--heap compact`. Measured with benchmarks/serve_load.py's prompts and run, 8 clients on 2 cores, one
server each: 32.4 completion tokens/s against 27.4, peak RSS 1.49 GiB against 1.40 GiB; with compact, 14%
of the server's CPU time was the kernel mapping and zeroing pages (decode steps 20% slower than alone).
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
FAST_THRESHOLD = (
    32 * 1024 * 1024
)  # glibc's ceiling for its dynamic threshold (DEFAULT_MMAP_THRESHOLD_MAX, 64-bit)
# Peak RSS with the fast heap over the compact one, measured training SmolLM2-135M: LoRA 4.17/2.80 GiB
# (benchmarks/train_throughput.py), full fine-tuning 4.8/4.03 GiB (benchmarks/memory_plan.py).
FAST_HEAP_OVERHEAD = 1.5


def choose_heap(mode: str, plan_peak: int | None, available: int | None) -> str:
    """`compact` or `fast` for `train.heap` (see the module doc); `auto` without a plan: compact."""
    if mode != "auto":
        return mode
    if plan_peak is None or available is None:
        return "compact"
    return "fast" if plan_peak * FAST_HEAP_OVERHEAD <= available else "compact"


def set_heap(kind: str) -> bool:
    """Apply `compact` or `fast` (see `choose_heap`); True when applied."""
    return limit_heap_fragmentation(THRESHOLD if kind == "compact" else FAST_THRESHOLD)


def limit_heap_fragmentation(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; True when applied. Leaves a user's MALLOC_MMAP_THRESHOLD_ alone."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, for one): nothing to tune
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
