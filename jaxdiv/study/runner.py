"""`jaxdiv run`: the whole study, top to bottom.

    task  -> one synthetic pool per diversity level        (generate)
          -> every pool's metrics                           (score)
          -> one training set per cell (budget x proportion x level x seed)   (mix)
          -> its metrics, then a fine-tuned model per cell, vmapped in groups (score, train)
          -> results.parquet, pools.parquet, report/        (report)

Every stage's output is stored under the study directory, keyed by a content hash of
everything it depends on. Re-running a finished study only rewrites the tables and the
report; adding a level, proportion, budget or seed computes only the new pools and
cells; a killed study resumes (pools resume row by row, training groups resume from
their orbax checkpoints, finished cells are never trained again).

Cells with proportion 0 hold real rows only, so they do not depend on the level: each
(budget, seed) is trained once and reported at every level as the real-data baseline.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import datasets
import pandas as pd
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.data.pool import Pool
from jaxdiv.data.tasks import Task, load_task
from jaxdiv.generate.config import GenerateConfig
from jaxdiv.io import atomic_write_bytes, atomic_write_text
from jaxdiv.mix.mixture import Cell, Mixture, build_mixture
from jaxdiv.report.report import write_report
from jaxdiv.study.config import StudyConfig

RESULT_FILE = "results.parquet"
POOLS_FILE = "pools.parquet"


def _key(*parts: Any) -> str:
    """Content hash of configs and values: the cache key of a stage's output."""
    return configlib.content_hash([configlib.to_dict(p) if dataclasses.is_dataclass(p) else p for p in parts])


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=1, default=float))


# ---------------------------------------------------------------------------
# Generate: one pool per level.

def generation_config(cfg: StudyConfig, level: int, workdir: Path):
    generate = cfg.generate
    return dataclasses.replace(
        generate, task=cfg.task, recipe=dataclasses.replace(generate.recipe, level=level),
        n=cfg.grid.pool_rows, seed=cfg.seed, workdir=str(workdir))


def ensure_pools(cfg: StudyConfig, workdir: Path, progress: bool) -> dict[int, tuple[Pool, str]]:
    """{level: (pool, pool key)}. Loads the generator only if some pool is unfinished."""
    from jaxdiv.generate.runner import run_generate

    pools, backend = {}, None
    for level in cfg.grid.levels:
        key = _key(dataclasses.replace(generation_config(cfg, level, Path()), workdir=""))
        directory = workdir / "pools" / f"D{level}-{key}"
        if not Pool.is_complete(directory, cfg.grid.pool_rows):
            if backend is None:
                backend = make_generator_backend(cfg.generate)
            run_generate(generation_config(cfg, level, directory), backend=backend, progress=progress)
        pools[level] = (Pool.open(directory), key)
    return pools


def make_generator_backend(generate: GenerateConfig):
    """The generate section's backend (the JAX generator on its mesh, or an HTTP server's client)."""
    from jaxdiv.generate.backends import make_backend
    from jaxdiv.sharding import make_mesh

    return make_backend(generate, mesh=make_mesh(generate.mesh) if generate.backend == "jax" else None)


# ---------------------------------------------------------------------------
# Score: pools and training sets, through one lazily loaded embedder.

class Scorer:
    """Scores row sets against the real task, caching each report under the study directory.
    `cfg`: any job config with `task` and `score` sections (a StudyConfig, a SelfConsumeConfig)."""

    def __init__(self, cfg: StudyConfig, task: Task, workdir: Path):
        self.cfg = dataclasses.replace(cfg.score, task=cfg.task)
        self.task = task
        self.directory = workdir / "scores"
        self._embedder = None

    def score(self, texts: list[str], labels: list[str], *, bootstrap: int, parse_failures: int = 0,
              progress: bool = False) -> dict:
        from jaxdiv.score.suite import score_pool

        cfg = dataclasses.replace(self.cfg, bootstrap=dataclasses.replace(self.cfg.bootstrap, samples=bootstrap))
        path = self.directory / f"{_key(cfg, sorted(zip(texts, labels)), parse_failures)}.json"
        if (cached := _read_json(path)) is not None:
            return cached
        if self._embedder is None:
            from jaxdiv.score.embed import Embedder

            self._embedder = Embedder(cfg.embedder, cfg.mesh)
        report = score_pool(texts, labels, real=self.task, cfg=cfg, embedder=self._embedder,
                            parse_failures=parse_failures, progress=progress)
        _write_json(path, report)
        return report


def metric_columns(report: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}{entry['metric']}": entry["value"] for entry in report["metrics"]}


def pool_table(cfg: StudyConfig, task: Task, pools: dict[int, tuple[Pool, str]],
               accepted_rows: dict[int, datasets.Dataset], scorer: Scorer, progress: bool) -> pd.DataFrame:
    rows = []
    for level, (pool, key) in tqdm(pools.items(), desc="score pools", unit="pool", disable=not progress):
        accepted = accepted_rows[level]
        counts = pool.counts()
        names = [task.label_names[i] for i in accepted["label"]]
        report = scorer.score(accepted["text"], names, bootstrap=cfg.score.bootstrap.samples,
                              parse_failures=counts["rows"] - counts["accepted"])
        intervals = {f"{e['metric']}_ci": f"[{e['ci_low']:.3g}, {e['ci_high']:.3g}]"
                     for e in report["metrics"] if e["ci_low"] is not None
                     and e["metric"] in ("vendi_q1", "dcscore", "mmd2")}
        rows.append({"level": f"D{level}", "pool": key, "rows": counts["rows"], "accepted": counts["accepted"],
                     **metric_columns(report, ""), **intervals})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------
# Mix and train: every cell of the grid.

@dataclasses.dataclass
class PlannedCell:
    level: int
    cell: Cell
    key: str  # content hash of everything the cell's result depends on

    @property
    def shared(self) -> bool:
        return self.cell.proportion == 0.0


def plan_cells(cfg: StudyConfig, pools: dict[int, tuple[Pool, str]]) -> list[PlannedCell]:
    base = _key(cfg.task, cfg.mix, dataclasses.replace(cfg.train, workdir="", seed=0), cfg.score,
                *([list(cfg.test_domains)] if cfg.test_domains else []))  # keys without domains unchanged
    planned = []
    for level in cfg.grid.levels:
        for budget in cfg.grid.budgets:
            for proportion in cfg.grid.proportions:
                for seed in cfg.grid.seeds:
                    cell = Cell(budget=budget or None, proportion=float(proportion), seed=seed)
                    pool_key = "real-only" if proportion == 0.0 else pools[level][1]
                    planned.append(PlannedCell(level, cell, _key(base, pool_key, dataclasses.asdict(cell))))
    return planned


def train_cells(cfg: StudyConfig, task: Task, accepted: dict[int, datasets.Dataset], planned: list[PlannedCell],
                scorer: Scorer, workdir: Path, progress: bool) -> dict[str, dict]:
    """{cell key: result}. Finished cells are read back; the rest are mixed, scored, and trained
    in vmapped groups of at most `train_group_size` that share shapes."""
    from jaxdiv.train.runs import RunSpec, train_classifier_runs

    cells_dir = workdir / "cells"
    eval_splits = evaluation_splits(cfg, task)
    results: dict[str, dict] = {}
    todo: dict[str, tuple[PlannedCell, Mixture, dict]] = {}
    for item in tqdm(planned, desc="mix + score cells", unit="cell", disable=not progress):
        if item.key in results or item.key in todo:
            continue  # a real-only cell shared by several levels
        if (done := _read_json(cells_dir / f"{item.key}.json")) is not None:
            results[item.key] = done
            continue
        mixture = build_mixture(task.splits["train"], accepted[item.level], task.label_names, item.cell, cfg.mix)
        names = [task.label_names[i] for i in mixture.rows["label"]]
        report = scorer.score(mixture.rows["text"], names, bootstrap=cfg.mixture_bootstrap)
        mixture.save(cells_dir / f"{item.key}.mixture")
        todo[item.key] = (item, mixture, report)

    # Cells of one budget have the same number of rows: group them so each group is one program.
    pending = sorted(todo.values(), key=lambda t: (t[1].rows.num_rows, t[0].key))
    group_size = cfg.train_group_size
    groups = [pending[i:i + group_size] for i in range(0, len(pending), group_size)]
    for number, group in enumerate(groups, 1):
        if progress:
            print(f"train group {number}/{len(groups)}: {len(group)} cells, "
                  f"{group[0][1].rows.num_rows} rows each", flush=True)
        group_key = _key([item.key for item, _, _ in group])
        runs = [RunSpec(train_rows=mixture.rows, seed=item.cell.seed, name=item.key)
                for item, mixture, _ in group]
        train_cfg = dataclasses.replace(cfg.train, task=cfg.task)
        started = time.perf_counter()
        outcomes = train_classifier_runs(train_cfg, runs, eval_splits,
                                         workdir / "train" / group_key, label_names=task.label_names)
        seconds = (time.perf_counter() - started) / len(group)
        for (item, mixture, report), outcome in zip(group, outcomes):
            result = {"cell": dataclasses.asdict(item.cell), "counts": mixture.counts,
                      "shortfalls": mixture.shortfalls, "test": outcome["eval"]["test"],
                      "test_domains": domain_results(cfg, outcome["eval"]),
                      "steps": outcome["steps"], "train_seconds": seconds,
                      "data_metrics": metric_columns(report, "data_")}
            _write_json(cells_dir / f"{item.key}.json", result)
            results[item.key] = result
    return results


# In- and out-of-distribution evaluation: every cell is also tested on the test domains' test splits.

def evaluation_splits(cfg: StudyConfig, task: Task) -> dict[str, datasets.Dataset]:
    """{"test": the task's test split, "test/<domain>": each test domain's}. A domain is a registered
    task split with the task section's settings; its label names must equal the task's."""
    splits = {"test": task.splits["test"]}
    for domain in cfg.test_domains:
        other = task if domain == task.name else load_task(dataclasses.replace(cfg.task, name=domain))
        if other.label_names != task.label_names:
            raise configlib.ConfigError(f"test_domains: {domain!r} has labels {list(other.label_names)}, the "
                                        f"training task {task.name!r} has {list(task.label_names)}")
        splits[f"test/{domain}"] = other.splits["test"]
    return splits


def domain_results(cfg: StudyConfig, evals: dict[str, dict]) -> dict[str, dict]:
    return {domain: evals[f"test/{domain}"] for domain in cfg.test_domains}


def domain_accuracy_columns(task: Task, result: dict) -> dict[str, float]:
    """accuracy_<domain> per test domain, accuracy_id (the training task's own test split) and
    accuracy_ood (the mean over the other domains); none when the study names no test domains."""
    domains = result.get("test_domains") or {}
    if not domains:
        return {}
    ood = [metrics["accuracy"] for domain, metrics in domains.items() if domain != task.name]
    return {**{f"accuracy_{domain}": metrics["accuracy"] for domain, metrics in domains.items()},
            "accuracy_id": result["test"]["accuracy"],
            "accuracy_ood": sum(ood) / len(ood) if ood else float("nan")}


def results_table(cfg: StudyConfig, task: Task, planned: list[PlannedCell], results: dict[str, dict]
                  ) -> pd.DataFrame:
    config_hash = configlib.config_hash(dataclasses.replace(cfg, workdir=""))  # the experiment, not its place
    rows = []
    for item in planned:
        result = results[item.key]
        rows.append({"task": task.name, "level": f"D{item.level}", "recipe": cfg.generate.recipe.name,
                     "budget": item.cell.budget, "proportion": item.cell.proportion, "seed": item.cell.seed,
                     "protocol": cfg.mix.protocol, "real_rows": sum(result["counts"]["real"].values()),
                     "synthetic_rows": sum(result["counts"]["synthetic"].values()),
                     "accuracy": result["test"]["accuracy"], "macro_f1": result["test"]["macro_f1"],
                     "test_loss": result["test"]["loss"], "train_steps": result["steps"],
                     "train_seconds": result["train_seconds"], **domain_accuracy_columns(task, result),
                     **result["data_metrics"],
                     "cell": item.key, "config_hash": config_hash})
    frame = pd.DataFrame(rows)
    frame["budget"] = frame["budget"].astype("Int64")  # None (all labels) stays missing
    return frame


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Parquet (typed, for code) and CSV (for people), each written atomically."""
    atomic_write_bytes(path, frame.to_parquet(index=False))
    atomic_write_text(path.with_suffix(".csv"), frame.to_csv(index=False))


# ---------------------------------------------------------------------------

def run_study(cfg: StudyConfig, progress: bool = True) -> Path:
    """Run (or resume, or just re-report) the study; returns the report's path."""
    workdir = Path(cfg.workdir)
    configlib.save_config(cfg, workdir)
    timings: dict[str, float] = {}

    def timed(stage: str, started: float) -> None:
        timings[stage] = round(time.perf_counter() - started, 2)
        if progress:
            print(f"[{stage}: {timings[stage]:.1f} s]", flush=True)

    started = time.perf_counter()
    task = load_task(cfg.task)
    pools = ensure_pools(cfg, workdir, progress)
    timed("generate", started)
    started = time.perf_counter()
    scorer = Scorer(cfg, task, workdir)
    accepted = {level: pool.accepted() for level, (pool, _) in pools.items()}  # read each pool once
    write_table(pool_table(cfg, task, pools, accepted, scorer, progress), workdir / POOLS_FILE)
    timed("score pools", started)
    started = time.perf_counter()
    planned = plan_cells(cfg, pools)
    results = train_cells(cfg, task, accepted, planned, scorer, workdir, progress)
    write_table(results_table(cfg, task, planned, results), workdir / RESULT_FILE)
    timed("mix, score and train cells", started)
    started = time.perf_counter()
    report = write_report(workdir)
    timed("report", started)
    _write_json(workdir / "timings.json", timings)
    return report
