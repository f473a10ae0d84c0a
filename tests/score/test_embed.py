"""The embedder (the project's Flax BERT) vs PyTorch on the same weights; buckets; the cache."""

import numpy as np
import pytest

from jaxdiv.score.config import EmbedderConfig
from jaxdiv.score.embed import Embedder

from .make_embed_fixture import FIXTURE, TEXTS, torch_embeddings


@pytest.fixture(scope="module")
def embedder(minilm_dir, tmp_path_factory):
    # Batch 8 over 8 forced devices: one text per device; buckets 16/32 plus max_length 64.
    cfg = EmbedderConfig(batch_size=8, max_length=64, length_buckets=(16, 32),
                         cache_dir=str(tmp_path_factory.mktemp("embeddings")))
    return Embedder(cfg)


def test_matches_stored_pytorch_fixture(embedder):
    stored = np.load(FIXTURE)
    assert list(stored["texts"]) == TEXTS
    ours = embedder.embed(TEXTS, progress=False, use_cache=False)
    np.testing.assert_allclose(ours, stored["embeddings"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-6)


@pytest.mark.torch
def test_matches_transformers_bert_model(embedder, minilm_dir, trec_task):
    pytest.importorskip("torch")
    texts = list(trec_task.splits["train"]["text"][:24]) + TEXTS
    ours = embedder.embed(texts, progress=False, use_cache=False)
    reference = torch_embeddings(minilm_dir, texts, max_length=64)
    assert np.abs(ours - reference).max() <= 1e-5


def test_length_buckets_bound_the_compiled_shapes(embedder, trec_task):
    texts = list(trec_task.splits["train"]["text"][:40]) + TEXTS
    embedder.embed(texts, progress=False, use_cache=False)
    assert embedder._forward._cache_size() <= len(embedder.buckets) == 3


def test_cache_never_re_embeds_and_resumes(embedder, trec_task, monkeypatch):
    texts = list(trec_task.splits["train"]["text"][100:120])
    first = embedder.embed(texts[:10], progress=False)  # a "killed" run that got half way
    embedded = []
    original = embedder.embed_batch
    monkeypatch.setattr(embedder, "embed_batch", lambda batch: embedded.extend(batch) or original(batch))
    full = embedder.embed(texts + texts[:3], progress=False)
    assert sorted(embedded) == sorted(texts[10:])  # only the missing half, each text once
    np.testing.assert_array_equal(full[:10], first)
    np.testing.assert_array_equal(full[20:], first[:3])
    embedded.clear()
    again = embedder.embed(texts, progress=False)
    assert embedded == [] and np.array_equal(again, full[:20])


def test_bfloat16_embeddings_stay_close_and_cache_apart(embedder, tmp_path):
    """bf16 matmuls (f32 accumulation) keep the embeddings within 2e-2 of the f32 reference,
    unit-norm; their cache is a separate folder (a bf16 vector never serves an f32 request)."""
    cfg = EmbedderConfig(batch_size=8, max_length=64, length_buckets=(16, 32), dtype="bfloat16",
                         cache_dir=embedder.cfg.cache_dir)
    bf16 = Embedder(cfg)
    ours = bf16.embed(TEXTS, progress=False, use_cache=False)
    np.testing.assert_allclose(ours, np.load(FIXTURE)["embeddings"], atol=2e-2, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert bf16.cache_dir != embedder.cache_dir
