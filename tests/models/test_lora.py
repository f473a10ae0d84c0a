"""LoRA (`jaxdiv.models.lora`) on both families and the HF PEFT layout (`jaxdiv.models.peft`):
parity with transformers + peft (logits and 5 SGD steps), both directions of the adapter
files, merging, and training through the engine (only adapters change; R runs in one program
equal each run alone)."""

import dataclasses
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxdiv.configlib import apply_overrides
from jaxdiv.models import bert, checkpoints, llama, lora
from jaxdiv.models import peft as peft_layout
from jaxdiv.models.tokenizer import ChatTokenizer
from jaxdiv.train.classifier import RunSpec, build_model, train_classifier, train_classifier_runs
from jaxdiv.train.config import TrainConfig
from jaxdiv.train.state import spec_of

LLAMA = llama.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, rms_norm_eps=1e-5, tie_embeddings=False)
BERT = bert.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0,
                       attention_probs_dropout_prob=0.0)
NUM_LABELS = 3
RANK, ALPHA = 4, 8.0


def _randomise_adapters(model: nnx.Module, seed: int) -> None:
    """Nonzero B (a fresh adapter is the identity, which would test nothing)."""
    for index, (_, layer) in enumerate(lora.adapters(model)):
        layer.lora_b.set_value(0.2 * jax.random.normal(jax.random.key(seed + index), layer.lora_b.shape))


def _adapter_params(model: nnx.Module) -> dict[str, np.ndarray]:
    state = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in state
            if lora.is_adapter(path) or path[0] == "classifier"}


def _batch(family: str, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 96, (3, 10))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0  # a padded row
    return {"input_ids": ids, "attention_mask": mask, "labels": rng.integers(0, NUM_LABELS, 3)}


def _forward(model: nnx.Module, batch) -> jax.Array:
    if isinstance(model, llama.Llama):
        return model(jnp.asarray(batch["input_ids"]))
    return model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["attention_mask"]))


def _loss(logits: jax.Array, batch) -> jax.Array:
    if logits.ndim == 3:  # next-token cross-entropy over every position
        return optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], jnp.asarray(batch["input_ids"])[:, 1:]).mean()
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.asarray(batch["labels"])).mean()


def _jax_base(family: str) -> nnx.Module:
    if family == "llama":
        return llama.Llama(LLAMA, rngs=nnx.Rngs(0))
    return bert.BertClassifier(BERT, NUM_LABELS, rngs=nnx.Rngs(0))


def test_fresh_adapters_are_the_identity_and_carry_logical_axes():
    for family, targets in (("llama", 7 * LLAMA.num_layers), ("bert", 6 * BERT.num_hidden_layers + 1)):
        model = _jax_base(family)
        batch = _batch(family, 0)
        before = _forward(model, batch)
        lora.apply_lora(model, lora.LoRAConfig(rank=RANK, alpha=ALPHA), rngs=nnx.Rngs(1))
        assert len(list(lora.adapters(model))) == targets  # BERT: "dense" also matches the pooler, as in peft
        np.testing.assert_array_equal(_forward(model, batch), before)
        spec = spec_of(model, None, lora.trainable(model))
        assert all(lora.is_adapter(k.split("/")) or k.startswith("classifier/") for k in spec.trainable_keys)
    assert spec.logical_axes["encoder/layers/0/intermediate/lora_a"] == ("embed", None)
    assert spec.logical_axes["encoder/layers/0/intermediate/lora_b"] == (None, "mlp")
    assert spec.logical_axes["encoder/layers/0/intermediate/kernel"] == ("embed", "mlp")  # the base keeps its path
    only_q = lora.apply_lora(_jax_base("llama"), lora.LoRAConfig(rank=2, target_modules=("layers.1.self_attn.q_proj",)),
                             rngs=nnx.Rngs(0))
    assert [path for path, _ in lora.adapters(only_q)] == [("layers", 1, "self_attn", "q_proj")]


def test_merge_equals_base_plus_adapter(smollm2_gguf, tmp_path):
    for family in ("llama", "bert"):
        model = lora.apply_lora(_jax_base(family), lora.LoRAConfig(rank=RANK, alpha=ALPHA), rngs=nnx.Rngs(1))
        _randomise_adapters(model, 5)
        merged = lora.merge_lora(model)
        assert not list(lora.adapters(merged)) and list(lora.adapters(model))  # a copy: the model keeps its adapters
        for path, layer in lora.adapters(model):
            a, b = np.asarray(layer.lora_a[...]), np.asarray(layer.lora_b[...])
            expected = np.asarray(layer.kernel[...]) + a @ b * (ALPHA / RANK)
            np.testing.assert_allclose(lora._node(merged, path).kernel[...], expected, atol=1e-6)
        batch = _batch(family, 1)
        np.testing.assert_allclose(_forward(merged, batch), _forward(model, batch), atol=1e-5)
    # a merged decoder is a plain HF checkpoint that load_pretrained reads
    decoder = lora.apply_lora(_jax_base("llama"), lora.LoRAConfig(rank=RANK, alpha=ALPHA), rngs=nnx.Rngs(1))
    _randomise_adapters(decoder, 7)
    directory = checkpoints.save_hf_checkpoint(lora.merge_lora(decoder), LLAMA, ChatTokenizer.from_gguf(smollm2_gguf),
                                               tmp_path / "merged")
    reloaded, _ = checkpoints.load_pretrained(directory)
    batch = _batch("llama", 2)
    np.testing.assert_allclose(_forward(reloaded, batch), _forward(decoder, batch), atol=1e-5)


def test_merge_keeps_an_update_below_a_bf16_bases_resolution():
    """A base held in bf16 (lora.base_dtype) merges in float32: a small update is not rounded away."""
    model = lora.apply_lora(_jax_base("llama"), lora.LoRAConfig(rank=RANK, alpha=ALPHA), rngs=nnx.Rngs(1))
    for _, layer in lora.adapters(model):
        layer.kernel.set_value(layer.kernel[...].astype(jnp.bfloat16))
        layer.lora_b.set_value(jnp.full(layer.lora_b.shape, 1e-5))  # ~1e-5 updates; bf16 steps ~1e-4 at |W| ~ 0.02
    merged = lora.merge_lora(model)
    for path, layer in lora.adapters(model):
        kernel, base = lora._node(merged, path).kernel[...], np.asarray(layer.kernel[...], np.float64)
        update = np.asarray(layer.lora_a[...], np.float64) @ np.asarray(layer.lora_b[...], np.float64) * ALPHA / RANK
        assert kernel.dtype == jnp.float32 and np.any(kernel != base.astype(np.float32))
        np.testing.assert_allclose(kernel, base + update, rtol=0, atol=1e-7)


def test_adapter_files_round_trip_and_bad_ones_raise(tmp_path):
    """save_peft_adapter -> load_peft_adapter on the same base gives the same model; options that
    change what the tensors mean, and tensors that fit no module, raise CheckpointError."""
    from safetensors.numpy import save_file

    model = lora.apply_lora(_jax_base("llama"), lora.LoRAConfig(rank=RANK, alpha=ALPHA, dropout=0.1), rngs=nnx.Rngs(2))
    _randomise_adapters(model, 3)
    directory = peft_layout.save_peft_adapter(tmp_path / "adapter", model)
    loaded = peft_layout.load_peft_adapter(directory, _jax_base("llama"))
    assert {p: (l.scaling, l.dropout_rate) for p, l in lora.adapters(loaded)} == {
        p: (ALPHA / RANK, 0.1) for p, _ in lora.adapters(model)}
    batch = _batch("llama", 0)
    np.testing.assert_array_equal(_forward(loaded, batch), _forward(model, batch))
    config = json.loads((directory / "adapter_config.json").read_text())
    (directory / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(checkpoints.CheckpointError, match="unsupported LoRA options {'use_dora': True}"):
        peft_layout.load_peft_adapter(directory, _jax_base("llama"))
    (directory / "adapter_config.json").write_text(json.dumps(config))
    tensors = checkpoints.read_safetensors(directory / "adapter_model.safetensors")
    save_file({**tensors, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": np.zeros((RANK, 5), np.float32)},
              str(directory / "adapter_model.safetensors"))
    with pytest.raises(checkpoints.CheckpointError, match="q_proj.lora_A.weight' has shape"):
        peft_layout.load_peft_adapter(directory, _jax_base("llama"))
    save_file({**tensors, "base_model.model.model.layers.9.mlp.up_proj.lora_A.weight": np.zeros((RANK, 32), np.float32)},
              str(directory / "adapter_model.safetensors"))
    with pytest.raises(checkpoints.CheckpointError, match="match no module"):
        peft_layout.load_peft_adapter(directory, _jax_base("llama"))


# ---------------------------------------------------------------------------
# Against transformers + peft (torch extra), on the same tiny random weights.

FAMILIES = ["llama", "bert"]


def _torch_base(family: str, directory):
    """A tiny transformers model, saved to `directory`, and jaxdiv's model of that checkpoint."""
    torch = pytest.importorskip("torch")
    import transformers

    torch.manual_seed(0)
    if family == "llama":
        config = transformers.LlamaConfig(
            vocab_size=LLAMA.vocab_size, hidden_size=LLAMA.hidden_size, intermediate_size=LLAMA.intermediate_size,
            num_hidden_layers=LLAMA.num_layers, num_attention_heads=LLAMA.num_heads,
            num_key_value_heads=LLAMA.num_kv_heads, head_dim=LLAMA.head_dim, rms_norm_eps=LLAMA.rms_norm_eps,
            tie_word_embeddings=False)
        transformers.LlamaForCausalLM(config).eval().save_pretrained(directory)
    else:
        config = transformers.BertConfig(**{f.name: getattr(BERT, f.name) for f in dataclasses.fields(BERT)},
                                         num_labels=NUM_LABELS)
        transformers.BertForSequenceClassification(config).eval().save_pretrained(directory)
    return _torch_model(family, directory), _jax_model(family, directory)


def _torch_model(family: str, directory):
    import transformers

    cls = transformers.LlamaForCausalLM if family == "llama" else transformers.BertForSequenceClassification
    return cls.from_pretrained(str(directory)).eval()


def _jax_model(family: str, directory) -> nnx.Module:
    if family == "llama":
        return checkpoints.from_hf_weights(*checkpoints.read_safetensors_weights(directory))
    return bert.load_bert_classifier(directory, NUM_LABELS, dropout=False)


def _torch_forward(model, batch):
    import torch

    ids = torch.tensor(batch["input_ids"])
    if hasattr(model.config, "rms_norm_eps"):  # the decoder: every position, no padding
        return model(input_ids=ids).logits
    return model(input_ids=ids, attention_mask=torch.tensor(batch["attention_mask"])).logits


def _torch_loss(logits, batch):
    import torch

    if logits.ndim == 3:
        targets = torch.tensor(batch["input_ids"])[:, 1:]
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return torch.nn.functional.cross_entropy(logits, torch.tensor(batch["labels"]))


def _peft_model(family: str, torch_model):
    """peft's LoRA on the model (default targets of the family), with random nonzero B."""
    import torch
    peft = pytest.importorskip("peft")

    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(lora.DEFAULT_TARGETS[
        llama.Llama if family == "llama" else bert.BertClassifier]), task_type="CAUSAL_LM" if family == "llama" else "SEQ_CLS")
    model = peft.get_peft_model(torch_model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.2 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _max_err(jax_logits, torch_logits) -> float:
    return float(np.max(np.abs(np.asarray(jax_logits) - torch_logits.detach().numpy())))


@pytest.mark.torch
@pytest.mark.parametrize("family", FAMILIES)
def test_peft_adapter_loads_with_the_same_logits(family, tmp_path):
    """peft save -> jaxdiv load: jaxdiv's LoRA forward equals transformers + peft (<= 1e-4, f32)."""
    torch_model, jax_model = _torch_base(family, tmp_path / "base")
    base_logits = _forward(jax_model, _batch(family, 0))
    reference = _peft_model(family, torch_model)
    reference.save_pretrained(tmp_path / "adapter")
    model = peft_layout.load_peft_adapter(tmp_path / "adapter", jax_model)
    assert len(list(lora.adapters(model))) == (14 if family == "llama" else 13)
    for seed in range(2):
        batch = _batch(family, seed)
        assert _max_err(_forward(model, batch), _torch_forward(reference, batch)) <= 1e-4
    assert _max_err(base_logits, _torch_forward(reference, _batch(family, 0))) > 1e-2  # the adapters matter


@pytest.mark.torch
@pytest.mark.parametrize("family", FAMILIES)
def test_saved_adapter_loads_in_peft_with_the_same_logits(family, tmp_path):
    """jaxdiv save -> peft.PeftModel.from_pretrained: the same logits (<= 1e-4), and the head
    (PEFT's modules_to_save) travels with the adapters."""
    peft = pytest.importorskip("peft")
    torch_model, jax_model = _torch_base(family, tmp_path / "base")
    model = lora.apply_lora(jax_model, lora.LoRAConfig(rank=RANK, alpha=ALPHA), rngs=nnx.Rngs(3))
    _randomise_adapters(model, 11)
    if family == "bert":
        model.classifier.kernel.set_value(jax.random.normal(jax.random.key(0), model.classifier.kernel.shape))
    directory = peft_layout.save_peft_adapter(tmp_path / "adapter", model, base_model_name_or_path=str(tmp_path / "base"))
    config = json.loads((directory / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["modules_to_save"]) == (
        RANK, ALPHA, None if family == "llama" else ["classifier"])
    reference = peft.PeftModel.from_pretrained(torch_model, str(directory)).eval()
    batch = _batch(family, 0)
    assert _max_err(_forward(model, batch), _torch_forward(reference, batch)) <= 1e-4
    # and back: the file reads into jaxdiv as written
    again = peft_layout.load_peft_adapter(directory, _jax_model(family, tmp_path / "base"))
    np.testing.assert_array_equal(_forward(again, batch), _forward(model, batch))


@pytest.mark.torch
@pytest.mark.parametrize("family", FAMILIES)
def test_five_sgd_steps_match_peft(family, tmp_path):
    """The same adapters, the same 5 batches, plain SGD: the adapters (and BERT's head) agree
    with peft's to <= 1e-4 afterwards."""
    import torch

    torch_model, jax_model = _torch_base(family, tmp_path / "base")
    reference = _peft_model(family, torch_model)
    reference.save_pretrained(tmp_path / "start")
    model = peft_layout.load_peft_adapter(tmp_path / "start", jax_model)
    spec = spec_of(model, None, lora.trainable(model))
    trainable, frozen = spec.split(spec.initial)
    gradient = jax.jit(jax.grad(lambda t, f, batch: _loss(_forward(spec.apply({**t, **f}), batch), batch)))
    optimizer = torch.optim.SGD([p for p in reference.parameters() if p.requires_grad], lr=0.5)
    reference.train()  # dropout rates are 0: only the mode changes
    for step in range(5):
        batch = _batch(family, 100 + step)
        grads = gradient(trainable, frozen, batch)
        trainable = {k: v - 0.5 * grads[k] for k, v in trainable.items()}
        optimizer.zero_grad()
        _torch_loss(_torch_forward(reference, batch), batch).backward()
        optimizer.step()
    reference.save_pretrained(tmp_path / "trained")
    expected = _adapter_params(peft_layout.load_peft_adapter(tmp_path / "trained", _jax_model(family, tmp_path / "base")))
    trained = _adapter_params(spec.apply({**trainable, **frozen}))
    start = _adapter_params(model)
    assert set(trained) == set(expected) == set(spec.trainable_keys)
    for key, value in expected.items():
        assert np.max(np.abs(trained[key] - value)) <= 1e-4, key
    assert max(np.max(np.abs(trained[k] - start[k])) for k in start) > 1e-2  # the steps moved the adapters


# ---------------------------------------------------------------------------
# Training through the engine: a tiny "pretrained" encoder (random weights saved as a checkpoint
# with MiniLM's tokenizer), so runs of different seeds share the base and differ in adapters.

@pytest.fixture(scope="module")
def tiny_encoder_dir(minilm_dir, tmp_path_factory):
    """A random 2-layer encoder with a pooler, saved as MiniLM is (no head, no "bert." prefix)."""
    from safetensors.numpy import save_file

    directory = tmp_path_factory.mktemp("tiny-encoder")
    cfg = bert.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          max_position_embeddings=64)
    model = bert.BertClassifier(cfg, 2, rngs=nnx.Rngs(0))
    tensors = {}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        if path[0] == "classifier":
            continue
        key, transposed = (bert._hf_key(path[1:]) if path[0] == "encoder"
                           else (f"pooler.dense.{checkpoints.HF_LEAF_NAMES[path[-1]]}", path[-1] == "kernel"))
        value = np.asarray(variable.get_value())
        tensors[key] = np.ascontiguousarray(value.T if transposed else value)
    save_file(tensors, str(directory / "model.safetensors"))
    (directory / "config.json").write_text(json.dumps({**dataclasses.asdict(cfg), "hidden_act": "gelu"}))
    shutil.copy(minilm_dir / "tokenizer.json", directory / "tokenizer.json")
    return directory


def _lora_config(encoder_dir, *overrides: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), [
        f"model.asset={encoder_dir}", "model.max_length=16", "model.lora.rank=4", "model.lora.dropout=0.1",
        "optim.batch_size=8", "optim.eval_batch_size=64", "optim.learning_rate=1e-2", "optim.warmup_fraction=0.2",
        "log.progress=false", "checkpoint.every=0", *overrides])


@pytest.fixture(scope="module")
def trec_rows(trec_task):
    return trec_task.splits["train"].select(range(96)), {"test": trec_task.splits["test"].select(range(32))}


@pytest.mark.parametrize("base_dtype", ["float32", "bfloat16"])
def test_only_the_adapters_and_head_train(tiny_encoder_dir, trec_rows, tmp_path, base_dtype):
    """After train_classifier with LoRA, every base param has its initial bytes; the adapters and
    the head moved. A bf16 base holds the frozen linear kernels in bf16 (the pretrained values
    rounded), and only them: embeddings stay float32."""
    train, evals = trec_rows
    cfg = _lora_config(tiny_encoder_dir, "optim.steps=3", f"model.lora.base_dtype={base_dtype}")
    result = train_classifier(cfg, train, evals, tmp_path, seed=4)
    spec = build_model(cfg.model, len(result["label_names"]), 4)
    assert {k for k in spec.trainable_keys if not lora.is_adapter(k.split("/"))} == {"classifier/kernel", "classifier/bias"}
    f32 = build_model(_lora_config(tiny_encoder_dir).model, len(result["label_names"]), 4).initial
    for key, initial in spec.initial.items():
        trained = np.asarray(result["params"][key])
        frozen_kernel = key not in spec.trainable_keys and key.endswith("/kernel")
        assert trained.dtype == (jnp.dtype(base_dtype) if frozen_kernel else np.float32), key
        np.testing.assert_array_equal(initial, f32[key].astype(initial.dtype), err_msg=key)
        if key in spec.trainable_keys:
            assert not np.array_equal(trained, initial), key
        else:
            assert trained.tobytes() == initial.tobytes(), key
    assert np.isfinite(result["eval"]["test"]["loss"])


def test_vmapped_lora_runs_share_the_base_and_equal_each_run_alone(tiny_encoder_dir, trec_rows, tmp_path):
    """R = 3 runs (own seeds, so own adapters and heads; own rows) in one program, on a
    data x fsdp x tensor mesh: the frozen base is held once, and each run equals itself alone."""
    train, evals = trec_rows
    cfg = _lora_config(tiny_encoder_dir, "optim.epochs=1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    runs = [RunSpec(train.select(range(40)), seed=0), RunSpec(train.select(range(40, 64)), seed=1),
            RunSpec(train.select(range(48, 96)), seed=2)]
    results = train_classifier_runs(cfg, runs, evals, tmp_path / "runs")
    base_key = "encoder/layers/0/query/kernel"
    assert results[0]["params"][base_key] is results[2]["params"][base_key]  # one shared copy
    assert not np.array_equal(results[0]["params"]["encoder/layers/0/query/lora_a"],
                              results[1]["params"]["encoder/layers/0/query/lora_a"])
    alone = train_classifier(cfg, runs[2].train_rows, evals, tmp_path / "alone", seed=runs[2].seed)  # the longest run
    for key, value in alone["params"].items():
        np.testing.assert_allclose(results[2]["params"][key], value, atol=1e-5, err_msg=key)
    assert results[2]["eval"]["test"]["loss"] == pytest.approx(alone["eval"]["test"]["loss"], abs=1e-5)


def test_sft_lora_model_trains_only_the_adapters_with_dropout_under_remat(smollm2_gguf, trec_task):
    """`--set model.lora.rank=8` on the decoder: only adapters are trainable, and the SFT loss
    (remat on) draws LoRA dropout from its key and has gradients in every adapter."""
    from jaxdiv.train.config import SFTConfig
    from jaxdiv.train.sft import build_lm, encode_pairs, lm_loss
    from tests.train.test_sft import TINY_LM

    cfg = apply_overrides(SFTConfig(), TINY_LM + [f"model.checkpoint={smollm2_gguf}", "model.lora.rank=8",
                                                  "model.lora.dropout=0.5", "model.remat=true"])
    spec, tokenizer = build_lm(cfg.model, 0)
    assert spec.trainable_keys and all(lora.is_adapter(k.split("/")) for k in spec.trainable_keys)
    rows = trec_task.splits["train"].select(range(4))
    batch = encode_pairs(tokenizer, list(zip(rows["text"], [trec_task.label_names[y] for y in rows["label"]])),
                         cfg.model.max_length, chat_template=False).take(np.arange(4))
    trainable, frozen = spec.split(spec.initial)
    trainable = {k: v + 0.01 if k.endswith("lora_b") else v for k, v in trainable.items()}  # B != 0: A gets gradients
    loss = jax.jit(jax.value_and_grad(lambda t, key: lm_loss(spec)({**t, **frozen}, batch, key)[0]))
    plain, _ = loss(trainable, None)
    dropped, grads = loss(trainable, jax.random.key(0))
    assert plain != dropped  # the key reached the adapters
    assert all(np.any(np.asarray(g) != 0) for g in grads.values())
