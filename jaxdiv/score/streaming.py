"""The embedding-diversity kernel for pools larger than memory: chunks stream from a .npy file.

The same statistics as `embedding_diversity`, accumulated chunk by chunk from a memory-mapped
(n, d) array: X^T X, sum x and sum ||x||^2 in one pass; the n x n terms by streaming column
chunks past each row chunk (the tiles are the kernel's own `pair_terms`); k-means++ seeding on a
seeded in-memory sample of `chunk_rows` rows, then full Lloyd passes over the chunks. Device
memory holds two chunks and a d x d matrix; nothing n x n, nothing n x d.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec
from tqdm.auto import tqdm

from jaxdiv.score.config import DiversityConfig
from jaxdiv.score.errors import EmbeddingError
from jaxdiv.score.diversity import (HIGHEST, METRIC_NAMES, bad_rows, kmeans_plus_plus, lloyd_partials,
                                    lloyd_update, normalize_rows, occupancy_entropy, pair_summary, pair_terms,
                                    summarize)
from jaxdiv.sharding import make_mesh


@functools.partial(jax.jit, static_argnames=("n_valid",))
def _normalized_chunk(chunk: jax.Array, n_valid: int) -> tuple[jax.Array, jax.Array]:
    valid = jnp.arange(chunk.shape[0]) < n_valid
    x = jnp.where(valid[:, None], normalize_rows(jnp.where(valid[:, None], chunk, 1.0)), 0.0)
    return x, valid


@jax.jit
def _chunk_stats(x: jax.Array) -> dict[str, jax.Array]:
    return {"gram": jnp.matmul(x.T, x, precision=HIGHEST), "sum_vector": jnp.sum(x, axis=0),
            "sum_sq_norms": jnp.sum(x * x)}


class _Chunks:
    """Fixed-size, zero-padded, normalised, checked row chunks of a memory-mapped .npy matrix."""

    def __init__(self, path: Path, chunk_rows: int, block_size: int):
        self.path = path
        try:
            self.array = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as err:
            raise EmbeddingError(f"{path}: not a readable .npy array ({err})") from None
        if self.array.ndim != 2:
            raise EmbeddingError(f"{path}: expected an (n, d) matrix, got shape {self.array.shape}")
        self.n, self.d = self.array.shape
        if self.n < 2:
            raise EmbeddingError(f"{path}: set-level diversity needs at least 2 rows, got {self.n}")
        self.block = min(block_size, -(-min(chunk_rows, self.n) // 8) * 8)
        self.rows = -(-min(chunk_rows, self.n) // self.block) * self.block
        self.starts = range(0, self.n, self.rows)

    def load(self, start: int) -> tuple[jax.Array, jax.Array]:
        raw = np.asarray(self.array[start:start + self.rows], dtype=np.float32)
        nonfinite, zero = (int(v) for v in bad_rows(jnp.asarray(raw)))
        if nonfinite >= 0:
            raise EmbeddingError(f"{self.path}: row {start + nonfinite} contains NaN or Inf")
        if zero >= 0:
            raise EmbeddingError(f"{self.path}: row {start + zero} is the zero vector, which has no "
                                 "direction (cosine metrics are undefined for it)")
        padded = np.zeros((self.rows, self.d), np.float32)
        padded[:raw.shape[0]] = raw
        return _normalized_chunk(jnp.asarray(padded), n_valid=raw.shape[0])


def streaming_embedding_diversity(path: str | Path, cfg: DiversityConfig = DiversityConfig(), *,
                                  chunk_rows: int = 65536, progress: bool = True) -> dict[str, float]:
    """Every metric of `embedding_diversity` for the (n, d) matrix in the .npy file `path`."""
    chunks = _Chunks(Path(path), chunk_rows, cfg.block_size)
    n, tau = chunks.n, cfg.dcscore_temperature
    bar = tqdm(total=len(chunks.starts) * (1 + len(chunks.starts) + cfg.kmeans_iterations + 1),
               desc="streaming diversity", unit="chunk", disable=not progress)

    stats = None
    for start in chunks.starts:
        part = _chunk_stats(chunks.load(start)[0])
        stats = part if stats is None else jax.tree.map(jnp.add, stats, part)
        bar.update()

    pair_step = jax.jit(functools.partial(pair_terms, n=n, block=chunks.block, tau=tau))
    pair_sums = None
    for row_start in chunks.starts:
        rows, valid = chunks.load(row_start)
        nearest, dc_sum = jnp.full((chunks.rows,), -jnp.inf), jnp.zeros((chunks.rows,))
        for col_start in chunks.starts:
            part_nearest, part_dc = pair_step(rows, chunks.load(col_start)[0], row_start, col_start)
            nearest, dc_sum = jnp.maximum(nearest, part_nearest), dc_sum + part_dc
            bar.update()
        part = pair_summary(nearest, dc_sum, valid, cfg.near_duplicate_threshold)
        pair_sums = part if pair_sums is None else jax.tree.map(jnp.add, pair_sums, part)
    stats.update(pair_sums)

    stats["kmeans_inertia"], stats["kmeans_occupancy_entropy"] = _streaming_kmeans(chunks, cfg, bar)
    bar.close()
    out = jax.jit(summarize, static_argnames=("n", "cfg"))(stats, n=n, cfg=cfg)
    return {name: float(out[name]) for name in METRIC_NAMES}


def _streaming_kmeans(chunks: _Chunks, cfg: DiversityConfig, bar) -> tuple[jax.Array, jax.Array]:
    """k-means++ seeding on a seeded sample of one chunk's size, then Lloyd passes over all chunks."""
    k = min(cfg.kmeans_clusters, chunks.n)
    sample_ids = np.sort(np.random.default_rng(cfg.seed).choice(chunks.n, min(chunks.rows, chunks.n),
                                                                replace=False))
    sample = normalize_rows(jnp.asarray(np.asarray(chunks.array[sample_ids], np.float32)))
    mesh = make_mesh(devices=jax.devices()[:1])
    seed = jax.shard_map(
        lambda x, key: kmeans_plus_plus(x, jnp.ones(x.shape[0], bool), key, k, x.shape[0],
                                         mesh.axis_names, x.shape[0]),
        mesh=mesh, in_specs=(PartitionSpec(), PartitionSpec()), out_specs=PartitionSpec(),
        check_vma=False)
    centers = jax.jit(seed)(sample, jax.random.key(cfg.seed))
    partials = jax.jit(lambda x, valid, c: lloyd_partials(x, valid.astype(jnp.float32), c))

    def full_pass(centers):
        total = None
        for start in chunks.starts:
            part = partials(*chunks.load(start), centers)
            total = part if total is None else jax.tree.map(jnp.add, total, part)
            bar.update()
        return total

    for _ in range(cfg.kmeans_iterations):
        sums, counts, _ = full_pass(centers)
        centers = lloyd_update(centers, sums, counts)
    _, counts, inertia = full_pass(centers)
    return inertia / chunks.n, occupancy_entropy(counts)
