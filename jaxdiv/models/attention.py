"""Scaled dot-product attention shared by the BERT encoder and the Llama decoder.

Layout: queries (B, T, H, D); keys and values heads-major, (B, K, S, D), the layout the KV
cache stores (`kv_layout` makes it from the projections' (B, S, K, D)), with H a multiple of
K (grouped-query attention; K = H for plain multi-head attention). Both einsums then batch
over (batch, kv head) and read the cache as it is; a cache laid out (B, S, K, D) would be
transposed for every layer at every decode step.

The softmax's division comes after the second einsum (on (T, D) rather than (T, S) values):
exact, and on XLA's CPU backend it fused better (BERT's attention core 32 ms against 42).

`JAXDIV_CPU_FAST_PATHS=1` swaps in the folded layout of `jaxdiv.models.fast_paths`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiv.models import fast_paths


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout at `rate`; the identity without a key."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def kv_layout(x: jax.Array) -> jax.Array:
    """Keys or values (B, S, K, D) -> the layout `dot_product_attention` reads and the KV cache
    stores: (B, K, S, D), or (B·K, S, D) with the fast paths. The slot axis is -2 in both."""
    return fast_paths.fold_heads(x) if fast_paths.enabled() else x.transpose(0, 2, 1, 3)


def kv_shape(batch: int, kv_heads: int, slots: int, depth: int) -> tuple[int, ...]:
    """The shape of `kv_layout`'s keys or values."""
    return (batch * kv_heads, slots, depth) if fast_paths.enabled() else (batch, kv_heads, slots, depth)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                          dtype: Any, dropout_rate: float = 0.0,
                          dropout_key: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ / √D, masked) v, with f32 scores, softmax and accumulation whatever `dtype`
    (the matmul input dtype). k, v: in `kv_layout`. `mask`: bool, broadcastable to (B, T, S);
    every query must see at least one key, or it attends uniformly to all. Attention-probability
    dropout at `dropout_rate` when `dropout_key` is given. Returns (B, T, H·D) float32."""
    drop = lambda weights: dropout(weights, dropout_rate, dropout_key)
    if fast_paths.enabled():
        return fast_paths.folded_attention(q, k, v, mask, dtype=dtype, dropout=drop)
    batch, length, heads, depth = q.shape
    kv_heads = k.shape[1]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, depth).astype(dtype)
    scores = jnp.einsum("btkgd,bksd->bkgts", q, k.astype(dtype), preferred_element_type=jnp.float32)
    scores = jnp.where(mask[:, None, None], scores * (1.0 / np.sqrt(depth)), jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    context = jnp.einsum("bkgts,bksd->bkgtd", drop(weights).astype(dtype), v.astype(dtype),
                         preferred_element_type=jnp.float32) / total
    return context.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads * depth)
