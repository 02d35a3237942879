"""Deterministic, seeded train/val/test splits."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")


def _cut(
    indices: list[int], val: float, test: float, rng: random.Random
) -> tuple[list[int], list[int], list[int]]:
    rng.shuffle(indices)
    n_test = round(len(indices) * test)
    n_val = round(len(indices) * val)
    return indices[n_test + n_val :], indices[n_test : n_test + n_val], indices[:n_test]


def split_three(
    items: Sequence[T], val: float, test: float, seed: int, stratify_by: Callable[[T], object] | None = None
) -> tuple[list[T], list[T], list[T]]:
    """Shuffle with `seed` and cut into train/val/test by share; the same input and seed give the same split.

    `stratify_by`: cut each group (e.g. each label) by the same shares, so label balance is equal across
    splits. Items keep their input order inside each split.
    """
    rng = random.Random(seed)
    groups: dict[object, list[int]] = defaultdict(list)
    if stratify_by is None:
        groups[None] = list(range(len(items)))
    else:
        for i, it in enumerate(items):
            groups[stratify_by(it)].append(i)
    tr: list[int] = []
    va: list[int] = []
    te: list[int] = []
    for key in sorted(groups, key=str):
        a, b, c = _cut(groups[key], val, test, rng)
        tr += a
        va += b
        te += c
    return [items[i] for i in sorted(tr)], [items[i] for i in sorted(va)], [items[i] for i in sorted(te)]
