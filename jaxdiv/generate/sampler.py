"""JAX-native batched sampler: jitted prefill + jitted decode chunks over a preallocated KV cache.

Static shapes: a batch is padded to a batch bucket, prompts are left-padded to a prompt
bucket, and the cache holds prompt bucket + max-new-tokens bucket slots, so a run
compiles a handful of programs whatever the prompts. Unset buckets are sized from the data:
batch buckets from the largest batch (`auto_batch_buckets`), each batch's prompt width from
its longest prompt (`auto_prompt_width`), so any task runs without bucket settings. All rows decode in lock step (one
shared cache write slot per step, see `jaxdiv.models.llama`); between decode chunks the
rows still running move into the smallest batch bucket that holds them.

Reproducibility: the token drawn for row r at step t uses the key
fold_in(fold_in(key(seed), r), t), so a row's sample depends only on (seed, row id,
prompt, sampling params), never on which other rows share its batch; any row can be
regenerated alone.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import sharding as shd
from jaxdiv.errors import JaxdivError
from jaxdiv.models import fast_paths
from jaxdiv.models.llama import KVCache, Llama, positions_from_mask
from jaxdiv.models.tokenizer import ChatTokenizer


class GenerationError(JaxdivError, ValueError):
    """A generation request cannot be served (names the row and what is wrong)."""


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg) -> "SamplingParams":
        return cls(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class Request:
    """One completion to produce. `row_id` (with `seed`) fixes the sampling randomness."""

    row_id: int
    messages: tuple[dict, ...]
    sampling: SamplingParams
    seed: int = 0
    source: str = ""  # what the request is, for error messages (default: "row <row_id>")

    @property
    def name(self) -> str:
        return self.source or f"row {self.row_id}"


@dataclasses.dataclass(frozen=True)
class Completion:
    row_id: int
    text: str
    finish_reason: str  # "eos" | "stop" | "length" | "error"
    prompt_tokens: int
    completion_tokens: int
    error: str = ""  # why no text came back (a request that exhausted its retries)
    served: dict = dataclasses.field(default_factory=dict)  # what the server says it ran


CANDIDATES = 256  # tokens a top-p or top-k draw considers per row (see candidate_filter)


def candidate_filter(logits: jax.Array, temperature: jax.Array, top_p: jax.Array, min_p: jax.Array,
                     *, top_k: int, use_top_p: bool, candidates: int = CANDIDATES):
    """Each row's `candidates` most likely tokens, their temperature-scaled logits with the
    tokens outside top-k / top-p / min-p at the dtype's lowest value, (B, C), and their ids.

    `lax.top_k` sorts only these C: a full sort of SmolLM2's 49k vocabulary cost XLA:CPU more
    than three decode steps (`jaxdiv.models.fast_paths`). Top-p's mass is measured against the
    whole vocabulary. Third output, per row: whether the candidates hold every token the
    filters keep (top-k with k <= C, or a nucleus that closes within them). Where they do not
    (a flat distribution's nucleus, top_k > C), a draw among them drops the tail beyond.
    Per-row temperature, top_p and min_p; top_k and whether any row uses top-p are static.
    """
    scale = 1.0 / jnp.where(temperature > 0, temperature, 1.0)[:, None]
    neg_inf = jnp.finfo(logits.dtype).min
    width = min(candidates, logits.shape[-1])
    values, ids = jax.lax.top_k(logits, width)  # descending; scaling by 1/T keeps the order
    values, scaled = values * scale, logits * scale
    top_k_within = bool(top_k) and top_k <= width
    exact = jnp.full(scaled.shape[:1], top_k_within)
    if top_k_within:  # top-k renormalises over its own tokens
        values = jnp.where(jnp.arange(width) < top_k, values, neg_inf)
        log_total = jax.nn.logsumexp(values, axis=-1, keepdims=True)
    else:
        log_total = jax.nn.logsumexp(scaled, axis=-1, keepdims=True)
    keep = values > neg_inf
    if use_top_p:
        probs = jnp.exp(values - log_total)
        keep &= (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]
        exact |= jnp.sum(probs, axis=-1) >= top_p
    keep &= jnp.exp(values - values[:, :1]) >= min_p[:, None]
    return jnp.where(keep, values, neg_inf), ids, exact | (temperature <= 0)


def sample_tokens(logits, keys, temperature, top_p, min_p, *, top_k: int, use_top_p: bool,
                  candidates: int = CANDIDATES):
    """One token per row (B,): the argmax where temperature == 0, else a draw with the row's own
    key (`jax.random.categorical`), so a row's token never depends on the rest of the batch.
    With top-p or top-k the draw is among the row's `candidate_filter` tokens, else over the
    whole vocabulary at temperature, min-p applied. `JAXDIV_CPU_FAST_PATHS=1`: the exact
    sampler of `jaxdiv.models.fast_paths`."""
    filtered = lambda: candidate_filter(logits, temperature, top_p, min_p, top_k=top_k,
                                        use_top_p=use_top_p, candidates=candidates)
    if fast_paths.enabled():
        return fast_paths.sample_tokens(logits, keys, temperature, top_p, min_p, top_k=top_k,
                                        use_top_p=use_top_p, candidates=filtered)

    def draw():
        if not (use_top_p or top_k):  # temperature and min-p alone: the whole vocabulary
            values = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]
            floor = jnp.max(values, axis=-1, keepdims=True) + jnp.log(min_p)[:, None]
            drawn = jax.vmap(jax.random.categorical)(keys, jnp.where(values >= floor, values, -jnp.inf))
            return jnp.where(temperature > 0, drawn, jnp.argmax(logits, axis=-1))
        values, ids, _ = filtered()
        # A greedy row keeps its first candidate alone (the argmax). Reading it as ids[:, 0]
        # instead made XLA:CPU sort the whole vocabulary rather than run its top-k.
        first = jnp.arange(values.shape[-1]) == 0
        values = jnp.where((temperature > 0)[:, None] | first, values, -jnp.inf)
        drawn = jax.vmap(jax.random.categorical)(keys, values)
        return jnp.take_along_axis(ids, drawn[:, None], axis=-1)[:, 0]

    greedy = lambda: jnp.argmax(logits, axis=-1)
    return jax.lax.cond(jnp.any(temperature > 0), draw, greedy).astype(jnp.int32)


def _bucket(value: int, buckets: Sequence[int]) -> int:
    return next(size for size in buckets if value <= size)


def auto_batch_buckets(max_batch: int) -> tuple[int, ...]:
    """max_batch, a quarter of it, and so on down to 2: a shrinking batch drops to a bucket at
    most 4x its live rows, with few programs to compile."""
    sizes = [max_batch]
    while sizes[-1] > 2:
        sizes.append(max(2, math.ceil(sizes[-1] / 4)))
    return tuple(sorted(set(sizes)))


def auto_prompt_width(length: int) -> int:
    """A prompt bucket sized from the data: `length` rounded up to a multiple of 64, or past 256
    of a quarter of the power of two below it, so padding stays under 25% and any range of
    lengths compiles about four widths per doubling."""
    step = max(64, 1 << max(0, length.bit_length() - 3))
    return -(-length // step) * step


def _stop_at(text: str, stops: Sequence[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


class JaxGenerator:
    """Batched generation with a Llama-family model. Thread-compatible, not thread-safe."""

    def __init__(self, model: Llama, tokenizer: ChatTokenizer, *, batch_buckets: Sequence[int] = (),
                 max_batch: int = 32, prompt_buckets: Sequence[int] = (), decode_chunk: int = 16,
                 mesh: jax.sharding.Mesh | None = None, rules: shd.Rules | None = None,
                 stop_at_eos: bool = True):
        """Empty `batch_buckets`: `auto_batch_buckets(max_batch)`; empty `prompt_buckets`: each
        batch's width is `auto_prompt_width` of its longest prompt. With a `mesh`, `rules` (its
        config's logical_axis_rules) place the rows and the cache on it."""
        if (mesh is None) != (rules is None):
            raise ValueError("JaxGenerator: a mesh needs its logical-axis rules, and rules need a mesh")
        self.tokenizer = tokenizer
        self.cfg = model.cfg
        self.mesh, self.rules = mesh, rules
        data_size = 1 if mesh is None else shd.shard_count(mesh, rules, "batch")
        # Every batch bucket splits evenly over the data axes, and holds at least two rows: a
        # lone row runs with a padding row, as XLA's CPU matmuls are several times slower for
        # one row than for two (10x for the 49k-vocabulary LM head).
        self.batch_buckets = tuple(sorted({math.ceil(max(b, 2) / data_size) * data_size
                                           for b in batch_buckets or auto_batch_buckets(max_batch)}))
        self.prompt_buckets = tuple(prompt_buckets)
        self.buckets_used: dict[str, set[int]] = {"batch": set(), "prompt": set()}  # see take_buckets_used
        self.decode_chunk = decode_chunk
        self.graphdef, self.state = nnx.split(model)
        eos = set(model.cfg.eos_token_ids) | set(tokenizer.eos_token_ids)
        if not eos:
            raise GenerationError("the model/tokenizer defines no EOS token")
        # stop_at_eos=False (benchmarks: a fixed number of new tokens) matches no token id
        self.eos_ids = jnp.asarray(sorted(eos) if stop_at_eos else [-1], jnp.int32)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("slots", "top_k", "use_top_p"))
        self._decode = jax.jit(self._decode_impl,
                               static_argnames=("prompt_bucket", "num_steps", "top_k", "use_top_p"),
                               donate_argnames=("cache", "out"))
        self._shrink = jax.jit(self._shrink_impl)

    # -- device programs ------------------------------------------------------------------
    def _row_keys(self, seeds, row_ids, step):
        base = jax.vmap(lambda s, r: jax.random.fold_in(jax.random.fold_in(jax.random.key(s), r), step))
        return base(seeds, row_ids)

    def _prefill_impl(self, state, tokens, prompt_mask, seeds, row_ids, temperature, top_p, min_p,
                      *, slots, top_k, use_top_p):
        model = nnx.merge(self.graphdef, state)
        batch, width = tokens.shape
        cache = self._constrain_cache(KVCache.zeros(self.cfg, batch, slots, model.dtype))
        key_mask = jnp.concatenate([prompt_mask, jnp.ones((batch, slots - width), bool)], axis=1)
        hidden, cache = model.hidden_states(tokens, positions_from_mask(prompt_mask), key_mask, cache, 0)
        logits = model.logits(hidden[:, -1])
        first = sample_tokens(logits, self._row_keys(seeds, row_ids, 0), temperature, top_p, min_p,
                              top_k=top_k, use_top_p=use_top_p)
        return first, cache, key_mask

    def _decode_impl(self, state, cache, out, done, key_mask, prompt_lengths, max_new, seeds,
                     row_ids, temperature, top_p, min_p, start_step, *, prompt_bucket, num_steps,
                     top_k, use_top_p):
        """Run up to `num_steps` decode steps from `start_step`, fewer once every row is done;
        out[:, t] holds token t (pad when done).

        Token t (already in `out`) is fed at slot prompt_bucket + t, giving the logits of token
        t + 1; `out` has one column more than the decode slots, for the last step's token.
        """
        model = nnx.merge(self.graphdef, state)

        def step(carry):
            i, cache, out, done = carry
            t = start_step + i
            token = jax.lax.dynamic_slice_in_dim(out, t, 1, axis=1)
            positions = (prompt_lengths + t)[:, None]
            hidden, cache = model.hidden_states(token, positions, key_mask, cache, prompt_bucket + t)
            logits = model.logits(hidden[:, -1])
            nxt = sample_tokens(logits, self._row_keys(seeds, row_ids, t + 1), temperature, top_p,
                                min_p, top_k=top_k, use_top_p=use_top_p)
            done = done | jnp.isin(token[:, 0], self.eos_ids) | (t + 1 >= max_new)
            nxt = jnp.where(done, self.pad_id, nxt)
            out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], t + 1, axis=1)
            return i + 1, cache, out, done

        def running(carry):  # once every row is done, further steps would only write padding
            i, _, _, done = carry
            return (i < num_steps) & ~jnp.all(done)

        _, cache, out, done = jax.lax.while_loop(running, step, (jnp.int32(0), cache, out, done))
        return cache, out, done

    # -- host side --------------------------------------------------------------------------
    def encode(self, request: Request) -> list[int]:
        """The prompt's token ids; an error naming the request if it is empty or does not fit."""
        ids = self.tokenizer.encode_chat(list(request.messages))
        if not ids:
            raise GenerationError(f"{request.name}: the prompt encodes to no tokens")
        context = self.cfg.max_position_embeddings
        if len(ids) + request.sampling.max_new_tokens > context:
            raise GenerationError(f"{request.name}: the prompt's {len(ids)} tokens plus max_new_tokens "
                                  f"{request.sampling.max_new_tokens} exceed the model's context of "
                                  f"{context} tokens")
        if self.prompt_buckets and len(ids) > self.prompt_buckets[-1]:
            raise GenerationError(f"{request.name}: the prompt's {len(ids)} tokens exceed the largest "
                                  f"prompt bucket {self.prompt_buckets[-1]}; add a larger one, or leave "
                                  f"prompt_buckets empty to size them from the prompts")
        return ids

    def take_buckets_used(self) -> dict[str, list[int]]:
        """The batch and prompt buckets run since the last call (a job's record of its shapes)."""
        used = {kind: sorted(sizes) for kind, sizes in self.buckets_used.items()}
        self.buckets_used = {kind: set() for kind in used}
        return used

    def prompt_width(self, longest: int) -> int:
        """The padded prompt length of a batch whose longest prompt has `longest` tokens."""
        if self.prompt_buckets:
            return _bucket(longest, self.prompt_buckets)
        return min(auto_prompt_width(longest), self.cfg.max_position_embeddings)

    def generate(self, requests: Sequence[Request]) -> list[Completion]:
        """Completions in the order of `requests`. Batches group rows of like static settings."""
        results: dict[int, Completion] = {}
        groups: dict[tuple, list[tuple[int, Request, list[int]]]] = {}
        for index, request in enumerate(requests):
            s = request.sampling
            key = (s.top_k, s.top_p < 1.0)
            groups.setdefault(key, []).append((index, request, self.encode(request)))
        largest = self.batch_buckets[-1]
        for (top_k, use_top_p), items in groups.items():
            items.sort(key=lambda item: len(item[2]))  # similar lengths share a prompt bucket
            for begin in range(0, len(items), largest):
                batch = items[begin:begin + largest]
                for (index, _, _), completion in zip(batch, self._run_batch(batch, top_k, use_top_p)):
                    results[index] = completion
        return [results[i] for i in range(len(requests))]

    def _run_batch(self, batch, top_k: int, use_top_p: bool) -> list[Completion]:
        size = _bucket(len(batch), self.batch_buckets)
        width = self.prompt_width(max(len(ids) for _, _, ids in batch))
        self.buckets_used["batch"].add(size)
        self.buckets_used["prompt"].add(width)
        max_new = max(r.sampling.max_new_tokens for _, r, _ in batch)
        new_slots = math.ceil(max_new / self.decode_chunk) * self.decode_chunk
        tokens = np.full((size, width), self.pad_id, np.int32)
        mask = np.zeros((size, width), bool)
        rows = np.zeros((6, size), np.float64)  # seed, row id, temperature, top_p, min_p, max_new
        lengths = np.ones(size, np.int32)
        for slot in range(size):
            _, request, ids = batch[min(slot, len(batch) - 1)]  # padding rows repeat the last row
            tokens[slot, width - len(ids):] = ids
            mask[slot, width - len(ids):] = True
            lengths[slot] = len(ids)
            s = request.sampling
            rows[:, slot] = (request.seed, request.row_id, s.temperature, s.top_p, s.min_p,
                             s.max_new_tokens)
        # Per-row device state of the decode, kept in the batch's current (possibly shrunk) order.
        per_row = {name: self._place(rows[i].astype(dtype)) for i, (name, dtype) in enumerate(
            (("seeds", np.uint32), ("row_ids", np.uint32), ("temperature", np.float32),
             ("top_p", np.float32), ("min_p", np.float32), ("max_new", np.int32)))}
        per_row["lengths"] = self._place(lengths)
        first, cache, per_row["key_mask"] = self._prefill(
            self.state, self._place(tokens), self._place(mask), per_row["seeds"], per_row["row_ids"],
            per_row["temperature"], per_row["top_p"], per_row["min_p"], slots=width + new_slots,
            top_k=top_k, use_top_p=use_top_p)
        per_row["out"] = jnp.full((size, new_slots + 1), self.pad_id, jnp.int32).at[:, 0].set(first)
        order = np.arange(size)  # the batch row at each position; >= len(batch): padding
        done = np.arange(size) >= len(batch)
        generated = np.full((size, new_slots + 1), self.pad_id, np.int32)
        stops = [request.sampling.stop for _, request, _ in batch]
        stopped = np.zeros(len(batch), bool)
        for start in range(0, new_slots, self.decode_chunk):
            cache, per_row["out"], done_dev = self._decode(
                self.state, cache, per_row["out"], jnp.asarray(done), per_row["key_mask"],
                per_row["lengths"], per_row["max_new"], per_row["seeds"], per_row["row_ids"],
                per_row["temperature"], per_row["top_p"], per_row["min_p"], start,
                prompt_bucket=width, num_steps=self.decode_chunk, top_k=top_k, use_top_p=use_top_p)
            done = np.array(done_dev)
            real = order < len(batch)
            generated[order[real]] = np.asarray(per_row["out"])[real]
            for position in np.flatnonzero(real & ~done):
                row = order[position]
                if stops[row]:
                    text = self.tokenizer.decode(generated[row, :start + self.decode_chunk + 1])
                    if _stop_at(text, stops[row]) is not None:
                        done[position] = stopped[row] = True
            if done.all():
                break
            live = np.flatnonzero(~done)
            smaller = _bucket(len(live), self.batch_buckets)
            if smaller < len(order):  # finished rows would only decode padding: drop them
                self.buckets_used["batch"].add(smaller)
                keep = np.concatenate([live, np.full(smaller - len(live), live[0])])
                cache, per_row = self._shrink(cache, per_row, self._place(keep.astype(np.int32)))
                done = np.arange(smaller) >= len(live)
                order = np.where(done, size, order[keep])  # padding holds no batch row
        return [self._completion(request, ids, generated[row], stopped[row])
                for row, (_, request, ids) in enumerate(batch)]

    def _shrink_impl(self, cache, per_row, keep):
        """The cache and per-row arrays of the batch positions `keep`, in that order."""
        cache = self._constrain_cache(cache.take_rows(keep, self.cfg.num_kv_heads))
        per_row = jax.tree.map(lambda a: a[keep], per_row)
        if self.mesh is not None:
            per_row = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
                a, shd.batch_sharding(self.mesh, a.ndim, self.rules)), per_row)
        return cache, per_row

    def _constrain_cache(self, cache: KVCache) -> KVCache:
        """The cache laid out over the mesh's data axes (whole rows per device), if any."""
        if self.mesh is None:
            return cache
        return jax.lax.with_sharding_constraint(cache, shd.named_sharding(self.mesh, KVCache.LOGICAL_AXES,
                                                                          self.rules))

    def _completion(self, request: Request, prompt: list[int], generated: np.ndarray,
                    stopped: bool) -> Completion:
        limit = request.sampling.max_new_tokens
        generated = generated[:limit].tolist()
        eos = set(np.asarray(self.eos_ids).tolist())
        ends = [i for i, tok in enumerate(generated) if tok in eos]
        reason = "length"
        if ends:
            generated, reason = generated[:ends[0]], "eos"
        text = self.tokenizer.decode(generated)
        cut = _stop_at(text, request.sampling.stop)
        if cut is not None:
            text, reason = text[:cut], "stop"
        elif stopped:
            reason = "stop"
        return Completion(row_id=request.row_id, text=text, finish_reason=reason,
                          prompt_tokens=len(prompt), completion_tokens=len(generated) + (reason == "eos"))

    def _place(self, array: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(array)
        return jax.device_put(array, shd.batch_sharding(self.mesh, array.ndim, self.rules))
