"""The whole metric suite on one pool: `score_pool(texts, labels, real=task, cfg=...) -> report`.

The report is a JSON-ready dict: one entry per metric (family, value, confidence interval,
subsample bias, whether the metric is biased under subsampling, n), the embedder's weights hash,
the resolved config, `info` (settings that explain the numbers: self-BLEU's reference count,
the MMD bandwidth, the label probe's accuracy on the real test split), and `rejections` (a
generated pool's rows rejected per reason, parse failures and quality gates, with their share of
all its rows).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.data.tasks import Task
from jaxdiv.score.bootstrap import biased_under_subsampling, half_sample_intervals
from jaxdiv.score.complexity import complexity_metrics
from jaxdiv.score.config import BootstrapConfig, ScoreConfig
from jaxdiv.score.diversity import check_embeddings, embedding_diversity
from jaxdiv.score.embed import Embedder
from jaxdiv.score.lexical import lexical_metrics, self_bleu_rows
from jaxdiv.score.errors import ScoreError
from jaxdiv.score.quality import exact_duplicate_rate, predict, train_probe
from jaxdiv.score.shift import ShiftReference, median_bandwidth
from jaxdiv.sharding import make_mesh


def label_ids(labels: Sequence[str], label_names: Sequence[str], source: str = "pool") -> np.ndarray:
    """Label strings -> indices into `label_names` (a name, or an index written as digits)."""
    index = {name: i for i, name in enumerate(label_names)}
    out = np.empty(len(labels), np.int32)
    for row, label in enumerate(labels):
        if label in index:
            out[row] = index[label]
        elif label.isdigit() and int(label) < len(label_names):
            out[row] = int(label)
        else:
            raise ScoreError(f"{source}: row {row} has label {label!r}, not one of {list(label_names)}")
    return out


def score_pool(texts: Sequence[str], labels: Sequence[str] | None = None, *, real: Task | None = None,
               cfg: ScoreConfig = ScoreConfig(), embedder: Embedder | None = None,
               embeddings: np.ndarray | None = None, parse_failures: int = 0,
               rejected: int | None = None, rejections: dict[str, int] | None = None,
               progress: bool = True) -> dict:
    """Score a pool of texts (optionally labelled) against an optional real task.

    `rejected`: rows left out of the texts for any reason (default `parse_failures`, as in a
    plain table where a row is left out only when it does not parse); `parse_failures`: those
    whose output could not be parsed at all. Both are reported as shares of all rows. `rejections`
    ({reason: rows}, a generated pool's `Pool.reasons()`) go into the report with their shares."""
    texts = list(texts)
    n = len(texts)
    if n < 2:
        raise ScoreError(f"a pool needs at least 2 scorable texts to measure diversity, got {n}")
    embedder = embedder or Embedder(cfg.embedder, cfg.mesh)
    x = embedder.embed(texts, progress=progress) if embeddings is None else np.asarray(embeddings, np.float32)
    check_embeddings(x, "pool embeddings")  # once here; the half-samples reuse checked rows
    mesh = make_mesh(cfg.mesh)
    info: dict[str, float | str | bool] = {}
    rows_for_bleu = self_bleu_rows(n, cfg.lexical)
    info["self_bleu_sampled"] = bool(len(rows_for_bleu) < n)
    info["self_bleu_texts"] = int(len(rows_for_bleu))

    ids = None
    if real is not None:
        train = real.splits["train"]
        real_x = embedder.embed(train["text"], progress=progress)
        real_y = np.asarray(train["label"], np.int32)
        sigma = median_bandwidth(x, real_x, cfg.shift.median_sample, cfg.shift.seed)
        info["mmd_bandwidth"] = sigma
        ids = None if labels is None else label_ids(labels, real.label_names)
        # the real side of the shift metrics: computed once, for the pool and all its half-samples
        reference = ShiftReference(real_x, sigma, None if ids is None else real_y, real.label_names, cfg.shift)
        if ids is not None:
            probe = train_probe(real_x, real_y, real.num_labels, cfg.quality)
            agree = predict(probe, x) == ids
            test = real.splits["test"]
            info["probe_test_accuracy"] = float(np.mean(
                predict(probe, embedder.embed(test["text"], progress=progress)) == np.asarray(test["label"])))

    families: dict[str, str] = {}

    def set_metrics(rows: np.ndarray) -> dict[str, float]:
        subset = [texts[i] for i in rows]
        groups = {"embedding": embedding_diversity(x[rows], cfg.diversity, mesh=mesh, check=False),
                  "lexical": lexical_metrics(subset, cfg.lexical),
                  "complexity": complexity_metrics(subset),
                  "quality": {"exact_duplicate_rate": exact_duplicate_rate(subset)}}
        groups["quality"]["near_duplicate_rate"] = groups["embedding"].pop("near_duplicate_rate")
        if real is not None:
            groups["shift"] = reference.metrics(x[rows], None if ids is None else ids[rows])
            if ids is not None:
                groups["quality"]["label_fidelity"] = float(np.mean(agree[rows]))
        out = {}
        for family, values in groups.items():
            for name, value in values.items():
                families.setdefault(name, family)
                out[name] = float(value)
        return out

    full = set_metrics(np.arange(n))
    bar_cfg = cfg.bootstrap
    with tqdm(total=bar_cfg.samples, desc="confidence intervals", unit="half-sample",
              disable=not progress or bar_cfg.samples == 0) as bar:
        def counted(rows):
            result = set_metrics(rows)
            bar.update()
            return result

        intervals = half_sample_intervals(counted, n, full, bar_cfg)

    metrics = [_entry(name, families[name], value, intervals.get(name), n, bar_cfg)
               for name, value in full.items()]
    rejected = parse_failures if rejected is None else rejected
    total = n + rejected
    metrics.append(_entry("rejected_share", "quality", rejected / total, None, total, bar_cfg))
    metrics.append(_entry("parse_failure_share", "quality", parse_failures / total, None, total, bar_cfg))
    return {"n": n, "n_rows": total, "real_task": real.name if real is not None else None,
            "rejections": {reason: {"rows": count, "share": count / total}
                           for reason, count in sorted((rejections or {}).items())},
            "embedder": {"model": cfg.embedder.model, "weights_hash": embedder.model_hash,
                         "max_length": cfg.embedder.max_length},
            "config_hash": configlib.config_hash(cfg), "config": configlib.to_dict(cfg),
            "info": info, "metrics": metrics}


def _entry(name: str, family: str, value: float, interval: dict | None, n: int,
           cfg: BootstrapConfig) -> dict:
    return {"metric": name, "family": family, "value": value,
            "ci_low": interval["ci_low"] if interval else None,
            "ci_high": interval["ci_high"] if interval else None,
            "ci_level": cfg.level if interval else None,
            "subsample_bias": interval["subsample_bias"] if interval else None,
            "biased_under_subsampling": biased_under_subsampling(name), "n": n}


def metric_values(report: dict) -> dict[str, float]:
    """{metric: value} of a report (what a study table wants)."""
    return {entry["metric"]: entry["value"] for entry in report["metrics"]}
