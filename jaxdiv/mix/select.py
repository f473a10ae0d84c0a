"""Selection as a diversity mechanism: class-balanced subsets of one pool at set diversities.

From one large pool (one generator, one prompt distribution, one quality), each class's rows
are cut to exactly `per_class[c]` rows whose embedding diversity sits at a set position of
what that class's subsets can reach (`generate.selection.reachable_range`: 0 = its tightest
cluster, 1 = its farthest-point spread), by `select_to_target`. The subsets thus differ in
diversity only: same rows per class, same generator, same prompts. Each subset's diversity is
then measured on all its rows together, and the subsets are named S0, S1, ... in the order of
that measurement (S0 the least diverse), never by the position asked for.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from jaxdiv.generate.selection import SelectionError, reachable_range, select_to_target
from jaxdiv.score.config import DiversityConfig
from jaxdiv.score.diversity import vendi_scores

SELECT_METRIC = "vendi_q1"  # the selection mechanism's diversity (study and `jaxdiv select`)


@dataclasses.dataclass(frozen=True)
class Subset:
    name: str  # S<rank of the measured diversity>
    position: float  # where each class's target lies in its reachable range (0 .. 1)
    indices: np.ndarray  # into the rows that were selected from, class by class
    measured: float  # the metric over all the subset's rows
    per_class: dict[str, dict[str, float]]  # {label: target, achieved, low, high}


def select_subsets(embeddings: np.ndarray, labels: Sequence[int], label_names: Sequence[str],
                   per_class: Sequence[int], positions: Sequence[float], metric: str = SELECT_METRIC,
                   cfg: DiversityConfig = DiversityConfig()) -> list[Subset]:
    """One subset per position in [0, 1], each with exactly `per_class[c]` rows of class c,
    sorted and named by measured diversity. `embeddings` and `labels` are row-aligned."""
    if any(not 0.0 <= p <= 1.0 for p in positions):
        raise SelectionError(f"targets {list(positions)} must be positions in [0, 1] of the reachable range")
    embeddings, labels = np.asarray(embeddings, np.float32), np.asarray(labels)
    chosen: list[list[np.ndarray]] = [[] for _ in positions]
    details: list[dict[str, dict[str, float]]] = [{} for _ in positions]
    for label, (name, size) in enumerate(zip(label_names, per_class)):
        rows = np.flatnonzero(labels == label)
        if rows.size < size:
            raise SelectionError(f"class {name!r}: {rows.size} rows, {size} asked")
        if size < 2 or size == rows.size:  # nothing to choose between: every position takes the same rows
            for subset in chosen:
                subset.append(rows[:size])
            continue
        x = embeddings[rows]
        low, high = reachable_range(x, size, metric, cfg=cfg)
        for number, position in enumerate(positions):
            target = min(max(low + position * (high - low), low), high)  # rounding must not leave the range
            selection = select_to_target(x, size, target, metric, cfg=cfg)
            chosen[number].append(rows[selection.indices])
            details[number][name] = {"target": target, "achieved": selection.achieved, "low": low, "high": high}
    made = []
    for position, parts, detail in zip(positions, chosen, details):
        indices = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
        measured = vendi_scores(embeddings[indices], cfg)[metric] if indices.size >= 2 else float("nan")
        made.append((measured, position, indices, detail))
    made.sort(key=lambda item: (item[0], item[1]))
    return [Subset(f"S{rank}", position, indices, measured, detail)
            for rank, (measured, position, indices, detail) in enumerate(made)]
