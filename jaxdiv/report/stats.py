"""Small statistics for reports: means with t-intervals over seeds, bootstrap differences."""

from __future__ import annotations

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


def bootstrap_difference(a, b, *, seed: int = 0, resamples: int = 2000,
                         confidence: float = 0.95) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its percentile bootstrap interval, and P(difference > 0)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    diffs = (rng.choice(a, (resamples, a.size)).mean(1) - rng.choice(b, (resamples, b.size)).mean(1))
    low, high = np.quantile(diffs, [0.5 - confidence / 2, 0.5 + confidence / 2])
    return float(a.mean() - b.mean()), float(low), float(high), float((diffs > 0).mean())


def linear_trend(x, y) -> dict[str, float]:
    """Least-squares slope and intercept, with Pearson and Spearman correlations."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"slope": math.nan, "intercept": math.nan, "pearson": math.nan, "spearman": math.nan,
                "n": int(x.size)}
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope": float(slope), "intercept": float(intercept),
            "pearson": float(stats.pearsonr(x, y)[0]), "spearman": float(stats.spearmanr(x, y)[0]),
            "n": int(x.size)}
