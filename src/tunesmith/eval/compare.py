"""Base vs tuned on the same examples: means, paired bootstrap CIs of the delta, McNemar, targets.

Per-example metrics are averaged; corpus statistics (macro F1, perplexity) are functions of a set of example
indices, bootstrapped the same way (the same examples resampled for base and tuned). Deltas are tuned − base,
absolute and relative to base. For 0/1 metrics (accuracy-like: every score is 0 or 1) McNemar's test on the
discordant pairs says how surprising the change would be if the two models were equally good: exact two-sided
binomial when there are fewer than 25 discordant pairs, chi-square with continuity correction otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from tunesmith.config import Target
from tunesmith.eval.metrics import higher_is_better

Stat = Callable[[np.ndarray], float]


@dataclass(frozen=True)
class MetricComparison:
    metric: str
    base: float
    tuned: float
    delta: float
    delta_rel: float | None  # delta / |base|; None when base is 0
    delta_ci: tuple[float, float]
    tuned_ci: tuple[float, float]
    target: str | None
    status: str | None  # PASS / FAIL / UNCERTAIN (the target lies inside the tuned CI), None without target
    n: int = 0  # examples the metric applies to
    higher_is_better: bool | None = True
    p_value: float | None = None  # McNemar, for 0/1 metrics
    test: str | None = None  # "mcnemar-exact" / "mcnemar-chi2"
    discordant: tuple[int, int] | None = None  # (base right & tuned wrong, base wrong & tuned right)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def paired_bootstrap(
    base: Sequence[float], tuned: Sequence[float], n: int = 2000, seed: int = 0, alpha: float = 0.05
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Percentile CIs (95% by default) of mean(tuned - base) and of mean(tuned), resampling examples jointly."""
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


def bootstrap_statistic(
    base: Stat, tuned: Stat, n_examples: int, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[tuple[float, float], tuple[float, float]]:
    """paired_bootstrap for statistics of a whole set (macro F1, perplexity): CIs of the delta and of tuned."""
    if n_examples == 0:
        return (float("nan"), float("nan")), (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    deltas, tuned_vals = np.empty(n), np.empty(n)
    for i in range(n):
        idx = rng.integers(0, n_examples, size=n_examples)
        tv = tuned(idx)
        deltas[i], tuned_vals[i] = tv - base(idx), tv
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    d_lo, d_hi = np.nanpercentile(deltas, q)
    t_lo, t_hi = np.nanpercentile(tuned_vals, q)
    return (float(d_lo), float(d_hi)), (float(t_lo), float(t_hi))


def mcnemar(base: Sequence[float], tuned: Sequence[float]) -> tuple[float, str, tuple[int, int]]:
    """Two-sided McNemar p-value for paired 0/1 outcomes: (p, test name, (b, c)) where b counts base right
    and tuned wrong, c base wrong and tuned right."""
    b = sum(1 for x, y in zip(base, tuned, strict=True) if x == 1 and y == 0)
    c = sum(1 for x, y in zip(base, tuned, strict=True) if x == 0 and y == 1)
    n = b + c
    if n == 0:
        return 1.0, "mcnemar-exact", (b, c)
    if n < 25:
        k = min(b, c)
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
        return min(1.0, 2 * tail), "mcnemar-exact", (b, c)
    chi2 = (abs(b - c) - 1) ** 2 / n
    # Survival function of chi-square with one degree of freedom.
    return math.erfc(math.sqrt(chi2 / 2)), "mcnemar-chi2", (b, c)


def target_status(target: Target, value: float, ci: tuple[float, float]) -> str:
    if not target.met(value):
        return "FAIL" if not (target.met(ci[0]) or target.met(ci[1])) else "UNCERTAIN"
    # Met on the point estimate; uncertain when part of the CI misses it.
    return "PASS" if (target.met(ci[0]) and target.met(ci[1])) else "UNCERTAIN"


def _binary(xs: Sequence[float]) -> bool:
    return len(xs) > 0 and all(x in (0.0, 1.0) for x in xs)


def _rel(delta: float, base: float) -> float | None:
    return delta / abs(base) if base and math.isfinite(base) and math.isfinite(delta) else None


def compare(
    base_scores: Mapping[str, Sequence[float | None]],
    tuned_scores: Mapping[str, Sequence[float | None]],
    targets: Sequence[Target],
    seed: int = 0,
    corpus: Mapping[str, tuple[Stat, Stat, int]] | None = None,
) -> list[MetricComparison]:
    """One row per metric. Per-example metrics pair base and tuned on the examples where both have a score;
    `corpus`: metric -> (base statistic, tuned statistic, number of examples) for whole-set statistics."""
    by_metric = {t.metric: t for t in targets}
    rows = []

    def row(metric: str, b: float, t: float, delta_ci: Any, tuned_ci: Any, n: int, **extra: Any) -> None:
        target = by_metric.get(metric)
        rows.append(
            MetricComparison(
                metric=metric,
                base=b,
                tuned=t,
                delta=t - b,
                delta_rel=_rel(t - b, b),
                delta_ci=delta_ci,
                tuned_ci=tuned_ci,
                target=str(target) if target else None,
                status=target_status(target, t, tuned_ci) if target else None,
                n=n,
                higher_is_better=higher_is_better(metric),
                **extra,
            )
        )

    for metric, tuned_all in tuned_scores.items():
        pairs = [
            (b, t)
            for b, t in zip(base_scores[metric], tuned_all, strict=True)
            if b is not None and t is not None
        ]
        base = [b for b, _ in pairs]
        tuned = [t for _, t in pairs]
        delta_ci, tuned_ci = paired_bootstrap(base, tuned, seed=seed)
        b_mean = float(np.mean(base)) if base else float("nan")
        t_mean = float(np.mean(tuned)) if tuned else float("nan")
        extra: dict[str, Any] = {}
        if _binary(base) and _binary(tuned):
            p, test, disc = mcnemar(base, tuned)
            extra = {"p_value": p, "test": test, "discordant": disc}
        row(metric, b_mean, t_mean, delta_ci, tuned_ci, len(pairs), **extra)
    for metric, (base_stat, tuned_stat, n) in (corpus or {}).items():
        everything = np.arange(n)
        delta_ci, tuned_ci = bootstrap_statistic(base_stat, tuned_stat, n, seed=seed)
        row(metric, base_stat(everything), tuned_stat(everything), delta_ci, tuned_ci, n)
    return rows
