"""Shift (MMD^2, Frechet) and quality (duplicates, label-fidelity probe) vs float64 references."""

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import pdist

from jaxdiv.score.config import QualityConfig, ShiftConfig
from jaxdiv.score.quality import exact_duplicate_rate, label_fidelity, train_probe
from jaxdiv.score.shift import frechet_distance, median_bandwidth, mmd2_unbiased, shift_metrics


def _mmd2_reference(x, y, sigma):
    def k(a, b):
        d2 = np.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=2)
        return np.exp(-d2 / (2 * sigma ** 2))

    m, n = len(x), len(y)
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * k(x, y).mean())


def _frechet_reference(x, y):
    mx, my = x.mean(0), y.mean(0)
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    return np.sum((mx - my) ** 2) + np.trace(sx + sy - 2 * np.real(scipy.linalg.sqrtm(sx @ sy)))


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 12))
    y = rng.normal(loc=0.3, scale=1.2, size=(70, 12))
    return x, y


@pytest.mark.parametrize("block", [16, 1024])
def test_mmd2_matches_full_matrix_reference(sets, block):
    x, y = sets
    sigma = median_bandwidth(x, y, sample=10_000, seed=0)
    assert sigma == pytest.approx(np.median(pdist(np.concatenate([x, y]))), rel=1e-12)
    assert mmd2_unbiased(x, y, sigma, block) == pytest.approx(_mmd2_reference(x, y, sigma), rel=1e-4, abs=1e-6)


def test_mmd2_of_same_distribution_is_near_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    assert abs(mmd2_unbiased(x, y, median_bandwidth(x, y, 600, 0))) < 5e-3


@pytest.mark.parametrize("rows", [5, 12, 50])  # fewer rows than dims (the SVD route), equal, more
def test_frechet_matches_scipy_sqrtm(sets, rows):
    x, y = sets
    assert frechet_distance(x[:rows], y) == pytest.approx(_frechet_reference(x[:rows], y), rel=1e-4)
    assert frechet_distance(y, x[:rows]) == pytest.approx(_frechet_reference(y, x[:rows]), rel=1e-4)
    assert frechet_distance(x[:rows], x[:rows]) == pytest.approx(0.0, abs=1e-4)


def test_shift_per_label(sets):
    x, y = sets
    x_labels, y_labels = np.arange(50) % 2, np.arange(70) % 3
    sigma = 1.7
    out = shift_metrics(x, y, x_labels, y_labels, ("a", "b", "c"), ShiftConfig(min_rows_per_label=5), sigma)
    assert out["mmd2/a"] == pytest.approx(_mmd2_reference(x[x_labels == 0], y[y_labels == 0], sigma),
                                          rel=1e-4, abs=1e-6)
    assert out["frechet_distance/b"] == pytest.approx(
        _frechet_reference(x[x_labels == 1], y[y_labels == 1]), rel=1e-4)
    assert "mmd2/c" not in out  # no generated rows of label c


def test_exact_duplicate_rate():
    assert exact_duplicate_rate(["a b", "a b ", "c", "a b"]) == pytest.approx(2 / 4)
    assert exact_duplicate_rate([]) == 0.0


def test_label_fidelity_probe_on_separable_blobs():
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(3, 16)) * 4
    y = np.arange(300) % 3
    x = centers[y] + rng.normal(size=(300, 16))
    params = train_probe(x[:200], y[:200], 3, QualityConfig(classifier_steps=200))
    assert label_fidelity(params, x[200:], y[200:]) == 1.0
    assert label_fidelity(params, x[200:], (y[200:] + 1) % 3) == 0.0


def test_per_label_frechet_falls_back_to_pca_when_rows_do_not_exceed_dims(sets):
    x, y = sets  # 12 dims
    x_labels = np.array([0] * 20 + [1] * 6 + [2] * 24)  # label b: 6 rows <= 12 dims
    y_labels = np.arange(70) % 3
    out = shift_metrics(x, y, x_labels, y_labels, ("a", "b", "c"), ShiftConfig(frechet_pca_dims=3), 1.7)
    assert out["frechet_distance/a"] == pytest.approx(
        _frechet_reference(x[x_labels == 0], y[y_labels == 0]), rel=1e-4)
    assert "frechet_distance/b" not in out and out["frechet_pca_dims/b"] == 3.0  # min(6 - 1, 3)
    # reference: project both sets on the real label rows' top 3 principal components
    real, generated = y[y_labels == 1], x[x_labels == 1]
    w, v = np.linalg.eigh(np.cov(real, rowvar=False))
    basis = v[:, np.argsort(w)[::-1][:3]]
    assert out["frechet_pca/b"] == pytest.approx(
        _frechet_reference((generated - real.mean(0)) @ basis, (real - real.mean(0)) @ basis), rel=1e-4)
    wide = shift_metrics(x, y, x_labels, y_labels, ("a", "b", "c"), ShiftConfig(frechet_pca_dims=64), 1.7)
    assert wide["frechet_pca_dims/b"] == 5.0  # rows - 1 caps the projection
    assert "frechet_pca/a" not in wide and "frechet_pca/c" not in wide
