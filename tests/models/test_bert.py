"""BERT encoder and classifier against transformers on the real all-MiniLM-L6-v2 weights.

The torch-marked tests compare live; `tests/models/fixtures/bert_minilm.npz` holds transformers'
outputs for the same inputs (written by `_reference`), checked in every default run.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdiv.configlib import ConfigError
from jaxdiv.models import bert
from jaxdiv.models.checkpoints import CheckpointError

FIXTURE = Path(__file__).parent / "fixtures" / "bert_minilm.npz"
TEXTS = ["What is the capital of France?",
         "How many legs does a spider have, and why do so many people find that interesting?",
         "Who wrote Hamlet?",
         "a"]
MAX_LENGTH = 24
NUM_LABELS = 6


def _head_tensors(hidden: int) -> dict[str, np.ndarray]:
    """A seeded pooler + classification head, as BertForSequenceClassification names them."""
    rng = np.random.default_rng(0)
    return {"bert.pooler.dense.weight": rng.normal(0, 0.05, (hidden, hidden)).astype(np.float32),
            "bert.pooler.dense.bias": rng.normal(0, 0.05, hidden).astype(np.float32),
            "classifier.weight": rng.normal(0, 0.05, (NUM_LABELS, hidden)).astype(np.float32),
            "classifier.bias": rng.normal(0, 0.05, NUM_LABELS).astype(np.float32)}


@pytest.fixture(scope="module")
def classifier_dir(minilm_dir, tmp_path_factory):
    """A BertForSequenceClassification-layout checkpoint (`bert.` prefix, pooler, head)."""
    from safetensors.numpy import load_file, save_file

    out = tmp_path_factory.mktemp("bert_cls")
    tensors = {f"bert.{k}": v for k, v in load_file(str(minilm_dir / "model.safetensors")).items()}
    tensors.update(_head_tensors(tensors["bert.embeddings.word_embeddings.weight"].shape[1]))
    save_file(tensors, str(out / "model.safetensors"))
    (out / "config.json").write_text((minilm_dir / "config.json").read_text())
    return out


@pytest.fixture(scope="module")
def encoder(minilm_dir):
    return bert.load_bert_encoder(minilm_dir)


@pytest.fixture(scope="module")
def batch(minilm_dir):
    return bert.encode_texts(bert.load_tokenizer(minilm_dir), TEXTS, MAX_LENGTH)


def _reference(minilm_dir, classifier_dir) -> dict[str, np.ndarray]:
    """transformers' outputs: token ids, hidden states, mean-pooled embeddings, classifier logits."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification, BertModel

    tokens = AutoTokenizer.from_pretrained(str(minilm_dir))(
        TEXTS, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = BertModel.from_pretrained(str(minilm_dir)).eval()(**tokens).last_hidden_state
        mask = tokens["attention_mask"][..., None].float()
        pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        classifier = BertForSequenceClassification.from_pretrained(
            str(classifier_dir), num_labels=NUM_LABELS).eval()
        logits = classifier(**tokens).logits
    return {"input_ids": tokens["input_ids"].numpy().astype(np.int32),
            "attention_mask": tokens["attention_mask"].numpy().astype(np.int32),
            "hidden": hidden.numpy(), "pooled": pooled.numpy(), "logits": logits.numpy()}


def _check(encoder, classifier_dir, batch, ref, atol):
    np.testing.assert_array_equal(batch["input_ids"], ref["input_ids"])
    np.testing.assert_array_equal(batch["attention_mask"], ref["attention_mask"])
    hidden = np.asarray(encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    rows = len(ref["hidden"])  # the stored fixture keeps the first rows' hidden states only
    mask = batch["attention_mask"][:rows].astype(bool)
    assert np.abs(hidden[:rows] - ref["hidden"])[mask].max() <= atol
    pooled = np.asarray(bert.sentence_embeddings(encoder, batch["input_ids"], batch["attention_mask"]))
    assert np.abs(pooled - ref["pooled"]).max() <= atol
    np.testing.assert_allclose(np.linalg.norm(pooled, axis=-1), 1.0, atol=1e-6)
    model = bert.load_bert_classifier(classifier_dir, NUM_LABELS)
    logits = np.asarray(model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))
    assert np.abs(logits - ref["logits"]).max() <= atol


def test_matches_stored_transformers_outputs(encoder, classifier_dir, batch, cpu_fast_paths):
    ref = dict(np.load(FIXTURE))
    _check(encoder, classifier_dir, batch, ref, atol=1e-5)


@pytest.mark.torch
def test_matches_transformers_live(minilm_dir, encoder, classifier_dir, batch, cpu_fast_paths):
    pytest.importorskip("torch")
    _check(encoder, classifier_dir, batch, _reference(minilm_dir, classifier_dir), atol=1e-5)


def test_every_param_has_logical_axes(encoder):
    model = bert.BertClassifier(bert.BertConfig(num_hidden_layers=2), 3, rngs=nnx.Rngs(0))
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        axes = variable.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == variable.get_value().ndim, path
    names = {a for _, v in nnx.to_flat_state(nnx.state(encoder, nnx.Param))
             for a in v.get_metadata()["out_sharding"]}
    assert {"vocab", "embed", "heads", "mlp"} <= names


def test_frozen_layers_get_no_gradient():
    cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=16)
    model = bert.BertClassifier(cfg, 3, frozen_layers=2, rngs=nnx.Rngs(0))
    ids = jnp.arange(16).reshape(2, 8) % 50
    mask = jnp.ones_like(ids)
    grads = nnx.jit(nnx.grad(lambda m: m(ids, mask).sum()))(model)
    for path, value in nnx.to_flat_state(grads):
        norm = float(jnp.abs(value.get_value()).sum())
        assert (norm > 0) == model.trainable(path), path


def test_bad_inputs_are_named(tmp_path, minilm_dir):
    with pytest.raises(CheckpointError, match="config.json"):
        bert.BertConfig.from_json(tmp_path)
    (tmp_path / "config.json").write_text((minilm_dir / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        bert.load_bert_encoder(tmp_path)
    with pytest.raises(ConfigError, match="frozen_layers"):
        bert.BertClassifier(bert.BertConfig(num_hidden_layers=2), 2, frozen_layers=3, rngs=nnx.Rngs(0))


def test_cls_only_last_layer_and_precomputed_features_give_the_same_logits(cpu_fast_paths):
    """The classifier's shortcuts are exact: the last layer computing only the [CLS] row, and
    logits from the frozen part's precomputed output, equal the plain full forward."""
    cfg = bert.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=16)
    ids = jnp.arange(24).reshape(3, 8) % 50
    mask = jnp.asarray(np.arange(8)[None] < np.array([[8], [5], [2]]), jnp.int32)
    for frozen in (0, 2, 3):
        model = bert.BertClassifier(cfg, 3, frozen_layers=frozen, rngs=nnx.Rngs(frozen))
        full = model.encoder(ids, mask)
        expected = model.classifier(jnp.tanh(model.pooler(full[:, 0])))
        np.testing.assert_allclose(model(ids, mask), expected, atol=1e-6)
        if frozen:
            features = model.frozen_features(ids, mask)
            np.testing.assert_allclose(model(None, mask, features=features), expected, atol=1e-6)
            # the frozen part is a fixed feature extractor: no dropout there in training mode
            key = jax.random.key(0)
            np.testing.assert_allclose(model(ids, mask, dropout_key=key),
                                       model(None, mask, features=features, dropout_key=key), atol=1e-6)
