"""JAX sampler: greedy parity with transformers `generate`, logit filters and draws vs float64
numpy, per-row reproducibility whatever the batch, stop handling, data-axis sharding; each with
the plain sampler and with the CPU fast paths (`cpu_fast_paths`) where both exist."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.generate.sampler import (GenerationError, JaxGenerator, Request, SamplingParams,
                                     candidate_filter, sample_tokens)
from jaxdiv.models import llama
from jaxdiv.models.fast_paths import filter_logits, nucleus_mask

FIXTURE = Path(__file__).parent / "fixtures" / "greedy_reference.json"


def _requests(prompts, sampling, seed=0):
    return [Request(i, ({"role": "user", "content": p},), sampling, seed) for i, p in enumerate(prompts)]


def test_greedy_matches_stored_transformers_generate(smollm2_generator, cpu_fast_paths):
    reference = json.loads(FIXTURE.read_text())
    greedy = SamplingParams(temperature=0.0, max_new_tokens=reference["max_new_tokens"])
    completions = smollm2_generator.generate(_requests(reference["prompts"], greedy))
    tokenizer = smollm2_generator.tokenizer
    for completion, expected in zip(completions, reference["token_ids"]):
        assert completion.text == tokenizer.decode(expected)
        ended = len(expected) < reference["max_new_tokens"]
        assert completion.finish_reason == ("eos" if ended else "length")
        assert completion.completion_tokens == len(expected) + ended


@pytest.mark.torch
@pytest.mark.slow
def test_greedy_matches_transformers_generate_live(smollm2_generator, smollm2_gguf, cpu_fast_paths):
    pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from tests.generate.make_reference import MAX_NEW_TOKENS, PROMPTS, transformers_greedy

    expected = transformers_greedy(smollm2_gguf)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW_TOKENS)
    tokenizer = smollm2_generator.tokenizer
    got = smollm2_generator.generate(_requests(PROMPTS, greedy))
    assert [tokenizer.encode(c.text) for c in got] == expected


def _filter_reference(logits, temperature, top_k, top_p, min_p):
    """float64 numpy: the set of tokens each filter keeps, applied in order."""
    x = logits.astype(np.float64) / temperature
    keep = np.ones_like(x, bool)
    if top_k:
        keep &= x >= np.sort(x)[-top_k]
    if top_p < 1.0:
        masked = np.where(keep, x, -np.inf)
        order = np.argsort(-masked)
        probs = np.exp(masked[order] - masked[order][0])
        probs /= probs.sum()
        above = np.cumsum(probs) - probs
        nucleus = np.zeros_like(keep)
        nucleus[order[above < top_p]] = True
        keep &= nucleus
    masked = np.where(keep, x, -np.inf)
    probs = np.exp(masked - masked.max())
    probs /= probs.sum()
    return keep & (probs >= min_p * probs.max())


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 0.9, 0.0), (5, 1.0, 0.0), (0, 1.0, 0.2),
                                              (7, 0.8, 0.05)])
def test_filters_keep_the_reference_token_sets(top_k, top_p, min_p):
    """The fast paths' whole-vocabulary filter."""
    rng = np.random.default_rng(top_k)
    logits = rng.normal(0, 2, (6, 50)).astype(np.float32)
    temperature = np.array([0.5, 0.7, 1.0, 1.3, 2.0, 0.9], np.float32)
    filtered = np.asarray(filter_logits(
        jnp.asarray(logits), jnp.asarray(temperature), jnp.full(6, top_p), jnp.full(6, min_p),
        top_k=top_k, use_top_p=top_p < 1.0))
    kept = filtered > np.finfo(np.float32).min
    for row in range(6):
        expected = _filter_reference(logits[row], temperature[row], top_k, top_p, min_p)
        np.testing.assert_array_equal(kept[row], expected)
        np.testing.assert_allclose(filtered[row][kept[row]], logits[row][kept[row]] / temperature[row],
                                   rtol=1e-6)


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 0.9, 0.0), (5, 1.0, 0.0), (0, 0.6, 0.2),
                                              (7, 0.8, 0.05), (30, 1.0, 0.0)])
def test_candidate_filter_is_exact_where_it_says_so(top_k, top_p, min_p):
    """Rows flagged exact keep the reference token set, among their 12 candidates; top-k beyond
    the candidates (30 > 12) is never flagged exact."""
    rng = np.random.default_rng(top_k)
    logits = rng.normal(0, 2, (6, 50)).astype(np.float32) * np.array([[0.3], [1], [2], [3], [4], [1]], np.float32)
    temperature = np.array([0.5, 0.7, 1.0, 1.3, 2.0, 0.9], np.float32)
    values, ids, exact = (np.asarray(a) for a in candidate_filter(
        jnp.asarray(logits), jnp.asarray(temperature), jnp.full(6, top_p), jnp.full(6, min_p),
        top_k=top_k, use_top_p=top_p < 1.0, candidates=12))
    assert exact.any() or top_k > 12
    for row in np.flatnonzero(exact):
        kept = values[row] > np.finfo(np.float32).min
        expected = _filter_reference(logits[row], temperature[row], top_k, top_p, min_p)
        assert set(ids[row][kept].tolist()) == set(np.flatnonzero(expected).tolist())
        np.testing.assert_allclose(values[row][kept], logits[row][ids[row][kept]] / temperature[row], rtol=1e-6)
    if top_k > 12:
        assert not exact.any()


@pytest.mark.parametrize("candidates", [3, 64])
def test_nucleus_candidates_and_bisection_fallback_agree_with_sorting(candidates):
    """The fast paths' nucleus: rows whose nucleus exceeds the candidate count take the
    bisection path; both exact."""
    rng = np.random.default_rng(candidates)
    logits = rng.normal(0, 1, (5, 40)) * np.array([[0.1], [1.0], [3.0], [6.0], [0.5]])
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    top_p = np.array([0.9, 0.5, 0.95, 0.3, 0.99])
    got = np.asarray(nucleus_mask(jnp.asarray(probs, jnp.float32), jnp.asarray(top_p, jnp.float32),
                                  candidates=candidates))
    for row in range(5):
        order = np.argsort(-probs[row])
        above = np.cumsum(probs[row][order]) - probs[row][order]
        expected = np.zeros(40, bool)
        expected[order[above < top_p[row]]] = True
        np.testing.assert_array_equal(got[row], expected)


@pytest.mark.parametrize("flat_rows", [0, 2, 9])  # none, few (drawn apart), most (drawn together)
def test_a_rows_draw_does_not_depend_on_the_rest_of_the_batch(flat_rows, cpu_fast_paths):
    rng = np.random.default_rng(0)
    batch, vocab = 16, 1000
    logits = rng.normal(size=(batch, vocab))
    logits[:, :5] += 12.0  # peaked: the top-p nucleus lies within the 256 candidates
    logits[:flat_rows] = 0.1 * rng.normal(size=(flat_rows, vocab))  # flat: a ~950-token nucleus
    logits = jnp.asarray(logits, jnp.float32)
    keys = jax.random.split(jax.random.key(3), batch)
    draw = jax.jit(lambda lg, k: sample_tokens(lg, k, jnp.full(len(k), 0.8), jnp.full(len(k), 0.95),
                                               jnp.zeros(len(k)), top_k=0, use_top_p=True))
    together = np.asarray(draw(logits, keys))
    alone = [int(draw(logits[i:i + 1], keys[i:i + 1])[0]) for i in range(batch)]
    assert together.tolist() == alone
    assert (together[flat_rows:] < 5).all() and len(set(together[:flat_rows].tolist())) == flat_rows


@pytest.mark.parametrize("candidates", [256, 2])
def test_draws_follow_the_filtered_distribution(candidates, cpu_fast_paths):
    """From the candidates (256), or where the nucleus (4 tokens) does not fit in them (2): the
    fast paths draw over the whole vocabulary, the plain sampler among the 2 candidates."""
    logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
    n = 20000
    keys = jax.random.split(jax.random.key(0), n)
    draw = jax.jit(jax.vmap(lambda k: sample_tokens(logits, k[None], jnp.ones(1), jnp.full(1, 0.9),
                                                    jnp.zeros(1), top_k=0, use_top_p=True,
                                                    candidates=candidates)[0]))
    counts = np.bincount(np.asarray(draw(keys)), minlength=6) / n
    probs = np.exp(np.asarray(logits[0], np.float64))
    probs /= probs.sum()
    nucleus = _filter_reference(np.asarray(logits[0]), 1.0, 0, 0.9, 0.0)  # the 4 most likely
    kept = nucleus & (np.arange(6) < (6 if cpu_fast_paths else candidates))
    expected = np.where(kept, probs, 0.0) / probs[kept].sum()
    np.testing.assert_allclose(counts, expected, atol=0.015)
    greedy = sample_tokens(logits, jax.random.split(jax.random.key(1), 1), jnp.zeros(1), jnp.ones(1),
                           jnp.zeros(1), top_k=0, use_top_p=False)
    assert int(greedy[0]) == 0


@pytest.mark.parametrize("top_k,top_p,min_p", [(0, 1.0, 0.0), (0, 0.9, 0.0), (5, 1.0, 0.0),
                                              (0, 1.0, 0.2), (7, 0.8, 0.05), (12, 0.95, 0.01)])
def test_draws_keep_to_the_reference_sets_and_their_probabilities(top_k, top_p, min_p, cpu_fast_paths):
    """Every row samples only from the token set the float64 reference keeps, with the
    reference's renormalised probabilities; greedy rows (temperature 0) take the argmax."""
    rng = np.random.default_rng(top_k + int(100 * top_p))
    rows, vocab, n = 4, 40, 6000
    logits = rng.normal(0, 2, (rows, vocab)).astype(np.float32)
    temperature = np.array([0.7, 1.0, 1.5, 0.0], np.float32)
    keys = jax.random.split(jax.random.key(5), n * rows).reshape(n, rows)
    draw = jax.jit(jax.vmap(lambda k: sample_tokens(
        jnp.asarray(logits), k, jnp.asarray(temperature), jnp.full(rows, top_p), jnp.full(rows, min_p),
        top_k=top_k, use_top_p=top_p < 1.0)))
    tokens = np.asarray(draw(keys))
    assert (tokens[:, 3] == logits[3].argmax()).all()
    for row in range(3):
        kept = _filter_reference(logits[row], temperature[row], top_k, top_p, min_p)
        probs = np.exp(logits[row].astype(np.float64) / temperature[row])
        expected = np.where(kept, probs, 0.0) / probs[kept].sum()
        counts = np.bincount(tokens[:, row], minlength=vocab) / n
        assert set(np.flatnonzero(counts)) <= set(np.flatnonzero(kept))
        np.testing.assert_allclose(counts, expected, atol=4 * np.sqrt(0.25 / n))


@pytest.fixture(scope="module")
def tiny_generator(smollm2, cpu_fast_paths):
    """A tiny random Llama over the real SmolLM2 tokenizer: fast compiles for behavioural tests,
    each run with the plain forms and with the CPU fast paths."""
    _, tokenizer = smollm2
    cfg = llama.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            eos_token_ids=(2,))
    model = llama.Llama(cfg, rngs=nnx.Rngs(0))
    generator = JaxGenerator(model, tokenizer, batch_buckets=(1, 8), prompt_buckets=(64,), decode_chunk=4)
    return model, tokenizer, generator


PROMPTS = ["Tell me about cats.", "Why is the sky blue?", "A question about rivers, please.",
           "Summarise the plot of a film.", "What is an atom?"]
SAMPLED = SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12)


def test_same_seed_same_sample_whatever_the_batch(tiny_generator):
    generator = tiny_generator[2]
    together = generator.generate(_requests(PROMPTS, SAMPLED, seed=7))
    alone = generator.generate([_requests(PROMPTS, SAMPLED, seed=7)[3]])
    shuffled = generator.generate(_requests(PROMPTS, SAMPLED, seed=7)[::-1])
    assert alone[0] == together[3]
    assert shuffled[::-1] == together
    other_seed = generator.generate(_requests(PROMPTS, SAMPLED, seed=8))
    assert [c.text for c in other_seed] != [c.text for c in together]
    assert len({c.text for c in together}) == len(PROMPTS)  # rows draw with their own keys


def test_finished_rows_leave_the_batch_without_changing_the_others(tiny_generator):
    model, tokenizer, shrinking = tiny_generator  # buckets (2, 8): one long row ends up in 2
    fixed = JaxGenerator(model, tokenizer, batch_buckets=(8,), prompt_buckets=(64,), decode_chunk=4)
    requests = [Request(i, ({"role": "user", "content": p},),
                        SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=4 if i else 14), 7)
                for i, p in enumerate(PROMPTS)]
    shrunk = shrinking.generate(requests)
    assert shrinking._shrink._cache_size() == 1  # the batch did shrink, 8 -> 2 rows
    assert shrunk == fixed.generate(requests)
    assert [c.completion_tokens for c in shrunk] == [14, 4, 4, 4, 4]


def test_prompts_sharded_on_the_data_axis_give_the_same_rows(tiny_generator):
    from jaxdiv.sharding import MeshConfig, make_mesh

    model, tokenizer, plain = tiny_generator
    mesh_cfg = MeshConfig(data=8)
    sharded = JaxGenerator(model, tokenizer, batch_buckets=(1, 8), prompt_buckets=(64,),
                           decode_chunk=4, mesh=make_mesh(mesh_cfg), rules=mesh_cfg.logical_axis_rules)
    assert sharded.batch_buckets == (8,)
    assert sharded.generate(_requests(PROMPTS, SAMPLED, seed=7)) == plain.generate(
        _requests(PROMPTS, SAMPLED, seed=7))


def test_stop_strings_and_max_new_tokens(tiny_generator):
    generator = tiny_generator[2]
    free = generator.generate(_requests(PROMPTS, SAMPLED, seed=7))
    assert all(c.finish_reason == "length" and c.completion_tokens == 12 for c in free)
    # stop at a character each free-running text contains: the text ends right before it
    stops = [c.text[len(c.text) // 2] for c in free]
    stopped = generator.generate([
        Request(i, ({"role": "user", "content": p},),
                SamplingParams(temperature=1.0, top_p=0.95, max_new_tokens=12, stop=(stop,)), 7)
        for i, (p, stop) in enumerate(zip(PROMPTS, stops))])
    for c, full, stop in zip(stopped, free, stops):
        assert c.finish_reason == "stop"
        assert c.text == full.text[:full.text.find(stop)]
    short = generator.generate(_requests(PROMPTS[:2], SamplingParams(temperature=1.0, top_p=0.95,
                                                                     max_new_tokens=5), seed=7))
    for c, full in zip(short, free):
        assert c.completion_tokens == 5 and full.text.startswith(c.text)


def test_overlong_prompt_is_a_named_error(tiny_generator):
    model, tokenizer, _ = tiny_generator
    generator = JaxGenerator(model, tokenizer, batch_buckets=(1,), prompt_buckets=(40,))
    requests = _requests(["Hi.", "word " * 40], SAMPLED)  # 32 tokens (the chat template's), ~70
    with pytest.raises(GenerationError, match=r"^row 1: the prompt's \d+ tokens exceed the largest "
                                              r"prompt bucket 40; add a larger one, or leave"):
        generator.generate(requests)
    named = Request(7, requests[1].messages, SAMPLED, source="topic request 3 (trec, area 'music')")
    with pytest.raises(GenerationError, match=r"^topic request 3 \(trec, area 'music'\): the prompt's"):
        generator.generate([named])


def test_automatic_buckets_are_sized_from_the_prompts(tiny_generator):
    from jaxdiv.generate.sampler import auto_batch_buckets, auto_prompt_width

    assert auto_batch_buckets(32) == (2, 8, 32) and auto_batch_buckets(64) == (2, 4, 16, 64)
    assert auto_batch_buckets(1) == (1,) and auto_batch_buckets(3) == (2, 3)
    widths = {n: auto_prompt_width(n) for n in (1, 64, 65, 200, 256, 257, 600, 1500, 5000)}
    assert widths == {1: 64, 64: 64, 65: 128, 200: 256, 256: 256, 257: 320, 600: 640, 1500: 1536,
                      5000: 5120}
    model, tokenizer, fixed = tiny_generator
    auto = JaxGenerator(model, tokenizer, max_batch=8, decode_chunk=4)
    assert auto.batch_buckets == (2, 8) and auto.prompt_buckets == ()
    prompts = ["Tell me about cats.", "word " * 100, "word " * 300]  # ~30, ~130, ~330 tokens
    lengths = [len(auto.encode(r)) for r in _requests(prompts, SAMPLED)]
    auto.take_buckets_used()
    got = [auto.generate(_requests([p], SAMPLED, seed=7)) for p in prompts]
    assert auto.take_buckets_used() == {"batch": [2], "prompt": sorted(auto_prompt_width(n) for n in lengths)}
    assert sorted(auto_prompt_width(n) for n in lengths) == [64, 192, 384]
    # the same rows as under fixed buckets wide enough for each
    for prompt, completion in zip(prompts, got):
        wide = JaxGenerator(model, tokenizer, batch_buckets=(2,), prompt_buckets=(512,), decode_chunk=4)
        assert [c.text for c in wide.generate(_requests([prompt], SAMPLED, seed=7))] == [c.text for c in completion]
    assert auto.take_buckets_used() == {"batch": [], "prompt": []}


def test_prompt_beyond_the_models_context_is_a_named_error(smollm2):
    _, tokenizer = smollm2
    cfg = llama.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            eos_token_ids=(2,), max_position_embeddings=128)
    generator = JaxGenerator(llama.Llama(cfg, rngs=nnx.Rngs(0)), tokenizer, max_batch=2)
    fits = generator.generate(_requests(["Hi."], SAMPLED))
    assert fits[0].completion_tokens == 12 and generator.take_buckets_used()["prompt"] == [64]
    with pytest.raises(GenerationError, match=r"^row 1: the prompt's \d+ tokens plus max_new_tokens 12 "
                                              r"exceed the model's context of 128 tokens$"):
        generator.generate(_requests(["Hi.", "word " * 120], SAMPLED))
