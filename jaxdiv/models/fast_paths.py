"""The CPU fast paths: formulations measured faster on XLA's CPU backend, off by default.

Switch: `JAXDIV_CPU_FAST_PATHS=1` in the environment (read by `enabled()`, here only) makes
the models and the sampler run these instead of their plain JAX forms. With it on, the code
is the one every committed experiment was generated with, bit for bit (its samples; the
plain sampler draws other ones). Set it before the first model call of a process: it is read
while a program is traced, and a compiled program keeps the choice it was traced with.

Together, measured against the plain code on the project's shared 2-core Xeon
(`scripts/bench_fast_paths.py`, 2026-12-05; `docs/benchmarks/generate.md` has the table and the
profiles): the 600-row TREC pool 151.5 s against 156.0 s plain (+3% for plain); the MiniLM
embedder 217 / 124 sent/s against 206 / 120 (bf16 / f32); SmolLM2 decode at batch 32, bf16,
greedy 406 against 379 tok/s, and within ±5% in every other batch-8/32 cell. The wins are small:
each of these was worth more against the code it replaced than against the plain JAX here.

What each one is, and what it was measured to gain:

- **Folded attention** (`folded_attention`, `fold_heads`): keys and values laid out as
  (batch · kv_head, slot, dim), one batch axis, with the G query heads of a kv head folded
  into the query axis, and the KV cache stored that way. The plain einsum over (batch, kv_head)
  reads a heads-major (B, K, S, D) cache as it is; on 2026-12-05 its attention core measured
  32 against 26 ms (f32) and 28 against 25 ms (bf16) at BERT's shape (B = 128, T = S = 64,
  12 heads of 32), and 0.9 against 1.8 ms for a batch-32 decode step of SmolLM2.
- **Cache writes through uint16 bits** (`write_slots`): XLA's CPU backend widened a bf16
  `dynamic_update_slice` to f32 over the whole cache (36 ms of a 195 ms batch-32 decode
  step, profile of 2026-11-22). On 2026-12-05, write + attention read over 30 layers
  (batch 32, 320 slots, bf16) took 15.4 ms with the plain write, 10.0 ms through the bits.
- **argmax as two reductions** (`argmax`): XLA:CPU runs `jnp.argmax`'s paired (value, index)
  reduction as a scalar loop; over the 49k vocabulary it cost 18 ms of a batch-32 decode step
  (profile of 2026-11-22), more than the LM head. On 2026-12-05, with jax 0.10.2, `jnp.argmax`
  over 32 x 49,152 logits took 2.7 ms.
- **Exact top-p without a sort** (`sample_tokens`, `filter_logits`, `nucleus_mask`): the plain
  sampler draws among the 256 most likely tokens (`lax.top_k`; a full sort of the vocabulary
  took XLA:CPU 320 ms at batch 32, three decode steps), which drops the tail of a nucleus larger
  than that (4.9% of SmolLM2's steps at temperature 0.8, top-p 0.95). Here such rows draw over
  the whole vocabulary, found by bisection, gathered apart while they are at most 1/8 of the
  batch so the others keep the cheap draw (a `lax.switch` "spill").
"""

from __future__ import annotations

import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

SWITCH = "JAXDIV_CPU_FAST_PATHS"


def enabled() -> bool:
    """Whether the CPU fast paths are on (`JAXDIV_CPU_FAST_PATHS=1`)."""
    return os.environ.get(SWITCH, "") == "1"


# -- attention and the KV cache ---------------------------------------------------------------

def fold_heads(x: jax.Array) -> jax.Array:
    """Keys or values (B, S, K, D) -> (B·K, S, D), the layout `folded_attention` reads."""
    batch, slots, heads, depth = x.shape
    return x.transpose(0, 2, 1, 3).reshape(batch * heads, slots, depth)


def folded_rows(rows: jax.Array, kv_heads: int) -> jax.Array:
    """The folded-cache indices of batch rows `rows`: row b's heads are b·K .. b·K + K - 1."""
    return (rows[:, None] * kv_heads + jnp.arange(kv_heads)).reshape(-1)


def folded_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, *, dtype: Any,
                     dropout: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """`attention.dot_product_attention` with keys and values (B·K, S, D): every (batch,
    kv-head) pair one batch entry, the G query heads of a kv head folded into the query axis."""
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
    context = jax.lax.dot_general(dropout(weights).astype(dtype), v, (((2,), (1,)), batched),
                                  preferred_element_type=jnp.float32) / total
    context = context.reshape(batch, kv_heads, groups, length, depth)
    return context.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads * depth)


def write_slots(cache: jax.Array, new: jax.Array, start: jax.Array | int) -> jax.Array:
    """cache[:, start : start + T] = new on a folded (B·K, S, D) cache, in place; a 16-bit
    float cache through its bit pattern."""
    new = new.astype(cache.dtype)
    if cache.dtype.itemsize != 2:
        return jax.lax.dynamic_update_slice(cache, new, (0, start, 0))
    bits = lambda x: jax.lax.bitcast_convert_type(x, jnp.uint16)
    written = jax.lax.dynamic_update_slice(bits(cache), bits(new), (0, start, 0))
    return jax.lax.bitcast_convert_type(written, cache.dtype)


# -- sampling -------------------------------------------------------------------------------

def argmax(x: jax.Array) -> jax.Array:
    """`jnp.argmax` along the last axis (the first index on ties), int32, as two plain reductions."""
    largest = jnp.max(x, axis=-1, keepdims=True)
    index = jnp.arange(x.shape[-1], dtype=jnp.int32)
    return jnp.minimum(jnp.min(jnp.where(x == largest, index, x.shape[-1]), axis=-1), x.shape[-1] - 1)


def filter_logits(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, min_p: jax.Array,
                  *, top_k: int, use_top_p: bool) -> jax.Array:
    """Temperature-scaled logits (B, V) with the tokens outside top-k / top-p / min-p at the
    dtype's lowest value, over the whole vocabulary. Rows with temperature 0 are left for the
    caller's argmax."""
    logits = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    neg_inf = jnp.finfo(logits.dtype).min
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, neg_inf, logits)
    if use_top_p:
        logits = jnp.where(nucleus_mask(jax.nn.softmax(logits, axis=-1), top_p), logits, neg_inf)
    probs = jax.nn.softmax(logits, axis=-1)
    floor = min_p[:, None] * jnp.max(probs, axis=-1, keepdims=True)
    return jnp.where(probs < floor, neg_inf, logits)


def nucleus_mask(probs: jax.Array, top_p: jax.Array, candidates: int = 256,
                 iterations: int = 32) -> jax.Array:
    """(B, V) bool: the top-p nucleus, i.e. the most likely tokens up to and including the one
    whose cumulative mass first reaches top_p, without sorting the vocabulary.

    The nucleus is sought among the `candidates` most likely tokens (`lax.top_k`). Rows whose
    nucleus is larger fall back to a bisection for tau = max{t : mass(p >= t) >= top_p} over
    the whole vocabulary; both are exact (up to ties closer than max_prob / 2**iterations).
    """
    top = jax.lax.top_k(probs, min(candidates, probs.shape[-1]))[0]
    reached = jnp.cumsum(top, axis=-1) >= top_p[:, None]
    threshold = jnp.take_along_axis(top, jnp.argmax(reached, axis=-1)[:, None], axis=-1)[:, 0]
    covered = reached[:, -1]

    def bisected():
        def mass(t):
            return jnp.sum(jnp.where(probs >= t[:, None], probs, 0.0), axis=-1)

        def step(_, bounds):
            low, high = bounds
            mid = 0.5 * (low + high)
            enough = mass(mid) >= top_p
            return jnp.where(enough, mid, low), jnp.where(enough, high, mid)

        high = jnp.max(probs, axis=-1) * (1 + 1e-6) + 1e-30  # mass(high) = 0 < top_p
        low, _ = jax.lax.fori_loop(0, iterations, step, (jnp.zeros_like(high), high))
        return jnp.where(covered, threshold, low)

    threshold = jax.lax.cond(jnp.all(covered), lambda: threshold, bisected)
    return probs >= threshold[:, None]


def sample_tokens(logits, keys, temperature, top_p, min_p, *, top_k: int, use_top_p: bool,
                  candidates: Callable[[], tuple[jax.Array, jax.Array, jax.Array]]):
    """`sampler.sample_tokens` with exact top-p and top-k: one token per row, argmax where
    temperature == 0, else a Gumbel-max draw with the row's own key.

    `candidates()` is the sampler's `candidate_filter` of these logits: the filtered logits of
    each row's most likely tokens, their ids, and whether they hold the row's whole kept set.
    Rows where they do draw among them; the others (flat distributions, about 5% of SmolLM2's
    steps at top-p 0.95) draw over the whole vocabulary, computed for those rows alone while
    they are few. Which way a row draws depends only on its own logits, so its token never
    depends on the rest of the batch.
    """
    greedy = argmax(logits)
    batch = logits.shape[0]

    def gumbel_max(filtered, row_keys):
        noise = jax.vmap(lambda key: jax.random.gumbel(key, filtered.shape[1:], filtered.dtype))(row_keys)
        return argmax(filtered + noise)

    def full_draw(rows=None):  # over the whole vocabulary, for `rows` (default: all)
        pick = (lambda a: a) if rows is None else (lambda a: a[rows])
        return gumbel_max(filter_logits(pick(logits), pick(temperature), pick(top_p), pick(min_p),
                                        top_k=top_k, use_top_p=use_top_p), pick(keys))

    def draw():
        if not (use_top_p or top_k):
            return full_draw()
        filtered, ids, exact = candidates()
        among = jnp.take_along_axis(ids, gumbel_max(filtered, keys)[:, None], axis=-1)[:, 0]
        spill = max(2, batch // 8)  # rows drawn over the vocabulary without the whole batch

        def few_inexact():  # padding entries repeat row 0 and keep its own token
            rows = jnp.nonzero(~exact, size=spill, fill_value=0)[0]
            return among.at[rows].set(jnp.where(exact[rows], among[rows], full_draw(rows)))

        branches = [lambda: among, lambda: jnp.where(exact, among, full_draw())]
        inexact = jnp.sum(~exact)
        if spill < batch:
            branches.insert(1, few_inexact)
            choice = jnp.where(inexact == 0, 0, jnp.where(inexact <= spill, 1, 2))
        else:
            choice = jnp.where(inexact == 0, 0, 1)
        return jax.lax.switch(choice, branches)

    return jax.lax.cond(jnp.any(temperature > 0), lambda: jnp.where(temperature > 0, draw(), greedy),
                        lambda: greedy)
