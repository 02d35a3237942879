"""Time: a worker's budget, and how long the next trial would take.

A trial starts only when its estimate fits in what is left of the budget, after the chosen trial's test
evaluation is set aside. The estimate of a trial of S optimizer steps is

    setup + S x seconds per step + val scoring

with each term the median over the study's trials on the same base model that got that far (every
worker's trials: they share the storage). Before any trial has trained, the memory plan's time per epoch stands in for the step time
(`tunesmith plan`; on a CPU a matmul timed on this machine), and setup and scoring are unknown (0).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tunesmith.config import parse_duration

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "Budget",
    "TrialTime",
    "estimate_final_eval_s",
    "estimate_trial_s",
    "parse_duration",
    "trial_times",
]


@dataclass(frozen=True)
class TrialTime:
    """What one trial took (trial user attrs `time`)."""

    setup_s: float  # data check, plan, model load: before the first step
    steps: int  # optimizer steps trained (a pruned trial: until pruned)
    train_s: float
    eval_s: float | None = None  # val scoring (None: pruned or failed before it)
    n_val: int = 0  # val examples scored

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "setup_s": round(self.setup_s, 2),
            "steps": self.steps,
            "train_s": round(self.train_s, 2),
            "eval_s": None if self.eval_s is None else round(self.eval_s, 2),
            "n_val": self.n_val,
        }

    @classmethod
    def from_dict(cls, d: dict[str, float | int | None]) -> TrialTime:
        return cls(
            float(d.get("setup_s") or 0.0),
            int(d.get("steps") or 0),
            float(d.get("train_s") or 0.0),
            None if d.get("eval_s") is None else float(d["eval_s"]),  # type: ignore[arg-type]
            int(d.get("n_val") or 0),
        )


def trial_times(trials: Sequence[FrozenTrial], model: str | None = None, own: str = "") -> list[TrialTime]:
    """What the trials that recorded a time took; with `model`, only those on that base model (a trial
    without a `model` parameter trained `own`, the config's): a step of SmolLM2-135M and one of a
    22M-parameter encoder differ tenfold, so one base's steps do not estimate the other's."""
    return [
        TrialTime.from_dict(t.user_attrs["time"])
        for t in trials
        if "time" in t.user_attrs and (model is None or t.params.get("model", own) == model)
    ]


def _median(xs: Sequence[float]) -> float | None:
    return statistics.median(xs) if xs else None


def estimate_trial_s(
    history: Sequence[TrialTime], steps: int, plan_step_s: float | None = None
) -> float | None:
    """Seconds a trial of `steps` optimizer steps would take; None when nothing is known yet."""
    per_step = _median([t.train_s / t.steps for t in history if t.steps > 0])
    if per_step is None:
        per_step = plan_step_s
    if per_step is None:
        return None
    setup = _median([t.setup_s for t in history]) or 0.0
    scoring = _median([t.eval_s for t in history if t.eval_s is not None]) or 0.0
    return setup + steps * per_step + scoring


def estimate_final_eval_s(history: Sequence[TrialTime], n_test: int) -> float:
    """Seconds the chosen trial's test evaluation would take: val scoring scaled to the test split's size
    (0 when no trial was scored yet)."""
    rates = [t.eval_s / t.n_val for t in history if t.eval_s is not None and t.n_val > 0]
    per_example = _median(rates)
    return 0.0 if per_example is None else per_example * n_test


@dataclass
class Budget:
    """Wall-clock budget of one worker; `seconds` None: no time limit (a trial count ends the search)."""

    seconds: float | None
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=0.0)

    def __post_init__(self) -> None:
        self.started = self.clock()

    def left(self) -> float | None:
        return None if self.seconds is None else self.seconds - (self.clock() - self.started)

    def fits(self, estimate_s: float | None, reserve_s: float = 0.0) -> bool:
        """Whether work of `estimate_s` seconds (None: unknown) ends before the budget, `reserve_s` kept."""
        left = self.left()
        if left is None:
            return True
        if left <= reserve_s:
            return False
        return estimate_s is None or estimate_s <= left - reserve_s
