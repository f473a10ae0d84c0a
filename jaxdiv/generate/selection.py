"""Diversity-targeted selection: fixed-size subsets of one pool at a target embedding diversity.

From one large pool (one generator, one prompt distribution) pick subsets whose embedding
diversity, measured by the scoring kernel (`jaxdiv.score.diversity.vendi_scores`), hits a
target value or a ladder of them. This gives exact control of diversity at a fixed generator:

- `farthest_point_indices`: greedy max-min (farthest-point) selection, the high end;
- `cluster_indices`: rows nearest to a few random anchors (cluster-restricted sampling),
  the low end (one anchor: the tightest neighbourhood);
- `select_to_target`: a subset made of the first m farthest-point rows and the rest from
  the cluster subset; diversity grows with m, and a bisection on m hits the target as
  closely as a subset of this family can.

Embeddings are L2-normalised; distances are cosine distances (1 - cosine). All selection
kernels are jitted; dot products use HIGHEST precision.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.errors import JaxdivError
from jaxdiv.score.config import DiversityConfig
from jaxdiv.score.diversity import check_embeddings, vendi_scores

HIGHEST = jax.lax.Precision.HIGHEST


class SelectionError(JaxdivError, ValueError):
    """A selection cannot be made (names the sizes or targets involved)."""


def _unit(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.linalg.norm(x, axis=1, keepdims=True)


@functools.partial(jax.jit, static_argnames="size")
def _farthest_point(x: jax.Array, first: jax.Array, size: int) -> jax.Array:
    def step(i, carry):
        chosen, nearest = carry
        pick = jnp.argmax(nearest)
        distance = 1.0 - jnp.dot(x, x[pick], precision=HIGHEST)
        return chosen.at[i].set(pick), jnp.minimum(nearest, distance).at[pick].set(-jnp.inf)

    nearest = (1.0 - jnp.dot(x, x[first], precision=HIGHEST)).at[first].set(-jnp.inf)
    chosen = jnp.zeros(size, jnp.int32).at[0].set(first)
    return jax.lax.fori_loop(1, size, step, (chosen, nearest))[0]


def farthest_point_indices(x, size: int, first: int = 0) -> np.ndarray:
    """`size` row indices, greedily each the farthest (cosine) from those already chosen."""
    _check_size(x, size)
    return np.asarray(_farthest_point(_unit(x), jnp.int32(first), size))


@functools.partial(jax.jit, static_argnames=("size", "anchors"))
def _clusters(x: jax.Array, key: jax.Array, size: int, anchors: int) -> jax.Array:
    n = x.shape[0]
    centre_ids = jax.random.choice(key, n, (anchors,), replace=False)
    similarity = jnp.dot(x, x[centre_ids].T, precision=HIGHEST)  # (n, anchors)
    # round-robin over anchors: each takes its nearest rows not yet taken
    order = jnp.argsort(-similarity, axis=0)  # (n, anchors) row ranks per anchor

    def step(i, carry):
        chosen, taken, cursor = carry
        anchor = i % anchors

        def advance(c):
            return c + 1

        position = jax.lax.while_loop(lambda c: taken[order[c, anchor]], advance, cursor[anchor])
        row = order[position, anchor]
        return chosen.at[i].set(row), taken.at[row].set(True), cursor.at[anchor].set(position + 1)

    start = (jnp.zeros(size, jnp.int32), jnp.zeros(n, bool), jnp.zeros(anchors, jnp.int32))
    return jax.lax.fori_loop(0, size, step, start)[0]


def cluster_indices(x, size: int, anchors: int = 1, seed: int = 0) -> np.ndarray:
    """`size` rows nearest to `anchors` random anchor rows (taken in turn): low diversity."""
    _check_size(x, size)
    if not 1 <= anchors <= size:
        raise SelectionError(f"anchors={anchors} must lie in [1, size={size}]")
    return np.asarray(_clusters(_unit(x), jax.random.key(seed), size, anchors))


def _check_size(x, size: int) -> None:
    check_embeddings(np.asarray(x))
    if not 2 <= size <= x.shape[0]:
        raise SelectionError(f"subset size {size} must lie in [2, {x.shape[0]} rows]")


@dataclasses.dataclass(frozen=True)
class Selection:
    indices: np.ndarray
    target: float
    achieved: float
    farthest_share: float  # m / size: the share of farthest-point rows


def _mixed(high: np.ndarray, low: np.ndarray, m: int, size: int) -> np.ndarray:
    """The first m farthest-point rows, then cluster rows not already in, up to `size`."""
    head = list(high[:m])
    seen = set(head)
    tail = [i for i in low if i not in seen][:size - m]
    if len(head) + len(tail) < size:  # the cluster subset overlapped: top up from the high order
        tail += [i for i in high[m:] if i not in seen and i not in set(tail)][:size - m - len(tail)]
    return np.asarray(head + tail, np.int64)


def _family(x: np.ndarray, size: int, metric: str, anchors: int, seed: int, cfg: DiversityConfig):
    """The subset family of `select_to_target`: m -> (indices, metric value), m = 0 .. size."""
    high = farthest_point_indices(x, size, first=seed % x.shape[0])
    low = cluster_indices(x, size, anchors=anchors, seed=seed)

    def member(m: int) -> tuple[np.ndarray, float]:
        indices = _mixed(high, low, m, size)
        values = vendi_scores(x[indices], cfg)
        if metric not in values:
            raise SelectionError(f"metric {metric!r} is not a spectrum metric ({sorted(values)})")
        return indices, values[metric]

    return member


def reachable_range(x, size: int, metric: str = "vendi_q1", *, anchors: int = 1, seed: int = 0,
                    cfg: DiversityConfig = DiversityConfig()) -> tuple[float, float]:
    """The `metric` of the family's lowest (all cluster rows) and highest (all farthest-point rows)
    `size`-row subsets: the targets `select_to_target` can hit."""
    member = _family(np.asarray(x, np.float32), size, metric, anchors, seed, cfg)
    return member(0)[1], member(size)[1]


def select_to_target(x, size: int, target: float, metric: str = "vendi_q1", *, anchors: int = 1,
                     seed: int = 0, cfg: DiversityConfig = DiversityConfig()) -> Selection:
    """A `size`-row subset whose `metric` (a spectrum metric of the scoring kernel) is as close
    to `target` as the farthest-point / cluster mixtures allow."""
    member = _family(np.asarray(x, np.float32), size, metric, anchors, seed, cfg)

    def score(m: int) -> float:
        return member(m)[1]

    lo, hi = 0, size
    lo_value, hi_value = score(lo), score(hi)
    closest_end = lo if abs(lo_value - target) <= abs(hi_value - target) else hi
    if not min(lo_value, hi_value) <= target <= max(lo_value, hi_value):
        raise SelectionError(f"target {metric}={target:.4g} lies outside what {size}-row subsets of "
                             f"this pool reach here: [{lo_value:.4g}, {hi_value:.4g}] (closest: m={closest_end})")
    if hi_value < lo_value:  # a flat family (tiny subsets of near-orthogonal rows): nothing to search
        return Selection(member(closest_end)[0], target, score(closest_end), closest_end / size)
    while hi - lo > 1:  # diversity rises with m (nearly monotone); keep target between the ends
        mid = (lo + hi) // 2
        value = score(mid)
        if value <= target:
            lo, lo_value = mid, value
        else:
            hi, hi_value = mid, value
    m, achieved = (lo, lo_value) if target - lo_value <= hi_value - target else (hi, hi_value)
    return Selection(member(m)[0], target, achieved, m / size)


def select_ladder(x, size: int, targets: Sequence[float], metric: str = "vendi_q1", **kw) -> list[Selection]:
    """One subset per target (e.g. one per diversity level)."""
    return [select_to_target(x, size, t, metric, **kw) for t in targets]
