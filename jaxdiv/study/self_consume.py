"""The iterative self-consumption (model-collapse) experiment: `jaxdiv run` on a SelfConsumeConfig.

    for round t = 0..T-1, for each chain (replace, mix_real):
        pool_t   = generate(G_t)             G_0 = generate.jax.model (the packaged SmolLM2 GGUF)
        metrics  = score(pool_t)             diversity, shift vs the real task, quality, with CIs
        accuracy = classify(pool_t)          one classifier per seed (vmapped), real test split
        G_{t+1}  = SFT(G_t, pool_t)          its accepted (prompt, text) pairs; mix_real adds real
                                             training rows written as completions of the same prompts;
                                             saved as an HF checkpoint dir (generators/); with LoRA
                                             (`--set sft.model.lora.rank=16`) the adapters merged in

Every round plans the same prompts with the same row seeds, so its pools differ only by their
generator. Round 0 is the same in every chain: its pool, scores and classifiers exist once.

Every stage is cached under the workdir by a content hash of all it depends on: a generator's
key chains its parent's key, the key of the pool it was fine-tuned on and the SFT settings (its
LoRA section too, as a classifier's key holds `train.model.lora`); a pool's key is its
generation settings and its generator's key (`jaxdiv.study.cache`, shared with the study). A
killed run resumes (a pool row by row, an SFT from its orbax checkpoint, finished stages never
again) and a finished run only rewrites the table and the report
(`jaxdiv.report.self_consume`).

    workdir/generators/G{t}-{chain}-{key}/   HF checkpoints (safetensors, config, tokenizer)
    workdir/pools/round{t}-{key}/            pools (rows record their generator id and weights hash)
    workdir/sft/{key}/                       SFT runs (metrics, results.json, round.json)
    workdir/scores/, cells/, train/          pool scores, classifier results and their runs
    workdir/results.parquet/.csv             one row per chain x round x seed
    workdir/report/report.md                 PNG plots of every metric across rounds, a line per chain
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.data.pool import ACCEPTED, Pool
from jaxdiv.data.tasks import Task, load_task
from jaxdiv.errors import JaxdivError
from jaxdiv.generate.config import GenerateConfig
from jaxdiv.report.self_consume import write_report
from jaxdiv.study.cache import content_key, read_json, write_json
from jaxdiv.study.config import SelfConsumeConfig
from jaxdiv.study.runner import Scorer, make_generator_backend, metric_columns, write_table
from jaxdiv.train.config import SFTConfig

RESULT_FILE = "results.parquet"
REAL_DRAW, EVAL_DRAW = 1, 2  # purposes of the seeded real-row draws


class SelfConsumeError(JaxdivError, ValueError):
    """A round cannot go on (e.g. a pool without enough accepted rows); names the chain and round."""


@dataclasses.dataclass(frozen=True)
class Generator:
    """G_t of a chain: where its weights are, and the content hash of its lineage."""

    round: int
    key: str
    path: Path  # a GGUF file (G_0) or an HF checkpoint dir written by save_hf_checkpoint


@dataclasses.dataclass
class RoundPool:
    key: str
    pool: Pool
    accepted: list[dict[str, Any]]
    seconds: float  # generation time (nan when the pool came from the cache of an older run)


# ---------------------------------------------------------------------------
# Generate.

def base_generator(cfg: SelfConsumeConfig) -> Generator:
    from jaxdiv.models.checkpoints import resolve_checkpoint, weights_hash

    path = resolve_checkpoint(cfg.generate.jax.model)
    return Generator(0, content_key("base", weights_hash(path)), path)


def generation_config(cfg: SelfConsumeConfig, generator: Generator) -> GenerateConfig:
    """The generate section with G_t as the model."""
    return dataclasses.replace(cfg.generate, jax=dataclasses.replace(cfg.generate.jax, model=str(generator.path)))


def pool_key(cfg: SelfConsumeConfig, generator: Generator) -> str:
    """The pool's content hash: G_t enters by its key (its weights), not by its path."""
    settings = dataclasses.replace(cfg.generate, jax=dataclasses.replace(cfg.generate.jax, model=""))
    return content_key(settings, cfg.task, cfg.chains.pool_rows, cfg.seed, generator.key)


def ensure_pool(cfg: SelfConsumeConfig, generator: Generator, workdir: Path, progress: bool) -> RoundPool:
    """The pool G_t generates (resuming a partial one); the backend loads only when rows are missing."""
    from jaxdiv.generate.runner import run_generate

    key = pool_key(cfg, generator)
    directory = workdir / "pools" / f"round{generator.round}-{key}"
    timing = workdir / "timings" / f"pool-{key}.json"
    if not Pool.is_complete(directory, cfg.chains.pool_rows):
        settings = generation_config(cfg, generator)
        started = time.perf_counter()
        backend = make_generator_backend(settings)
        run_generate(settings, task=cfg.task, n=cfg.chains.pool_rows, workdir=directory, seed=cfg.seed,
                     backend=backend, progress=progress)
        del backend  # free the generator's weights before the next stage
        write_json(timing, {"seconds": time.perf_counter() - started})
    pool = Pool.open(directory)
    accepted = [row for row in pool.rows() if row["status"] == ACCEPTED]
    if len(accepted) < 2:
        raise SelfConsumeError(f"round {generator.round}: pool {directory} has {len(accepted)} accepted rows "
                               f"of {len(pool)}; scoring and fine-tuning need at least 2 (raise chains.pool_rows)")
    return RoundPool(key, pool, accepted, (read_json(timing) or {}).get("seconds", math.nan))


# ---------------------------------------------------------------------------
# Real rows written as completions (mix_real's SFT rows, the SFT's held-out set).

def real_completions(task: Task, split: str, prompt_rows: list[dict[str, Any]], count: int,
                     rng: np.random.Generator, what: str) -> list[dict[str, Any]]:
    """`count` real rows of `split` (seeded draw), each paired with the prompt of a pool row that
    asked for its label and does not show it as a few-shot example: {"prompt", "response", "id", "label"}."""
    rows = task.splits[split]
    if count > rows.num_rows:
        raise SelfConsumeError(f"{what}: needs {count} real {split} rows, {task.name} has {rows.num_rows}")
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in prompt_rows:
        by_label.setdefault(row["intended_label"], []).append(row)
    out = []
    for index in sorted(rng.choice(rows.num_rows, size=count, replace=False).tolist()):
        row_id, text, label = rows[index]["id"], rows[index]["text"], rows[index]["label"]
        name = task.label_names[label]
        prompts = [r["prompt"] for r in by_label.get(name, []) if row_id not in r["few_shot_ids"]]
        if not prompts:
            raise SelfConsumeError(f"{what}: the pool has no prompt asking for label {name!r} "
                                   f"(raise chains.pool_rows)")
        out.append({"prompt": prompts[int(rng.integers(len(prompts)))], "response": text,
                    "id": row_id, "label": int(label)})
    return out


def mixed_real_rows(cfg: SelfConsumeConfig, task: Task, chain: str, round_: int, pool: RoundPool
                    ) -> list[dict[str, Any]]:
    """mix_real's real rows of a round: real_fraction of the SFT rows (none for `replace`)."""
    if chain != "mix_real":
        return []
    fraction = cfg.chains.real_fraction
    count = round(fraction / (1.0 - fraction) * len(pool.accepted))
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, round_, REAL_DRAW]))
    return real_completions(task, "train", pool.pool.rows(), count, rng, f"chain mix_real, round {round_}")


# ---------------------------------------------------------------------------
# Fine-tune: G_t -> G_{t+1}.

def sft_settings(cfg: SelfConsumeConfig, parent: Generator) -> SFTConfig:
    """The SFT section fine-tuning G_t: its checkpoint, the system turn of every pool prompt."""
    from jaxdiv.generate.recipes import SYSTEM

    sft = cfg.sft
    return dataclasses.replace(sft, model=dataclasses.replace(sft.model, checkpoint=str(parent.path)),
                               data=dataclasses.replace(sft.data, system_prompt=SYSTEM))


def generator_key(cfg: SelfConsumeConfig, chain: str, parent: Generator, pool: RoundPool) -> str:
    """G_{t+1}'s content hash: G_t enters by its key (not its path); logging and checkpointing left out."""
    settings = sft_settings(cfg, parent)
    settings = dataclasses.replace(settings, model=dataclasses.replace(settings.model, checkpoint=""),
                                   log=type(settings.log)(), checkpoint=type(settings.checkpoint)())
    mixing = {"real_fraction": cfg.chains.real_fraction} if chain == "mix_real" else {}
    return content_key(parent.key, pool.key, settings, cfg.seed, chain, mixing)


def ensure_next_generator(cfg: SelfConsumeConfig, task: Task, chain: str, parent: Generator, pool: RoundPool,
                          eval_rows: list[dict[str, Any]], workdir: Path) -> tuple[Generator, dict]:
    """G_{t+1} of a chain and its SFT record, fine-tuning only when it is not stored yet."""
    from jaxdiv.train.sft import save_merged, train_sft

    key = generator_key(cfg, chain, parent, pool)
    directory = workdir / "generators" / f"G{parent.round + 1}-{chain}-{key}"
    run_dir = workdir / "sft" / key
    record = read_json(run_dir / "round.json")
    if record is None or not (directory / "model.safetensors").is_file():
        synthetic = [{"prompt": row["prompt"], "response": row["text"]} for row in pool.accepted]
        real = mixed_real_rows(cfg, task, chain, parent.round, pool)
        started = time.perf_counter()
        result = train_sft(sft_settings(cfg, parent), synthetic + real, eval_rows, run_dir, seed=cfg.seed)
        # adapters (sft.model.lora) folded in: the next round and transformers read a plain checkpoint
        save_merged(result, directory)
        record = {"steps": result["steps"], "train_loss": result["train"].get("loss", math.nan),
                  "heldout_real_loss": result["eval"]["loss"], "seconds": time.perf_counter() - started,
                  "synthetic_rows": len(synthetic), "real_rows": len(real), "parent": str(parent.path)}
        write_json(run_dir / "round.json", record)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the generator dir holds the weights
    return Generator(parent.round + 1, key, directory), record


# ---------------------------------------------------------------------------
# Classify: a classifier per seed on each round's data, evaluated on the real test split.

def classifier_rows(cfg: SelfConsumeConfig, task: Task, chain: str, round_: int, pool: RoundPool
                    ) -> list[dict[str, Any]]:
    index = {name: i for i, name in enumerate(task.label_names)}
    rows = [{"text": row["text"], "label": index[row["parsed_label"]]} for row in pool.accepted]
    if cfg.chains.real_in_classifier:
        rows += [{"text": r["response"], "label": r["label"]}
                 for r in mixed_real_rows(cfg, task, chain, round_, pool)]
    return rows


def cell_key(cfg: SelfConsumeConfig, rows: list[dict[str, Any]], seed: int) -> str:
    """A classifier's content hash: the task, the train section (its LoRA section too; logging
    left out), its rows and seed."""
    return content_key(content_key(cfg.task, dataclasses.replace(cfg.train, log=type(cfg.train.log)())),
                       sorted((r["text"], r["label"]) for r in rows), seed)


def train_round_classifiers(cfg: SelfConsumeConfig, task: Task, cells: dict[str, tuple[list, int]],
                            workdir: Path) -> dict[str, dict]:
    """{cell key: result} for the cells {key: (rows, seed)} of one round; the unfinished ones train
    together in one vmapped program."""
    from jaxdiv.train.classifier import RunSpec, train_classifier_runs

    results = {key: done for key in cells if (done := read_json(workdir / "cells" / f"{key}.json"))}
    todo = [key for key in cells if key not in results]
    if todo:
        runs = [RunSpec(train_rows=cells[key][0], seed=cells[key][1], name=key) for key in todo]
        started = time.perf_counter()
        outcomes = train_classifier_runs(cfg.train, runs, {"test": task.splits["test"]},
                                         workdir / "train" / content_key(todo), task=cfg.task,
                                         label_names=task.label_names)
        seconds = (time.perf_counter() - started) / len(todo)
        for key, outcome in zip(todo, outcomes):
            results[key] = {"test": outcome["eval"]["test"], "steps": outcome["steps"],
                            "rows": outcome["num_rows"], "train_seconds": seconds}
            write_json(workdir / "cells" / f"{key}.json", results[key])
    return results


# ---------------------------------------------------------------------------

def run_self_consumption(cfg: SelfConsumeConfig, progress: bool = True) -> Path:
    """Run (or resume, or just re-report) the experiment; returns the report's path."""
    workdir = Path(cfg.workdir)
    configlib.save_config(cfg, workdir)
    task = load_task(cfg.task)
    scorer = Scorer(cfg.score, task, workdir)
    chains = cfg.chains.chains
    generators = dict.fromkeys(chains, base_generator(cfg))
    records: list[dict[str, Any]] = []
    eval_rows: list[dict[str, Any]] = []
    for round_ in tqdm(range(cfg.chains.rounds), desc="self-consumption rounds", unit="round", disable=not progress):
        pools = {chain: ensure_pool(cfg, generators[chain], workdir, progress) for chain in chains}
        reports, cells, row_cells = {}, {}, {}
        for chain, pool in pools.items():
            if pool.key not in reports:
                reports[pool.key] = scorer.score(
                    [r["text"] for r in pool.accepted], [r["parsed_label"] for r in pool.accepted],
                    bootstrap=cfg.score.bootstrap.samples, pool=pool.pool, progress=progress)
            rows = classifier_rows(cfg, task, chain, round_, pool)
            for seed in cfg.chains.seeds:
                key = cell_key(cfg, rows, seed)
                cells[key] = (rows, seed)
                row_cells[chain, seed] = key
        results = train_round_classifiers(cfg, task, cells, workdir)
        if round_ == 0:  # the SFT's held-out set: real validation rows under round-0 prompts
            rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 0, EVAL_DRAW]))
            eval_rows = real_completions(task, "validation", pools[chains[0]].pool.rows(),
                                         cfg.chains.sft_eval_rows, rng, "chains.sft_eval_rows")
        for chain in chains:
            sft = {}
            if round_ + 1 < cfg.chains.rounds:
                next_generator, sft = ensure_next_generator(cfg, task, chain, generators[chain], pools[chain],
                                                             eval_rows, workdir)
            records.append({"chain": chain, "round": round_, "pool": pools[chain],
                            "report": reports[pools[chain].key], "sft": sft,
                            "cells": {seed: results[row_cells[chain, seed]] for seed in cfg.chains.seeds}})
            if sft:
                generators[chain] = next_generator
    frame = results_table(cfg, records)
    write_table(frame, workdir / RESULT_FILE)
    return write_report(workdir, frame)


def results_table(cfg: SelfConsumeConfig, records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per chain x round x seed: the round's pool metrics (with CIs), the classifier's test
    metrics, and the SFT that turned this round's generator into the next one."""
    config_hash = configlib.config_hash(dataclasses.replace(cfg, workdir=""))
    rows = []
    for record in records:
        pool, report, sft = record["pool"], record["report"], record["sft"]
        counts = pool.pool.counts()
        intervals = {}
        for entry in report["metrics"]:
            if entry["ci_low"] is not None:
                intervals[f"{entry['metric']}_ci_low"] = entry["ci_low"]
                intervals[f"{entry['metric']}_ci_high"] = entry["ci_high"]
        for seed, cell in record["cells"].items():
            rows.append({
                "chain": record["chain"], "round": record["round"], "seed": seed,
                "generator": pool.pool.meta["generator"], "generator_weights_hash": pool.pool.meta["weights_hash"],
                "pool_rows": counts["rows"], "accepted": counts["accepted"],
                "accept_rate": counts["accepted"] / counts["rows"],
                **metric_columns(report, ""), **intervals,
                "accuracy": cell["test"]["accuracy"], "macro_f1": cell["test"]["macro_f1"],
                "test_loss": cell["test"]["loss"], "classifier_rows": cell["rows"],
                "train_steps": cell["steps"], "train_seconds": cell["train_seconds"],
                "generate_seconds": pool.seconds,
                "sft_train_loss": sft.get("train_loss", math.nan),
                "sft_heldout_real_loss": sft.get("heldout_real_loss", math.nan),
                "sft_steps": sft.get("steps", 0), "sft_synthetic_rows": sft.get("synthetic_rows", 0),
                "sft_real_rows": sft.get("real_rows", 0), "sft_seconds": sft.get("seconds", math.nan),
                "pool": pool.key, "config_hash": config_hash})
    return pd.DataFrame(rows)
