"""`train_classifier`: fine-tune an encoder classifier on any (text, label) rows.

    result = train_classifier(cfg, train_rows, {"validation": val_rows, "test": test_rows}, workdir, seed=0)

Rows are a `datasets.Dataset`, a list of {"text", "label"} dicts or a CSV/JSONL/parquet file.
The run writes <workdir>/config.json, metrics.jsonl, tb/, checkpoints/ and results.json, and
a restarted run in the same workdir resumes from its latest good checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.configlib import ConfigError
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.io import atomic_write_text
from jaxdiv.models.bert import load_tokenizer
from jaxdiv.sharding import Rules, batch_sharding, make_mesh, shard_count
from jaxdiv.train import data as data_lib
from jaxdiv.train.checkpoint import RESUME_SAFE_KEYS, Checkpointer
from jaxdiv.train.config import OptimConfig, TrainConfig
from jaxdiv.train.distributed import initialize
from jaxdiv.train.metrics import MetricsWriter, Throughput, bert_train_flops, classification_metrics
from jaxdiv.train.state import (ModelSpec, build_model, create_state, decayed_keys, make_optimizer, model_dir,
                                replicated)
from jaxdiv.train.step import make_eval_step, make_train_step


def to_host(tree: Any) -> Any:
    """numpy copies of (possibly multi-process) global arrays: every process gets the full values."""
    def fetch(x):
        if x.is_fully_addressable:
            return np.asarray(jax.device_get(x))
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(fetch, tree)


def total_steps(cfg: OptimConfig, num_rows: int) -> int:
    return cfg.steps or max(1, math.ceil(cfg.epochs * num_rows / cfg.batch_size))


@dataclasses.dataclass
class Prepared:
    """Everything a run needs before its first step: model, tokenised rows, label names."""

    spec: ModelSpec
    train: data_lib.EncodedRows
    evals: dict[str, data_lib.EncodedRows]
    label_names: tuple[str, ...]


def prepare(cfg: TrainConfig, train_rows: Any, eval_splits: Mapping[str, Any],
            label_names: tuple[str, ...] | None = None, *, seed: int) -> Prepared:
    texts, labels, names = data_lib.read_rows(train_rows, label_names, what="train rows")
    tokenizer = load_tokenizer(model_dir(cfg.model))
    encode = lambda t, y: data_lib.encode_rows(tokenizer, t, y, cfg.model.max_length)
    evals = {}
    for split, rows in eval_splits.items():
        eval_texts, eval_labels, _ = data_lib.read_rows(rows, names, what=f"{split} rows")
        evals[split] = encode(eval_texts, eval_labels)
    return Prepared(build_model(cfg.model, len(names), seed), encode(texts, labels), evals, names)


def evaluate(eval_step, state, rows: data_lib.EncodedRows, batch_size: int, shardings) -> dict[str, float]:
    losses, predictions = [], []
    for batch in data_lib.eval_batches(rows, batch_size):
        weights = batch.pop("weights")
        out = to_host(eval_step(state, data_lib.global_batch(batch, shardings)))
        keep = weights > 0
        losses.append(out["loss"][keep])
        predictions.append(out["prediction"][keep])
    return classification_metrics(rows.labels, np.concatenate(predictions), np.concatenate(losses))


@dataclasses.dataclass
class Fitted:
    """What `fit` hands back: the final state, its shardings and mesh, and the run's records."""

    state: dict[str, Any]
    shardings: dict[str, Any]
    mesh: Any
    steps: int
    resumed_from: int
    train_metrics: dict[str, float]


def jit_train_step(spec: ModelSpec, tx, optim: OptimConfig, mesh, rules: Rules, shardings, batch_shardings,
                   loss_fn=None):
    """The train step jitted with the state's and the batch's shardings, the state donated (what
    `fit` runs and `jaxdiv compile` compiles ahead of time)."""
    # micro-batches (accum, micro, ...): rows stay sharded as in the global batch
    constrain = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(
        mesh, PartitionSpec(None, *batch_sharding(mesh, x.ndim - 1, rules).spec)))
    return jax.jit(make_train_step(spec, tx, optim, loss_fn, constrain),
                   in_shardings=(shardings, batch_shardings),
                   out_shardings=(shardings, replicated(mesh)), donate_argnums=0)


def fit(cfg: Any, spec: ModelSpec, train: Any, workdir: Path, *, seed: int, loss_fn=None,
        flops_per_step: float = 0.0, evaluate_fn: Callable[..., None] | None = None) -> Fitted:
    """The training loop shared by every model: sharded state (or the latest good checkpoint),
    the jitted step over deterministic global batches, metrics, progress, checkpoints.

    `cfg` has the optim, mesh, checkpoint and log sections of a stage config; `seed` seeds the
    init's dropout key and the data order; `train` has
    `len()` and `take(indices) -> {name: array}` (an `EncodedRows` or `sft.EncodedPairs`);
    `loss_fn` is a `step.LossFn` (default: the classifier's); `evaluate_fn(state, shardings,
    mesh, step, writer)` runs and logs the evaluations (every optim.eval_every steps and at the end).
    """
    optim = cfg.optim
    steps = total_steps(optim, len(train))
    mesh, rules = make_mesh(cfg.mesh), cfg.mesh.logical_axis_rules
    shards = shard_count(mesh, rules, "batch")
    if optim.batch_size % shards or optim.eval_batch_size % shards:
        raise ConfigError(f"optim.batch_size={optim.batch_size} and optim.eval_batch_size="
                          f"{optim.eval_batch_size} must divide by the {shards} batch shards of mesh "
                          f"data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} x tensor={mesh.shape['tensor']}")
    tx = make_optimizer(optim, decayed_keys(spec))
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    abstract, shardings = create_state(spec, tx, mesh, rules, seed, optim.learning_rate, steps,
                                      materialize=False)
    restored = checkpointer.restore_latest(abstract) if cfg.checkpoint.resume else None
    if restored is None:
        state, _ = create_state(spec, tx, mesh, rules, seed, optim.learning_rate, steps)
    else:
        state = restored[0]
    start = int(to_host(state["step"]))

    example = train.take(np.zeros(1, np.int64))
    batch_shardings = {k: batch_sharding(mesh, v.ndim, rules) for k, v in example.items()}
    train_step = jit_train_step(spec, tx, optim, mesh, rules, shardings, batch_shardings, loss_fn)

    writer = MetricsWriter(workdir, cfg.log.tensorboard)
    writer.truncate(start)
    throughput = Throughput(optim.batch_size, flops_per_step)
    bar = tqdm(total=steps, initial=start, desc="train", unit="step", dynamic_ncols=True,
               disable=not cfg.log.progress or jax.process_index() != 0)
    values: dict[str, float] = {}
    for step in range(start, steps):
        host_batch = train.take(data_lib.batch_indices(seed, step, optim.batch_size, len(train)))
        state, metrics = train_step(state, data_lib.global_batch(host_batch, batch_shardings))
        throughput.add(int(host_batch["attention_mask"].sum()))
        done = step + 1
        bar.update(1)
        if done % cfg.log.every == 0 or done == steps:
            values = {k: float(v) for k, v in to_host(metrics).items()}
            values.update(throughput.read())
            writer.write(done, "train", values)
            bar.set_postfix(loss=f"{values['loss']:.4f}", ex_s=f"{values['examples_per_s']:.1f}",
                            tok_s=f"{values['tokens_per_s']:.0f}")
        if evaluate_fn and optim.eval_every and done % optim.eval_every == 0 and done != steps:
            evaluate_fn(state, shardings, mesh, done, writer)
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == steps:
            checkpointer.save(done, state, {"step": done, "examples_seen": done * optim.batch_size,
                                            "data_seed": seed, "num_rows": len(train)})
    bar.close()
    checkpointer.close()
    if evaluate_fn:
        evaluate_fn(state, shardings, mesh, steps, writer)
    writer.close()
    return Fitted(state, shardings, mesh, steps, start, values)


def train_classifier(cfg: TrainConfig, train_rows: Any, eval_splits: Mapping[str, Any] | None,
                     workdir: str | Path, *, seed: int, task: TaskConfig | None = None,
                     label_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Train with `seed` (init, data order, dropout), evaluate on each eval split, and return
    {"steps", "label_names", "eval": {split: {loss, accuracy, macro_f1}}, "train": last train
    metrics, "params": final params (host)}. `task`: the task the rows come from, recorded (and
    checked on resume) in config.json with the seed and workdir."""
    initialize(cfg.distributed)
    workdir = Path(workdir)
    if jax.process_index() == 0:
        shared = {**({"task": task} if task is not None else {}), "workdir": str(workdir), "seed": seed}
        configlib.save_config(cfg, workdir, resume_safe=RESUME_SAFE_KEYS if cfg.checkpoint.resume else None,
                              shared=shared)
    prepared = prepare(cfg, train_rows, eval_splits or {}, label_names, seed=seed)
    spec = prepared.spec
    evals: dict[str, dict[str, float]] = {}
    compiled: dict[str, Any] = {}

    def evaluate_all(state, shardings, mesh, step, writer):
        if "eval" not in compiled:
            rules = cfg.mesh.logical_axis_rules
            batch_shardings = {k: batch_sharding(mesh, 1 if k == "labels" else 2, rules)
                               for k in ("input_ids", "attention_mask", "labels")}
            compiled["eval"] = (jax.jit(make_eval_step(spec), in_shardings=(shardings, batch_shardings),
                                        out_shardings=replicated(mesh)), batch_shardings)
        eval_step, batch_shardings = compiled["eval"]
        for split, rows in prepared.evals.items():
            evals[split] = evaluate(eval_step, state, rows, cfg.optim.eval_batch_size, batch_shardings)
            writer.write(step, f"eval/{split}", evals[split])

    flops = bert_train_flops(spec.config, spec.num_labels, cfg.optim.batch_size, cfg.model.max_length,
                             cfg.model.frozen_layers)
    fitted = fit(cfg, spec, prepared.train, workdir, seed=seed, flops_per_step=flops, evaluate_fn=evaluate_all)
    results = {"eval": evals, "train": fitted.train_metrics, "steps": fitted.steps,
               "label_names": list(prepared.label_names), "resumed_from": fitted.resumed_from,
               "workdir": str(workdir)}
    if jax.process_index() == 0:
        atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    results["params"] = to_host({**fitted.state["trainable"], **fitted.state["frozen"]})
    return results
