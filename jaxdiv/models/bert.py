"""BERT encoder (Flax NNX): loads BERT-layout safetensors, e.g. the packaged all-MiniLM-L6-v2.

One implementation serves the scorer (mean-pooled, L2-normalised sentence embeddings) and
the trainer (`BertClassifier`: encoder + pooler + classification head, bottom layers
optionally frozen). Every parameter carries logical axis names (`vocab`, `embed`, `heads`,
`mlp`) that the mesh config's `logical_axis_rules` map onto the (data, fsdp, tensor) mesh.

Weights: `load_bert_encoder(dir)` / `load_bert_classifier(dir, num_labels)` read
`config.json` and `model.safetensors` from a folder, through the readers the decoder shares
(`jaxdiv.models.checkpoints`; a bad file raises its `CheckpointError`). Keys may carry a
`bert.` prefix (`BertForSequenceClassification` checkpoints) or not (sentence-transformers
exports); `embeddings.position_ids` buffers are ignored. Dropout is functional: pass a PRNG key
to `__call__` to enable it, none for deterministic evaluation.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv.configlib import ConfigError
from jaxdiv.models.attention import dot_product_attention, dropout, kv_layout
from jaxdiv.models.checkpoints import HF_LEAF_NAMES, CheckpointError, checked_arrays, read_safetensors


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Architecture of a BERT encoder (the fields of a transformers `config.json`)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_json(cls, path: str | Path) -> "BertConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise CheckpointError(f"BERT config {path} does not exist")
        data = json.loads(path.read_text())
        if data.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"{path}: hidden_act {data['hidden_act']!r} is not supported (only 'gelu')")
        if data.get("position_embedding_type", "absolute") != "absolute":
            raise CheckpointError(f"{path}: only absolute position embeddings are supported")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = [n for n in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                               "intermediate_size") if n not in data]
        if missing:
            raise CheckpointError(f"{path}: missing keys {missing}")
        cfg = cls(**{k: v for k, v in data.items() if k in names})
        if cfg.hidden_size % cfg.num_attention_heads:
            raise CheckpointError(f"{path}: hidden_size {cfg.hidden_size} is not divisible by "
                                  f"num_attention_heads {cfg.num_attention_heads}")
        return cfg


def partitioned(init: Any, axes: tuple[str | None, ...]) -> Any:
    """An initializer whose param records its logical axis names. Sharding is applied by the
    caller (`jax.jit(init, out_shardings=...)` through `jaxdiv.sharding`), not eagerly here."""
    return nnx.with_partitioning(init, axes, eager_sharding=False)


def _dense(rngs: nnx.Rngs, n_in: int, n_out: int, axes: tuple[str | None, str | None],
           dtype: Any, init_std: float = 0.02) -> nnx.Linear:
    # f32 accumulation whatever the compute dtype (bf16 x bf16 -> f32 is also XLA CPU's fast path)
    return nnx.Linear(
        n_in, n_out, dtype=dtype, param_dtype=jnp.float32, rngs=rngs, preferred_element_type=jnp.float32,
        kernel_init=partitioned(nnx.initializers.normal(init_std), axes),
        bias_init=partitioned(nnx.initializers.zeros_init(), (axes[1],)))


def _layer_norm(rngs: nnx.Rngs, cfg: BertConfig, dtype: Any) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        cfg.hidden_size, epsilon=cfg.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
        scale_init=partitioned(nnx.initializers.ones_init(), ("embed",)),
        bias_init=partitioned(nnx.initializers.zeros_init(), ("embed",)))


def gelu(x: jax.Array) -> jax.Array:
    """Exact (erf) GELU, written as BERT and PyTorch write it. `jax.nn.gelu(approximate=False)`
    goes through erfc, whose branches XLA's CPU backend does not fuse with the bias add: the
    MLP's elementwise work then costs more than its matmuls."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / np.sqrt(2.0))))


class BertLayer(nnx.Module):
    """Post-LayerNorm transformer block: self-attention, then the GELU MLP."""

    def __init__(self, cfg: BertConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        h, m = cfg.hidden_size, cfg.intermediate_size
        self.cfg = cfg
        self.dtype = dtype
        self.query = _dense(rngs, h, h, ("embed", "heads"), dtype)
        self.key = _dense(rngs, h, h, ("embed", "heads"), dtype)
        self.value = _dense(rngs, h, h, ("embed", "heads"), dtype)
        self.attention_out = _dense(rngs, h, h, ("heads", "embed"), dtype)
        self.attention_norm = _layer_norm(rngs, cfg, dtype)
        self.intermediate = _dense(rngs, h, m, ("embed", "mlp"), dtype)
        self.output = _dense(rngs, m, h, ("mlp", "embed"), dtype)
        self.output_norm = _layer_norm(rngs, cfg, dtype)

    def __call__(self, x: jax.Array, attention_mask: jax.Array, dropout_key: jax.Array | None = None,
                 *, cls_only: bool = False) -> jax.Array:
        """`cls_only`: return only position 0 (batch, 1, hidden). Every position still serves as a
        key and value, but only the [CLS] query, its attention output and its MLP are computed:
        exactly what a classifier's last layer needs, at a fraction of the cost."""
        cfg = self.cfg
        keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
        batch = x.shape[0]
        queries = x[:, :1] if cls_only else x
        split = lambda t: t.reshape(batch, t.shape[1], cfg.num_attention_heads, cfg.head_dim)
        context = dot_product_attention(
            split(self.query(queries)), kv_layout(split(self.key(x))), kv_layout(split(self.value(x))),
            attention_mask,
            dtype=self.dtype, dropout_rate=cfg.attention_probs_dropout_prob, dropout_key=keys[0])
        attended = dropout(self.attention_out(context), cfg.hidden_dropout_prob, keys[1])
        x = self.attention_norm(queries + attended)
        hidden = gelu(self.intermediate(x))
        out = dropout(self.output(hidden), cfg.hidden_dropout_prob, keys[2])
        return self.output_norm(x + out)


class BertEncoder(nnx.Module):
    """Embeddings + `num_hidden_layers` blocks; returns the last hidden states (batch, length, hidden)."""

    def __init__(self, cfg: BertConfig, *, dtype: Any = jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        embed = lambda n, axes: nnx.Embed(
            n, cfg.hidden_size, dtype=dtype, param_dtype=jnp.float32, rngs=rngs,
            embedding_init=partitioned(nnx.initializers.normal(0.02), axes))
        self.word_embeddings = embed(cfg.vocab_size, ("vocab", "embed"))
        self.position_embeddings = embed(cfg.max_position_embeddings, (None, "embed"))
        self.token_type_embeddings = embed(cfg.type_vocab_size, (None, "embed"))
        self.embeddings_norm = _layer_norm(rngs, cfg, dtype)
        self.layers = nnx.List([BertLayer(cfg, dtype=dtype, rngs=rngs)
                                for _ in range(cfg.num_hidden_layers)])

    def embed(self, input_ids: jax.Array, token_type_ids: jax.Array | None = None,
              dropout_key: jax.Array | None = None) -> jax.Array:
        """Word + position + token-type embeddings, LayerNorm and dropout: (batch, length, hidden)."""
        length = input_ids.shape[1]
        if length > self.cfg.max_position_embeddings:
            raise ConfigError(f"sequence length {length} exceeds max_position_embeddings "
                              f"{self.cfg.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(jnp.arange(length))[None]
             + self.token_type_embeddings(token_type_ids))
        return dropout(self.embeddings_norm(x), self.cfg.hidden_dropout_prob, dropout_key)

    def run_layers(self, x: jax.Array, attention_mask: jax.Array, *, start: int = 0,
                   stop: int | None = None, dropout_key: jax.Array | None = None,
                   cls_only: bool = False) -> jax.Array:
        """Layers [start, stop) on hidden states x; `cls_only`: the last of them keeps only
        position 0. Layer i always draws its dropout from split(dropout_key)[i]."""
        stop = len(self.layers) if stop is None else stop
        keys = ([None] * len(self.layers) if dropout_key is None
                else list(jax.random.split(dropout_key, len(self.layers))))
        keys_seen = (attention_mask > 0)[:, None, :]  # every query sees the unpadded keys
        for index in range(start, stop):
            x = self.layers[index](x, keys_seen, keys[index], cls_only=cls_only and index == stop - 1)
        return x

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None, *, dropout_key: jax.Array | None = None
                 ) -> jax.Array:
        """The last hidden states (batch, length, hidden)."""
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        return self.run_layers(self.embed(input_ids, token_type_ids, keys[0]), attention_mask,
                               dropout_key=keys[1])


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of the hidden states over unmasked tokens (sentence-transformers' pooling)."""
    mask = attention_mask.astype(jnp.float32)[..., None]
    total = jnp.sum(hidden.astype(jnp.float32) * mask, axis=1)
    return total / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def sentence_embeddings(encoder: BertEncoder, input_ids: jax.Array, attention_mask: jax.Array
                        ) -> jax.Array:
    """Mean-pooled, L2-normalised sentence vectors: what all-MiniLM-L6-v2 outputs."""
    return l2_normalize(mean_pool(encoder(input_ids, attention_mask), attention_mask))


class BertClassifier(nnx.Module):
    """`BertForSequenceClassification`: encoder, tanh pooler on [CLS], dropout, linear head.

    `frozen_layers` = N freezes the embeddings and the bottom N encoder layers: they run as a
    fixed feature extractor (no dropout, no gradient), and `trainable` excludes their params,
    so an optimizer masked with it leaves them unchanged (no weight decay drift either).
    Their output (`frozen_features`) depends on the tokens alone, so the ablation engine
    computes it once per row and reuses it across runs and steps (`classify_features`).
    """

    def __init__(self, cfg: BertConfig, num_labels: int, *, frozen_layers: int = 0,
                 dtype: Any = jnp.float32, rngs: nnx.Rngs):
        if not 0 <= frozen_layers <= cfg.num_hidden_layers:
            raise ConfigError(f"frozen_layers={frozen_layers} must be in [0, {cfg.num_hidden_layers}]")
        self.cfg = cfg
        self.num_labels = num_labels
        self.frozen_layers = frozen_layers
        self.encoder = BertEncoder(cfg, dtype=dtype, rngs=rngs)
        self.pooler = _dense(rngs, cfg.hidden_size, cfg.hidden_size, ("embed", None), dtype)
        self.classifier = _dense(rngs, cfg.hidden_size, num_labels, ("embed", None), dtype)

    def frozen_features(self, input_ids: jax.Array, attention_mask: jax.Array,
                        token_type_ids: jax.Array | None = None) -> jax.Array:
        """The frozen part's output (embeddings and the bottom `frozen_layers` layers), without
        dropout or gradient: (batch, length, hidden)."""
        x = self.encoder.embed(input_ids, token_type_ids)
        return jax.lax.stop_gradient(self.encoder.run_layers(x, attention_mask, stop=self.frozen_layers))

    def classify_features(self, features: jax.Array, attention_mask: jax.Array, *,
                          dropout_key: jax.Array | None = None) -> jax.Array:
        """Logits from the frozen part's output (the embeddings' when nothing is frozen). Only
        the [CLS] row of the last layer is computed: the pooler reads nothing else."""
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        hidden = self.encoder.run_layers(features, attention_mask, start=self.frozen_layers,
                                         dropout_key=keys[0], cls_only=True)
        pooled = jnp.tanh(self.pooler(hidden[:, 0]))
        pooled = dropout(pooled, self.cfg.hidden_dropout_prob, keys[1])
        return self.classifier(pooled).astype(jnp.float32)

    def __call__(self, input_ids: jax.Array | None, attention_mask: jax.Array,
                 token_type_ids: jax.Array | None = None, *, dropout_key: jax.Array | None = None,
                 features: jax.Array | None = None) -> jax.Array:
        """Logits (batch, num_labels). `features`: the frozen part's output, precomputed (then
        `input_ids` is not read)."""
        keys = (None, None) if dropout_key is None else tuple(jax.random.split(dropout_key))
        if features is None and self.frozen_layers:
            features = self.frozen_features(input_ids, attention_mask, token_type_ids)
        elif features is None:
            features = self.encoder.embed(input_ids, token_type_ids, keys[0])
        return self.classify_features(features, attention_mask, dropout_key=keys[1])

    def trainable(self, path: Sequence[Any]) -> bool:
        """Whether the parameter at this state path is trained (False below the frozen layers)."""
        if self.frozen_layers == 0 or path[0] != "encoder":
            return True
        if path[1] == "layers":
            return int(path[2]) >= self.frozen_layers
        return False  # the embeddings


# ---------------------------------------------------------------------------
# Safetensors loading.

_LAYER_KEYS = {
    "query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
    "attention_out": "attention.output.dense", "attention_norm": "attention.output.LayerNorm",
    "intermediate": "intermediate.dense", "output": "output.dense", "output_norm": "output.LayerNorm",
}
_EMBEDDING_KEYS = {
    "word_embeddings": "embeddings.word_embeddings", "position_embeddings": "embeddings.position_embeddings",
    "token_type_embeddings": "embeddings.token_type_embeddings", "embeddings_norm": "embeddings.LayerNorm",
}


def _hf_key(path: tuple[Any, ...]) -> tuple[str, bool]:
    """The transformers name of an encoder param at `path`, and whether it is a (transposed) kernel."""
    leaf = path[-1]
    if path[0] == "layers":
        module = f"encoder.layer.{path[1]}.{_LAYER_KEYS[path[2]]}"
    else:
        module = _EMBEDDING_KEYS[path[0]]
    return f"{module}.{HF_LEAF_NAMES[leaf]}", leaf == "kernel"


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    # Accept both layouts: sentence-transformers exports (no prefix) and BertFor* checkpoints.
    return {k.removeprefix("bert."): v for k, v in read_safetensors(file).items()}


def _fill(module: nnx.Module, tensors: dict[str, np.ndarray], key_of, source: Path) -> None:
    """Copy tensors into the module's params in place."""
    params = nnx.to_flat_state(nnx.state(module, nnx.Param))
    for _, variable, tensor in checked_arrays(params, tensors, key_of, source):
        variable.set_value(jnp.asarray(tensor.read(dtype=np.float32)))


def _weights_file(directory: str | Path) -> Path:
    directory = Path(directory)
    return directory if directory.suffix == ".safetensors" else directory / "model.safetensors"


def load_bert_encoder(directory: str | Path, *, dtype: Any = jnp.float32, seed: int = 0) -> BertEncoder:
    """A `BertEncoder` with the weights of `directory/model.safetensors` (config from `config.json`)."""
    weights = _weights_file(directory)
    cfg = BertConfig.from_json(weights.parent)
    encoder = BertEncoder(cfg, dtype=dtype, rngs=nnx.Rngs(seed))
    tensors = _read_tensors(weights)
    _fill(encoder, tensors, _hf_key, weights)
    return encoder


@nnx.jit(static_argnums=(0, 1, 2))
def _seeded_head(cfg: BertConfig, num_labels: int, dtype: Any, seed: jax.Array):
    """The pooler's and head's seeded initialisation (N(0, 0.02), zero bias): a jitted
    constructor that keeps only them (XLA drops the rest of the model's init)."""
    model = BertClassifier(cfg, num_labels, dtype=dtype, rngs=nnx.Rngs(jax.random.key(seed)))
    return nnx.state(model.pooler), nnx.state(model.classifier)


def load_bert_classifier(directory: str | Path, num_labels: int, *, frozen_layers: int = 0,
                         dtype: Any = jnp.float32, seed: int = 0, dropout: bool = True) -> BertClassifier:
    """A `BertClassifier` whose encoder comes from the checkpoint.

    The pooler and head are loaded when the checkpoint has them (`bert.pooler.dense`,
    `classifier`, as `BertForSequenceClassification` saves them) and otherwise keep
    their seeded random initialisation (N(0, 0.02), zero bias, as transformers does).
    `dropout=False` zeroes the checkpoint's dropout rates.
    """
    weights = _weights_file(directory)
    cfg = BertConfig.from_json(weights.parent)
    if not dropout:
        cfg = dataclasses.replace(cfg, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # Built abstract (no random init of ~22M params that the checkpoint overwrites), then filled.
    model = nnx.eval_shape(lambda: BertClassifier(cfg, num_labels, frozen_layers=frozen_layers, dtype=dtype,
                                                  rngs=nnx.Rngs(0)))
    tensors = _read_tensors(weights)
    _fill(model.encoder, tensors, _hf_key, weights)
    pooler, classifier = _seeded_head(cfg, num_labels, dtype, seed)
    nnx.update(model.pooler, pooler)
    nnx.update(model.classifier, classifier)
    for name, prefix in (("pooler", "pooler.dense"), ("classifier", "classifier")):
        if f"{prefix}.weight" in tensors:
            _fill(getattr(model, name), tensors,
                  lambda path, p=prefix: (f"{p}.{HF_LEAF_NAMES[path[-1]]}", path[-1] == "kernel"), weights)
    return model


# ---------------------------------------------------------------------------
# Tokenizer.

def load_tokenizer(directory: str | Path):
    """The `tokenizers.Tokenizer` of `directory/tokenizer.json`, with its own padding/truncation off
    (`encode_texts` sets a fixed length per call, so jitted shapes stay fixed)."""
    from tokenizers import Tokenizer

    path = Path(directory)
    path = path if path.suffix == ".json" else path / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"tokenizer file {path} does not exist")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer


def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> dict[str, np.ndarray]:
    """Token ids, attention mask and token types, each int32 (len(texts), max_length):
    truncated to `max_length` (keeping [CLS] ... [SEP]) and right-padded."""
    ids = np.zeros((len(texts), max_length), np.int32)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    pad_id = tokenizer.token_to_id("[PAD]") or 0
    ids[:] = pad_id
    for row, encoding in enumerate(tokenizer.encode_batch(list(texts))):
        tokens = encoding.ids
        if len(tokens) > max_length:  # keep the closing [SEP]
            tokens = tokens[: max_length - 1] + tokens[-1:]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
        types[row, : len(tokens)] = encoding.type_ids[: len(tokens)]
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
