"""`train.heap`: the allocator policy follows the memory plan (tunesmith/malloc.py)."""

from __future__ import annotations

from tunesmith.malloc import FAST_HEAP_OVERHEAD, choose_heap

GiB = 1024**3


def test_auto_keeps_freed_memory_only_with_room_for_its_overhead() -> None:
    assert choose_heap("auto", 3 * GiB, 24 * GiB) == "fast"
    tight = int(3 * GiB * FAST_HEAP_OVERHEAD) - 1
    assert choose_heap("auto", 3 * GiB, tight) == "compact"
    assert choose_heap("auto", None, None) == "compact"  # nothing known: the safe one


def test_an_explicit_choice_wins() -> None:
    assert choose_heap("compact", 1, 10**15) == "compact"
    assert choose_heap("fast", 10**15, 1) == "fast"
