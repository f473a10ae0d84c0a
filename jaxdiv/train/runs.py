"""Ablation runs in one program: R classifier runs that share shapes, trained at once.

Every array of the train state gets a leading run axis (logical name `runs`, sharded as
`run_rules` says) and the train step is `jax.vmap`ped over it. Runs differ in seed,
peak learning rate and training rows (data subsets, mixing ratios: any row set); they
share the model, batch size, sequence length and optimizer settings. A run whose data is
smaller has fewer steps: its state stops changing once `step == total_steps` (a per-run
step mask; its batches are not padded). Each run computes exactly what `train_classifier`
computes for it alone (same init, data order, dropout keys and schedule).

With frozen bottom layers shared by all runs, their output depends on the tokens alone: it
is computed once per distinct row (a feature table on device) and each step gathers its
batch from the table, so steps run only the trained layers.

    results = train_classifier_runs(cfg, [RunSpec(rows_a, seed=0), RunSpec(rows_b, seed=1,
                                    learning_rate=1e-4)], {"test": test_rows}, workdir)

The runs' seeds are their RunSpecs'; config.json records the stage section (and `task`, if given).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdiv import configlib
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.io import atomic_write_text
from jaxdiv.models.bert import load_tokenizer
from jaxdiv.sharding import Rules, make_mesh, named_sharding, rules_without, shard_count
from jaxdiv.train import data as data_lib
from jaxdiv.train.checkpoint import RESUME_SAFE_KEYS, Checkpointer
from jaxdiv.train.config import TrainConfig
from jaxdiv.train.loop import to_host, total_steps
from jaxdiv.train.metrics import MetricsWriter, classification_metrics
from jaxdiv.train.state import (build_model, decayed_keys, init_state, make_optimizer, model_dir,
                                param_shardings, state_shardings)
from jaxdiv.train.step import make_eval_step, make_train_step


def run_rules(rules: Rules, mesh, num_runs: int) -> Rules:
    """The rules for `num_runs` stacked runs: the run axis keeps its mesh axes when the runs divide
    evenly over them; else runs are replicated, and the batch inside each run takes those axes
    instead (where its own rule lists them)."""
    return rules if num_runs % shard_count(mesh, rules, "runs") == 0 else rules_without(rules, "runs")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of an ablation: its training rows, seed and peak learning rate (None: the config's)."""

    train_rows: Any
    seed: int = 0
    learning_rate: float | None = None
    name: str = ""


def frozen_feature_table(spec, encoded: Sequence[data_lib.EncodedRows], batch_size: int
                         ) -> tuple[dict[str, np.ndarray], list[np.ndarray]]:
    """The frozen part's output for every distinct (ids, mask) row of all runs, and per run the
    table row of each of its examples."""
    tokens = np.concatenate([np.concatenate([e.input_ids, e.attention_mask], 1) for e in encoded])
    distinct, inverse = np.unique(tokens, axis=0, return_inverse=True)
    width = encoded[0].input_ids.shape[1]
    ids, mask = distinct[:, :width], distinct[:, width:]
    features_of = jax.jit(lambda params, i, m: spec.apply(params).frozen_features(i, m))
    params = jax.device_put(spec.initial)
    chunks = []
    for start in range(0, len(ids), batch_size):
        index = np.arange(start, start + batch_size) % len(ids)  # a fixed shape: one compile
        chunks.append(np.asarray(features_of(params, ids[index], mask[index]))[: len(ids) - start])
    offsets = np.cumsum([0] + [len(e) for e in encoded])
    rows = [inverse.reshape(-1)[offsets[i]:offsets[i + 1]].astype(np.int32) for i in range(len(encoded))]
    return {"features": np.concatenate(chunks), "attention_mask": mask}, rows


def train_classifier_runs(cfg: TrainConfig, runs: Sequence[RunSpec], eval_splits: Mapping[str, Any] | None,
                          workdir: str | Path, *, task: TaskConfig | None = None,
                          label_names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Train all runs in one vmapped program; returns one result dict per run, in order
    ({"name", "seed", "learning_rate", "steps", "eval": {split: metrics}, "params"})."""
    if not runs:
        raise configlib.ConfigError("train_classifier_runs: no runs given")
    workdir = Path(workdir)
    optim = cfg.optim
    if jax.process_index() == 0:
        shared = {**({"task": task} if task is not None else {}), "workdir": str(workdir)}
        configlib.save_config(cfg, workdir, resume_safe=RESUME_SAFE_KEYS if cfg.checkpoint.resume else None,
                              shared=shared)
    tokenizer = load_tokenizer(model_dir(cfg.model))
    encoded, names = [], label_names
    for index, run in enumerate(runs):
        texts, labels, names = data_lib.read_rows(run.train_rows, names, what=f"run {index} train rows")
        encoded.append(data_lib.encode_rows(tokenizer, texts, labels, cfg.model.max_length))
    mesh = make_mesh(cfg.mesh)
    num_runs = len(runs)
    run_shards = shard_count(mesh, cfg.mesh.logical_axis_rules, "runs")
    if num_runs % run_shards and optim.batch_size % run_shards:
        # Neither the run axis nor the batch divides over the run axis's mesh axes: fill the run
        # axis with copies of the last run that never step (0 total steps); their results are dropped.
        padding = -num_runs % run_shards
        runs, encoded = list(runs) + [runs[-1]] * padding, encoded + [encoded[-1]] * padding
    evals = {}
    for split, rows in (eval_splits or {}).items():
        texts, labels, _ = data_lib.read_rows(rows, names, what=f"{split} rows")
        evals[split] = data_lib.encode_rows(tokenizer, texts, labels, cfg.model.max_length)
    trimmed = data_lib.trim_padding(encoded + list(evals.values()))
    encoded, evals = trimmed[:len(encoded)], dict(zip(evals, trimmed[len(encoded):]))

    spec = build_model(cfg.model, len(names), runs[0].seed)
    steps = np.array([total_steps(optim, len(rows)) if index < num_runs else 0
                      for index, rows in enumerate(encoded)], np.int32)
    learning_rates = np.array([run.learning_rate or optim.learning_rate for run in runs], np.float32)
    seeds = np.array([run.seed for run in runs], np.uint32)
    # Frozen params that every run shares (a pretrained encoder) are kept once, without a run
    # axis: less memory, and each frozen layer runs as one (R x batch)-row matmul. Each run's
    # own model is held only as long as it takes to copy what differs from run 0's.
    frozen_keys = sorted(set(spec.initial) - spec.trainable_keys)
    trainable, frozen = [], []
    for index, run in enumerate(runs):
        initial = spec.initial if index == 0 else build_model(cfg.model, len(names), run.seed).initial
        trainable.append({k: initial[k] for k in spec.trainable_keys})
        same = all(np.array_equal(initial[k], spec.initial[k]) for k in frozen_keys)
        frozen.append(None if same else {k: initial[k] for k in frozen_keys})
    shared = all(f is None for f in frozen)
    run_axes = {"trainable": 0, "frozen": None if shared else 0, "opt_state": 0, "step": 0, "rng": 0,
                "learning_rate": 0, "total_steps": 0}
    table, table_rows = (frozen_feature_table(spec, encoded, optim.eval_batch_size)
                         if shared and cfg.model.frozen_layers else (None, None))
    trainable_init = {k: np.stack([t[k] for t in trainable]) for k in sorted(spec.trainable_keys)}
    frozen_init = {k: spec.initial[k] if shared else np.stack([(f or spec.initial)[k] for f in frozen])
                   for k in frozen_keys}
    del trainable, frozen

    rules = run_rules(cfg.mesh.logical_axis_rules, mesh, len(runs))
    tx = make_optimizer(optim, decayed_keys(spec))

    def init_all(seeds, lrs, totals, trainable, frozen):
        one = lambda seed, lr, total, tr, fr: init_state(spec, tx, seed, lr, total, {**tr, **fr})
        return jax.vmap(one, in_axes=(0, 0, 0, 0, run_axes["frozen"]), out_axes=run_axes)(
            seeds, lrs, totals, trainable, frozen)

    args = (seeds, learning_rates, steps, trainable_init, frozen_init)
    abstract = jax.eval_shape(init_all, *args)
    shardings = state_shardings(spec, abstract, mesh, rules, lead=("runs",))
    if shared:
        shardings["frozen"] = {k: v for k, v in param_shardings(spec, mesh, rules).items() if k in frozen_init}
    checkpointer = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    restored = None
    if cfg.checkpoint.resume:
        restored = checkpointer.restore_latest(jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings))
    state = restored[0] if restored else jax.jit(init_all, out_shardings=shardings)(*args)
    start = int(restored[1]["step"]) if restored else 0

    single_step = make_train_step(spec, tx, optim)

    def masked_step(state, batch, table):
        if table is not None:  # rows of the feature table -> the trained layers' inputs
            batch = {"features": table["features"][batch["row"]],
                     "attention_mask": table["attention_mask"][batch["row"]], "labels": batch["labels"]}
        new_state, metrics = single_step(state, batch)
        active = state["step"] < state["total_steps"]  # the per-run step mask
        masked = {name: value if name == "frozen" else
                  jax.tree.map(lambda new, old: jnp.where(active, new, old), value, state[name])
                  for name, value in new_state.items()}
        return masked, metrics

    batch_keys = ("row", "labels") if table is not None else ("input_ids", "attention_mask", "labels")
    batch_shardings = {k: named_sharding(mesh, ("runs", "batch") + (None,) * (k in ("input_ids", "attention_mask")),
                                         rules) for k in batch_keys}
    metric_sharding = named_sharding(mesh, ("runs",), rules)
    table_sharding = None if table is None else jax.tree.map(lambda _: NamedSharding(mesh, PartitionSpec()), table)
    train_step = jax.jit(jax.vmap(masked_step, in_axes=(run_axes, 0, None), out_axes=(run_axes, 0)),
                         in_shardings=(shardings, batch_shardings, table_sharding),
                         out_shardings=(shardings, metric_sharding), donate_argnums=0)
    if table is not None:
        table = jax.device_put(table, table_sharding)
    eval_shardings = {k: NamedSharding(mesh, PartitionSpec()) for k in ("input_ids", "attention_mask", "labels")}
    eval_step = jax.jit(jax.vmap(make_eval_step(spec), in_axes=(run_axes, None)),
                        in_shardings=(shardings, eval_shardings), out_shardings=NamedSharding(mesh, PartitionSpec()))

    writer = MetricsWriter(workdir, cfg.log.tensorboard)
    writer.truncate(start)
    bar = tqdm(total=int(steps.max()), initial=start, desc=f"train x{num_runs}", unit="step",
               dynamic_ncols=True, disable=not cfg.log.progress or jax.process_index() != 0)
    for step in range(start, int(steps.max())):
        # A finished run's batch is never used (its state is masked): row 0 stands in.
        indices = [data_lib.batch_indices(run.seed, step, optim.batch_size, len(rows))
                   if step < total else np.zeros(optim.batch_size, np.int64)
                   for run, rows, total in zip(runs, encoded, steps)]
        if table is None:
            host = [rows.take(index) for rows, index in zip(encoded, indices)]
            host_batch = {k: np.stack([h[k] for h in host]) for k in batch_keys}
        else:
            host_batch = {"row": np.stack([rows[index] for rows, index in zip(table_rows, indices)]),
                          "labels": np.stack([rows.labels[index] for rows, index in zip(encoded, indices)])}
        state, metrics = train_step(state, data_lib.global_batch(host_batch, batch_shardings), table)
        bar.update(1)
        done = step + 1
        if done % cfg.log.every == 0 or done == steps.max():
            values = to_host(metrics)
            for index in range(len(runs)):
                if step < steps[index]:
                    writer.write(done, f"run{index}/train", {k: v[index] for k, v in values.items()})
            bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in values["loss"]))
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == steps.max():
            checkpointer.save(done, state, {"step": done, "runs": len(runs)})
    bar.close()
    checkpointer.close()

    results = [{"name": run.name or f"run{index}", "seed": run.seed, "learning_rate": float(learning_rates[index]),
                "steps": int(steps[index]), "num_rows": len(encoded[index]), "eval": {}}
               for index, run in enumerate(runs[:num_runs])]
    for split, rows in evals.items():
        losses, predictions = [], []
        for batch in data_lib.eval_batches(rows, optim.eval_batch_size):
            keep = batch.pop("weights") > 0
            out = to_host(eval_step(state, data_lib.global_batch(batch, eval_shardings)))
            losses.append(out["loss"][:, keep])
            predictions.append(out["prediction"][:, keep])
        losses, predictions = np.concatenate(losses, 1), np.concatenate(predictions, 1)
        for index, result in enumerate(results):
            result["eval"][split] = classification_metrics(rows.labels, predictions[index], losses[index])
            writer.write(int(steps[index]), f"run{index}/eval/{split}", result["eval"][split])
    writer.close()
    if jax.process_index() == 0:
        atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    trainable, frozen = to_host(state["trainable"]), to_host(state["frozen"])
    for index, result in enumerate(results):
        result["params"] = {**{k: v[index] for k, v in trainable.items()},
                            **{k: v if shared else v[index] for k, v in frozen.items()}}
        result["label_names"] = list(names)
    return results
