"""Model-agnostic training pieces: a model's description (`ModelSpec`: flat param dicts, their
logical axes, what trains), the AdamW optimizer on its schedule, and the shardings of a train
state (each param's from its logical axis names, by `jaxdiv.sharding`; the state itself is laid
out by `jaxdiv.train.engine`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiv.sharding import Rules, named_sharding
from jaxdiv.train.config import OptimConfig


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(map(str, path))


def _path(key: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in key.split("/"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model's structure (graphdef), its initial weights on the host, their logical axes and
    which of them train. Model-agnostic: the classifier and the causal LM both use it."""

    graphdef: Any
    initial: dict[str, np.ndarray]  # pretrained / seeded-random weights, host memory (f32; see spec_of)
    logical_axes: dict[str, tuple[str | None, ...]]
    trainable_keys: frozenset[str]
    config: Any  # the architecture (BertConfig, LlamaConfig)
    num_labels: int = 0  # classifiers only

    def apply(self, params: dict[str, jax.Array]) -> nnx.Module:
        """The module with these param values (used inside jitted functions)."""
        state = nnx.from_flat_state([(_path(k), v) for k, v in params.items()])
        return nnx.merge(self.graphdef, state)

    def split(self, params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        trainable = {k: v for k, v in params.items() if k in self.trainable_keys}
        frozen = {k: v for k, v in params.items() if k not in self.trainable_keys}
        return trainable, frozen

    @property
    def param_count(self) -> int:
        return sum(int(np.prod(v.shape)) for v in self.initial.values())


def _host(value: Any, dtype: Any) -> np.ndarray | jax.ShapeDtypeStruct:
    # an abstract model (nnx.eval_shape, e.g. for ahead-of-time compilation) stays abstract
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape, dtype)
    return np.asarray(value, dtype)


def spec_of(model: nnx.Module, config: Any, trainable=lambda path: True, num_labels: int = 0,
            frozen_dtype: Any = jnp.float32) -> ModelSpec:
    """Describe a built module: host copies of its params, their logical axes, what trains. Params
    are float32, but frozen linear kernels are held in `frozen_dtype` (LoRA's bf16 base): the
    models' layers cast their weights to the compute dtype, so a frozen bf16 kernel needs nothing
    else. Embeddings stay float32, as QLoRA keeps them: a bf16 table would be widened whole for
    the lookup and the tied LM head, costing more than it saves."""
    graphdef, state = nnx.split(model, nnx.Param)
    flat = list(nnx.to_flat_state(state))
    dtype = lambda path, value: frozen_dtype if path[-1] == "kernel" and not trainable(path) else jnp.float32
    return ModelSpec(
        graphdef=graphdef,
        initial={_key(p): _host(v.get_value(), dtype(p, v.get_value())) for p, v in flat},
        logical_axes={_key(p): tuple(v.get_metadata().get("out_sharding") or (None,) * v.get_value().ndim)
                      for p, v in flat},
        trainable_keys=frozenset(_key(p) for p, _ in flat if trainable(p)),
        config=config, num_labels=num_labels)


# ---------------------------------------------------------------------------
# Optimizer.

def learning_rate_schedule(cfg: OptimConfig, total_steps: jax.Array | int) -> optax.Schedule:
    """The peak learning rate times a linear warmup over warmup_fraction of the steps, then cosine
    / linear decay to 0: optax's schedules, written with a traced total so that vmapped runs of
    different lengths each follow their own."""
    total = jnp.asarray(total_steps, jnp.float32)
    warmup = jnp.round(cfg.warmup_fraction * total)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
        decayed = {"cosine": 0.5 * (1.0 + jnp.cos(jnp.pi * progress)), "linear": 1.0 - progress,
                   "constant": jnp.ones_like(progress)}[cfg.decay]
        return cfg.learning_rate * jnp.where(step < warmup, step / jnp.maximum(warmup, 1.0), decayed)

    return schedule


def make_optimizer(cfg: OptimConfig, decay_keys: frozenset[str], total_steps: jax.Array | int
                   ) -> optax.GradientTransformation:
    """Global-norm clipping, then `optax.adamw` on the schedule (decay on `decay_keys` only)."""
    adamw = optax.adamw(learning_rate_schedule(cfg, total_steps), cfg.b1, cfg.b2, cfg.eps,
                        weight_decay=cfg.weight_decay, mask=lambda p: {k: k in decay_keys for k in p})
    return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw) if cfg.max_grad_norm > 0 else adamw


def decayed_keys(spec: ModelSpec) -> frozenset[str]:
    """Weight decay on matrices only (kernels, embeddings), not biases or LayerNorm scales."""
    return frozenset(k for k in spec.trainable_keys if spec.initial[k].ndim >= 2)


# ---------------------------------------------------------------------------
# Init and shardings.

def param_shardings(spec: ModelSpec, mesh: Mesh, rules: Rules, lead: tuple[str, ...] = ()
                    ) -> dict[str, NamedSharding]:
    """Each param's sharding from its logical axes (`lead`: extra leading logical axes, e.g. runs)."""
    return {k: named_sharding(mesh, lead + axes, rules) for k, axes in spec.logical_axes.items()}


def state_shardings(spec: ModelSpec, abstract_state: dict[str, Any], mesh: Mesh, rules: Rules,
                    lead: tuple[str, ...] = ()) -> dict[str, Any]:
    """Shardings for a whole state: params by logical axes; optimizer leaves that mirror a param
    (Adam moments) like that param; scalars replicated (or over the runs axis in ablations)."""
    by_key = param_shardings(spec, mesh, rules, lead)
    scalar = named_sharding(mesh, lead, rules)

    def leaf_sharding(path, leaf):
        for entry in reversed(path):
            name = getattr(entry, "key", None)
            if isinstance(name, str) and name in by_key:
                return by_key[name]
        if leaf.ndim == len(lead):
            return scalar
        return named_sharding(mesh, lead + (None,) * (leaf.ndim - len(lead)), rules)

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
