"""Validation-loss monitor: the best evaluation so far, the overfitting warning and early stopping."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    improved: bool  # a new best val loss (by more than min_delta)
    stop: bool  # no improvement for `patience` evaluations (early stopping acts on this)
    warning: str | None = None  # the overfitting message, once per stretch without improvement


@dataclass
class ValMonitor:
    """Fed the train loss of every step and the val loss of every evaluation.

    Overfitting: `patience` evaluations without a new best, the latest val loss above the best by more
    than `min_delta`, while the train loss (mean over the steps since the previous evaluation) fell below
    its value at the best evaluation. `stop` is the plain early-stopping rule: `patience` evaluations without a new
    best, whether the model overfits or has stopped learning. All state is plain values (checkpointed).
    """

    patience: int
    min_delta: float = 0.0
    best_val: float | None = None
    best_step: int = 0
    best_train: float | None = None
    since_best: int = 0
    warned: bool = False
    window_sum: float = 0.0
    window_steps: int = 0

    def add_train(self, loss: float) -> None:
        self.window_sum += loss
        self.window_steps += 1

    def update(self, step: int, val: float) -> Verdict:
        train = self.window_sum / self.window_steps if self.window_steps else None
        self.window_sum, self.window_steps = 0.0, 0
        if self.best_val is None or val < self.best_val - self.min_delta:
            self.best_val, self.best_step, self.best_train = val, step, train
            self.since_best, self.warned = 0, False
            return Verdict(improved=True, stop=False)
        self.since_best += 1
        warning = None
        rose = val > self.best_val + self.min_delta
        train_fell = train is not None and self.best_train is not None and train < self.best_train
        if self.since_best >= self.patience and rose and train_fell and not self.warned:
            self.warned = True
            warning = (
                f"overfitting: val loss {val:.4f} is above its best {self.best_val:.4f} (step {self.best_step}) "
                f"for {self.since_best} evaluations while train loss fell {self.best_train:.4f} -> {train:.4f}"
            )
        return Verdict(improved=False, stop=self.since_best >= self.patience, warning=warning)

    def state(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ValMonitor:
        return cls(**state)
