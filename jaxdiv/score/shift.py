"""Distribution shift between generated and real embeddings: unbiased MMD^2 (RBF) and Frechet distance.

- MMD^2, unbiased (Gretton et al. 2012, eq. 3):
  sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(n(n-1)) - 2 sum_{i,j} k(x_i,y_j)/(mn),
  k(a, b) = exp(-||a-b||^2 / (2 sigma^2)). sigma is the median heuristic: the median pairwise
  distance within a seeded sample of `median_sample` rows of the union. The kernel sums run over
  block x block tiles (never an m x n matrix); a diagonal's k(x_i, x_i) = 1 is subtracted exactly.
  It can be slightly negative when the two sets are alike (it is unbiased, not clipped).
- Frechet distance between Gaussian fits: ||mu_x - mu_y||^2 + tr(S_x + S_y - 2 (S_x^1/2 S_y S_x^1/2)^1/2),
  unbiased covariances; means and covariances are accumulated in JAX at HIGHEST precision, the
  square roots are taken in float64 numpy (S_y^1/2 once per real set; see `_frechet`).
Both are reported overall and per label (labels with at least `min_rows_per_label` rows in both sets).
A label's Frechet distance is fitted in the full embedding space only where both sets have more rows
of it than dimensions; otherwise a covariance of rank < d would be compared, so it is computed on the
top min(rows - 1, frechet_pca_dims) principal components of the real rows of the label and named
`frechet_pca/<label>` (with `frechet_pca_dims/<label>`, the dimensions used).
"""

from __future__ import annotations

import dataclasses
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


@jax.jit
def _moments(x: jax.Array, n: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and unbiased covariance of the first n rows of zero-padded x."""
    mean = jnp.sum(x, axis=0) / n
    centred = jnp.where((jnp.arange(x.shape[0]) < n)[:, None], x - mean, 0.0)
    return mean, jnp.matmul(centred.T, centred, precision=HIGHEST) / (n - 1)


def _eigh_descending(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (clipped at 0) and eigenvectors of a symmetric PSD matrix, largest first."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return np.maximum(w[::-1], 0.0), v[:, ::-1]


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    w, v = _eigh_descending(matrix)
    return (v * np.sqrt(w)) @ v.T


def _gaussian(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of the rows of z."""
    # padded like the kernel sums' inputs: a few compiled shapes, whatever the row counts
    return tuple(np.asarray(v, np.float64) for v in _moments(_padded(z, 1024), len(z)))


def _frechet(x: np.ndarray, mean: np.ndarray, cov: np.ndarray, cov_root: np.ndarray) -> float:
    """Frechet distance of x's Gaussian fit to (mean, cov); cov_root = cov^1/2.

    tr((S_x^1/2 S S_x^1/2)^1/2) is the nuclear norm of B = A cov^1/2 with S_x = A^T A (A: the
    centred rows over sqrt(m - 1)), since the nonzero eigenvalues agree: one small SVD when
    x has at most d rows, else one d x d symmetric eigensolve of cov^1/2 S_x cov^1/2."""
    m, d = x.shape
    if m < 2:
        raise ValueError(f"the Frechet distance needs at least 2 rows per set, got {m}")
    if m <= d:
        x64 = np.asarray(x, np.float64)
        mx = x64.mean(axis=0)
        a = (x64 - mx) / np.sqrt(m - 1)
        trace_x, cross = np.sum(a * a), np.sum(np.linalg.svd(a @ cov_root, compute_uv=False))
    else:
        mx, sx = _gaussian(x)
        trace_x = np.trace(sx)
        cross = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(cov_root @ sx @ cov_root), 0.0)))
    return float(np.sum((mx - mean) ** 2) + trace_x + np.trace(cov) - 2.0 * cross)


def _kernel_sum(a: jax.Array, b: jax.Array, n_a: int, n_b: int, gamma: float, block: int) -> float:
    return float(_rbf_sum(a, b, jnp.float32(gamma), n_a, n_b, block=min(block, a.shape[0], b.shape[0])))


@dataclasses.dataclass(frozen=True)
class RealSide:
    """What the shift metrics need of one real set, computed once: its padded rows, its own
    RBF kernel sum (diagonal excluded) at width sigma, and its Gaussian fit (float64)."""

    rows: jax.Array
    n: int
    kernel_sum: float
    mean: np.ndarray
    cov: np.ndarray
    cov_root: np.ndarray
    variances: np.ndarray  # principal variances of the real rows, largest first
    components: np.ndarray  # (d, d): their directions, as columns

    @classmethod
    def of(cls, y: np.ndarray, sigma: float, block: int) -> "RealSide":
        if len(y) < 2:
            raise ValueError(f"a shift reference needs at least 2 real rows, got {len(y)}")
        rows = _padded(y, block)
        kernel_sum = _kernel_sum(rows, rows, len(y), len(y), _gamma(sigma), block) - len(y)  # k(y_i, y_i) = 1
        mean, cov = _gaussian(y)
        variances, components = _eigh_descending(cov)
        cov_root = (components * np.sqrt(variances)) @ components.T
        return cls(rows, len(y), kernel_sum, mean, cov, cov_root, variances, components)

    def mmd2(self, x: np.ndarray, sigma: float, block: int) -> float:
        m, n = len(x), self.n
        if m < 2:
            raise ValueError(f"MMD^2 needs at least 2 rows per set, got {m} and {n}")
        xs = _padded(x, block)
        kxx = _kernel_sum(xs, xs, m, m, _gamma(sigma), block) - m
        kxy = _kernel_sum(xs, self.rows, m, n, _gamma(sigma), block)
        return kxx / (m * (m - 1)) + self.kernel_sum / (n * (n - 1)) - 2.0 * kxy / (m * n)

    def frechet(self, x: np.ndarray) -> float:
        return _frechet(x, self.mean, self.cov, self.cov_root)

    def frechet_projected(self, x: np.ndarray, dims: int) -> float:
        """Frechet distance on the real rows' top `dims` principal components: there the real fit
        is N(0, diag(variances)) exactly, and x is centred on the real mean and projected."""
        z = (np.asarray(x, np.float64) - self.mean) @ self.components[:, :dims]
        variances = self.variances[:dims]
        return _frechet(z, np.zeros(dims), np.diag(variances), np.diag(np.sqrt(variances)))

    def label_frechet(self, x: np.ndarray, max_pca_dims: int) -> dict[str, float]:
        """{"frechet_distance": value} where both sets have more rows than dims, else
        {"frechet_pca": value, "frechet_pca_dims": dims} with dims = min(rows - 1, max_pca_dims)."""
        rows, d = min(len(x), self.n), x.shape[1]
        if rows > d:
            return {"frechet_distance": self.frechet(x)}
        dims = min(rows - 1, max_pca_dims)
        return {"frechet_pca": self.frechet_projected(x, dims), "frechet_pca_dims": float(dims)}


def _gamma(sigma: float) -> float:
    return 1.0 / (2.0 * sigma * sigma)


def mmd2_unbiased(x: np.ndarray, y: np.ndarray, sigma: float, block: int = 1024) -> float:
    """Unbiased MMD^2 with an RBF kernel of width sigma; `block` must be a power of two."""
    if len(y) < 2:
        raise ValueError(f"MMD^2 needs at least 2 rows per set, got {len(x)} and {len(y)}")
    return RealSide.of(y, sigma, block).mmd2(x, sigma, block)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    if len(y) < 2:
        raise ValueError(f"the Frechet distance needs at least 2 rows per set, got {len(x)} and {len(y)}")
    mean, cov = _gaussian(y)
    return _frechet(x, mean, cov, _psd_sqrt(cov))


class ShiftReference:
    """The real side of every shift metric, overall and per label, at one RBF width: built once
    per real set and reused by every pool and half-sample scored against it (the real-real
    kernel sums are most of the work: the real set is usually far larger than a pool)."""

    def __init__(self, y: np.ndarray, sigma: float, y_labels: Sequence[int] | None = None,
                 label_names: Sequence[str] = (), cfg: ShiftConfig = ShiftConfig(), block: int = 1024):
        self.cfg, self.block, self.sigma = cfg, block, sigma
        self.overall = RealSide.of(y, self.sigma, block)
        self.per_label: dict[int, tuple[str, RealSide]] = {}
        if y_labels is not None:
            y_labels = np.asarray(y_labels)
            for index, name in enumerate(label_names):
                rows = y[y_labels == index]
                if len(rows) >= max(cfg.min_rows_per_label, 2):
                    self.per_label[index] = (name, RealSide.of(rows, self.sigma, block))

    def metrics(self, x: np.ndarray, x_labels: Sequence[int] | None = None) -> dict[str, float]:
        out = {"mmd2": self.overall.mmd2(x, self.sigma, self.block), "frechet_distance": self.overall.frechet(x)}
        if x_labels is not None:
            x_labels = np.asarray(x_labels)
            for index, (name, real) in self.per_label.items():
                rows = x[x_labels == index]
                if len(rows) >= max(self.cfg.min_rows_per_label, 2):
                    out[f"mmd2/{name}"] = real.mmd2(rows, self.sigma, self.block)
                    out.update({f"{metric}/{name}": value for metric, value in
                                real.label_frechet(rows, self.cfg.frechet_pca_dims).items()})
        return out


def shift_metrics(x: np.ndarray, y: np.ndarray, x_labels: Sequence[int] | None = None,
                  y_labels: Sequence[int] | None = None, label_names: Sequence[str] = (),
                  cfg: ShiftConfig = ShiftConfig(), sigma: float | None = None,
                  block: int = 1024) -> dict[str, float]:
    """MMD^2 and Frechet distance of generated `x` against real `y`, overall and per label
    (labels with at least `min_rows_per_label` rows in both sets). `sigma` (default: the
    median heuristic on x and y) is the RBF width for all of them."""
    sigma = median_bandwidth(x, y, cfg.median_sample, cfg.seed) if sigma is None else sigma
    reference = ShiftReference(y, sigma, None if x_labels is None else y_labels, label_names, cfg, block)
    return reference.metrics(x, x_labels)
