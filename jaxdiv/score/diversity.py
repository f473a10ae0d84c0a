"""The embedding-diversity kernel: every set-level embedding metric in one jitted, sharded pass.

`embedding_diversity(x)` takes an (n, d) embedding matrix, L2-normalises its rows and returns

    vendi_q0.5, vendi_q1, vendi_q2, vendi_qinf   exp of the Renyi entropy of the eigenvalues of K/n,
                                                 K = XX^T (from the d x d dual X^T X/n when n > d)
    mean_cosine_distance    1 - mean off-diagonal cosine, exactly, in O(nd):
                            (||sum x_i||^2 - sum ||x_i||^2) / (n (n-1)) is the mean off-diagonal cosine
    chamfer_distance        mean over rows of the cosine distance to the nearest *other* row
    near_duplicate_rate     share of rows whose nearest other row has cosine >= the threshold
    dcscore                 trace(softmax(K/tau)), row-wise softmax: 1 (all equal) .. n (all distinct)
    kmeans_inertia          mean squared distance to the nearest centroid (k-means++ seeded, Lloyd)
    kmeans_occupancy_entropy  entropy (nats) of the cluster sizes
    log_det                 log det(I + K/(n eps)) = sum_i log(1 + lambda_i/eps)  (route independent)
    effective_rank          exp of the entropy of the normalised singular values (Roy & Vetterli)

Memory is O(n b + d^2): the n x n terms (chamfer, near duplicates, DCScore) run over b x b tiles
that are reduced as they are produced; DCScore's row-wise log-sum-exp streams over column tiles
with the exact shift 1/tau (the diagonal, the row maximum of K/tau for unit rows), so no tile
can overflow. Rows are sharded over every axis of the mesh; each device reduces its rows against
all columns and the partial statistics (X^T X, sum x, tile sums, k-means sums) are psum-ed.
Gram and covariance matmuls use HIGHEST precision.

Pools larger than memory go through `streaming_embedding_diversity`, which reads row and column
chunks from a memory-mapped .npy file and accumulates the same statistics.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from threadpoolctl import threadpool_limits

from jaxdiv.score.config import DiversityConfig
from jaxdiv.score.errors import EmbeddingError
from jaxdiv.sharding import make_mesh

HIGHEST = jax.lax.Precision.HIGHEST
VENDI_ORDERS = (0.5, 1.0, 2.0, math.inf)
UNIT_TOLERANCE = 1e-6  # |‖x‖² - 1| below this counts as already normalised


def vendi_key(q: float) -> str:
    return "vendi_qinf" if math.isinf(q) else f"vendi_q{q:g}"


METRIC_NAMES = tuple(vendi_key(q) for q in VENDI_ORDERS) + (
    "mean_cosine_distance", "chamfer_distance", "near_duplicate_rate", "dcscore",
    "kmeans_inertia", "kmeans_occupancy_entropy", "log_det", "effective_rank")


# ---------------------------------------------------------------------------
# Input checks (on the host: a clear error naming the row, never a NaN).

def check_embeddings(x: np.ndarray | jax.Array, what: str = "embeddings") -> None:
    """Raise EmbeddingError for a non-(n, d) shape, n < 2, d < 1, NaN/Inf or an all-zero row."""
    if x.ndim != 2:
        raise EmbeddingError(f"{what}: expected an (n, d) matrix, got shape {tuple(x.shape)}")
    n, d = x.shape
    if n < 2:
        raise EmbeddingError(f"{what}: set-level diversity needs at least 2 rows, got {n}")
    if d < 1:
        raise EmbeddingError(f"{what}: rows have no dimensions")
    nonfinite, zero = bad_rows(jnp.asarray(x))
    if int(nonfinite) >= 0:
        raise EmbeddingError(f"{what}: row {int(nonfinite)} contains NaN or Inf")
    if int(zero) >= 0:
        raise EmbeddingError(f"{what}: row {int(zero)} is the zero vector, which has no direction "
                             "(cosine metrics are undefined for it)")


@jax.jit
def bad_rows(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """First row with a NaN/Inf and first all-zero row (-1 where there is none)."""
    nonfinite = ~jnp.all(jnp.isfinite(x), axis=1)
    zero = jnp.all(x == 0, axis=1)
    first = lambda mask: jnp.where(jnp.any(mask), jnp.argmax(mask), -1)  # noqa: E731
    return first(nonfinite), first(zero)


def normalize_rows(x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


# ---------------------------------------------------------------------------
# Spectrum metrics (shared by the in-memory and the streaming routes).

def spectrum_metrics(eigenvalues: jax.Array, logdet_ridge: float) -> dict[str, jax.Array]:
    """Vendi (all orders), log-det and effective rank from the eigenvalues of K/n (or X^T X/n).

    Eigenvalues below sqrt(m) * eps * lambda_max (m = matrix size) are round-off of a zero
    eigenvalue and are dropped, so that the d x d and n x n routes agree even at q = 0.5, where
    sum(lambda^q) would otherwise count the noise of the extra zero eigenvalues.
    """
    lam = eigenvalues.astype(jnp.float32)
    tol = math.sqrt(lam.shape[0]) * jnp.finfo(jnp.float32).eps * jnp.max(lam)
    positive = lam > tol
    lam = jnp.where(positive, lam, 0.0)
    p = lam / jnp.sum(lam)  # sums to 1 already for unit rows; renormalised against round-off
    safe_p = jnp.where(positive, p, 1.0)
    out = {}
    for q in VENDI_ORDERS:
        if q == 1.0:
            entropy = -jnp.sum(jnp.where(positive, p * jnp.log(safe_p), 0.0))
        elif math.isinf(q):
            entropy = -jnp.log(jnp.max(p))
        else:
            entropy = jnp.log(jnp.sum(jnp.where(positive, safe_p ** q, 0.0))) / (1.0 - q)
        out[vendi_key(q)] = jnp.exp(entropy)
    out["log_det"] = jnp.sum(jnp.log1p(lam / logdet_ridge))
    sigma = jnp.sqrt(lam)
    s = sigma / jnp.sum(sigma)
    safe_s = jnp.where(positive, s, 1.0)
    out["effective_rank"] = jnp.exp(-jnp.sum(jnp.where(positive, s * jnp.log(safe_s), 0.0)))
    return out


def mean_cosine_distance(sum_vector: jax.Array, sum_sq_norms: jax.Array, n: int) -> jax.Array:
    """1 - mean off-diagonal cosine, from sum x_i and sum ||x_i||^2 (exact, O(nd))."""
    off_diagonal = (jnp.sum(sum_vector * sum_vector) - sum_sq_norms) / (float(n) * (n - 1))  # n^2 > int32
    return jnp.clip(1.0 - off_diagonal, 0.0, 2.0)


# ---------------------------------------------------------------------------
# The blocked n x n terms.

def pair_tile_stats(rows: jax.Array, row_ids: jax.Array, cols: jax.Array, col_ids: jax.Array,
                    n: int, tau: float):
    """Reductions of one cosine tile along both axes: (row max, row sum, column max, column sum).

    max: the largest cosine to another valid row (the chamfer neighbour; self-pairs excluded).
    sum: sum of exp((cos - 1)/tau) over valid rows (DCScore's softmax denominator, self included,
    shifted by the row maximum 1/tau so nothing overflows). Ids >= n are padding and masked out.
    The column reductions serve the symmetric schedule; where they are unused XLA drops them.
    """
    cos = jnp.matmul(rows, cols.T, precision=HIGHEST)
    valid = (row_ids < n)[:, None] & (col_ids < n)[None, :]
    others = jnp.where(valid & (row_ids[:, None] != col_ids[None, :]), cos, -jnp.inf)
    weights = jnp.where(valid, jnp.exp((cos - 1.0) / tau), 0.0)
    return (jnp.max(others, axis=1), jnp.sum(weights, axis=1),
            jnp.max(others, axis=0), jnp.sum(weights, axis=0))


def symmetric_pair_terms(x_local: jax.Array, x_all: jax.Array, row_offset: jax.Array, n: int,
                         block: int, tau: float, axes) -> tuple[jax.Array, jax.Array]:
    """Nearest-other cosine and DCScore row sums of all rows, computing each tile pair once.

    K is symmetric, so row block I visits column blocks J = I, I+1, ..., I + nb/2 (mod nb), which
    covers every unordered pair of blocks once (with an even nb the pair at distance nb/2 would
    come up twice, so the upper half skips it) and gives every row block the same work. A tile's
    row reductions go to block I, its column reductions to block J; the full-length partial
    accumulators are then combined across devices (pmax, psum).
    """
    n_local, n_all = x_local.shape[0], x_all.shape[0]
    blocks, first = n_all // block, row_offset // block

    def row_block(r, acc):
        i = first + r
        rows = jax.lax.dynamic_slice_in_dim(x_local, r * block, block)
        row_ids = i * block + jnp.arange(block)

        def step(t, acc):
            nearest_acc, dc_acc = acc
            j = (i + t) % blocks
            cols = jax.lax.dynamic_slice_in_dim(x_all, j * block, block)
            row_max, row_sum, col_max, col_sum = pair_tile_stats(
                rows, row_ids, cols, j * block + jnp.arange(block), n, tau)
            keep = ~((2 * t == blocks) & (2 * i >= blocks))
            keep_cols = keep & (t > 0)  # a diagonal tile's columns are its rows

            def merge(acc, at, maximum, total, use):
                near = jax.lax.dynamic_slice_in_dim(acc[0], at * block, block)
                dc = jax.lax.dynamic_slice_in_dim(acc[1], at * block, block)
                near = jnp.where(use, jnp.maximum(near, maximum), near)
                dc = jnp.where(use, dc + total, dc)
                return (jax.lax.dynamic_update_slice_in_dim(acc[0], near, at * block, 0),
                        jax.lax.dynamic_update_slice_in_dim(acc[1], dc, at * block, 0))

            acc = merge((nearest_acc, dc_acc), i, row_max, row_sum, keep)
            return merge(acc, j, col_max, col_sum, keep_cols)

        return jax.lax.fori_loop(0, blocks // 2 + 1, step, acc)

    init = (jnp.full((n_all,), -jnp.inf, jnp.float32), jnp.zeros((n_all,), jnp.float32))
    nearest, dc_sum = jax.lax.fori_loop(0, n_local // block, row_block, init)
    return jax.lax.pmax(nearest, axes), jax.lax.psum(dc_sum, axes)


def pair_terms(x_local: jax.Array, x_all: jax.Array, row_offset: jax.Array, col_offset: jax.Array,
               n: int, block: int, tau: float) -> tuple[jax.Array, jax.Array]:
    """Nearest-other cosine and DCScore row sums of `x_local`'s rows over `x_all`'s columns.

    Tile by tile (block x block); both row counts are multiples of `block`. The offsets are the
    global ids of the first row / column, so padding (ids >= n) and self-pairs are recognised.
    """
    n_local, n_all = x_local.shape[0], x_all.shape[0]

    def row_block(r, carry):
        nearest_acc, dc_acc = carry
        rows = jax.lax.dynamic_slice_in_dim(x_local, r * block, block)
        row_ids = row_offset + r * block + jnp.arange(block)

        def col_block(c, acc):
            cols = jax.lax.dynamic_slice_in_dim(x_all, c * block, block)
            col_ids = col_offset + c * block + jnp.arange(block)
            nearest, dc_sum, _, _ = pair_tile_stats(rows, row_ids, cols, col_ids, n, tau)
            return jnp.maximum(acc[0], nearest), acc[1] + dc_sum

        init = (jnp.full((block,), -jnp.inf, jnp.float32), jnp.zeros((block,), jnp.float32))
        nearest, dc_sum = jax.lax.fori_loop(0, n_all // block, col_block, init)
        return (jax.lax.dynamic_update_slice_in_dim(nearest_acc, nearest, r * block, 0),
                jax.lax.dynamic_update_slice_in_dim(dc_acc, dc_sum, r * block, 0))

    init = (jnp.zeros((n_local,), jnp.float32), jnp.ones((n_local,), jnp.float32))
    return jax.lax.fori_loop(0, n_local // block, row_block, init)


def pair_summary(nearest: jax.Array, dc_sum: jax.Array, valid: jax.Array,
                 threshold: float) -> dict[str, jax.Array]:
    """Per-row pair statistics -> (unnormalised) sums over the valid rows."""
    return {"chamfer_distance": jnp.sum(jnp.where(valid, jnp.clip(1.0 - nearest, 0.0, 2.0), 0.0)),
            "near_duplicate_rate": jnp.sum(jnp.where(valid & (nearest >= threshold), 1.0, 0.0)),
            "dcscore": jnp.sum(jnp.where(valid, 1.0 / dc_sum, 0.0))}


# ---------------------------------------------------------------------------
# k-means in JAX (k-means++ seeding, Lloyd iterations), rows sharded.

def _squared_distances(x: jax.Array, centers: jax.Array) -> jax.Array:
    cross = jnp.matmul(x, centers.T, precision=HIGHEST)
    d2 = jnp.sum(x * x, axis=1)[:, None] - 2.0 * cross + jnp.sum(centers * centers, axis=1)[None, :]
    return jnp.maximum(d2, 0.0)


def kmeans_plus_plus(x_local, valid, key, k, n, axes, n_local):
    """k-means++ seeding; the D^2-weighted draw is made on the global cumulative sum."""
    device = jax.lax.axis_index(axes)
    local_ids = jnp.arange(n_local)

    def row_of(global_row):
        mine = (global_row // n_local) == device
        return jax.lax.psum(jnp.where(mine, x_local[global_row % n_local], 0.0), axes)

    first = row_of(jax.random.randint(jax.random.fold_in(key, 0), (), 0, n))
    centers = jnp.zeros((k, x_local.shape[1]), jnp.float32).at[0].set(first)
    min_d2 = jnp.where(valid, _squared_distances(x_local, first[None])[:, 0], 0.0)
    last_valid = jnp.max(jnp.where(valid, local_ids, 0))

    def step(t, carry):
        centers, min_d2 = carry
        totals = jax.lax.all_gather(jnp.sum(min_d2), axes)
        offset = jnp.sum(jnp.where(jnp.arange(totals.shape[0]) < device, totals, 0.0))
        grand = jnp.sum(totals)
        u = jax.random.uniform(jax.random.fold_in(key, t)) * grand
        cumulative = offset + jnp.cumsum(min_d2)
        index = jnp.minimum(jnp.sum(cumulative <= u), last_valid)
        mine = jnp.where(grand > 0, (u >= offset) & (u < offset + totals[device]), device == 0)
        index = jnp.where(grand > 0, index, 0)  # all rows already covered: any row will do
        center = jax.lax.psum(jnp.where(mine & jnp.any(valid), x_local[index], 0.0), axes)
        min_d2 = jnp.minimum(min_d2, jnp.where(valid, _squared_distances(x_local, center[None])[:, 0], 0.0))
        return centers.at[t].set(center), min_d2

    centers, _ = jax.lax.fori_loop(1, k, step, (centers, min_d2))
    return centers


def lloyd_partials(x: jax.Array, weights: jax.Array, centers: jax.Array):
    """Per-cluster sums, counts and the weighted sum of min squared distances of some rows."""
    d2 = _squared_distances(x, centers)
    onehot = jax.nn.one_hot(jnp.argmin(d2, axis=1), centers.shape[0], dtype=jnp.float32) * weights[:, None]
    return (jnp.matmul(onehot.T, x, precision=HIGHEST), jnp.sum(onehot, axis=0),
            jnp.sum(jnp.min(d2, axis=1) * weights))


def lloyd_update(centers: jax.Array, sums: jax.Array, counts: jax.Array) -> jax.Array:
    # An empty cluster keeps its centre instead of dividing by zero.
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centers)


def occupancy_entropy(counts: jax.Array) -> jax.Array:
    p = counts / jnp.sum(counts)
    return jnp.maximum(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)), 0.0)


def _kmeans(x_local, valid, key, k, iterations, n, axes):
    centers = kmeans_plus_plus(x_local, valid, key, k, n, axes, x_local.shape[0])
    weights = valid.astype(jnp.float32)

    def global_partials(centers):
        return jax.lax.psum(lloyd_partials(x_local, weights, centers), axes)

    def lloyd(_, centers):
        sums, counts, _ = global_partials(centers)
        return lloyd_update(centers, sums, counts)

    centers = jax.lax.fori_loop(0, iterations, lloyd, centers)
    _, counts, inertia = global_partials(centers)
    return inertia / n, occupancy_entropy(counts)


# ---------------------------------------------------------------------------
# The jitted, sharded entry point.

def _layout(n: int, devices: int, block_size: int) -> tuple[int, int]:
    """(block, padded n): rows per device a multiple of the block, block <= rows per device."""
    per_device = -(-n // devices)
    block = min(block_size, -(-per_device // 8) * 8)
    per_device = -(-per_device // block) * block
    return block, per_device * devices


def _route(n: int, d: int, cfg: DiversityConfig) -> str:
    return cfg.vendi_route if cfg.vendi_route != "auto" else ("dual" if n > d else "gram")


def _local_rows(x_local: jax.Array, n: int, axes) -> tuple[jax.Array, jax.Array, jax.Array]:
    """This device's rows, L2-normalised, padding rows zeroed; their validity and first global id."""
    row_offset = jax.lax.axis_index(axes) * x_local.shape[0]
    valid = (row_offset + jnp.arange(x_local.shape[0])) < n
    x_local = x_local.astype(jnp.float32)
    norms = jnp.linalg.norm(x_local, axis=1)
    # One fused scaling pass; padding rows (and zero rows, rejected earlier by the check) stay 0.
    return x_local * jnp.where(valid & (norms > 0), 1.0 / norms, 0.0)[:, None], valid, row_offset


def _spectrum_matrix(x_local: jax.Array, n: int, cfg: DiversityConfig, axes) -> jax.Array:
    """X^T X (d x d, psum of the devices' partial sums) when n > d, else the n x n Gram XX^T."""
    if _route(n, x_local.shape[1], cfg) == "gram":
        x_all = jax.lax.all_gather(x_local, axes, tiled=True)
        return jnp.matmul(x_all, x_all.T, precision=HIGHEST)
    return jax.lax.psum(jnp.matmul(x_local.T, x_local, precision=HIGHEST), axes)


@functools.partial(jax.jit, static_argnames=("n", "cfg", "mesh"))
def _diversity_kernel(x_padded: jax.Array, key: jax.Array, *, n: int, cfg: DiversityConfig,
                      mesh: Mesh) -> dict[str, jax.Array]:
    axes = mesh.axis_names
    n_pad = x_padded.shape[0]
    block, _ = _layout(n, mesh.size, cfg.block_size)
    k = min(cfg.kmeans_clusters, n)

    def per_device(x_local, key):
        x_local, valid, row_offset = _local_rows(x_local, n, axes)
        stats = {"gram": _spectrum_matrix(x_local, n, cfg, axes),
                 "sum_vector": jax.lax.psum(jnp.sum(x_local, axis=0), axes),
                 "sum_sq_norms": jax.lax.psum(jnp.sum(x_local * x_local), axes)}
        x_all = jax.lax.all_gather(x_local, axes, tiled=True)
        nearest, dc_sum = symmetric_pair_terms(x_local, x_all, row_offset, n, block,
                                               cfg.dcscore_temperature, axes)
        stats.update(pair_summary(nearest, dc_sum, jnp.arange(n_pad) < n, cfg.near_duplicate_threshold))
        stats["kmeans_inertia"], stats["kmeans_occupancy_entropy"] = _kmeans(
            x_local, valid, key, k, cfg.kmeans_iterations, n, axes)
        return stats

    stats = jax.shard_map(per_device, mesh=mesh, in_specs=(PartitionSpec(axes, None), PartitionSpec()),
                          out_specs=PartitionSpec(), check_vma=False)(x_padded, key)
    return summarize(stats, n, cfg)


@functools.partial(jax.jit, static_argnames=("n", "cfg", "mesh"))
def _spectrum_kernel(x_padded: jax.Array, *, n: int, cfg: DiversityConfig, mesh: Mesh) -> dict[str, jax.Array]:
    axes = mesh.axis_names

    def per_device(x):
        # Rows that are unit vectors already (what the embedder writes) skip the scaling pass, a
        # full write and re-read of X; padding rows are zero either way and add nothing.
        x = x.astype(jnp.float32)
        off_unit = jnp.abs(jnp.sum(x * x, axis=1) - 1.0) > UNIT_TOLERANCE
        valid = (jax.lax.axis_index(axes) * x.shape[0] + jnp.arange(x.shape[0])) < n
        all_unit = jax.lax.psum(jnp.sum(off_unit & valid), axes) == 0
        return jax.lax.cond(all_unit, lambda: _spectrum_matrix(x, n, cfg, axes),
                            lambda: _spectrum_matrix(_local_rows(x, n, axes)[0], n, cfg, axes))

    matrix = jax.shard_map(per_device, mesh=mesh, in_specs=PartitionSpec(axes, None),
                           out_specs=PartitionSpec(), check_vma=False)(x_padded)
    return spectrum_metrics(eigenvalues(matrix / n), cfg.logdet_ridge)


def eigenvalues(matrix: jax.Array) -> jax.Array:
    """Eigenvalues of a small symmetric matrix (d x d, or n x n with n <= d), in float64 on the host.

    The matrix is tiny next to the O(nd^2) product that built it; LAPACK in float64 is more
    accurate than float32. One BLAS thread: at d = 384 a multi-threaded eigensolver is no faster
    on an idle CPU and several times slower on a busy one (spinning threads).
    """
    def host(m):
        with threadpool_limits(1):
            return np.linalg.eigvalsh(np.asarray(m, np.float64)).astype(np.float32)

    return jax.pure_callback(host, jax.ShapeDtypeStruct(matrix.shape[:1], jnp.float32), matrix)


def summarize(stats: dict[str, jax.Array], n: int, cfg: DiversityConfig) -> dict[str, jax.Array]:
    """Reduced statistics (Gram matrix, sums, pair sums, k-means results) -> the metrics."""
    out = spectrum_metrics(eigenvalues(stats["gram"] / n), cfg.logdet_ridge)
    out["mean_cosine_distance"] = mean_cosine_distance(stats["sum_vector"], stats["sum_sq_norms"], n)
    for name in ("chamfer_distance", "near_duplicate_rate"):
        out[name] = stats[name] / n
    for name in ("dcscore", "kmeans_inertia", "kmeans_occupancy_entropy"):
        out[name] = stats[name]
    return out


def _sharded_rows(x, mesh: Mesh, check: bool, block_size: int | None) -> jax.Array:
    """`x` as float32, zero-padded (to the tile layout, or just to the device count) and row-sharded."""
    if check:
        check_embeddings(x)
    n = x.shape[0]
    n_pad = _layout(n, mesh.size, block_size)[1] if block_size else -(-n // mesh.size) * mesh.size
    x = jnp.asarray(x, jnp.float32)
    if n_pad > n:
        x = jnp.pad(x, ((0, n_pad - n), (0, 0)))
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(mesh.axis_names, None)))


def embedding_diversity(x: np.ndarray | jax.Array, cfg: DiversityConfig = DiversityConfig(), *,
                        mesh: Mesh | None = None, check: bool = True) -> dict[str, float]:
    """Every set-level embedding metric of the (n, d) matrix `x` (rows need not be normalised).

    Rows are sharded over every axis of `mesh` (default: `make_mesh()` over all devices). Raises
    EmbeddingError for n < 2, NaN/Inf or all-zero rows, naming the row.
    """
    mesh = make_mesh() if mesh is None else mesh
    rows = _sharded_rows(x, mesh, check, cfg.block_size)
    out = _diversity_kernel(rows, jax.random.key(cfg.seed), n=x.shape[0], cfg=cfg, mesh=mesh)
    return {name: float(out[name]) for name in METRIC_NAMES}


def vendi_scores(x: np.ndarray | jax.Array, cfg: DiversityConfig = DiversityConfig(), *,
                 mesh: Mesh | None = None, check: bool = True) -> dict[str, float]:
    """Only the spectrum metrics (Vendi at every order, log-det, effective rank): O(nd^2 + d^3)."""
    mesh = make_mesh() if mesh is None else mesh
    out = _spectrum_kernel(_sharded_rows(x, mesh, check, None), n=x.shape[0], cfg=cfg, mesh=mesh)
    return {name: float(value) for name, value in out.items()}
