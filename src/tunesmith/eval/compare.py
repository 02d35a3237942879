"""Base vs tuned on the same examples: means, paired bootstrap CIs of the delta, targets."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tunesmith.config import Target


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    base: float
    tuned: float
    delta: float
    delta_ci: tuple[float, float]
    tuned_ci: tuple[float, float]
    target: str | None
    status: str | None  # PASS / FAIL / UNCERTAIN (the target lies inside the tuned CI), None without target

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    base: Sequence[float], tuned: Sequence[float], n: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[tuple[float, float], tuple[float, float]]:
    """95% percentile CIs of mean(tuned - base) and of mean(tuned), resampling examples jointly."""
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    if len(b) == 0:
        return (float("nan"), float("nan")), (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n, len(b)))
    deltas = (t[idx] - b[idx]).mean(axis=1)
    tuned_means = t[idx].mean(axis=1)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    d_lo, d_hi = np.percentile(deltas, q)
    t_lo, t_hi = np.percentile(tuned_means, q)
    return (float(d_lo), float(d_hi)), (float(t_lo), float(t_hi))


def target_status(target: Target, value: float, ci: tuple[float, float]) -> str:
    if not target.met(value):
        return "FAIL" if not (target.met(ci[0]) or target.met(ci[1])) else "UNCERTAIN"
    # Met on the point estimate; uncertain when part of the CI misses it.
    return "PASS" if (target.met(ci[0]) and target.met(ci[1])) else "UNCERTAIN"


def compare(
    base_scores: dict[str, list[float]],
    tuned_scores: dict[str, list[float]],
    targets: Sequence[Target],
    seed: int = 0,
) -> list[MetricComparison]:
    by_metric = {t.metric: t for t in targets}
    rows = []
    for metric, tuned in tuned_scores.items():
        base = base_scores[metric]
        delta_ci, tuned_ci = paired_bootstrap(base, tuned, seed=seed)
        b, t = (
            float(np.mean(base)) if base else float("nan"),
            float(np.mean(tuned)) if tuned else float("nan"),
        )
        target = by_metric.get(metric)
        rows.append(
            MetricComparison(
                metric=metric,
                base=b,
                tuned=t,
                delta=t - b,
                delta_ci=delta_ci,
                tuned_ci=tuned_ci,
                target=str(target) if target else None,
                status=target_status(target, t, tuned_ci) if target else None,
            )
        )
    return rows
