"""Fine-tune an encoder classifier on any (text, label) rows: one run, or R ablation runs in one program.

    result = train_classifier(cfg, train_rows, {"validation": val_rows, "test": test_rows}, workdir, seed=0)
    results = train_classifier_runs(cfg, [RunSpec(rows_a, seed=0), RunSpec(rows_b, seed=1)],
                                    {"test": test_rows}, workdir)

Rows are a `datasets.Dataset`, a list of {"text", "label"} dicts or a CSV/JSONL/parquet file.
Both train through `jaxdiv.train.engine.fit` (a single run is R = 1), writing <workdir>/config.json,
metrics.jsonl, tb/, checkpoints/ and results.json; a restarted run in the same workdir resumes
from its latest good checkpoint. Runs differ in seed (head init, dropout, data order) and rows
(data subsets, mixing ratios: any row set); they share the model and optimizer settings.

With frozen bottom layers shared by all runs, their output depends on the tokens alone. When
the steps would run those layers over more rows than there are, it is computed once per
distinct row (a feature table on device) and each step gathers its batch from the table, so
steps run only the trained layers.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiv import assets, configlib
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.io import atomic_write_text
from jaxdiv.models import bert, lora
from jaxdiv.train import data as data_lib
from jaxdiv.train.checkpoint import RESUME_SAFE_KEYS
from jaxdiv.train.config import ModelConfig, TrainConfig
from jaxdiv.train.distributed import initialize
from jaxdiv.train.engine import Program, Run, fit, run_tag, shares_frozen, to_host, total_steps
from jaxdiv.train.metrics import MetricsWriter, bert_train_flops, classification_metrics
from jaxdiv.train.state import ModelSpec, spec_of


def model_dir(cfg: ModelConfig) -> Path:
    return assets.resolve(cfg.asset) if "/" not in cfg.asset else assets.resolve(cfg.asset, cfg.asset)


def build_model(cfg: ModelConfig, num_labels: int, seed: int) -> ModelSpec:
    """Load (or seeded-randomly initialise) the classifier and describe its params."""
    directory = model_dir(cfg)
    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    head_seed = int(jax.random.randint(jax.random.fold_in(jax.random.key(seed), 1), (), 0, 2**31 - 1))
    if cfg.pretrained:
        model = bert.load_bert_classifier(directory, num_labels, frozen_layers=cfg.frozen_layers,
                                          dtype=dtype, seed=head_seed, dropout=cfg.dropout)
    else:
        arch = bert.BertConfig.from_json(directory)
        overrides = {name: getattr(cfg, name) for name in
                     ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
                     if getattr(cfg, name)}
        if not cfg.dropout:
            overrides.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        model = bert.BertClassifier(dataclasses.replace(arch, **overrides), num_labels,
                                    frozen_layers=cfg.frozen_layers, dtype=dtype, rngs=nnx.Rngs(head_seed))
    if not cfg.lora.rank:
        return spec_of(model, model.cfg, model.trainable, num_labels)
    # adapters on the layers that would train (none below frozen_layers), seeded per run
    lora.apply_lora(model, cfg.lora, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 3)),
                    where=model.trainable)
    return spec_of(model, model.cfg, lora.trainable(model, model.trainable), num_labels,
                   frozen_dtype=jnp.dtype(cfg.lora.base_dtype))


def _logits(spec: ModelSpec, params: dict[str, jax.Array], batch, dropout_key=None) -> jax.Array:
    # a batch carries token ids, or the frozen layers' precomputed output (see TableRows)
    model = lora.with_dropout(spec.apply(params), dropout_key)
    return model(batch.get("input_ids"), batch["attention_mask"], dropout_key=dropout_key, features=batch.get("features"))


def classifier_loss(spec: ModelSpec):
    """Mean cross-entropy of the classifier over a (micro-)batch, and its accuracy (`step.LossFn`)."""

    def loss_fn(params, batch, dropout_key):
        logits = _logits(spec, params, batch, dropout_key)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"]).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["labels"])}

    return loss_fn


def eval_outputs(spec: ModelSpec):
    """`(params, batch) -> {loss, prediction}` per example (the host masks padding)."""

    def outputs(params, batch):
        logits = _logits(spec, params, batch)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["labels"])
        return {"loss": loss, "prediction": jnp.argmax(logits, -1).astype(jnp.int32)}

    return outputs


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One classifier run: its training rows and seed (head init, dropout, data order)."""

    train_rows: Any
    seed: int = 0
    name: str = ""


@dataclasses.dataclass
class Prepared:
    """Everything the runs need before their first step: model, tokenised rows, label names."""

    spec: ModelSpec
    train: list[data_lib.EncodedRows]  # per run
    evals: dict[str, data_lib.EncodedRows]
    label_names: tuple[str, ...]


def prepare(cfg: TrainConfig, runs: Sequence[RunSpec], eval_splits: Mapping[str, Any],
            label_names: tuple[str, ...] | None = None) -> Prepared:
    """Read and tokenise every run's rows and the eval splits (cut to their longest example), and
    build the model of the first run's seed."""
    tokenizer = bert.load_tokenizer(model_dir(cfg.model))
    encode = lambda texts, labels: data_lib.encode_rows(tokenizer, texts, labels, cfg.model.max_length)
    train, names = [], label_names
    for index, run in enumerate(runs):
        texts, labels, names = data_lib.read_rows(run.train_rows, names,
                                                  what="train rows" if len(runs) == 1 else f"run {index} train rows")
        train.append(encode(texts, labels))
    evals = {}
    for split, rows in eval_splits.items():
        texts, labels, _ = data_lib.read_rows(rows, names, what=f"{split} rows")
        evals[split] = encode(texts, labels)
    trimmed = data_lib.trim_padding(train + list(evals.values()))
    return Prepared(build_model(cfg.model, len(names), runs[0].seed), trimmed[:len(train)],
                    dict(zip(evals, trimmed[len(train):])), names)


@dataclasses.dataclass(frozen=True)
class TableRows:
    """A run's training rows as indices into the shared feature table (see `frozen_feature_table`)."""

    rows: np.ndarray  # (n,) table row of each example
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {"row": self.rows[index], "labels": self.labels[index]}


def frozen_feature_table(spec: ModelSpec, encoded: Sequence[data_lib.EncodedRows], batch_size: int
                         ) -> tuple[dict[str, np.ndarray], list[TableRows]]:
    """The frozen part's output for every distinct (ids, mask) row of all runs, and each run's rows
    as indices into it."""
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
    inverse = inverse.reshape(-1).astype(np.int32)
    return ({"features": np.concatenate(chunks), "attention_mask": mask},
            [TableRows(inverse[offsets[i]:offsets[i + 1]], e.labels) for i, e in enumerate(encoded)])


def gather_features(table: dict[str, jax.Array], batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """A batch of table rows -> the trained layers' inputs (`engine.build_program`'s batch_fn)."""
    return {"features": table["features"][batch["row"]], "attention_mask": table["attention_mask"][batch["row"]],
            "labels": batch["labels"]}


def evaluator(spec: ModelSpec, evals: Mapping[str, data_lib.EncodedRows], batch_size: int,
              results: list[dict[str, Any]]):
    """`engine.fit`'s evaluate_fn: every run on every eval split, into results[run]["eval"][split]."""
    compiled: dict[int, Any] = {}  # by id(program): fit builds one

    def evaluate(program: Program, state, step: int, writer: MetricsWriter) -> None:
        if id(program) not in compiled:
            compiled[id(program)] = program.map_runs(eval_outputs(spec),
                                                     {"input_ids": 2, "attention_mask": 2, "labels": 1})
        mapped, shardings = compiled[id(program)]
        totals = to_host(state["total_steps"])
        for split, rows in evals.items():
            losses, predictions = [], []
            for batch in data_lib.eval_batches(rows, batch_size):
                keep = batch.pop("weights") > 0
                out = to_host(mapped(state, data_lib.global_batch(batch, shardings)))
                losses.append(out["loss"][:, keep])
                predictions.append(out["prediction"][:, keep])
            losses, predictions = np.concatenate(losses, 1), np.concatenate(predictions, 1)
            for index, result in enumerate(results):
                result["eval"][split] = classification_metrics(rows.labels, predictions[index], losses[index])
                writer.write(min(step, int(totals[index])), f"{run_tag(index, len(results))}eval/{split}",
                             result["eval"][split])

    return evaluate


def _train(cfg: TrainConfig, runs: Sequence[RunSpec], eval_splits: Mapping[str, Any] | None, workdir: Path,
           label_names: tuple[str, ...] | None, shared: dict[str, Any]) -> list[dict[str, Any]]:
    if not runs:
        raise configlib.ConfigError("train_classifier_runs: no runs given")
    initialize(cfg.distributed)
    if jax.process_index() == 0:
        configlib.save_config(cfg, workdir, resume_safe=RESUME_SAFE_KEYS if cfg.checkpoint.resume else None,
                              shared=shared)
    prepared = prepare(cfg, runs, eval_splits or {}, label_names)
    spec, optim = prepared.spec, cfg.optim
    steps = [total_steps(optim, len(rows)) for rows in prepared.train]
    initial = [None if run.seed == runs[0].seed else build_model(cfg.model, len(prepared.label_names), run.seed).initial
               for run in runs]
    distinct_rows = len({row.tobytes() for rows in prepared.train for row in rows.input_ids})
    table = table_rows = None
    if cfg.model.frozen_layers and shares_frozen(spec, initial) and sum(steps) * optim.batch_size > distinct_rows:
        table, table_rows = frozen_feature_table(spec, prepared.train, optim.eval_batch_size)
    data = table_rows or prepared.train
    results = [{"name": run.name or f"run{index}", "seed": run.seed, "steps": steps[index],
                "num_rows": len(prepared.train[index]), "label_names": list(prepared.label_names), "eval": {}}
               for index, run in enumerate(runs)]
    flops = bert_train_flops(spec.config, spec.num_labels, optim.batch_size, cfg.model.max_length,
                             cfg.model.frozen_layers, lora=bool(cfg.model.lora.rank))
    fitted = fit(cfg, spec, [Run(rows, run.seed, params) for rows, run, params in zip(data, runs, initial)],
                 workdir, loss_fn=classifier_loss(spec), flops_per_step=flops,
                 evaluate_fn=evaluator(spec, prepared.evals, optim.eval_batch_size, results),
                 batch_fn=None if table is None else gather_features, constants=table)
    for index, result in enumerate(results):
        result.update(train=fitted.train_metrics[index], resumed_from=fitted.resumed_from, workdir=str(workdir))
    return [{**result, "params": fitted.params(index)} for index, result in enumerate(results)]


def _write_results(workdir: Path, results: Any) -> None:
    if jax.process_index() == 0:
        strip = lambda r: {k: v for k, v in r.items() if k != "params"}
        atomic_write_text(workdir / "results.json", json.dumps(
            [strip(r) for r in results] if isinstance(results, list) else strip(results), indent=2))


def train_classifier_runs(cfg: TrainConfig, runs: Sequence[RunSpec], eval_splits: Mapping[str, Any] | None,
                          workdir: str | Path, *, task: TaskConfig | None = None,
                          label_names: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    """Train all runs in one vmapped program; returns one result dict per run, in order ({"name",
    "seed", "steps", "num_rows", "eval": {split: {loss, accuracy, macro_f1}}, "train": last train
    metrics, "label_names", "params": final params (host)}). The runs' seeds are their RunSpecs';
    config.json records the stage section (and `task`, if given)."""
    workdir = Path(workdir)
    results = _train(cfg, runs, eval_splits, workdir, label_names,
                     {**({"task": task} if task is not None else {}), "workdir": str(workdir)})
    _write_results(workdir, results)
    return results


def train_classifier(cfg: TrainConfig, train_rows: Any, eval_splits: Mapping[str, Any] | None,
                     workdir: str | Path, *, seed: int, task: TaskConfig | None = None,
                     label_names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """One run (R = 1) with `seed` (init, data order, dropout): the result dict of
    `train_classifier_runs`, plus "resumed_from" and "workdir". `task`: the task the rows come
    from, recorded (and checked on resume) in config.json with the seed and workdir."""
    workdir = Path(workdir)
    (result,) = _train(cfg, [RunSpec(train_rows, seed)], eval_splits, workdir, label_names,
                       {**({"task": task} if task is not None else {}), "workdir": str(workdir), "seed": seed})
    _write_results(workdir, result)
    return result
