"""Llama-family decoder (Llama, SmolLM2, Qwen2) in Flax NNX, with a preallocated KV cache.

One module serves generation (prefill + decode against a `KVCache`) and causal-LM
fine-tuning (`model(tokens)` returns logits for the whole sequence). Weights load from a
GGUF file (dequantised to float; SmolLM2-135M-Instruct ships as one) or from an HF
Llama/Qwen2-style safetensors checkpoint.

Layout conventions (shared with the HF checkpoints, so loading is a transpose):
- Linear kernels are (in, out); the HF `weight` is (out, in).
- RoPE is the rotate-half form of transformers' Llama. GGUF files of the `llama`
  architecture store Q and K rows permuted for llama.cpp's interleaved rotation;
  `_unpermute_rope` undoes that at load time.
- Every parameter carries logical axis names (embed, mlp, heads, kv_heads, vocab) that
  the mesh config's `logical_axis_rules` map onto the (data, fsdp, tensor) mesh.

Attention masking works in *cache slots*: query t of a call that starts at slot `start`
sits in slot `start + t` and may attend to slot s iff `s <= start + t` and
`key_mask[b, s]`. Left-padded prompts set `key_mask` False on their pad slots, so every
row of a batch decodes in lock step (one shared write slot per step).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import sharding as shd
from jaxdiv.errors import JaxdivError
from jaxdiv.models.attention import dot_product_attention, fold_heads

if TYPE_CHECKING:  # the tokenizer module imports this one
    from jaxdiv.models.tokenizer import ChatTokenizer


class CheckpointError(JaxdivError, ValueError):
    """A checkpoint file is missing, malformed or of an unsupported architecture (names the file/key)."""


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
            raise CheckpointError(f"num_heads={self.num_heads} is not a multiple of "
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
    """Preallocated keys/values, one (batch · kv_heads, slots, head_dim) array per layer: the
    layout `attention.dot_product_attention` reads, so a decode step attends over the cache
    in place (row b's heads are rows b·K .. b·K + K - 1)."""

    keys: list[jax.Array]
    values: list[jax.Array]

    # the folded (batch · kv_head) axis over the data axes, batch-major: each device holds whole rows
    LOGICAL_AXES = ("batch", None, None)

    @classmethod
    def zeros(cls, cfg: LlamaConfig, batch: int, slots: int, dtype=jnp.float32) -> "KVCache":
        shape = (batch * cfg.num_kv_heads, slots, cfg.head_dim)
        return cls([jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)],
                   [jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)])

    @property
    def slots(self) -> int:
        return self.keys[0].shape[1]


def write_slots(cache: jax.Array, new: jax.Array, start: jax.Array | int) -> jax.Array:
    """cache[:, start : start + T] = new, in place. A 16-bit float cache is written through its
    bit pattern: XLA's CPU backend widens a bf16 dynamic-update-slice to f32 over the whole
    cache (a full copy each way, every layer and step); on the uint16 bits it stays in place."""
    new = new.astype(cache.dtype)
    if cache.dtype.itemsize != 2:
        return jax.lax.dynamic_update_slice(cache, new, (0, start, 0))
    bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
    written = jax.lax.dynamic_update_slice(bits(cache), bits(new), (0, start, 0))
    return jax.lax.bitcast_convert_type(written, cache.dtype)


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
        k, v = fold_heads(k).astype(self.dtype), fold_heads(v).astype(self.dtype)
        if cache_kv is not None:  # written in place; attention then runs in the cache's dtype
            cache_kv = tuple(write_slots(c, a, start) for c, a in zip(cache_kv, (k, v)))
            k, v = (c[:, :mask.shape[-1]] for c in cache_kv)  # the slots the mask covers
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
        # `from_hf_weights`, or `jax.jit(init, out_shardings=...)`), so no eager sharding.
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
        new_keys, new_values = [], []
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else (cache.keys[index], cache.values[index])
            if self.remat and cache is None:
                x = nnx.remat(lambda layer, x: layer(x, cos, sin, mask, None, start)[0])(layer, x)
                continue
            x, layer_cache = layer(x, cos, sin, mask, layer_cache, start)
            if cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        return self.norm(x), (None if cache is None else KVCache(new_keys, new_values))

    def logits(self, hidden: jax.Array) -> jax.Array:
        if self.lm_head is None:  # tied: the embedding matrix, in the compute dtype, f32 accumulation
            table = self.embed_tokens.embedding.get_value().astype(self.dtype)
            return jnp.einsum("...d,vd->...v", hidden.astype(self.dtype), table,
                              preferred_element_type=jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
                 positions: jax.Array | None = None) -> jax.Array:
        """Logits (B, T, vocab) for a full sequence, causal. attention_mask (B, T) marks real
        tokens (padding may be on either side); positions default to the count of real tokens
        before each one."""
        if attention_mask is None:
            attention_mask = jnp.ones(tokens.shape, bool)
        if positions is None:
            positions = positions_from_mask(attention_mask)
        hidden, _ = self.hidden_states(tokens, positions, attention_mask.astype(bool))
        return self.logits(hidden)


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


# ---------------------------------------------------------------------------
# Building a model from HF-named weights (both GGUF and safetensors go through here).

def _hf_key(path: tuple | str) -> tuple[str, bool]:
    """HF state-dict key of an NNX param path (a tuple, or "layers/0/mlp/up_proj/kernel"), and
    whether the array is transposed there. Loading and saving both map through it."""
    *module, leaf = path.split("/") if isinstance(path, str) else (str(p) for p in path)
    if module == ["embed_tokens"]:
        return "model.embed_tokens.weight", False
    if module == ["lm_head"]:
        return "lm_head.weight", True
    name = {"kernel": "weight", "scale": "weight", "bias": "bias"}[leaf]
    return "model." + ".".join(module + [name]), leaf == "kernel"


def from_hf_weights(cfg: LlamaConfig, weights: Mapping[str, np.ndarray], *, dtype=jnp.float32,
                    param_dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None,
                    rules: shd.Rules | None = None, source: str = "weights") -> Llama:
    """A `Llama` whose params are the given HF-named arrays ((out, in) linear weights).

    With a mesh, each param is placed by its logical axes through `rules` (the mesh config's
    logical_axis_rules).
    """
    if (mesh is None) != (rules is None):
        raise ValueError("from_hf_weights: a mesh needs its logical-axis rules, and rules need a mesh")
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                            param_dtype=param_dtype))
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    leaves = []
    used = set()
    for path, variable in flat:
        key, transposed = _hf_key(path)
        if key not in weights:
            raise CheckpointError(f"{source}: missing tensor {key!r} (for param {'/'.join(map(str, path))})")
        array = np.asarray(weights[key])
        if transposed:
            array = array.T
        if array.shape != variable.shape:
            raise CheckpointError(f"{source}: tensor {key!r} has shape {array.shape}, expected "
                                  f"{variable.shape} for this architecture")
        used.add(key)
        array = jnp.asarray(array, dtype=param_dtype)
        if mesh is not None:
            axes = variable.get_metadata().get("out_sharding")
            array = jax.device_put(array, shd.named_sharding(mesh, axes, rules))
        leaves.append((path, variable.replace(array)))
    # a tied checkpoint may still store lm_head (a copy of the embedding); rotary tables are derived
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unused = sorted(k for k in set(weights) - used - ignorable if not k.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"{source}: tensors not used by the Llama architecture: {unused[:8]}")
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


# ---------------------------------------------------------------------------
# GGUF.

_GGUF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2")


def _unpermute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's convert permutation of Q/K rows (interleaved -> rotate-half)."""
    rest = w.shape[1:]
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf_config(reader, path: str | Path) -> LlamaConfig:
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {SUPPORTED_GGUF_ARCHS})")

    def need(name):
        value = gguf_field(reader, f"{arch}.{name}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    names = {t.name for t in reader.tensors}
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    vocab = gguf_field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")), num_heads=heads,
        num_kv_heads=int(gguf_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(gguf_field(reader, f"{arch}.rope.dimension_count", hidden // heads)),
        rope_theta=float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        max_position_embeddings=int(gguf_field(reader, f"{arch}.context_length", 8192)),
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"))


def read_gguf_weights(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Config and dequantised float32 HF-named weights of a GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError/struct.error/... on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file ({err})") from err
    cfg = gguf_config(reader, path)
    permute = gguf_field(reader, "general.architecture") == "llama"
    weights = {}
    for tensor in reader.tensors:
        if tensor.name in _GGUF_GLOBAL:
            key = _GGUF_GLOBAL[tensor.name]
        else:
            block, _, rest = tensor.name.partition(".")[2].partition(".")
            if not tensor.name.startswith("blk.") or rest not in _GGUF_NAMES:
                raise CheckpointError(f"{path}: unexpected tensor {tensor.name!r}")
            key = f"model.layers.{block}.{_GGUF_NAMES[rest]}"
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
        if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute_rope(array, cfg.num_heads)
        elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
            array = _unpermute_rope(array, cfg.num_kv_heads)
        weights[key] = array
    return cfg, weights


# ---------------------------------------------------------------------------
# HF safetensors checkpoints (Llama / Qwen2 / Mistral-style config.json).

def hf_config(directory: str | Path) -> LlamaConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a Llama-family decoder")
    if raw.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling {raw['rope_scaling']} is not supported")
    if model_type == "qwen2" and raw.get("use_sliding_window"):
        raise CheckpointError(f"{path}: sliding-window attention is not supported")
    eos = raw.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
    heads = raw["num_attention_heads"]
    return LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"], num_layers=raw["num_hidden_layers"],
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rope_theta=float(raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        max_position_embeddings=raw.get("max_position_embeddings", 8192),
        bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos,
        pad_token_id=raw.get("pad_token_id"))


def read_safetensors_weights(directory: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    from safetensors.numpy import load_file

    directory = Path(directory)
    cfg = hf_config(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files")
    weights = {}
    for file in files:
        try:
            loaded = load_file(file)
        except Exception as err:  # safetensors raises its own error types on a bad header
            raise CheckpointError(f"{file}: unreadable safetensors ({err})") from err
        weights.update({k: v.astype(np.float32) if v.dtype != np.float32 else v
                        for k, v in loaded.items()})
    return cfg, weights


def weights_hash(source: str | Path) -> str:
    """Short content hash of a checkpoint (the GGUF file, or the safetensors files of a dir)."""
    import hashlib

    from jaxdiv.assets import sha256_file

    source = Path(source)
    if source.is_file():
        return sha256_file(source)[:16]
    digest = hashlib.sha256()
    for file in sorted(source.glob("*.safetensors")):
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()[:16]


def resolve_checkpoint(source: str | Path) -> Path:
    """A GGUF file or an HF checkpoint dir, from a path or a packaged asset name."""
    from jaxdiv import assets

    path = Path(source).expanduser()
    if not path.exists():
        if str(source) not in assets.REGISTRY:
            raise CheckpointError(f"checkpoint {source!r}: neither a path nor a packaged asset "
                                  f"({sorted(assets.REGISTRY)})")
        path = assets.resolve(str(source))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return ggufs[0]
    return path


# ---------------------------------------------------------------------------
# Writing HF checkpoints (a fine-tuned model that transformers and `load_pretrained` both read).

def hf_weights(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-named float32 arrays ((out, in) linear weights) of flat NNX params {"a/b/kernel": array}."""
    weights = {}
    for path, value in params.items():
        key, transposed = _hf_key(path)
        array = np.asarray(value, np.float32)
        weights[key] = np.ascontiguousarray(array.T if transposed else array)
    return weights


def hf_config_dict(cfg: LlamaConfig) -> dict:
    """config.json for `cfg`: every field `hf_config` reads, in transformers' names. Q/K/V
    biases without an o_proj bias are Qwen2's layout (a Llama with attention_bias biases o_proj too)."""
    model_type = "qwen2" if cfg.attention_bias else "llama"
    eos = list(cfg.eos_token_ids)
    return {
        "architectures": ["Qwen2ForCausalLM" if cfg.attention_bias else "LlamaForCausalLM"],
        "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_position_embeddings,
        **({} if cfg.attention_bias else {"attention_bias": False, "mlp_bias": False}),
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32", "dtype": "float32",
    }


def save_hf_checkpoint(params: "Mapping[str, np.ndarray] | Llama", cfg: LlamaConfig,
                       tokenizer: "ChatTokenizer", directory: str | Path) -> Path:
    """Write an HF Llama (or Qwen2) checkpoint dir, atomically: model.safetensors (float32; an
    SFT update is far below bf16's resolution), config.json, generation_config.json,
    tokenizer.json and tokenizer_config.json (chat template, special tokens). Both
    `load_pretrained(directory)` and transformers' Auto classes read it. `params`: a `Llama`, or
    its flat params {"layers/0/mlp/up_proj/kernel": array} (what `train_sft` returns)."""
    from safetensors.numpy import save_file

    from jaxdiv.io import atomic_path

    if isinstance(params, nnx.Module):
        params = {"/".join(map(str, path)): v.get_value()
                  for path, v in nnx.to_flat_state(nnx.state(params, nnx.Param))}
    weights = hf_weights(params)
    expected = {_hf_key(path)[0] for path, _ in nnx.to_flat_state(nnx.state(nnx.eval_shape(
        lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param))}
    if set(weights) != expected:
        raise CheckpointError(f"save_hf_checkpoint({directory}): params do not match the architecture "
                              f"(missing {sorted(expected - set(weights))[:4]}, "
                              f"extra {sorted(set(weights) - expected)[:4]})")

    def token(token_id):
        return None if token_id is None else tokenizer.tokenizer.id_to_token(token_id)

    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tokenizer.chat_template,
        "bos_token": token(tokenizer.bos_token_id), "eos_token": token(eos),
        "pad_token": token(tokenizer.pad_token_id), "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_position_embeddings,
    }
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids) or None,
                  "pad_token_id": cfg.pad_token_id}
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tokenizer.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return directory


def load_pretrained(source: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    mesh: jax.sharding.Mesh | None = None, rules: shd.Rules | None = None
                    ) -> tuple[Llama, "ChatTokenizer"]:
    """Model and tokenizer from a GGUF file, an HF safetensors dir, or a packaged asset name
    (e.g. "smollm2-135m-instruct")."""
    from jaxdiv.models.tokenizer import ChatTokenizer

    path = resolve_checkpoint(source)
    if path.suffix == ".gguf":
        cfg, weights = read_gguf_weights(path)
        tokenizer = ChatTokenizer.from_gguf(path)
    else:
        cfg, weights = read_safetensors_weights(path)
        tokenizer = ChatTokenizer.from_hf_dir(path)
        if not cfg.eos_token_ids and tokenizer.eos_token_ids:
            cfg = dataclasses.replace(cfg, eos_token_ids=tokenizer.eos_token_ids)
    model = from_hf_weights(cfg, weights, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules,
                            source=str(path))
    return model, tokenizer
