"""`jaxdiv run`: the whole study, top to bottom.

    task  -> pools: one per (level, budget, real subset, generation seed)      (generate)
          -> sources: each level's synthetic rows at equal n per class: a prompt pool's
             first rows, or a subset selected from one large pool                (mix.select)
          -> every source's metrics                                            (score)
          -> one training set per cell, its metrics, a fine-tuned model per cell,
             vmapped in groups                                                  (mix, score, train)
          -> results.parquet, pools.parquet, accepted_rows.parquet, report/    (report)

A pool's few-shot demonstrations come from its cell's real rows (run_generate's real_budget =
the budget, real_subset = the subset seed), so pools are keyed by budget and subset as well as
level and generation seed; pools with equal keys are shared. Levels compared with each other
hold the same number of synthetic rows per class: a pool short of accepted rows in a class is
generated further (a pool's identity leaves out n, so it keeps its rows), up to
grid.max_pool_rows, and then grid.short_pools decides (an error, or shrink: recorded per row).

Every stage's output is stored under the study directory, keyed by a content hash of
everything it depends on (`jaxdiv.study.cache`). Re-running a finished study only rewrites the
tables and the report; adding a level, proportion, budget or seed computes only the new pools and
cells; a killed study resumes (pools resume row by row, training groups resume from
their orbax checkpoints, finished cells are never trained again).

Cells with proportion 0 hold real rows only: they depend on neither the level, the generation
seed nor the protocol, so each (budget, subset, seed) is trained once and appears once in the
results, as level "real-only" (mechanism "real", protocol "", gen_seed missing, pool "").
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.data.pool import ACCEPTED, Pool
from jaxdiv.data.tasks import Task, load_task
from jaxdiv.errors import JaxdivError
from jaxdiv.generate.config import GenerateConfig
from jaxdiv.io import atomic_write_bytes, atomic_write_text
from jaxdiv.mix.mixture import Cell, Mixture, build_mixture
from jaxdiv.report.report import write_report
from jaxdiv.score.config import ScoreConfig
from jaxdiv.study.cache import content_key, read_json, write_json
from jaxdiv.study.config import StudyConfig

RESULT_FILE = "results.parquet"
POOLS_FILE = "pools.parquet"
ACCEPTED_FILE = "accepted_rows.parquet"
REAL_ONLY = "real-only"


class StudyError(JaxdivError, ValueError):
    """The grid cannot be filled as configured; the message names the cell, level and class."""


# ---------------------------------------------------------------------------
# Generate: one pool per (level, budget, subset, generation seed), with enough rows per class.

@dataclasses.dataclass(frozen=True)
class Replicate:
    """What the levels of one comparison share: the real rows (budget, subset) their pools'
    demonstrations come from, and the generation seed (the pool replicate)."""

    budget: int  # a grid budget (0: all)
    subset: int
    gen_seed: int

    def name(self) -> str:
        return f"b{self.budget or 'all'}-r{self.subset}-g{self.gen_seed}"


def replicates(cfg: StudyConfig) -> list[Replicate]:
    grid = cfg.grid
    return [Replicate(b, s, g) for b in grid.budgets for s in grid.subsets for g in grid.generation_seeds]


def generation_config(cfg: StudyConfig, level: int) -> GenerateConfig:
    """The generate section at one diversity level."""
    return dataclasses.replace(cfg.generate, recipe=dataclasses.replace(cfg.generate.recipe, level=level))


def synthetic_need(cfg: StudyConfig, task: Task, budget: int) -> tuple[int, ...]:
    """Synthetic rows per class (label id order) that the replicate's cells draw on: the most any
    proportion asks, round(p x b), b the budget or, for budget 0, the class's real rows."""
    class_rows = collections.Counter(task.splits["train"]["label"])
    top = max(cfg.grid.proportions)
    return tuple(round(top * (budget or class_rows[label])) for label in range(len(task.label_names)))


def accepted_per_class(pool: Pool, label_names: tuple[str, ...]) -> tuple[int, ...]:
    counts = collections.Counter(row["parsed_label"] for row in pool.rows() if row["status"] == ACCEPTED)
    return tuple(counts[name] for name in label_names)


@dataclasses.dataclass
class PoolSlot:
    """One generated pool in the grid."""

    level: int
    replicate: Replicate
    pool: Pool
    key: str  # content hash of its generation settings, n left out


def ensure_pools(cfg: StudyConfig, task: Task, workdir: Path, progress: bool) -> dict[tuple[int, Replicate], PoolSlot]:
    """Every pool the grid uses, generated (or resumed, or extended) until each class holds the
    rows its cells need or the pool reaches grid.max_pool_rows. The generator loads only if
    some pool needs rows."""
    from jaxdiv.generate.runner import run_generate

    grid, generator = cfg.grid, None
    planned: dict[int, int] = {}  # level -> rows first planned
    if max(grid.proportions) == 0:
        return {}  # a real-only study
    if "prompt" in grid.mechanisms:
        planned.update({level: grid.pool_rows for level in grid.levels})
    if "select" in grid.mechanisms:
        planned[grid.select_level] = max(planned.get(grid.select_level, 0), grid.select_pool_rows)
    cap = grid.max_pool_rows if cfg.generate.recipe.name != "paraphrase" else None
    slots = {}
    for replicate in replicates(cfg):
        need = synthetic_need(cfg, task, replicate.budget)
        for level, rows in planned.items():
            settings = generation_config(cfg, level)
            key = content_key(settings, cfg.task, replicate)  # n left out: an extended pool keeps its key
            directory = workdir / "pools" / f"D{level}-{replicate.name()}-{key}"
            while rows:
                if not Pool.is_complete(directory, rows):
                    if generator is None:
                        generator = make_generator_backend(cfg.generate)
                    run_generate(settings, task=cfg.task, n=rows, workdir=directory, seed=replicate.gen_seed,
                                 real_budget=replicate.budget, real_subset=replicate.subset, backend=generator,
                                 progress=progress)
                pool = Pool.open(directory)
                have = accepted_per_class(pool, task.label_names)
                rows = next_pool_rows(len(pool), have, need, cap or rows)
                if rows and progress:
                    print(f"pool {directory.name}: extending to {rows} rows (accepted per class {list(have)}, "
                          f"needed {list(need)})", flush=True)
            slots[level, replicate] = PoolSlot(level, replicate, pool, key)
    return slots


def next_pool_rows(rows: int, have: tuple[int, ...], need: tuple[int, ...], cap: int) -> int:
    """The size to extend a pool of `rows` rows to: enough, at each class's acceptance rate so far
    (plus a tenth), for its shortest class, at most `cap`; 0 when no class is short or at the cap."""
    ratio = max((Fraction(w, max(h, 1)) for h, w in zip(have, need) if h < w), default=0)  # exact
    return 0 if not ratio or rows >= cap else min(cap, max(rows + 1, math.ceil(rows * ratio * Fraction(11, 10))))


def make_generator_backend(generate: GenerateConfig):
    """The generate section's backend (the JAX generator on its mesh, or an HTTP server's client)."""
    from jaxdiv.generate.backends import make_backend
    from jaxdiv.sharding import make_mesh

    return make_backend(generate, mesh=make_mesh(generate.mesh) if generate.backend == "jax" else None)


# ---------------------------------------------------------------------------
# Score: pools and training sets, through one lazily loaded embedder.

class Scorer:
    """Scores row sets against the real task, caching each report under the study directory."""

    def __init__(self, cfg: ScoreConfig, task: Task, workdir: Path):
        self.cfg = cfg
        self.task = task
        self.directory = workdir / "scores"
        self._embedder = None

    @property
    def embedder(self):
        """The score section's embedder, loaded on first use."""
        if self._embedder is None:
            from jaxdiv.score.embed import Embedder

            self._embedder = Embedder(self.cfg.embedder, self.cfg.mesh)
        return self._embedder

    def score(self, texts: list[str], labels: list[str], *, bootstrap: int, pool: Pool | None = None,
              progress: bool = False) -> dict:
        """The score report of these rows; `pool`: the generated pool they are the accepted rows of
        (its rejected rows, parse failures and rejection reasons go into the report)."""
        from jaxdiv.score.suite import score_pool

        cfg = dataclasses.replace(self.cfg, bootstrap=dataclasses.replace(self.cfg.bootstrap, samples=bootstrap))
        left_out = {}
        if pool is not None:
            counts = pool.counts()
            left_out = {"rejected": counts["rejected"], "parse_failures": pool.parse_failures(),
                        "rejections": counts["reasons"]}
        path = self.directory / f"{content_key(cfg, sorted(zip(texts, labels)), left_out)}.json"
        if (cached := read_json(path)) is not None:
            return cached
        report = score_pool(texts, labels, real=self.task, cfg=cfg, embedder=self.embedder, **left_out,
                            progress=progress)
        write_json(path, report)
        return report


# ---------------------------------------------------------------------------
# Sources: each level's synthetic rows, at the same rows per class across the levels compared.

@dataclasses.dataclass
class Source:
    """The synthetic rows that serve one level of one replicate."""

    level: str  # D<level> (prompt) or S<rank of measured diversity> (select)
    mechanism: str  # prompt | select
    replicate: Replicate
    slot: PoolSlot  # the pool the rows come from (select: the large pool)
    key: str  # the pool's key (prompt) or the subset's (select): the `pool` column of every table
    rows: datasets.Dataset  # accepted rows, exactly `per_class` of each class
    per_class: tuple[int, ...]
    fallback: str  # "" or what short_pools=shrink did
    selection: dict[str, Any] = dataclasses.field(default_factory=dict)  # select: position, measured

    @property
    def rows_key(self) -> str:
        """Content hash of exactly the rows the cells draw on."""
        return content_key(self.key, sorted(self.rows["id"]))


def equal_n(cfg: StudyConfig, task: Task, slots: list[PoolSlot]) -> tuple[tuple[int, ...], str]:
    """(rows per class, fallback) for pools compared with each other. Each class takes what its
    cells need; a class some pool is short of is an error, or with short_pools=shrink the
    smallest count any of the pools has (the fallback names each such class)."""
    replicate = slots[0].replicate
    need = synthetic_need(cfg, task, replicate.budget)
    have = {slot.level: accepted_per_class(slot.pool, task.label_names) for slot in slots}
    take, shrunk = [], []
    for label, name in enumerate(task.label_names):
        smallest = min(counts[label] for counts in have.values())
        if smallest >= need[label]:
            take.append(need[label])
            continue
        level = min(have, key=lambda lv: have[lv][label])
        pool = next(slot.pool for slot in slots if slot.level == level)
        if cfg.grid.short_pools == "error":
            raise StudyError(
                f"cells of budget {replicate.budget or 'all'}, real subset {replicate.subset}, generation seed "
                f"{replicate.gen_seed}: level D{level}, class {name!r} has {smallest} accepted synthetic rows, "
                f"needs {need[label]} (pool of {len(pool)} rows, grid.max_pool_rows={cfg.grid.max_pool_rows}); "
                f"raise grid.max_pool_rows or set grid.short_pools=shrink")
        take.append(smallest)
        shrunk.append(f"{name} {smallest}/{need[label]}")
    return tuple(take), ("shrink: " + ", ".join(shrunk) if shrunk else "")


def first_rows_per_class(accepted: datasets.Dataset, per_class: tuple[int, ...]) -> datasets.Dataset:
    """Each class's first rows in generation order: extending a pool appends rows, so these stay put."""
    order = np.argsort(accepted["row"], kind="stable")
    labels, taken, keep = accepted["label"], collections.Counter(), []
    for index in order:
        if taken[labels[index]] < per_class[labels[index]]:
            taken[labels[index]] += 1
            keep.append(int(index))
    return accepted.select(sorted(keep))


def build_sources(cfg: StudyConfig, task: Task, slots: dict[tuple[int, Replicate], PoolSlot], scorer: Scorer,
                  workdir: Path, progress: bool) -> list[Source]:
    grid, sources = cfg.grid, []
    for replicate in replicates(cfg) if slots else ():
        if "prompt" in grid.mechanisms:
            compared = [slots[level, replicate] for level in grid.levels]
            per_class, fallback = equal_n(cfg, task, compared)
            sources += [Source(f"D{slot.level}", "prompt", replicate, slot, slot.key,
                               first_rows_per_class(slot.pool.accepted(), per_class), per_class, fallback)
                        for slot in compared]
        if "select" in grid.mechanisms:
            slot = slots[grid.select_level, replicate]
            per_class, fallback = equal_n(cfg, task, [slot])
            sources += selected_sources(cfg, task, slot, per_class, fallback, scorer, workdir, progress)
    return sources


def selected_sources(cfg: StudyConfig, task: Task, slot: PoolSlot, per_class: tuple[int, ...], fallback: str,
                     scorer: Scorer, workdir: Path, progress: bool) -> list[Source]:
    """The select mechanism: one subset per grid.select_positions from the large pool, each with
    `per_class` rows per class, named S0.. by measured diversity (cached by the rows they come from)."""
    from jaxdiv.mix.select import SELECT_METRIC, select_subsets

    accepted = slot.pool.accepted()
    key = content_key(slot.key, sorted(accepted["id"]), per_class, cfg.grid.select_positions, SELECT_METRIC,
                      cfg.score.embedder, cfg.score.diversity)
    path = workdir / "selections" / f"{key}.json"
    if (made := read_json(path)) is None:
        embeddings = scorer.embedder.embed(accepted["text"], progress=progress)
        subsets = select_subsets(embeddings, accepted["label"], task.label_names, per_class,
                                 cfg.grid.select_positions, SELECT_METRIC, cfg.score.diversity)
        made = {"subsets": [{"name": s.name, "position": s.position, "measured": s.measured,
                             "ids": [accepted["id"][i] for i in s.indices], "per_class": s.per_class}
                            for s in subsets]}
        write_json(path, made)
    index = {row_id: i for i, row_id in enumerate(accepted["id"])}
    return [Source(subset["name"], "select", slot.replicate, slot, content_key(key, subset["position"]),
                   accepted.select(sorted(index[i] for i in subset["ids"])), per_class, fallback,
                   {"select_position": subset["position"], "select_metric": SELECT_METRIC,
                    "select_measured": subset["measured"]})
            for subset in made["subsets"]]


# ---------------------------------------------------------------------------
# Tables of the sources: their metrics (pools.parquet) and their rows (accepted_rows.parquet).

def metric_columns(report: dict, prefix: str) -> dict[str, float]:
    return {f"{prefix}{entry['metric']}": entry["value"] for entry in report["metrics"]}


def source_columns(source: Source) -> dict[str, Any]:
    """Where a source sits in the grid: the columns its pools and accepted-rows entries share."""
    replicate = source.replicate
    return {"level": source.level, "mechanism": source.mechanism, "budget": replicate.budget or None,
            "subset": replicate.subset, "gen_seed": replicate.gen_seed, "pool": source.key}


def label_probe_arm(meta: dict) -> str:
    """The pool's label-fidelity probe arm (budget | oracle | off; "" for pools made before gates)."""
    return str(meta.get("gates", {}).get("label_probe", {}).get("arm", ""))


def pool_table(cfg: StudyConfig, task: Task, sources: list[Source], scorer: Scorer, progress: bool) -> pd.DataFrame:
    """One row per source, scored on the rows the cells draw on (equal n per class). A select
    subset's rows, accepted and reject_* counts are its large pool's (parent_pool)."""
    rows = []
    for source in tqdm(sources, desc="score pools", unit="pool", disable=not progress):
        pool = source.slot.pool
        counts = pool.counts()
        names = [task.label_names[i] for i in source.rows["label"]]
        report = scorer.score(source.rows["text"], names, bootstrap=cfg.score.bootstrap.samples,
                              pool=pool if source.mechanism == "prompt" else None)
        intervals = {f"{e['metric']}_ci": f"[{e['ci_low']:.3g}, {e['ci_high']:.3g}]"
                     for e in report["metrics"] if e["ci_low"] is not None
                     and e["metric"] in ("vendi_q1", "dcscore", "mmd2")}
        reasons = counts["reasons"]
        rows.append({**source_columns(source), "parent_pool": source.slot.key, "rows": counts["rows"],
                     "accepted": counts["accepted"], "used_rows": source.rows.num_rows,
                     **{"reject_" + re.sub(r"\W+", "_", reason).strip("_"): count
                        for reason, count in sorted(reasons.items())},
                     "fallback": source.fallback, "label_leak": bool(pool.meta.get("label_leak", False)),
                     "label_probe": label_probe_arm(pool.meta), **source.selection,
                     **metric_columns(report, ""), **intervals})
    return _typed(pd.DataFrame(rows))


def accepted_table(task: Task, sources: list[Source]) -> pd.DataFrame:
    """Every accepted row of every source: a prompt pool's all (used: among the equal-n rows the
    cells draw on), a select subset's own."""
    parts = []
    for source in sources:
        rows = source.slot.pool.accepted() if source.mechanism == "prompt" else source.rows
        used = set(source.rows["id"])
        parts.append(pd.DataFrame({**source_columns(source), "id": rows["id"], "text": rows["text"],
                                   "label": [task.label_names[i] for i in rows["label"]],
                                   "used": [i in used for i in rows["id"]]}))
    return _typed(pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["level"]))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Integer grid columns that may be missing (budget: all labels; gen_seed: real-only) as Int64."""
    for column in ("budget", "gen_seed"):
        if column in frame.columns:
            frame[column] = frame[column].astype("Int64")
    return frame


# ---------------------------------------------------------------------------
# Mix and train: every cell of the grid.

@dataclasses.dataclass
class PlannedCell:
    cell: Cell
    source: Source | None  # None: real-only
    key: str  # content hash of everything the cell's result depends on


def plan_cells(cfg: StudyConfig, sources: list[Source]) -> list[PlannedCell]:
    grid = cfg.grid
    base = content_key(cfg.task, cfg.mix, cfg.train, cfg.score,
                       *([list(cfg.test_domains)] if cfg.test_domains else []))  # keys without domains unchanged
    planned = [PlannedCell(cell, None, content_key(base, REAL_ONLY, dataclasses.asdict(cell)))
               for budget in grid.budgets for subset in grid.subsets for seed in grid.seeds
               if 0.0 in grid.proportions
               for cell in [Cell(budget or None, 0.0, seed, subset)]]  # the protocol does not matter at 0
    for source in sources:
        cap = source.per_class if source.fallback else None
        for protocol in grid.protocols:
            for proportion in (p for p in grid.proportions if p > 0):
                for seed in grid.seeds:
                    cell = Cell(source.replicate.budget or None, float(proportion), seed, source.replicate.subset,
                                protocol, cap)
                    key = content_key(base, source.rows_key, dataclasses.asdict(cell))
                    planned.append(PlannedCell(cell, source, key))
    return planned


def train_cells(cfg: StudyConfig, task: Task, planned: list[PlannedCell], scorer: Scorer, workdir: Path,
                progress: bool) -> dict[str, dict]:
    """{cell key: result}. Finished cells are read back; the rest are mixed, scored, and trained
    in vmapped groups of at most `train_group_size` that share shapes."""
    from jaxdiv.train.classifier import RunSpec, train_classifier_runs

    cells_dir = workdir / "cells"
    no_synthetic = task.splits["train"].select([])
    eval_splits = evaluation_splits(cfg, task)
    results: dict[str, dict] = {}
    todo: dict[str, tuple[PlannedCell, Mixture, dict]] = {}
    for item in tqdm(planned, desc="mix + score cells", unit="cell", disable=not progress):
        if item.key in results or item.key in todo:
            continue  # equal cells (e.g. two sources with the same rows)
        if (done := read_json(cells_dir / f"{item.key}.json")) is not None:
            results[item.key] = done
            continue
        synthetic = no_synthetic if item.source is None else item.source.rows
        mixture = build_mixture(task.splits["train"], synthetic, task.label_names, item.cell, cfg.mix)
        names = [task.label_names[i] for i in mixture.rows["label"]]
        report = scorer.score(mixture.rows["text"], names, bootstrap=cfg.mixture_bootstrap)
        mixture.save(cells_dir / f"{item.key}.mixture")
        todo[item.key] = (item, mixture, report)

    # Cells of one budget and protocol have the same number of rows: grouped, each group is one program.
    pending = sorted(todo.values(), key=lambda t: (t[1].rows.num_rows, t[0].key))
    group_size = cfg.train_group_size
    groups = [pending[i:i + group_size] for i in range(0, len(pending), group_size)]
    for number, group in enumerate(groups, 1):
        if progress:
            print(f"train group {number}/{len(groups)}: {len(group)} cells, "
                  f"{group[0][1].rows.num_rows} rows each", flush=True)
        group_key = content_key([item.key for item, _, _ in group])
        runs = [RunSpec(train_rows=mixture.rows, seed=item.cell.seed, name=item.key)
                for item, mixture, _ in group]
        started = time.perf_counter()
        outcomes = train_classifier_runs(cfg.train, runs, eval_splits, workdir / "train" / group_key,
                                         task=cfg.task, label_names=task.label_names)
        seconds = (time.perf_counter() - started) / len(group)
        for (item, mixture, report), outcome in zip(group, outcomes):
            result = {"cell": dataclasses.asdict(item.cell), "counts": mixture.counts,
                      "shortfalls": mixture.shortfalls, "test": outcome["eval"]["test"],
                      "test_domains": domain_results(cfg, outcome["eval"]),
                      "steps": outcome["steps"], "train_seconds": seconds,
                      "data_metrics": metric_columns(report, "data_")}
            write_json(cells_dir / f"{item.key}.json", result)
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
    """One row per trained cell (the real-only baseline once per budget, subset and seed)."""
    config_hash = configlib.config_hash(dataclasses.replace(cfg, workdir=""))  # the experiment, not its place
    rows = []
    for item in planned:
        result, cell, source = results[item.key], item.cell, item.source
        meta = {} if source is None else source.slot.pool.meta
        where = ({**source_columns(source), "protocol": cell.protocol,
                  "recipe": "select" if source.mechanism == "select" else cfg.generate.recipe.name}
                 if source else {"level": REAL_ONLY, "mechanism": "real", "gen_seed": None, "pool": "",
                                 "protocol": "", "recipe": ""})
        rows.append({"task": task.name, "level": where["level"], "mechanism": where["mechanism"],
                     "recipe": where["recipe"], "budget": cell.budget, "subset": cell.subset,
                     "gen_seed": where["gen_seed"], "seed": cell.seed, "protocol": where["protocol"],
                     "proportion": cell.proportion, "real_rows": sum(result["counts"]["real"].values()),
                     "synthetic_rows": sum(result["counts"]["synthetic"].values()),
                     "accuracy": result["test"]["accuracy"], "macro_f1": result["test"]["macro_f1"],
                     "test_loss": result["test"]["loss"], "train_steps": result["steps"],
                     "train_seconds": result["train_seconds"], "fallback": source.fallback if source else "",
                     "label_leak": bool(meta.get("label_leak", False)),
                     "label_probe": label_probe_arm(meta), "pool": where["pool"],
                     **domain_accuracy_columns(task, result), **result["data_metrics"],
                     "cell": item.key, "config_hash": config_hash})
    return _typed(pd.DataFrame(rows))


def write_table(frame: pd.DataFrame, path: Path, csv: bool = True) -> None:
    """Parquet (typed, for code) and CSV (for people), each written atomically."""
    atomic_write_bytes(path, frame.to_parquet(index=False))
    if csv:
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
    slots = ensure_pools(cfg, task, workdir, progress)
    timed("generate", started)
    started = time.perf_counter()
    scorer = Scorer(cfg.score, task, workdir)
    sources = build_sources(cfg, task, slots, scorer, workdir, progress)
    write_table(pool_table(cfg, task, sources, scorer, progress), workdir / POOLS_FILE)
    write_table(accepted_table(task, sources), workdir / ACCEPTED_FILE, csv=False)
    timed("select and score pools", started)
    started = time.perf_counter()
    planned = plan_cells(cfg, sources)
    results = train_cells(cfg, task, planned, scorer, workdir, progress)
    write_table(results_table(cfg, task, planned, results), workdir / RESULT_FILE)
    timed("mix, score and train cells", started)
    started = time.perf_counter()
    report = write_report(workdir)
    timed("report", started)
    record_timings(workdir / "timings.json", timings)
    return report


def record_timings(path: Path, timings: dict[str, float]) -> None:
    """Append this run's stage seconds to timings.json, whose top-level stage entries are the sums
    over every run in the workdir: a resumed study's cost in all, which a cached re-run (seconds)
    barely changes instead of overwriting."""
    previous = read_json(path) or {}
    runs = previous.get("runs", [previous] if previous else []) + [timings]
    totals = {stage: round(sum(run.get(stage, 0.0) for run in runs), 2) for stage in timings}
    write_json(path, {**totals, "runs": runs})
