"""Train state: flat param dicts, the AdamW optimizer, and sharded initialisation.

The state is a plain pytree (orbax-friendly):

    trainable      {"encoder/layers/5/query/kernel": f32[...], ...}  optimised
    frozen         {...}                                            never updated (frozen layers)
    opt_state      optax state over `trainable`
    step           int32 scalar
    rng            PRNG key data (uint32[2]); dropout uses fold_in(rng, step)
    learning_rate  f32 scalar peak learning rate (a per-run value in vmapped ablations)
    total_steps    int32 scalar length of the run (its schedule; vmapped runs stop at their own)

It is created already sharded: `jax.jit(init, out_shardings=state_shardings(...))`, with
each param's sharding derived from its logical axis names by `jaxdiv.sharding`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiv import assets
from jaxdiv.models import bert
from jaxdiv.sharding import Rules, named_sharding
from jaxdiv.train.config import ModelConfig, OptimConfig


def _key(path: tuple[Any, ...]) -> str:
    return "/".join(map(str, path))


def _path(key: str) -> tuple[Any, ...]:
    return tuple(int(p) if p.isdigit() else p for p in key.split("/"))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model's structure (graphdef), its initial weights on the host, their logical axes and
    which of them train. Model-agnostic: the classifier and the causal LM both use it."""

    graphdef: Any
    initial: dict[str, np.ndarray]  # pretrained / seeded-random weights, f32, host memory
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


def _host_f32(value: Any) -> np.ndarray | jax.ShapeDtypeStruct:
    # an abstract model (nnx.eval_shape, e.g. for ahead-of-time compilation) stays abstract
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape, jnp.float32)
    return np.asarray(value, np.float32)


def spec_of(model: nnx.Module, config: Any, trainable=lambda path: True, num_labels: int = 0) -> ModelSpec:
    """Describe a built module: host copies of its params, their logical axes, what trains."""
    graphdef, state = nnx.split(model, nnx.Param)
    flat = list(nnx.to_flat_state(state))
    return ModelSpec(
        graphdef=graphdef,
        initial={_key(p): _host_f32(v.get_value()) for p, v in flat},
        logical_axes={_key(p): tuple(v.get_metadata().get("out_sharding") or (None,) * v.get_value().ndim)
                      for p, v in flat},
        trainable_keys=frozenset(_key(p) for p, _ in flat if trainable(p)),
        config=config, num_labels=num_labels)


def model_dir(cfg: ModelConfig):
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
    return spec_of(model, model.cfg, model.trainable, num_labels)


# ---------------------------------------------------------------------------
# Optimizer.

def lr_multiplier(cfg: OptimConfig, step: jax.Array, total_steps: jax.Array) -> jax.Array:
    """Learning-rate multiplier in [0, 1]: linear warmup over warmup_fraction of the steps, then
    cosine / linear decay to 0 (optax's schedules, written with traced totals so vmapped runs of
    different lengths each follow their own)."""
    step = jnp.asarray(step, jnp.float32)
    total = jnp.asarray(total_steps, jnp.float32)
    warmup = jnp.round(cfg.warmup_fraction * total)
    progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
    decayed = {"cosine": 0.5 * (1.0 + jnp.cos(jnp.pi * progress)), "linear": 1.0 - progress,
               "constant": jnp.ones_like(progress)}[cfg.decay]
    return jnp.where(step < warmup, step / jnp.maximum(warmup, 1.0), decayed)


def make_optimizer(cfg: OptimConfig, decay_keys: frozenset[str]) -> optax.GradientTransformation:
    """AdamW's direction (optax parts) with global-norm clipping. The step scales it by
    -peak_lr * lr_multiplier: the peak lives in the state so vmapped runs can each have their own."""
    parts = [optax.clip_by_global_norm(cfg.max_grad_norm)] if cfg.max_grad_norm > 0 else []
    parts += [optax.scale_by_adam(cfg.b1, cfg.b2, cfg.eps),
              optax.add_decayed_weights(cfg.weight_decay, mask=lambda p: {k: k in decay_keys for k in p})]
    return optax.chain(*parts)


def decayed_keys(spec: ModelSpec) -> frozenset[str]:
    """Weight decay on matrices only (kernels, embeddings), not biases or LayerNorm scales."""
    return frozenset(k for k in spec.trainable_keys if spec.initial[k].ndim >= 2)


# ---------------------------------------------------------------------------
# Init and shardings.

def init_state(spec: ModelSpec, tx: optax.GradientTransformation, seed: jax.Array,
               learning_rate: jax.Array, total_steps: jax.Array, params: dict[str, jax.Array]
               ) -> dict[str, Any]:
    """A fresh train state (pure: jit it with out_shardings)."""
    trainable, frozen = spec.split(params)
    return {"trainable": trainable, "frozen": frozen, "opt_state": tx.init(trainable),
            "step": jnp.zeros((), jnp.int32),
            "rng": jax.random.key_data(jax.random.fold_in(jax.random.key(seed), 2)),
            "learning_rate": jnp.asarray(learning_rate, jnp.float32),
            "total_steps": jnp.asarray(total_steps, jnp.int32)}


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


def create_state(spec: ModelSpec, tx: optax.GradientTransformation, mesh: Mesh, rules: Rules, seed: int,
                 learning_rate: float, total_steps: int, *, materialize: bool = True
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, its shardings): the state materialises directly in its sharded layout. With
    materialize=False the state is abstract (ShapeDtypeStructs carrying the shardings), the
    target for restoring a checkpoint."""
    args = (jnp.asarray(seed, jnp.uint32), jnp.asarray(learning_rate, jnp.float32),
            jnp.asarray(total_steps, jnp.int32), spec.initial)
    abstract = jax.eval_shape(lambda *a: init_state(spec, tx, *a), *args)
    shardings = state_shardings(spec, abstract, mesh, rules)
    if not materialize:
        return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            abstract, shardings), shardings
    init = jax.jit(lambda *a: init_state(spec, tx, *a), out_shardings=shardings)
    return init(*args), shardings


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())
