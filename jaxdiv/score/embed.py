"""Sentence embedder: the project's Flax BERT (`jaxdiv.models.bert`), jitted, bucketed, sharded, cached.

- Texts are tokenised with the checkpoint's `tokenizer.json`, sorted by length and cut into
  batches; each batch is padded to the smallest of a few length buckets that fits, so a pool of
  mixed lengths compiles one program per bucket, not one per batch.
- The batch axis is sharded over the mesh's data axes (the batch size is rounded up to the device
  count); the weights are replicated.
- Output: mean pooled over real tokens, L2 normalised (all-MiniLM-L6-v2's recipe).
- Cache: one folder per (weights hash, max_length); each finished group of batches is written as
  an atomic .npz shard of (text sha1, vector). A re-run, or a run killed and restarted, embeds
  only the texts that are not there yet.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm.auto import tqdm

from jaxdiv import assets
from jaxdiv.io import atomic_path
from jaxdiv.models.bert import encode_texts, load_bert_encoder, load_tokenizer, sentence_embeddings
from jaxdiv.models.compiler import model_compiler_options
from jaxdiv.score.config import EmbedderConfig
from jaxdiv.sharding import MeshConfig, batch_sharding, make_mesh, shard_count

SHARD_TEXTS = 4096  # texts per cache shard: what a kill can lose at most


def text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def resolve_model(model: str) -> Path:
    """A registered asset name, or a local checkpoint folder (model.safetensors + tokenizer.json)."""
    return assets.resolve(model) if model in assets.REGISTRY else assets.resolve("embedder", model)


class Embedder:
    """Embeds texts with a BERT-family checkpoint; see the module docstring."""

    def __init__(self, cfg: EmbedderConfig = EmbedderConfig(), mesh_cfg: MeshConfig = MeshConfig(),
                 devices: Sequence[jax.Device] | None = None):
        self.cfg = cfg
        self.directory = resolve_model(cfg.model)
        self.model_hash = assets.file_hash(self.directory / "model.safetensors")
        self.tokenizer = load_tokenizer(self.directory)
        encoder = load_bert_encoder(self.directory, dtype=jnp.dtype(cfg.dtype))
        self.mesh = make_mesh(mesh_cfg, devices)
        self.batch_sharding = batch_sharding(self.mesh, 2, mesh_cfg.logical_axis_rules)
        graphdef, state = nnx.split(encoder)
        self.state = jax.device_put(state, NamedSharding(self.mesh, PartitionSpec()))
        self.buckets = tuple(sorted({b for b in cfg.length_buckets if b < cfg.max_length} | {cfg.max_length}))
        self.dim = encoder.cfg.hidden_size
        shards = shard_count(self.mesh, mesh_cfg.logical_axis_rules, "batch")
        self.batch_size = -(-cfg.batch_size // shards) * shards

        @functools.partial(jax.jit, compiler_options=model_compiler_options())
        def forward(state, input_ids, attention_mask):
            return sentence_embeddings(nnx.merge(graphdef, state), input_ids, attention_mask)

        self._forward = forward
        root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else assets.cache_dir() / "embeddings"
        self.cache_dir = root / (f"{self.model_hash}-L{cfg.max_length}" + ("" if cfg.dtype == "float32" else f"-{cfg.dtype}"))
        self._cache: dict[str, np.ndarray] | None = None  # read from disk once, then kept current

    # -- cache ---------------------------------------------------------------------------
    def _load_cache(self) -> dict[str, np.ndarray]:
        if self._cache is None:
            self._cache = {}
            for shard in sorted(self.cache_dir.glob("*.npz")) if self.cache_dir.is_dir() else ():
                with np.load(shard) as data:
                    self._cache.update(zip(data["hashes"].tolist(), data["vectors"]))
        return self._cache

    def _save_shard(self, hashes: list[str], vectors: np.ndarray) -> None:
        name = hashlib.sha1("".join(hashes).encode()).hexdigest()[:20]
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.cache_dir / f"{name}.npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, hashes=np.array(hashes), vectors=vectors)

    # -- embedding -----------------------------------------------------------------------
    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of one batch (no cache), padded to its bucket and to the batch size."""
        lengths = [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]
        bucket = next(b for b in self.buckets if b >= min(max(lengths), self.cfg.max_length))
        rows = -(-len(texts) // self.batch_size) * self.batch_size
        encoded = encode_texts(self.tokenizer, list(texts) + [""] * (rows - len(texts)), bucket)
        ids, mask = (jax.device_put(encoded[k], self.batch_sharding) for k in ("input_ids", "attention_mask"))
        return np.asarray(self._forward(self.state, ids, mask))[: len(texts)]

    def embed(self, texts: Sequence[str], *, progress: bool = True, use_cache: bool = True) -> np.ndarray:
        """(len(texts), dim) float32 embeddings; cached texts are not embedded again."""
        hashes = [text_hash(t) for t in texts]
        cached = self._load_cache() if use_cache else {}  # the live in-memory cache when used
        todo = sorted({h: i for i, h in enumerate(hashes) if h not in cached}.values())
        if todo:
            lengths = [len(e.ids) for e in self.tokenizer.encode_batch([texts[i] for i in todo])]
            todo = [todo[j] for j in np.argsort(lengths, kind="stable")]
            bar = tqdm(total=len(todo), desc="embedding", unit="text", disable=not progress)
            for start in range(0, len(todo), SHARD_TEXTS):
                group = todo[start:start + SHARD_TEXTS]
                vectors = []
                for b in range(0, len(group), self.batch_size):
                    vectors.append(self.embed_batch([texts[i] for i in group[b:b + self.batch_size]]))
                    bar.update(len(vectors[-1]))
                vectors = np.concatenate(vectors)
                group_hashes = [hashes[i] for i in group]
                if use_cache:
                    self._save_shard(group_hashes, vectors)
                cached.update(zip(group_hashes, vectors))
            bar.close()
        out = np.zeros((len(texts), self.dim), np.float32)
        for row, h in enumerate(hashes):
            out[row] = cached[h]
        return out

