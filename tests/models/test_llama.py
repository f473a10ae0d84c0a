"""Llama decoder: parity with transformers on the real SmolLM2 GGUF, KV cache vs recompute,
tokenizer ids, safetensors (Llama + Qwen2) loading, sharded placement."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.models import checkpoints, llama
from jaxdiv.models.tokenizer import ChatTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "smollm2_reference.npz"
TINY = llama.LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16, rope_theta=10000.0,
                         rms_norm_eps=1e-5, tie_embeddings=False, attention_bias=True)


@pytest.fixture(scope="module")
def reference():
    data = np.load(FIXTURE)
    return {k: data[k] for k in data.files} | {"tokenized": json.loads(str(data["tokenized"]))}


def _rel_err(ours, ref):
    return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


def test_gguf_config_is_smollm2(smollm2):
    model, tokenizer = smollm2
    cfg = model.cfg
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (30, 576, 1536)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_embeddings and not cfg.attention_bias and model.lm_head is None
    assert cfg.rope_theta == 100000.0 and cfg.eos_token_ids == (2,)
    assert cfg.num_params == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert tokenizer.eos_token_ids == (2,) and tokenizer.bos_token_id == 1


def test_logits_match_stored_transformers_reference(smollm2, reference, cpu_fast_paths):
    model, tokenizer = smollm2
    from tests.models.make_reference import CHAT

    ids = tokenizer.encode_chat(CHAT)
    assert ids == reference["chat_ids"].tolist()
    logits = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray([ids]))[0])
    assert _rel_err(logits[:, reference["vocab_ids"]], reference["logits"]) <= 1e-3
    assert (logits.argmax(-1) == reference["argmax"]).all()


def test_tokenizer_matches_stored_transformers_ids(smollm2, reference):
    _, tokenizer = smollm2
    from tests.models.make_reference import TOKENIZER_STRINGS

    for text, expected in zip(TOKENIZER_STRINGS, reference["tokenized"]):
        assert tokenizer.encode(text) == expected, text
        assert tokenizer.decode(expected, skip_special_tokens=False) == text


def test_chat_template_renders_chatml(smollm2):
    _, tokenizer = smollm2
    text = tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\n")


def _tiny_model(seed=0, cfg=TINY):
    return llama.Llama(cfg, rngs=nnx.Rngs(seed))


def test_kv_cache_decode_equals_full_recompute(cpu_fast_paths):
    """Left-padded prefill into a cache, then 1-token decode steps: each step's logits equal a
    full, cache-free forward of that row's unpadded sequence (<= 1e-4)."""
    model = _tiny_model()
    rng = np.random.default_rng(0)
    lengths, bucket, steps = [7, 4, 1], 7, 5
    sequences = [rng.integers(0, TINY.vocab_size, n + steps).tolist() for n in lengths]
    tokens = np.zeros((3, bucket), np.int32)
    prompt_mask = np.zeros((3, bucket), bool)
    for row, n in enumerate(lengths):
        tokens[row, bucket - n:] = sequences[row][:n]
        prompt_mask[row, bucket - n:] = True
    slots = bucket + steps
    cache = llama.KVCache.zeros(TINY, 3, slots)
    key_mask = np.concatenate([prompt_mask, np.ones((3, steps), bool)], axis=1)
    positions = llama.positions_from_mask(jnp.asarray(prompt_mask))

    @nnx.jit
    def step(m, tok, pos, cache, start):
        hidden, cache = m.hidden_states(tok, pos, jnp.asarray(key_mask), cache, start)
        return m.logits(hidden[:, -1]), cache

    # the full recompute: one causal, cache-free forward of the right-padded sequences
    width = max(lengths) + steps
    padded = np.asarray([s + [0] * (width - len(s)) for s in sequences])
    real = np.asarray([[1] * len(s) + [0] * (width - len(s)) for s in sequences])
    full = model(jnp.asarray(padded), attention_mask=jnp.asarray(real))

    logits, cache = step(model, jnp.asarray(tokens), positions, cache, 0)
    for t in range(steps):
        for row, n in enumerate(lengths):
            np.testing.assert_allclose(logits[row], full[row, n + t - 1], atol=1e-4, rtol=0)
        tok = jnp.asarray([[s[n + t]] for s, n in zip(sequences, lengths)], jnp.int32)
        logits, cache = step(model, tok, jnp.asarray([[n + t] for n in lengths]), cache, bucket + t)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_write_slots_equals_a_slice_assignment_in_the_cache_dtype(dtype, cpu_fast_paths):
    """The cache write (with the fast paths, bf16 goes through its uint16 bits) equals a plain
    slice assignment on the slot axis, bitwise, at a traced start slot; the other slots are
    untouched."""
    rng = np.random.default_rng(2)
    cache = jnp.asarray(rng.standard_normal(llama.KVCache.layer_shape(TINY, 3, 9)), dtype)
    assert cache.ndim == (3 if cpu_fast_paths else 4)  # (B·K, S, D) or (B, K, S, D)
    new_shape = cache.shape[:-2] + (2, cache.shape[-1])
    new = jnp.asarray(rng.standard_normal(new_shape), jnp.float32)
    written = jax.jit(llama.write_slots)(cache, new, jnp.int32(3))
    assert written.dtype == dtype
    expected = cache.at[..., 3:5, :].set(new.astype(dtype))
    np.testing.assert_array_equal(np.asarray(written, np.float32), np.asarray(expected, np.float32))


def test_padding_does_not_change_real_positions(cpu_fast_paths):
    model = _tiny_model(1)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, TINY.vocab_size, 6)
    forward = nnx.jit(lambda m, x, mask: m(x, attention_mask=mask))
    alone = forward(model, jnp.asarray([ids]), None)[0]
    padded = forward(model, jnp.asarray([np.r_[ids, 0, 0], np.r_[0, 0, ids]]),
                     jnp.asarray([[1] * 6 + [0] * 2, [0] * 2 + [1] * 6]))
    right, left = padded[0], padded[1]
    np.testing.assert_allclose(right[:6], alone, atol=1e-5)
    np.testing.assert_allclose(left[2:], alone, atol=1e-5)


def test_params_carry_logical_axes_and_shard_on_a_mesh(cpu_fast_paths):
    from jaxdiv.sharding import MeshConfig, make_mesh

    model = _tiny_model()
    axes = {"/".join(map(str, path)): v.get_metadata().get("out_sharding")
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    assert axes["embed_tokens/embedding"] == ("vocab", "embed")
    assert axes["layers/0/self_attn/q_proj/kernel"] == ("embed", "heads")
    assert axes["layers/0/self_attn/k_proj/bias"] == ("kv_heads",)
    assert axes["layers/1/mlp/down_proj/kernel"] == ("mlp", "embed")
    assert axes["norm/scale"] == ("embed",)
    assert all(a for a in axes.values()), [k for k, a in axes.items() if not a]

    weights = checkpoints.hf_weights({"/".join(map(str, path)): v.get_value()
                                      for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))})
    mesh_cfg = MeshConfig(data=2, fsdp=2, tensor=2)
    sharded = checkpoints.from_hf_weights(TINY, weights, mesh=make_mesh(mesh_cfg), rules=mesh_cfg.logical_axis_rules)
    kernel = sharded.layers[0].mlp.gate_proj.kernel[...]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    tokens = jnp.asarray(np.random.default_rng(2).integers(0, TINY.vocab_size, (4, 5)))
    np.testing.assert_allclose(nnx.jit(lambda m, x: m(x))(sharded, tokens), model(tokens), atol=1e-5)


def test_bad_checkpoints_raise_named_errors(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
        checkpoints.read_gguf_weights(tmp_path / "missing.gguf")
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(checkpoints.CheckpointError, match="bad.gguf"):
        checkpoints.read_gguf_weights(tmp_path / "bad.gguf")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(checkpoints.CheckpointError, match="not a Llama-family"):
        checkpoints.read_safetensors_weights(tmp_path)
    with pytest.raises(checkpoints.CheckpointError, match="missing tensor 'model.layers.0.input_layernorm.weight'"):
        checkpoints.from_hf_weights(TINY, {"model.embed_tokens.weight": np.zeros((96, 64))}, source="x")


# ---------------------------------------------------------------------------
# Against transformers / PyTorch itself.

@pytest.mark.torch
def test_logits_match_transformers_on_the_gguf(smollm2, smollm2_gguf):
    torch = pytest.importorskip("torch")
    pytest.importorskip("accelerate")
    from tests.models.make_reference import chat_ids, reference_model

    model, tokenizer = smollm2
    ref_model, ref_tokenizer = reference_model(smollm2_gguf)
    messages = [{"role": "user", "content": "List three prime numbers and explain why."}]
    ids = chat_ids(ref_tokenizer, messages)
    assert tokenizer.encode_chat(messages) == ids
    with torch.no_grad():
        expected = ref_model(torch.tensor([ids])).logits[0].numpy()
    ours = np.asarray(nnx.jit(lambda m, x: m(x))(model, jnp.asarray([ids]))[0])
    assert _rel_err(ours, expected) <= 1e-3


@pytest.mark.torch
def test_tokenizer_matches_transformers_gguf_tokenizer(smollm2, smollm2_gguf):
    pytest.importorskip("torch")
    import transformers

    _, tokenizer = smollm2
    ref = transformers.AutoTokenizer.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name)
    texts = ["Which river is the longest in Africa?", "x = 3.14159 * r**2", "¿Qué tal? Ça va!",
             "   many   spaces   ", "<|im_end|> special in text", "ABBR:exp What does NASA stand for?"]
    for text in texts:
        assert tokenizer.encode(text) == ref(text, add_special_tokens=False)["input_ids"], text


@pytest.mark.torch
@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_safetensors_checkpoint_matches_transformers(tmp_path, model_type, smollm2_gguf):
    """A tiny real transformers Llama / Qwen2 (q/k/v biases) saved with save_pretrained loads
    into jaxdiv with the same logits."""
    torch = pytest.importorskip("torch")
    import transformers

    kwargs = dict(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
                  rms_norm_eps=1e-5, tie_word_embeddings=model_type == "qwen2")
    if model_type == "llama":
        config, cls = transformers.LlamaConfig(**kwargs), transformers.LlamaForCausalLM
    else:
        config, cls = transformers.Qwen2Config(**kwargs), transformers.Qwen2ForCausalLM
    torch.manual_seed(0)
    ref = cls(config).eval()
    if model_type == "qwen2":  # biases init to zero: make them matter
        with torch.no_grad():
            for layer in ref.model.layers:
                layer.self_attn.q_proj.bias.normal_(0, 0.5)
                layer.self_attn.k_proj.bias.normal_(0, 0.5)
    ref.save_pretrained(tmp_path)
    # the GGUF's tokenizer stands in for the checkpoint's own tokenizer.json
    ChatTokenizer.from_gguf(smollm2_gguf).tokenizer.save(str(tmp_path / "tokenizer.json"))
    model, _ = checkpoints.load_pretrained(tmp_path)
    assert model.cfg.attention_bias == (model_type == "qwen2")
    ids = np.random.default_rng(0).integers(0, 96, (2, 9))
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).logits.numpy()
    assert _rel_err(model(jnp.asarray(ids)), expected) <= 1e-4


# ---------------------------------------------------------------------------
# Writing HF checkpoints: jaxdiv -> safetensors dir -> jaxdiv / transformers.

def test_saved_hf_checkpoint_reloads_with_identical_logits_and_chat_ids(smollm2, tmp_path):
    model, tokenizer = smollm2
    directory = checkpoints.save_hf_checkpoint(model, model.cfg, tokenizer, tmp_path / "smollm2-hf")
    assert sorted(p.name for p in directory.iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    reloaded, reloaded_tokenizer = checkpoints.load_pretrained(directory)
    assert reloaded.cfg == model.cfg
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a river?"}]
    ids = tokenizer.encode_chat(messages)
    assert reloaded_tokenizer.encode_chat(messages) == ids
    assert (reloaded_tokenizer.eos_token_ids, reloaded_tokenizer.bos_token_id) == (
        tokenizer.eos_token_ids, tokenizer.bos_token_id)
    forward = nnx.jit(lambda m, x: m(x))
    np.testing.assert_array_equal(forward(reloaded, jnp.asarray([ids])), forward(model, jnp.asarray([ids])))


def test_saved_tiny_qwen2_layout_round_trips(smollm2_gguf, tmp_path):
    """Q/K/V biases and an untied LM head (TINY) are written as Qwen2 and read back exactly."""
    model = _tiny_model(3)
    tokenizer = ChatTokenizer.from_gguf(smollm2_gguf)
    directory = checkpoints.save_hf_checkpoint(model, TINY, tokenizer, tmp_path / "tiny")
    assert json.loads((directory / "config.json").read_text())["model_type"] == "qwen2"
    reloaded, _ = checkpoints.load_pretrained(directory)
    tokens = jnp.asarray(np.random.default_rng(3).integers(0, TINY.vocab_size, (2, 7)))
    np.testing.assert_array_equal(reloaded(tokens), model(tokens))
    with pytest.raises(checkpoints.CheckpointError, match="missing .*input_layernorm"):
        checkpoints.save_hf_checkpoint({"embed_tokens/embedding": np.zeros((96, 64))}, TINY, tokenizer, tmp_path / "x")


@pytest.mark.torch
def test_transformers_loads_the_saved_checkpoint(smollm2, tmp_path):
    torch = pytest.importorskip("torch")
    import transformers

    model, tokenizer = smollm2
    directory = checkpoints.save_hf_checkpoint(model, model.cfg, tokenizer, tmp_path / "smollm2-hf")
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ref_tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory))
    from tests.models.make_reference import chat_ids

    messages = [{"role": "user", "content": "List three prime numbers and explain why."}]
    ids = chat_ids(ref_tokenizer, messages)
    assert tokenizer.encode_chat(messages) == ids
    assert ref_tokenizer.eos_token_id == tokenizer.eos_token_ids[0]
    with torch.no_grad():
        expected = ref_model(torch.tensor([ids])).logits[0].numpy()
    assert _rel_err(nnx.jit(lambda m, x: m(x))(model, jnp.asarray([ids]))[0], expected) <= 1e-3
