"""The training engine: R >= 1 runs of one model, trained together in one compiled program.

Every run has its own training rows, seed (dropout keys, data order) and initial params; all
share the model's structure, the optimizer settings and the batch shape. Every array of the
train state has a leading run axis (logical name `runs`) and the train step is `jax.vmap`ped
over it. Params that all runs share unchanged (a frozen pretrained encoder) are held once,
without the axis: less memory, and a frozen layer runs as one (R x batch)-row matmul.

A single run is the case R = 1. `train_classifier`, its ablation groups (`train_classifier_runs`)
and decoder SFT (`train_sft`) all train here with their own loss, so resume, evaluation,
metrics, checkpoints and progress live in this one loop (`fit`).

The state is a plain pytree (what orbax saves):

    trainable    {param key: f32[R, ...]}   optimised
    frozen       {param key: f32[...]}      never updated; [R, ...] when runs differ in it; a
                                            LoRA base's linear kernels in lora.base_dtype
    opt_state    optax state of `make_optimizer` over `trainable` (leading run axis)
    step         int32[R]
    rng          uint32[R, 2]   dropout keys are fold_in(rng, step)
    total_steps  int32[R]       each run's length: its schedule, and where it stops

A run with less data has fewer steps: once `step == total_steps` its state stops changing (a
per-run mask, compiled in only when lengths differ). Each run computes what it would compute
alone: same init, data order, dropout keys and schedule.
"""

from __future__ import annotations

import ctypes
import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdiv.configlib import ConfigError
from jaxdiv.sharding import Rules, logical_to_spec, make_mesh, named_sharding, rules_without, shard_count
from jaxdiv.train import data as data_lib
from jaxdiv.train.checkpoint import Checkpointer
from jaxdiv.train.config import OptimConfig
from jaxdiv.train.metrics import MetricsWriter, Throughput
from jaxdiv.train.state import ModelSpec, decayed_keys, make_optimizer, param_shardings, replicated, state_shardings
from jaxdiv.train.step import Batch, LossFn, make_train_step


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


def run_rules(rules: Rules, mesh: Mesh, num_runs: int) -> Rules:
    """The rules for `num_runs` stacked runs: the run axis keeps its mesh axes when the runs divide
    evenly over them; else runs are replicated, and the batch inside each run takes those axes
    instead (where its own rule lists them)."""
    return rules if num_runs % shard_count(mesh, rules, "runs") == 0 else rules_without(rules, "runs")


def run_tag(index: int, num_runs: int) -> str:
    """The metrics prefix of run `index`: none for a single run."""
    return "" if num_runs == 1 else f"run{index}/"


@dataclasses.dataclass(frozen=True)
class Run:
    """One run: its training rows (`len()` and `take(indices) -> {name: host array}`), its seed
    (dropout keys and data order) and its initial params (None: the model spec's)."""

    data: Any
    seed: int = 0
    initial: Mapping[str, np.ndarray] | None = None


@dataclasses.dataclass
class Program:
    """The compiled functions of R runs of one model on a mesh (built by `build_program`)."""

    spec: ModelSpec
    mesh: Mesh
    rules: Rules  # the mesh config's, with the run axis replicated where runs do not divide
    num_runs: int
    axes: dict[str, int | None]  # each state entry's run axis (None: shared by all runs)
    shardings: dict[str, Any]  # the state's
    batch_shardings: dict[str, NamedSharding]  # the stacked (R, batch, ...) train batch's
    init: Callable[..., dict[str, Any]]  # (seeds, totals, trainable, frozen) -> sharded state
    train_step: Callable[..., tuple[dict[str, Any], dict[str, jax.Array]]]  # (state, batch, constants)
    spmd_axes: str | tuple[str, ...] | None  # the mesh axes the run axis is split over

    def abstract_state(self) -> dict[str, Any]:
        """The state as ShapeDtypeStructs carrying their shardings (what a checkpoint restores into)."""
        abstract = jax.eval_shape(self.init, *_init_shapes(self.spec, self.num_runs, self.axes["frozen"] is None))
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, self.shardings)

    def inner_batch_spec(self, ndim: int) -> PartitionSpec:
        """The sharding of one run's (batch, ...) array: the batch axis on what the runs leave over."""
        return PartitionSpec(*logical_to_spec(("runs", "batch") + (None,) * (ndim - 1), self.rules, self.mesh)[1:])

    def map_runs(self, fn: Callable[[dict[str, jax.Array], Batch], Any], batch_ndims: Mapping[str, int]
                 ) -> tuple[Callable[[dict[str, Any], Batch], Any], dict[str, NamedSharding]]:
        """(`fn(params, batch)` of every run on one shared batch, jitted: (state, batch) -> outputs
        with a leading run axis, replicated; the batch's shardings). Evaluation runs through it."""
        batch_shardings = {k: NamedSharding(self.mesh, self.inner_batch_spec(n)) for k, n in batch_ndims.items()}
        per_run = jax.vmap(lambda trainable, frozen, batch: fn({**trainable, **frozen}, batch),
                           in_axes=(0, self.axes["frozen"], None), spmd_axis_name=self.spmd_axes)
        mapped = jax.jit(lambda state, batch: per_run(state["trainable"], state["frozen"], batch),
                         in_shardings=(self.shardings, batch_shardings), out_shardings=replicated(self.mesh))
        return mapped, batch_shardings


def _init_shapes(spec: ModelSpec, num_runs: int, shared_frozen: bool) -> tuple[Any, ...]:
    stacked = lambda v: jax.ShapeDtypeStruct((num_runs,) + tuple(v.shape), v.dtype)
    frozen = {k: v for k, v in spec.initial.items() if k not in spec.trainable_keys}
    return (jax.ShapeDtypeStruct((num_runs,), jnp.uint32), jax.ShapeDtypeStruct((num_runs,), jnp.int32),
            {k: stacked(spec.initial[k]) for k in sorted(spec.trainable_keys)},
            {k: jax.ShapeDtypeStruct(v.shape, v.dtype) if shared_frozen else stacked(v)
             for k, v in sorted(frozen.items())})


def shares_frozen(spec: ModelSpec, initial: Sequence[Mapping[str, np.ndarray] | None]) -> bool:
    """Whether runs with these initial params (None: the spec's) all have the spec's frozen params."""
    frozen_keys = sorted(set(spec.initial) - spec.trainable_keys)
    return all(params is None or all(np.array_equal(params[k], spec.initial[k]) for k in frozen_keys)
               for params in initial)


def init_args(spec: ModelSpec, initial: Sequence[Mapping[str, np.ndarray] | None], seeds: Sequence[int],
              steps: Sequence[int], *, shared_frozen: bool) -> tuple[Any, ...]:
    """`Program.init`'s host arguments: the runs' seeds, lengths and stacked initial params (None:
    the spec's; frozen params once when `shared_frozen`, see `shares_frozen`)."""
    initial = [spec.initial if params is None else params for params in initial]
    return (np.array(seeds, np.uint32), np.array(steps, np.int32),
            {k: np.stack([params[k] for params in initial]) for k in sorted(spec.trainable_keys)},
            {k: v if shared_frozen else np.stack([params[k] for params in initial])
             for k, v in sorted(spec.initial.items()) if k not in spec.trainable_keys})


_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def release_freed_host_memory() -> None:
    """Hand the C heap's freed pages back to the OS, now and from now on (glibc; elsewhere nothing).
    Loading a checkpoint and compiling leave 0.5-1 GB freed but resident, which the step's large
    buffers (fresh mappings) never reuse: `malloc_trim` returns it (a SmolLM2 SFT's peak: ~1 GB
    lower). And glibc raises its mmap threshold after each large free (up to 32 MiB), so later
    buffers below it are carved from the heap, where what stays resident depends on the order
    things were freed (the same SFT step peaked at 4.6 or 5.3 GB as compiling came after init or
    before): a fixed 1 MiB threshold gives every large buffer its own mapping, unmapped when freed."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 1 << 20)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def build_program(spec: ModelSpec, optim: OptimConfig, mesh: Mesh, rules: Rules, num_runs: int, *,
                  loss_fn: LossFn, batch_ndims: Mapping[str, int], shared_frozen: bool = True,
                  variable_lengths: bool = False, batch_fn: Callable[[Any, Batch], Batch] | None = None,
                  constants: Any = None) -> Program:
    """Compile-ready functions for `num_runs` runs: the state's init and the vmapped train step.

    `batch_ndims`: each batch entry's rank in one run; `batch_fn(constants, batch)`: turns the fed
    batch into the loss's inside the step (e.g. gathering rows of a feature table held in
    `constants`, replicated on every device); `variable_lengths`: runs stop at their own
    `total_steps`. Raises ConfigError when the batch does not divide over its mesh shards."""
    rules = run_rules(rules, mesh, num_runs)
    spmd = logical_to_spec(("runs",), rules, mesh)[0]
    axes = {"trainable": 0, "frozen": None if shared_frozen else 0, "opt_state": 0, "step": 0, "rng": 0,
            "total_steps": 0}
    batch_spec = logical_to_spec(("runs", "batch"), rules, mesh)[1]
    shards = math.prod(mesh.shape[a] for a in ((batch_spec,) if isinstance(batch_spec, str) else batch_spec or ()))
    if optim.batch_size % shards or optim.eval_batch_size % shards:
        raise ConfigError(f"optim.batch_size={optim.batch_size} and optim.eval_batch_size={optim.eval_batch_size} must divide by the {shards} batch "
                          f"shards of mesh data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} x "
                          f"tensor={mesh.shape['tensor']}")

    def init_one(seed, total, trainable, frozen):
        return {"trainable": trainable, "frozen": frozen,
                "opt_state": make_optimizer(optim, decayed_keys(spec), total).init(trainable),
                "step": jnp.zeros((), jnp.int32),
                "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 2)),
                "total_steps": total}

    init_all = jax.vmap(init_one, in_axes=(0, 0, 0, axes["frozen"]), out_axes=axes)
    abstract = jax.eval_shape(init_all, *_init_shapes(spec, num_runs, shared_frozen))
    shardings = state_shardings(spec, abstract, mesh, rules, lead=("runs",))
    if shared_frozen:
        shardings["frozen"] = {k: s for k, s in param_shardings(spec, mesh, rules).items() if k in abstract["frozen"]}

    # micro-batches (accum, micro, ...) inside a run keep the rows sharded as in its batch
    constrain = lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(
        mesh, PartitionSpec(None, *logical_to_spec(("runs", "batch") + (None,) * (x.ndim - 2), rules, mesh)[1:])))
    step = make_train_step(spec, optim, loss_fn, constrain)

    def run_step(state, batch, constants):
        if batch_fn is not None:
            batch = batch_fn(constants, batch)
        new_state, metrics = step(state, batch)
        if variable_lengths:  # a finished run's state stops changing
            active = state["step"] < state["total_steps"]
            new_state = {name: value if name == "frozen" else
                         jax.tree.map(lambda new, old: jnp.where(active, new, old), value, state[name])
                         for name, value in new_state.items()}
        return new_state, metrics

    batch_shardings = {k: named_sharding(mesh, ("runs", "batch") + (None,) * (n - 1), rules)
                       for k, n in batch_ndims.items()}
    train_step = jax.jit(
        jax.vmap(run_step, in_axes=(axes, 0, None), out_axes=(axes, 0), spmd_axis_name=spmd),
        in_shardings=(shardings, batch_shardings, jax.tree.map(lambda _: replicated(mesh), constants)),
        out_shardings=(shardings, named_sharding(mesh, ("runs",), rules)), donate_argnums=0)
    return Program(spec, mesh, rules, num_runs, axes, shardings, batch_shardings,
                   jax.jit(init_all, out_shardings=shardings), train_step, spmd)


@dataclasses.dataclass
class Fitted:
    """What `fit` hands back: the final state and its program, and each run's records."""

    state: dict[str, Any]
    program: Program
    steps: list[int]  # per run
    resumed_from: int
    train_metrics: list[dict[str, float]]  # per run, the last logged
    _host: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)

    def params(self, index: int) -> dict[str, np.ndarray]:
        """Run `index`'s final params, on the host."""
        if not self._host:
            self._host.update(to_host({"trainable": self.state["trainable"], "frozen": self.state["frozen"]}))
        shared = self.program.axes["frozen"] is None
        return {**{k: v[index] for k, v in self._host["trainable"].items()},
                **{k: v if shared else v[index] for k, v in self._host["frozen"].items()}}


def fit(cfg: Any, spec: ModelSpec, runs: Sequence[Run], workdir: Path, *, loss_fn: LossFn,
        evaluate_fn: Callable[[Program, dict[str, Any], int, MetricsWriter], None] | None = None,
        batch_fn: Callable[[Any, Batch], Batch] | None = None, constants: Any = None,
        flops_per_step: float = 0.0) -> Fitted:
    """Train `runs` in one program: a sharded state (or the latest good checkpoint in
    <workdir>/checkpoints), the jitted vmapped step over deterministic global batches, metrics,
    progress and checkpoints.

    `cfg` has the optim, mesh, checkpoint and log sections of a stage config; `flops_per_step`
    is one run's; `evaluate_fn(program, state, step, writer)` runs and logs the evaluations
    (every optim.eval_every steps and at the end); `batch_fn` and `constants` as in `build_program`.
    """
    if not runs:
        raise ConfigError("fit: no runs given")
    optim = cfg.optim
    mesh, rules = make_mesh(cfg.mesh), cfg.mesh.logical_axis_rules
    num_runs = len(runs)
    steps = [total_steps(optim, len(run.data)) for run in runs]
    run_shards = shard_count(mesh, rules, "runs")
    if num_runs % run_shards and optim.batch_size % run_shards:
        # Neither the run axis nor the batch divides over the run axis's mesh axes: fill the run
        # axis with copies of the last run that never step (0 total steps).
        padding = -num_runs % run_shards
        runs, steps = list(runs) + [runs[-1]] * padding, steps + [0] * padding

    initial = [run.initial for run in runs]
    shared = shares_frozen(spec, initial)
    args = init_args(spec, initial, [run.seed for run in runs], steps, shared_frozen=shared)
    example = runs[0].data.take(np.zeros(1, np.int64))
    program = build_program(spec, optim, mesh, rules, len(runs), loss_fn=loss_fn,
                            batch_ndims={k: v.ndim for k, v in example.items()}, shared_frozen=shared,
                            variable_lengths=len(set(steps)) > 1, batch_fn=batch_fn, constants=constants)
    if constants is not None:
        constants = jax.device_put(constants, replicated(mesh))

    # Compiled before the state exists, so that the compiler's transient memory and the state are
    # never held together; what loading freed, then what compiling and init freed, goes back to
    # the OS (`release_freed_host_memory`) before the step's buffers are taken.
    release_freed_host_memory()
    batch_shapes = {k: jax.ShapeDtypeStruct((len(runs), optim.batch_size) + v.shape[1:], v.dtype,
                                            sharding=program.batch_shardings[k]) for k, v in example.items()}
    abstract_state = program.abstract_state()
    train_step = program.train_step.lower(abstract_state, batch_shapes, constants).compile()

    checkpointer = Checkpointer(workdir / "checkpoints", cfg.checkpoint)
    restored = checkpointer.restore_latest(abstract_state) if cfg.checkpoint.resume else None
    state = restored[0] if restored else program.init(*args)
    del args
    release_freed_host_memory()
    start = int(restored[1]["step"]) if restored else 0
    last = max(steps)

    writer = MetricsWriter(workdir, cfg.log.tensorboard)
    writer.truncate(start)
    throughput = Throughput(optim.batch_size * num_runs, flops_per_step * num_runs)
    bar = tqdm(total=last, initial=start, desc="train" if num_runs == 1 else f"train x{num_runs}", unit="step",
               dynamic_ncols=True, disable=not cfg.log.progress or jax.process_index() != 0)
    train_metrics: list[dict[str, float]] = [{} for _ in range(num_runs)]
    for step in range(start, last):
        # A finished run's batch is never used (its state is masked): row 0 stands in.
        host = [run.data.take(data_lib.batch_indices(run.seed, step, optim.batch_size, len(run.data))
                              if step < total else np.zeros(optim.batch_size, np.int64))
                for run, total in zip(runs, steps)]
        host_batch = {k: np.stack([h[k] for h in host]) for k in host[0]}
        batch = data_lib.global_batch(host_batch, program.batch_shardings)
        state, metrics = train_step(state, batch, constants)
        mask = host_batch.get("attention_mask")
        throughput.add(0 if mask is None else int(mask[:num_runs].sum()))
        done = step + 1
        bar.update(1)
        if done % cfg.log.every == 0 or done == last:
            values, rates = to_host(metrics), throughput.read()
            for index in range(num_runs):
                if step < steps[index]:
                    train_metrics[index] = {**{k: float(v[index]) for k, v in values.items()}, **rates}
                    writer.write(done, f"{run_tag(index, num_runs)}train", train_metrics[index])
            bar.set_postfix(loss=" ".join(f"{v:.3f}" for v in values["loss"][:num_runs]),
                            ex_s=f"{rates['examples_per_s']:.1f}")
        if evaluate_fn and optim.eval_every and done % optim.eval_every == 0 and done != last:
            evaluate_fn(program, state, done, writer)
        if (cfg.checkpoint.every and done % cfg.checkpoint.every == 0) or done == last:
            checkpointer.save(done, state, {"step": done, "runs": num_runs, "examples_seen": done * optim.batch_size,
                                            "data_seeds": [run.seed for run in runs[:num_runs]],
                                            "num_rows": [len(run.data) for run in runs[:num_runs]]})
    bar.close()
    checkpointer.close()
    if evaluate_fn:
        evaluate_fn(program, state, last, writer)
    writer.close()
    return Fitted(state, program, steps[:num_runs], start, train_metrics)
