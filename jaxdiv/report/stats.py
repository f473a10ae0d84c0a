"""Small statistics for reports: means with t-intervals over seeds, paired bootstrap differences,
and fitted trends with bootstrap intervals."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    if values.size == 1:
        return float(values[0]), 0.0
    half = stats.t.ppf(0.5 + confidence / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size)
    return float(values.mean()), float(half)


# Below this many pairs a comparison is "not testable": a bootstrap of 1 or 2 pairs yields an
# interval of width 0 or one made of two values, which reads as certainty it does not have.
MIN_PAIRS = 3


@dataclasses.dataclass(frozen=True)
class PairedComparison:
    """mean(a - b) over aligned pairs, with its percentile bootstrap interval (None if not testable)."""

    effect: float
    ci_low: float | None
    ci_high: float | None
    n_pairs: int
    share_positive: float | None  # share of resampled mean differences > 0
    confidence: float

    @property
    def testable(self) -> bool:
        return self.ci_low is not None

    def text(self, digits: int = 4) -> str:
        if not self.testable:
            return f"not testable ({self.n_pairs} pair{'s' * (self.n_pairs != 1)}, needs ≥ {MIN_PAIRS})"
        return (f"{self.effect:+.{digits}f} ({self.confidence:.0%} CI [{self.ci_low:+.{digits}f}, "
                f"{self.ci_high:+.{digits}f}], P(>0) = {self.share_positive:.2f}, {self.n_pairs} pairs)")


def paired_bootstrap(a, b, *, seed: int, resamples: int = 2000, confidence: float = 0.95) -> PairedComparison:
    """Paired percentile bootstrap of mean(a - b): a[i] and b[i] are one pair (same real subset,
    training seed and pool replicate); each resample draws pairs with replacement. Differences of
    accuracies stay within [-1, 1], and so does the interval (percentiles of resampled means)."""
    differences = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if differences.ndim != 1:
        raise ValueError(f"paired_bootstrap: a and b must be 1-d and aligned, got shape {differences.shape}")
    n = differences.size
    effect = float(differences.mean()) if n else math.nan
    if n < MIN_PAIRS:
        return PairedComparison(effect, None, None, n, None, confidence)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, n, size=(resamples, n))].mean(axis=1)
    low, high = np.quantile(means, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return PairedComparison(effect, float(low), float(high), n, float((means > 0).mean()), confidence)


def _slopes_and_correlations(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and Pearson r along the last axis (nan where x or y is constant)."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    sxx, syy, sxy = (dx * dx).sum(-1), (dy * dy).sum(-1), (dx * dy).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return sxy / sxx, sxy / np.sqrt(sxx * syy)


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float] | tuple[None, None]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None, None
    low, high = np.quantile(values, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(low), float(high)


def bootstrap_trend(x, y, *, seed: int, resamples: int = 2000, confidence: float = 0.95) -> dict:
    """Slope and Pearson r of y on x, each with a percentile bootstrap interval over the (x, y)
    rows resampled with replacement; fewer than MIN_PAIRS rows, or a constant x: no interval."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    out = {"n": int(x.size), "slope": math.nan, "slope_ci": (None, None), "pearson": math.nan,
           "pearson_ci": (None, None)}
    if x.size < MIN_PAIRS or np.ptp(x) == 0:
        return out
    slope, pearson = _slopes_and_correlations(x, y)
    draws = np.random.default_rng(seed).integers(0, x.size, size=(resamples, x.size))
    slopes, pearsons = _slopes_and_correlations(x[draws], y[draws])
    out.update(slope=float(slope), pearson=float(pearson), slope_ci=_interval(slopes, confidence),
               pearson_ci=_interval(pearsons, confidence))
    return out


def budget_trend(differences: dict[float, np.ndarray], *, seed: int, resamples: int = 2000,
                 confidence: float = 0.95) -> dict:
    """Does a paired gain shrink as the label budget grows? The slope of the mean gain against
    log2(budget) (change per doubling), with a percentile interval from resampling the pairs
    within each budget. Needs ≥ 2 budgets with ≥ MIN_PAIRS pairs each, else no interval."""
    usable = {b: np.asarray(d, np.float64) for b, d in sorted(differences.items()) if len(d) >= MIN_PAIRS}
    out = {"budgets": list(usable), "n_pairs": {b: len(d) for b, d in usable.items()},
           "slope_per_doubling": math.nan, "ci": (None, None)}
    if len(usable) < 2:
        return out
    x = np.log2(np.array(list(usable), dtype=np.float64))
    rng = np.random.default_rng(seed)
    means = np.stack([d[rng.integers(0, d.size, size=(resamples, d.size))].mean(axis=1)
                      for d in usable.values()], axis=1)  # (resamples, budgets)
    slope = _slopes_and_correlations(x, np.array([d.mean() for d in usable.values()]))[0]
    slopes = _slopes_and_correlations(np.broadcast_to(x, means.shape), means)[0]
    out.update(slope_per_doubling=float(slope), ci=_interval(slopes, confidence))
    return out
