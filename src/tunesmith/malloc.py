"""Keep CPU training's resident memory at what its tensors need (glibc only).

glibc serves allocations above its mmap threshold with mmap and returns them on free, but it raises
that threshold (up to 32 MiB) each time such a block is freed. After the first training step every
activation (a few MiB each) therefore comes from the heap, where freed blocks stay resident and small
long-lived tensors (LoRA's rank-r activations, for one) pin the holes between them. Measured on
SmolLM2-135M over 16 steps of the support-tickets example: peak RSS 4.8 GiB for full fine-tuning and
4.2+ GiB for LoRA with the default, against ~2.9 GiB of live memory for LoRA (benchmarks/memory_plan.py).
A fixed threshold stops the drift, so the memory plan holds and a run refused as too big really is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number (malloc.h)
THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed


def limit_heap_fragmentation(threshold: int = THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; True when applied. Leaves a user's MALLOC_MMAP_THRESHOLD_ alone."""
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, for one): nothing to tune
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
