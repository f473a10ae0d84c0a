"""Seeded confidence intervals for set-level metrics, by half-sampling.

Why not the classic bootstrap (resampling n rows *with* replacement)? A resample repeats rows,
and repeated rows are exact duplicates: the chamfer distance of a duplicated row drops to 0, the
near-duplicate and exact-duplicate rates jump, distinct-n falls. So the CI draws `samples`
subsets of m = n/2 rows *without* replacement (half-sampling; for a mean, the spread of
half-sample means about the full mean matches the sampling spread of the full-n mean).

Many set metrics depend on the set size and are **biased under subsampling**: Vendi, DCScore,
effective rank and log-det grow with n; chamfer, near-duplicate rate, k-means inertia, distinct-n,
n-gram entropy, compression ratio, self-repetition, self-BLEU (below its sampling switch), the
exact-duplicate rate and the Frechet distance all move with n too. The interval therefore uses
the *centred* half-sample deviations: CI = value(full) + [q_lo, q_hi] of (value(half) - mean
over halves), and the shift mean(half) - value(full) is reported separately as
`subsample_bias`, so the bias neither moves the interval nor goes unreported. Metrics that are
unbiased means (mean cosine distance, MMD^2, label fidelity, length and ratio means) have
`subsample_bias` near 0.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from jaxdiv.score.config import BootstrapConfig

UNBIASED_UNDER_SUBSAMPLING = frozenset({
    "mean_cosine_distance", "mmd2", "label_fidelity", "length_tokens_mean", "length_tokens_std",
    "length_chars_mean", "type_token_ratio", "mean_word_length", "long_word_share",
    "punctuation_share", "length_tokens_p10", "length_tokens_p50", "length_tokens_p90"})


def biased_under_subsampling(metric: str) -> bool:
    return metric.split("/")[0] not in UNBIASED_UNDER_SUBSAMPLING


def half_sample_intervals(statistic: Callable[[np.ndarray], dict[str, float]], n: int,
                          full: dict[str, float], cfg: BootstrapConfig) -> dict[str, dict[str, float]]:
    """{metric: {ci_low, ci_high, subsample_bias}} from `cfg.samples` seeded half-samples.

    `statistic(rows)` computes the metrics on the sorted row indices `rows`. Metrics missing
    from some half-sample (a per-label value with too few rows) get no interval.
    """
    if cfg.samples == 0 or n < 4:
        return {}
    rng = np.random.default_rng(cfg.seed)
    draws = [statistic(np.sort(rng.choice(n, n // 2, replace=False))) for _ in range(cfg.samples)]
    alpha = (1.0 - cfg.level) / 2.0
    out = {}
    for name, value in full.items():
        values = np.array([d[name] for d in draws if name in d], dtype=np.float64)
        if len(values) < cfg.samples:
            continue
        low, high = np.quantile(values - values.mean(), [alpha, 1.0 - alpha])
        out[name] = {"ci_low": float(value + low), "ci_high": float(value + high),
                     "subsample_bias": float(values.mean() - value)}
    return out
