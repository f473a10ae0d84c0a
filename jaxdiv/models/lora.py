"""LoRA for both model families: one NNX wrapper around the linear layers of a built model.

    lora.apply_lora(model, LoRAConfig(rank=16), rngs=nnx.Rngs(seed))    # in place
    spec = spec_of(model, model.cfg, lora.trainable(model))              # only adapters train

`LoRALinear` is the wrapped `nnx.Linear` itself (a subclass that adopts the base layer's
variables), so the base params keep their paths ("layers/0/self_attn/q_proj/kernel") and
loaders, checkpoints and mesh rules see the model they know. It adds `lora_a` (in, rank) and
`lora_b` (rank, out): y = base(x) + (dropout(x) @ A @ B) * alpha / rank, A Kaiming-uniform and
B zero as PEFT initialises them, so a fresh adapter is the identity. A and B carry the logical
axes of the base kernel's input and output (A: (in-axis, None), B: (None, out-axis)), so they
shard under the mesh like the base.

Targets are named as PEFT names them: by the transformers module name of each linear layer
("model.layers.0.self_attn.q_proj", "bert.encoder.layer.0.attention.output.dense"), a pattern
matching the whole name or its last dotted parts. So a config means the same layers here and
in `peft`, and `jaxdiv.models.peft` writes and reads the adapters under those names.

LoRA dropout is functional like the models' own: `with_dropout(model, key)` gives every
adapter its key for one forward (the training losses call it); without it, none.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv.configlib import ConfigError, param
from jaxdiv.models import bert, checkpoints
from jaxdiv.models.attention import dropout
from jaxdiv.models.llama import Llama

# every projection of attention and MLP: PEFT's usual "all linear" choice for each family
DEFAULT_TARGETS = {Llama: ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                   bert.BertClassifier: ("query", "key", "value", "dense"),
                   bert.BertEncoder: ("query", "key", "value", "dense")}
# modules PEFT trains whole beside the adapters (its SEQ_CLS `modules_to_save`): a fresh head
FULLY_TRAINED = {bert.BertClassifier: ("classifier",)}
ADAPTER_LEAVES = ("lora_a", "lora_b")


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """Low-rank adapters on the linear layers (rank 0: off, every weight trains)."""

    rank: int = param(0, ge=0, help="adapter rank (0: no LoRA, full fine-tuning)")
    alpha: float = param(16.0, gt=0.0, help="the adapter's update is scaled by alpha / rank")
    dropout: float = param(0.0, ge=0.0, lt=1.0, help="dropout on the adapters' input while training")
    target_modules: tuple[str, ...] = param((), help="transformers module names that get adapters, "
                                            "matched as PEFT matches them (the whole name or its last "
                                            "dotted parts); empty: every attention and MLP projection "
                                            "(q/k/v/o/gate/up/down_proj; BERT: query/key/value/dense)")
    base_dtype: Literal["float32", "bfloat16"] = param(
        "float32", help="dtype the frozen base's linear kernels are held in (bfloat16: half their "
                        "memory; embeddings, adapters, the head and the optimizer state stay float32)")


class LoRALinear(nnx.Linear):
    """`base` (an `nnx.Linear`, whose variables and settings it takes over) plus a low-rank
    update: y = base(x) + (dropout(x) @ lora_a @ lora_b) * scaling."""

    FROZEN_PARAMS = ("kernel", "bias")  # the base never trains (the decoder's layer scan reads them in place)

    def __init__(self, base: nnx.Linear, rank: int, scaling: float, dropout_rate: float, *, rngs: nnx.Rngs):
        for name, value in _linear_fields(base).items():
            setattr(self, name, value)
        in_axis, out_axis = base.kernel.get_metadata().get("out_sharding") or (None, None)
        # PEFT's A init: kaiming_uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in))
        a_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
        self.lora_a = nnx.Param(a_init(rngs.params(), (base.in_features, rank), jnp.float32),
                                out_sharding=(in_axis, None), eager_sharding=False)
        self.lora_b = nnx.Param(jnp.zeros((rank, base.out_features), jnp.float32),
                                out_sharding=(None, out_axis), eager_sharding=False)
        self.scaling = scaling
        self.dropout_rate = dropout_rate
        self.dropout_key = None  # set for one forward by `with_dropout`

    def __call__(self, x: jax.Array, out_sharding=None) -> jax.Array:
        y = super().__call__(x, out_sharding=out_sharding)
        dtype = self.dtype or x.dtype  # the base's compute dtype, f32 accumulation as in the models
        x = dropout(x, self.dropout_rate, self.dropout_key).astype(dtype)
        low = jnp.dot(x, self.lora_a[...].astype(dtype), preferred_element_type=jnp.float32)
        update = jnp.dot(low.astype(dtype), self.lora_b[...].astype(dtype), preferred_element_type=jnp.float32)
        return y + (update * self.scaling).astype(y.dtype)

    def merged_kernel(self) -> jax.Array:
        """The base kernel with the update folded in: W + A @ B * scaling, in float32 whatever the
        base is held in (an update is far below the resolution of a bf16 base: rounded, it would vanish)."""
        update = jnp.matmul(self.lora_a[...], self.lora_b[...], precision=jax.lax.Precision.HIGHEST)
        return self.kernel[...].astype(jnp.float32) + update * self.scaling


_LORA_FIELDS = ("lora_a", "lora_b", "scaling", "dropout_rate", "dropout_key")


def _linear_fields(module: nnx.Linear) -> dict[str, Any]:
    """The attributes `nnx.Linear` defines (variables and call settings), not NNX's bookkeeping
    nor the adapter's own."""
    return {name: value for name, value in vars(module).items()
            if not name.startswith("_pytree__") and name not in _LORA_FIELDS}


# ---------------------------------------------------------------------------
# Names and targets.

def hf_module_name(model: nnx.Module, path: Sequence[Any]) -> str:
    """The transformers (and PEFT) name of the linear layer at `path` of a `Llama`,
    `BertClassifier` (a `BertForSequenceClassification`) or `BertEncoder` (a `BertModel`)."""
    path = tuple(path)
    if isinstance(model, Llama):
        return checkpoints._hf_key(path + ("kernel",))[0].removesuffix(".weight")
    if isinstance(model, bert.BertEncoder):
        return bert._hf_key(path + ("kernel",))[0].removesuffix(".weight")
    if isinstance(model, bert.BertClassifier):
        if path[0] == "encoder":
            return "bert." + bert._hf_key(path[1:] + ("kernel",))[0].removesuffix(".weight")
        return {("pooler",): "bert.pooler.dense", ("classifier",): "classifier"}[path]
    raise TypeError(f"LoRA: no transformers names for a {type(model).__name__}")


def matches(name: str, patterns: Sequence[str]) -> bool:
    """PEFT's target matching: the whole module name, or its last dotted parts."""
    return any(name == p or name.endswith("." + p) for p in patterns)


def linear_layers(model: nnx.Module) -> Iterator[tuple[tuple[Any, ...], nnx.Linear]]:
    """(path, layer) of every `nnx.Linear` of the model (wrapped or not)."""
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Linear):
            yield tuple(path), node


def adapters(model: nnx.Module) -> Iterator[tuple[tuple[Any, ...], LoRALinear]]:
    """(path, layer) of every LoRA-wrapped layer."""
    return ((path, node) for path, node in linear_layers(model) if isinstance(node, LoRALinear))


def _node(model: nnx.Module, path: Sequence[Any]) -> Any:
    for part in path:
        model = model[part] if isinstance(part, int) else getattr(model, part)
    return model


def _replace(model: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
    parent = _node(model, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def wrap(model: nnx.Module, path: tuple[Any, ...], rank: int, scaling: float, dropout_rate: float,
         rngs: nnx.Rngs) -> LoRALinear:
    """Replace the linear layer at `path` by its `LoRALinear` (fresh adapter), in place."""
    layer = LoRALinear(_node(model, path), rank, scaling, dropout_rate, rngs=rngs)
    _replace(model, path, layer)
    return layer


def apply_lora(model: nnx.Module, config: LoRAConfig, *, rngs: nnx.Rngs,
               where: Callable[[tuple[Any, ...]], bool] = lambda path: True) -> nnx.Module:
    """Wrap every linear layer whose transformers name matches `config.target_modules` (empty:
    the family's `DEFAULT_TARGETS`) and whose path satisfies `where` (e.g. not in frozen bottom
    layers), in place; returns the model."""
    if config.rank <= 0:
        raise ConfigError(f"lora.rank must be positive to apply LoRA, got {config.rank}")
    patterns = config.target_modules or DEFAULT_TARGETS[type(model)]
    targets = [path for path, layer in linear_layers(model)
               if not isinstance(layer, LoRALinear) and where(path) and matches(hf_module_name(model, path), patterns)]
    if not targets:
        raise ConfigError(f"lora.target_modules: no linear layer of the {type(model).__name__} matches "
                          f"{list(patterns)}")
    for path in targets:
        wrap(model, path, config.rank, config.alpha / config.rank, config.dropout, rngs)
    return model


def is_adapter(path: Sequence[Any]) -> bool:
    return str(path[-1]) in ADAPTER_LEAVES


def trainable(model: nnx.Module, within: Callable[[tuple[Any, ...]], bool] = lambda path: True
              ) -> Callable[[tuple[Any, ...]], bool]:
    """`spec_of`'s predicate for a LoRA model: the adapters and the modules PEFT trains whole (a
    classifier's head), inside `within` (the model's own trainable part); the base is frozen."""
    whole = FULLY_TRAINED.get(type(model), ())
    return lambda path: within(path) and (is_adapter(path) or path[0] in whole)


def with_dropout(model: nnx.Module, key: jax.Array | None) -> nnx.Module:
    """Give each adapter its dropout key for the next forward; returns the model. Meant for the
    transient module a loss builds from its params. The keys are folded from `key` (the model's
    own dropout splits it), so the model's other dropout draws stay what they were without LoRA."""
    if key is not None:
        for index, (_, layer) in enumerate(adapters(model)):
            # data, not a static attribute: the key is part of the layer's state (a decoder under
            # remat scans its layers' stacked states)
            layer.dropout_key = nnx.data(jax.random.fold_in(key, index))
    return model


def merge_lora(model: nnx.Module) -> nnx.Module:
    """A copy of the model with every adapter folded into its base kernel (W + A @ B * scaling)
    and plain `nnx.Linear` layers again: what `checkpoints.save_hf_checkpoint` writes."""
    merged = nnx.clone(model)
    for path, layer in list(adapters(merged)):
        plain = nnx.eval_shape(lambda: nnx.Linear(1, 1, rngs=nnx.Rngs(0)))
        for name, value in _linear_fields(layer).items():
            setattr(plain, name, value)
        plain.kernel = layer.kernel.replace(layer.merged_kernel())
        _replace(merged, path, plain)
    return merged
