"""Diversity-targeted selection: farthest-point and cluster subsets vs numpy references, and
subsets that hit a target (ladder) of the scoring kernel's Vendi score."""

import numpy as np
import pytest

from jaxdiv.generate.selection import (SelectionError, cluster_indices, farthest_point_indices, reachable_range,
                                       select_ladder, select_to_target)
from jaxdiv.score.diversity import vendi_scores


@pytest.fixture(scope="module")
def pool():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (12, 16))
    return (centres[rng.integers(0, 12, 400)] + rng.normal(0, 0.35, (400, 16))).astype(np.float32)


def _unit64(x):
    x = x.astype(np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_farthest_point_matches_a_float64_greedy_reference(pool):
    got = farthest_point_indices(pool, 40, first=3)
    x = _unit64(pool)
    chosen = [3]
    nearest = 1 - x @ x[3]
    nearest[3] = -np.inf
    for _ in range(39):
        pick = int(np.argmax(nearest))
        chosen.append(pick)
        nearest = np.minimum(nearest, 1 - x @ x[pick])
        nearest[chosen] = -np.inf
    assert got.tolist() == chosen


def test_cluster_subset_is_the_anchor_neighbourhood(pool):
    got = cluster_indices(pool, 30, anchors=1, seed=4)
    x = _unit64(pool)
    anchor = got[0]
    assert set(got.tolist()) == set(np.argsort(-(x @ x[anchor]))[:30].tolist())
    two = cluster_indices(pool, 30, anchors=2, seed=4)
    assert len(set(two.tolist())) == 30


def test_selection_spans_low_to_high_and_hits_a_ladder(pool):
    size = 60
    low = vendi_scores(pool[cluster_indices(pool, size)])["vendi_q1"]
    rand = vendi_scores(pool[np.random.default_rng(1).choice(400, size, replace=False)])["vendi_q1"]
    high = vendi_scores(pool[farthest_point_indices(pool, size)])["vendi_q1"]
    assert low < rand < high
    assert reachable_range(pool, size) == pytest.approx((low, high), rel=1e-5)
    targets = np.linspace(low, high, 5)[1:-1]
    ladder = select_ladder(pool, size, targets)
    for target, selection in zip(targets, ladder):
        assert len(set(selection.indices.tolist())) == size
        measured = vendi_scores(pool[selection.indices])["vendi_q1"]
        assert measured == pytest.approx(selection.achieved, rel=1e-5)
        assert abs(measured - target) <= 0.05 * (high - low)
    assert [s.farthest_share for s in ladder] == sorted(s.farthest_share for s in ladder)
    with pytest.raises(SelectionError, match="outside what 60-row subsets"):
        select_to_target(pool, size, high * 2)
    with pytest.raises(SelectionError, match="subset size 1"):
        farthest_point_indices(pool, 1)
