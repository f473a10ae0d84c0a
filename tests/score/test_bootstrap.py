"""Half-sample confidence intervals: calibrated for a mean, seeded, bias reported separately."""

import numpy as np
import pytest

from jaxdiv.score.bootstrap import biased_under_subsampling, half_sample_intervals
from jaxdiv.score.config import BootstrapConfig


def test_interval_of_a_mean_matches_normal_theory():
    data = np.random.default_rng(0).exponential(size=4000)
    stat = lambda rows: {"mean": float(data[rows].mean()), "max": float(data[rows].max())}  # noqa: E731
    cfg = BootstrapConfig(samples=400, level=0.95, seed=3)
    full = stat(np.arange(len(data)))
    ci = half_sample_intervals(stat, len(data), full, cfg)
    width = ci["mean"]["ci_high"] - ci["mean"]["ci_low"]
    # Half-samples without replacement reproduce the full-n standard error of a mean.
    assert width == pytest.approx(2 * 1.96 * data.std() / np.sqrt(len(data)), rel=0.15)
    assert ci["mean"]["ci_low"] < full["mean"] < ci["mean"]["ci_high"]
    assert abs(ci["mean"]["subsample_bias"]) < 0.01
    # The maximum shrinks on half-samples: the bias is reported, the interval stays around the full value.
    assert ci["max"]["subsample_bias"] < 0
    assert ci["max"]["ci_low"] <= full["max"] <= ci["max"]["ci_high"]
    assert half_sample_intervals(stat, len(data), full, cfg) == ci  # seeded


def test_no_interval_when_too_small_or_disabled():
    stat = lambda rows: {"mean": float(len(rows))}  # noqa: E731
    assert half_sample_intervals(stat, 3, {"mean": 3.0}, BootstrapConfig()) == {}
    assert half_sample_intervals(stat, 100, {"mean": 100.0}, BootstrapConfig(samples=0)) == {}


def test_bias_flags():
    assert biased_under_subsampling("vendi_q1") and biased_under_subsampling("frechet_distance/HUM")
    assert not biased_under_subsampling("mean_cosine_distance") and not biased_under_subsampling("mmd2/LOC")
