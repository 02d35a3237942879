"""Deterministic, seeded train/val/test splits."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def split_three(items: Sequence[T], val: float, test: float, seed: int) -> tuple[list[T], list[T], list[T]]:
    """Shuffle with `seed` and cut into train/val/test by share; the same input and seed give the same split."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_test = round(len(items) * test)
    n_val = round(len(items) * val)
    test_idx = sorted(order[:n_test])
    val_idx = sorted(order[n_test : n_test + n_val])
    train_idx = sorted(order[n_test + n_val :])
    return [items[i] for i in train_idx], [items[i] for i in val_idx], [items[i] for i in test_idx]
