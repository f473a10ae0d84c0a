"""Distribution shift between generated and real embeddings: unbiased MMD^2 (RBF) and Frechet distance.

- MMD^2, unbiased (Gretton et al. 2012, eq. 3):
  sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 sum_{i,j} k(x_i,y_j)/(mn),
  k(a, b) = exp(-||a-b||^2 / (2 sigma^2)). sigma is the median heuristic: the median pairwise
  distance within a seeded sample of `median_sample` rows of the union. The kernel sums run over
  block x block tiles (never an m x n matrix); a diagonal's k(x_i, x_i) = 1 is subtracted exactly.
  It can be slightly negative when the two sets are alike (it is unbiased, not clipped).
- Frechet distance between Gaussian fits: ||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2),
  unbiased covariances; means and covariances are accumulated in JAX at HIGHEST precision, the
  d x d square roots are taken in float64 numpy.
Both are reported overall and per label (labels with at least `min_rows_per_label` rows in both sets).
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.score.config import ShiftConfig
from jaxdiv.score.diversity import HIGHEST


@functools.partial(jax.jit, static_argnames=("block",))
def _rbf_sum(a: jax.Array, b: jax.Array, gamma: jax.Array, n_a: jax.Array, n_b: jax.Array, *,
             block: int) -> jax.Array:
    """sum_{i<n_a, j<n_b} exp(-gamma ||a_i - b_j||^2) over block x block tiles (inputs zero-padded)."""
    sq_a, sq_b = jnp.sum(a * a, axis=1), jnp.sum(b * b, axis=1)

    def row_block(r, total):
        rows = jax.lax.dynamic_slice_in_dim(a, r * block, block)
        row_sq = jax.lax.dynamic_slice_in_dim(sq_a, r * block, block)
        row_ok = (r * block + jnp.arange(block)) < n_a

        def col_block(c, total):
            cols = jax.lax.dynamic_slice_in_dim(b, c * block, block)
            col_sq = jax.lax.dynamic_slice_in_dim(sq_b, c * block, block)
            col_ok = (c * block + jnp.arange(block)) < n_b
            d2 = jnp.maximum(row_sq[:, None] + col_sq[None, :]
                             - 2.0 * jnp.matmul(rows, cols.T, precision=HIGHEST), 0.0)
            return total + jnp.sum(jnp.where(row_ok[:, None] & col_ok[None, :], jnp.exp(-gamma * d2), 0.0))

        return jax.lax.fori_loop(0, b.shape[0] // block, col_block, total)

    return jax.lax.fori_loop(0, a.shape[0] // block, row_block, jnp.zeros((), jnp.float32))


def _padded(x: np.ndarray, block: int) -> jax.Array:
    """Zero-pad rows to a power of two up to `block`, then to a multiple of it (few distinct shapes)."""
    n = x.shape[0]
    rows = max(8, 1 << (n - 1).bit_length()) if n <= block else -(-n // block) * block
    return jnp.pad(jnp.asarray(x, jnp.float32), ((0, rows - n), (0, 0)))


def median_bandwidth(x: np.ndarray, y: np.ndarray, sample: int, seed: int) -> float:
    """Median pairwise Euclidean distance within a seeded sample of the union of x and y."""
    union = np.concatenate([x, y]).astype(np.float64)
    rng = np.random.default_rng(seed)
    if len(union) > sample:
        union = union[np.sort(rng.choice(len(union), sample, replace=False))]
    sq = np.sum(union * union, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * union @ union.T, 0.0)
    distances = np.sqrt(d2[np.triu_indices(len(union), k=1)])
    positive = distances[distances > 0]
    return float(np.median(positive)) if positive.size else 1.0  # all identical: any width gives 0


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma: float, block: int = 1024) -> float:
    """Unbiased MMD^2 with an RBF kernel of width sigma; `block` must be a power of two."""
    m, n = len(x), len(y)
    if m < 2 or n < 2:
        raise ValueError(f"MMD^2 needs at least 2 rows per set, got {m} and {n}")
    gamma = jnp.float32(1.0 / (2.0 * sigma * sigma))
    xs, ys = _padded(x, block), _padded(y, block)

    def kernel_sum(a, b, n_a, n_b):
        return float(_rbf_sum(a, b, gamma, n_a, n_b, block=min(block, a.shape[0], b.shape[0])))

    kxx = kernel_sum(xs, xs, m, m) - m  # minus the diagonal, k(x_i, x_i) = 1
    kyy = kernel_sum(ys, ys, n, n) - n
    kxy = kernel_sum(xs, ys, m, n)
    return kxx / (m * (m - 1)) + kyy / (n * (n - 1)) - 2.0 * kxy / (m * n)


@jax.jit
def _moments(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    return mean, jnp.matmul(centred.T, centred, precision=HIGHEST) / (x.shape[0] - 1)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.maximum(w, 0.0))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 2 or len(y) < 2:
        raise ValueError(f"the Frechet distance needs at least 2 rows per set, got {len(x)} and {len(y)}")
    (mx, sx), (my, sy) = [tuple(np.asarray(v, np.float64) for v in _moments(jnp.asarray(z, jnp.float32)))
                          for z in (x, y)]
    root = _psd_sqrt(sx)
    cross = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(root @ sy @ root), 0.0)))
    return float(np.sum((mx - my) ** 2) + np.trace(sx) + np.trace(sy) - 2.0 * cross)


def shift_metrics(x: np.ndarray, y: np.ndarray, x_labels: Sequence[int] | None = None,
                  y_labels: Sequence[int] | None = None, label_names: Sequence[str] = (),
                  cfg: ShiftConfig = ShiftConfig(), sigma: float | None = None,
                  block: int = 1024) -> dict[str, float]:
    """MMD^2 and Frechet distance of generated `x` against real `y`, overall and per label.

    `sigma` (default: the median heuristic on x and y) is the RBF width for all of them.
    """
    sigma = median_bandwidth(x, y, cfg.median_sample, cfg.seed) if sigma is None else sigma
    out = {"mmd2": mmd2_unbiased(x, y, sigma, block), "frechet_distance": frechet_distance(x, y)}
    if x_labels is not None and y_labels is not None:
        x_labels, y_labels = np.asarray(x_labels), np.asarray(y_labels)
        for index, name in enumerate(label_names):
            xs, ys = x[x_labels == index], y[y_labels == index]
            if min(len(xs), len(ys)) >= cfg.min_rows_per_label:
                out[f"mmd2/{name}"] = mmd2_unbiased(xs, ys, sigma, block)
                out[f"frechet_distance/{name}"] = frechet_distance(xs, ys)
    return out
