"""Llama-family decoder (Llama, SmolLM2, Qwen2) in Flax NNX, with a preallocated KV cache.

One module serves generation (prefill + decode against a `KVCache`) and causal-LM
fine-tuning (`model(tokens)` returns logits for the whole sequence). Its weights come from a
GGUF file or an HF safetensors checkpoint through `jaxdiv.models.checkpoints`
(`load_pretrained`), which also writes fine-tuned models back as HF checkpoints.

Layout conventions (shared with the HF checkpoints, so loading is a transpose):
- Linear kernels are (in, out); the HF `weight` is (out, in).
- RoPE is the rotate-half form of transformers' Llama (GGUF files of the `llama`
  architecture are converted to it at load time).
- Every parameter carries logical axis names (embed, mlp, heads, kv_heads, vocab) that
  the mesh config's `logical_axis_rules` map onto the (data, fsdp, tensor) mesh.

Attention masking works in *cache slots*: query t of a call that starts at slot `start`
sits in slot `start + t` and may attend to slot s iff `s <= start + t` and
`key_mask[b, s]`. Left-padded prompts set `key_mask` False on their pad slots, so every
row of a batch decodes in lock step (one shared write slot per step).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jaxdiv.configlib import ConfigError
from jaxdiv.models import fast_paths
from jaxdiv.models.attention import dot_product_attention, kv_layout, kv_shape


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Architecture of a Llama-family decoder (read from the checkpoint, not set by hand)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    tie_embeddings: bool = True
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    max_position_embeddings: int = 8192
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of "
                              f"num_kv_heads={self.num_kv_heads}")

    @property
    def num_params(self) -> int:
        attn = self.hidden_size * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
        mlp = 3 * self.hidden_size * self.intermediate_size
        embed = self.vocab_size * self.hidden_size * (1 if self.tie_embeddings else 2)
        return self.num_layers * (attn + mlp + 2 * self.hidden_size) + embed + self.hidden_size


def _linear(din: int, dout: int, axes: tuple[str | None, str | None], *, bias: bool,
            dtype, param_dtype, rngs: nnx.Rngs) -> nnx.Linear:
    # f32 accumulation whatever the compute dtype: bf16 x bf16 -> f32 is also the fast path of
    # XLA's CPU matmuls (AMX / AVX512-BF16), several times the f32 rate.
    return nnx.Linear(
        din, dout, use_bias=bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
        preferred_element_type=jnp.float32, kernel_init=nnx.with_partitioning(nnx.initializers.normal(0.02), axes),
        bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), (axes[1],)))


class RMSNorm(nnx.Module):
    """x / rms(x) * weight, the statistics in float32 (as transformers' LlamaRMSNorm)."""

    def __init__(self, dim: int, eps: float, *, dtype, param_dtype):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype), out_sharding=("embed",))

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(self.dtype) * x32.astype(self.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos, sin of shape positions.shape + (head_dim,), rotate-half layout."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x: (B, T, heads, D); cos/sin: (B, T, D)."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Preallocated keys/values, one array per layer in `attention.kv_layout`: (batch, kv_heads,
    slots, head_dim), the layout the attention reads, so a decode step attends over the cache
    in place."""

    keys: list[jax.Array]
    values: list[jax.Array]

    # the leading (batch) axis over the data axes, each device holding whole rows; the rest
    # replicated (a kv_heads axis on the tensor axis would not split SmolLM2's 3 heads over 2)
    LOGICAL_AXES = ("batch",)

    @staticmethod
    def layer_shape(cfg: LlamaConfig, batch: int, slots: int) -> tuple[int, ...]:
        return kv_shape(batch, cfg.num_kv_heads, slots, cfg.head_dim)

    @classmethod
    def zeros(cls, cfg: LlamaConfig, batch: int, slots: int, dtype=jnp.float32) -> "KVCache":
        shape = cls.layer_shape(cfg, batch, slots)
        return cls([jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
                   [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)])

    @property
    def slots(self) -> int:
        return self.keys[0].shape[-2]

    def take_rows(self, rows: jax.Array, kv_heads: int) -> "KVCache":
        """The cache of batch rows `rows`, in that order."""
        index = fast_paths.folded_rows(rows, kv_heads) if fast_paths.enabled() else rows
        return jax.tree.map(lambda a: a[index], self)


def write_slots(cache: jax.Array, new: jax.Array, start: jax.Array | int) -> jax.Array:
    """Slots [start, start + T) of a layer's keys or values (axis -2 of `kv_layout`) = new."""
    if fast_paths.enabled():
        return fast_paths.write_slots(cache, new, start)
    return jax.lax.dynamic_update_slice_in_dim(cache, new.astype(cache.dtype), start, axis=-2)


def attention_mask(key_mask: jax.Array, num_queries: int, start: jax.Array | int) -> jax.Array:
    """(B, T, S) bool: query t (slot start + t) sees slot s iff s <= start + t and key_mask[b, s]."""
    query_slot = start + jnp.arange(num_queries)[:, None]
    causal = jnp.arange(key_mask.shape[1])[None, :] <= query_slot
    return causal[None] & key_mask[:, None, :]


class Attention(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = dtype
        kw = dict(bias=cfg.attention_bias, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, hd = cfg.hidden_size, cfg.head_dim
        self.q_proj = _linear(d, cfg.num_heads * hd, ("embed", "heads"), **kw)
        self.k_proj = _linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), **kw)
        self.v_proj = _linear(d, cfg.num_kv_heads * hd, ("embed", "kv_heads"), **kw)
        self.o_proj = _linear(cfg.num_heads * hd, d, ("heads", "embed"), **{**kw, "bias": False})

    def __call__(self, x, cos, sin, mask, cache_kv, start):
        cfg = self.cfg
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, cfg.num_heads, cfg.head_dim)
        k = self.k_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        v = self.v_proj(x).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k, v = kv_layout(k).astype(self.dtype), kv_layout(v).astype(self.dtype)
        if cache_kv is not None:  # written in place; attention then runs in the cache's dtype
            cache_kv = tuple(write_slots(c, a, start) for c, a in zip(cache_kv, (k, v)))
            k, v = (c[..., :mask.shape[-1], :] for c in cache_kv)  # the slots the mask covers
        out = dot_product_attention(q, k, v, mask, dtype=k.dtype)
        return self.o_proj(out.astype(x.dtype)), cache_kv


class MLP(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(bias=False, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.gate_proj = _linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.up_proj = _linear(cfg.hidden_size, cfg.intermediate_size, ("embed", "mlp"), **kw)
        self.down_proj = _linear(cfg.intermediate_size, cfg.hidden_size, ("mlp", "embed"), **kw)

    def __call__(self, x):
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: LlamaConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.self_attn = Attention(cfg, rngs=rngs, **kw)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, **kw)
        self.mlp = MLP(cfg, rngs=rngs, **kw)

    def __call__(self, x, cos, sin, mask, cache_kv, start):
        attn, cache_kv = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache_kv, start)
        x = x + attn
        return x + self.mlp(self.post_attention_layernorm(x)), cache_kv


class Llama(nnx.Module):
    """Decoder-only LM. `model(tokens)` -> logits (B, T, vocab) for fine-tuning; generation
    uses `hidden_states(..., cache=...)` then `logits()` on the positions it needs."""

    def __init__(self, cfg: LlamaConfig, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, remat: bool = False):
        self.cfg = cfg
        self.dtype = dtype
        # remat: without a cache (training), each layer's activations are recomputed in the
        # backward pass, so only the layer inputs stay live (what long sequences need)
        self.remat = remat
        # Params carry logical axis names only; placement on a mesh is explicit (see
        # `checkpoints.from_hf_weights`, or `jax.jit(init, out_shardings=...)`), so no eager sharding.
        with nnx.use_eager_sharding(False):
            self._build(cfg, rngs, dtype, param_dtype)

    def _build(self, cfg, rngs, dtype, param_dtype):
        self.embed_tokens = nnx.Embed(
            cfg.vocab_size, cfg.hidden_size, dtype=dtype, param_dtype=param_dtype, rngs=rngs,
            embedding_init=nnx.with_partitioning(nnx.initializers.normal(0.02), ("vocab", "embed")))
        self.layers = nnx.List([DecoderLayer(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
                                for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, dtype=dtype, param_dtype=param_dtype)
        self.lm_head = None if cfg.tie_embeddings else _linear(
            cfg.hidden_size, cfg.vocab_size, ("embed", "vocab"), bias=False, dtype=dtype,
            param_dtype=param_dtype, rngs=rngs)

    def hidden_states(self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array,
                      cache: KVCache | None = None, start: jax.Array | int = 0
                      ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states (B, T, hidden) and the updated cache.

        tokens, positions: (B, T) ints. key_mask: (B, S) bool over the attended slots
        (S = cache.slots with a cache, T without). With a cache, the new keys/values are
        written to slots [start, start + T).
        """
        b, t = tokens.shape
        cos, sin = rope_tables(positions, self.cfg.head_dim, self.cfg.rope_theta)
        if cache is not None and isinstance(start, int):
            # no query sees a slot from start + t on (causal); with a static start (the
            # prefill), attention skips those slots rather than masking them
            key_mask = key_mask[:, :start + t]
        mask = attention_mask(key_mask, t, start)
        x = self.embed_tokens(tokens)
        if self.remat and cache is None:
            return self.norm(self._rematerialised_layers(x, cos, sin, mask)), None
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            x, layer_cache = layer(x, cos, sin, mask, layer_cache, start)
            if cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        return self.norm(x), (None if cache is None else KVCache(new_keys, new_values))

    def _rematerialised_layers(self, x, cos, sin, mask) -> jax.Array:
        """The layers as one `lax.scan` with a rematerialised body, so the backward pass keeps
        only each layer's input. (Unrolled, XLA:CPU keeps every layer's activations despite
        `jax.checkpoint`, jax#19822: measured 170 MB a SmolLM2 layer at batch 8 x 256 tokens
        either way; scanned, only the inputs.) The scan runs over the layers' stacked params,
        except the weights a layer declares frozen (`FROZEN_PARAMS`: a LoRA base): those are read
        in place, layer i's picked by `lax.switch`, so the step never holds a stacked copy of the
        frozen base (a copy XLA:CPU would also widen from bf16 to f32). Layers of different
        structure (LoRA on some only) stay unrolled."""
        frozen = _frozen_params(self.layers[0])
        graphdefs, frozen_states, states = zip(*(nnx.split(layer, frozen, ...) for layer in self.layers))
        layer = lambda graphdef, states, x: nnx.merge(graphdef, *states)(x, cos, sin, mask, None, 0)[0]
        if any(graphdef != graphdefs[0] for graphdef in graphdefs):
            for graphdef, *layer_states in zip(graphdefs, frozen_states, states):
                x = jax.checkpoint(layer, static_argnums=0)(graphdef, layer_states, x)
            return x
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *states)
        pick = [lambda all_frozen, i=i: all_frozen[i] for i in range(len(frozen_states))]

        @jax.checkpoint
        def body(x, inputs):
            index, state = inputs
            return layer(graphdefs[0], (jax.lax.switch(index, pick, frozen_states), state), x), None

        # the carry takes the layers' output dtype (a bf16 embedding feeds f32 residuals)
        carry = jax.eval_shape(layer, graphdefs[0], (frozen_states[0], states[0]), x).dtype
        return jax.lax.scan(body, x.astype(carry), (jnp.arange(len(states)), stacked))[0]

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:  # tied: the embedding matrix, in the compute dtype, f32 accumulation
            table = self.embed_tokens.embedding.get_value().astype(self.dtype)
            return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), table,
                              preferred_element_type=jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def sequence_hidden(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
                        positions: jax.Array | None = None) -> jax.Array:
        """Final-normed hidden states (B, T, hidden) of a full sequence, causal. attention_mask
        (B, T) marks real tokens (padding may be on either side); positions default to the count
        of real tokens before each one."""
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        return self.hidden_states(tokens, positions, attention_mask.astype(bool))[0]

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Logits (B, T, vocab) of a full sequence (see `sequence_hidden`)."""
        return self.logits(self.sequence_hidden(tokens, attention_mask, positions))


def _frozen_params(layer: nnx.Module) -> Callable[[tuple, Any], bool]:
    """The nnx filter of the params a layer never trains: those its modules name in `FROZEN_PARAMS`."""
    paths = {path + (name,) for path, module in nnx.iter_modules(layer)
             for name in getattr(module, "FROZEN_PARAMS", ())}
    return lambda path, _: tuple(path) in paths


def forward_flops(cfg: LlamaConfig, batch: int, queries: int, keys: float) -> float:
    """Matmul FLOPs of a forward over `queries` tokens per row, each attending to `keys` slots
    (on average: `queries / 2` counts causal attention once): 2 per weight per token for the
    projections and the LM head, 2·2·keys·(heads·head_dim) per token and layer for QKᵀ and PV."""
    h, q, kv = cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    per_token_layer = 2 * (h * q * 2 + h * kv * 2 + 3 * h * cfg.intermediate_size) + 2 * 2 * keys * q
    return float(batch * queries * (cfg.num_layers * per_token_layer + 2 * h * cfg.vocab_size))


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """RoPE positions for (possibly left-padded) rows: real tokens count 0, 1, 2, ..."""
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0)
