"""Scaled dot-product attention shared by the BERT encoder and the Llama decoder.

Layout: queries (B, T, H, D); keys and values (B·K, S, D), batch and kv head folded into
one leading axis (`fold_heads`), with H a multiple of K (grouped-query attention; K = H for
plain multi-head attention). The folded layout is what the KV cache stores, so a decode
step reads it with neither a transpose nor a reshape (either made XLA copy the cache).

Why not two einsums over (b, h, t, s): XLA's CPU backend runs a batched matmul with one
leading batch dimension several times faster than one with two batch dimensions
interleaved with the contraction (measured 4-6x at BERT's B=128, T=S=64, D=32). So every
(batch, kv-head) pair is folded into one batch axis, and the G query heads that share a
kv head are folded into the query axis. The softmax's division is moved after the
second matmul (on (T, D) rather than (T, S) values), which is exact and fuses better.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout at `rate`; the identity without a key."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


def fold_heads(x: jax.Array) -> jax.Array:
    """Keys or values (B, S, K, D) -> (B·K, S, D), the layout `dot_product_attention` reads."""
    batch, slots, heads, depth = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch * heads, slots, depth)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *,
                          dtype: Any, dropout_rate: float = 0.0,
                          dropout_key: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ / √D, masked) v, with f32 scores, softmax and accumulation whatever `dtype`
    (the matmul input dtype). `mask`: bool, broadcastable to (B, T, S); every query must see
    at least one key, or it attends uniformly to all. Attention-probability dropout at
    `dropout_rate` when `dropout_key` is given. Returns (B, T, H·D) float32."""
    batch, length, heads, depth = q.shape
    kv_heads, slots = k.shape[0] // batch, k.shape[1]
    groups = heads // kv_heads
    # (B, T, K, G, D) -> (B·K, G·T, D)
    q = q.reshape(batch, length, kv_heads, groups, depth).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch * kv_heads, groups * length, depth).astype(dtype)
    k, v = k.astype(dtype), v.astype(dtype)
    batched = ((0,), (0,))
    scores = jax.lax.dot_general(q, k, (((2,), (2,)), batched), preferred_element_type=jnp.float32)
    # Mask the (B·K, G·T, S) scores in place: the mask broadcast over heads and folded likewise.
    mask = jnp.broadcast_to(jnp.broadcast_to(mask, (batch, length, slots))[:, None, None],
                            (batch, kv_heads, groups, length, slots))
    scores = jnp.where(mask.reshape(scores.shape), scores * (1.0 / np.sqrt(depth)), jnp.finfo(jnp.float32).min)
    weights = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True))
    total = jnp.sum(weights, axis=-1, keepdims=True)
    weights = dropout(weights, dropout_rate, dropout_key)
    context = jax.lax.dot_general(weights.astype(dtype), v, (((2,), (1,)), batched),
                                  preferred_element_type=jnp.float32) / total
    context = context.reshape(batch, kv_heads, groups, length, depth)
    return context.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads * depth)
