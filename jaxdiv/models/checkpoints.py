"""Checkpoints of both model families: reading GGUF files and HF safetensors folders, and
writing fine-tuned decoders back as HF checkpoints.

Shared by `bert` and the Llama loaders here: `CheckpointError`, the one safetensors reader
(`read_safetensors`), and `checked_arrays`, which matches a model's params to HF-named
arrays (missing tensors and wrong shapes name the file and key). Each family keeps its own
map from param paths to HF names (`_hf_key` here for Llama, `bert._hf_key`).

An HF safetensors dir is read lazily: `read_safetensors_weights` reads only the files'
headers and maps each key to a `StoredTensor`, which reads one block of its tensor on
demand. On a mesh, `from_hf_weights` builds each param device by device, each reading and
casting only its own block, so neither the model nor a whole tensor is copied on the host
(scripts/bench_load.py measures the peak).

Llama weights come from a GGUF file (dequantised to float; SmolLM2-135M-Instruct ships as
one) or from an HF Llama/Qwen2-style safetensors checkpoint; both go through the HF names,
so loading is a transpose (HF `weight` is (out, in), NNX kernels (in, out)). GGUF files of
the `llama` architecture store Q and K rows permuted for llama.cpp's interleaved rotation;
`_unpermute_rope` undoes that at load time.

The tokenizer module reads GGUF metadata through `gguf_field` and raises `CheckpointError`,
so this module imports it only inside `load_pretrained`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiv import sharding as shd
from jaxdiv.errors import JaxdivError
from jaxdiv.models.llama import Llama, LlamaConfig

if TYPE_CHECKING:  # the tokenizer module imports this one
    from jaxdiv.models.tokenizer import ChatTokenizer


class CheckpointError(JaxdivError, ValueError):
    """A checkpoint (weights, model config, tokenizer) is missing, malformed, of an unsupported
    architecture, or does not fit the model; the message names the file and key."""


# ---------------------------------------------------------------------------
# Shared by both families.

# the HF name of each NNX leaf: linear and norm params are `weight`s, biases stay `bias`
HF_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "embedding": "weight", "bias": "bias"}


def read_safetensors(file: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of one safetensors file, as stored."""
    from safetensors.numpy import load_file

    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"weights file {file} does not exist")
    try:
        return load_file(str(file))
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from err


# elements a `StoredTensor` reads per opening of its file (16 MiB of float32)
READ_CHUNK_ELEMENTS = 4 * 2 ** 20


@dataclasses.dataclass(frozen=True)
class StoredTensor:
    """One tensor of a safetensors file, not yet read: its shape and dtype come from the
    header, and `tensor[index]` reads just that block (a tuple of slices of step 1)."""

    file: Path
    key: str
    shape: tuple[int, ...]
    dtype: str  # the safetensors name: F32, BF16, F16, ...

    def __getitem__(self, index: tuple[slice, ...]) -> np.ndarray:
        # The file is memory-mapped while open, and every page a read touches counts towards
        # the process's resident memory until the mapping goes; a block of columns touches
        # every row. So the block is read a chunk of rows at a time, the file opened for each
        # (a fraction of a millisecond): resident memory grows by the block, not the tensor.
        index = tuple(index)
        start, stop, _ = index[0].indices(self.shape[0]) if self.shape else (0, 0, 1)
        if stop <= start:  # a scalar, or an empty block
            return self._read(index)
        rows = max(1, READ_CHUNK_ELEMENTS // max(1, math.prod(self.shape[1:])))
        block = None
        for first in range(start, stop, rows):
            chunk = self._read((slice(first, min(first + rows, stop)),) + index[1:])
            if block is None:
                block = np.empty((stop - start,) + chunk.shape[1:], chunk.dtype)
            block[first - start:first - start + len(chunk)] = chunk
        return block

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        from safetensors import safe_open

        try:
            with safe_open(str(self.file), framework="numpy") as handle:
                return handle.get_slice(self.key)[index]
        except Exception as err:  # safetensors raises its own error types on a damaged file
            raise CheckpointError(f"{self.file}: cannot read tensor {self.key!r} ({err})") from err


@dataclasses.dataclass(frozen=True)
class ParamTensor:
    """The checkpoint tensor of one param (an array, or a `StoredTensor`), seen in the param's
    layout: an HF (out, in) weight is read as the (in, out) kernel."""

    tensor: np.ndarray | StoredTensor
    transposed: bool

    @property
    def shape(self) -> tuple[int, ...]:
        shape = tuple(self.tensor.shape)
        return shape[::-1] if self.transposed else shape

    def read(self, index: tuple[slice, ...] | None = None, dtype=None) -> np.ndarray:
        """The block `index` (default: all of it) as a contiguous array of `dtype` (default: as
        stored), reading only that block from storage."""
        index = (slice(None),) * len(self.shape) if index is None else tuple(index)
        if self.transposed:
            return np.ascontiguousarray(self.tensor[index[::-1]].T, dtype=dtype)
        return np.ascontiguousarray(self.tensor[index], dtype=dtype)


def checked_arrays(params: Iterable[tuple[tuple, Any]], weights: Mapping[str, np.ndarray | StoredTensor],
                   hf_key: Callable[[tuple], tuple[str, bool]], source: str | Path
                   ) -> Iterator[tuple[tuple, Any, ParamTensor]]:
    """(path, variable, tensor) for each (path, variable) of `params` (a flat NNX state): its HF
    tensor (named by `hf_key(path)` -> (key, transposed)) in the model's (in, out) layout, its
    shape checked against the variable's (before anything is read)."""
    for path, variable in params:
        key, transposed = hf_key(path)
        if key not in weights:
            raise CheckpointError(f"{source}: missing tensor {key!r} (for param {'/'.join(map(str, path))})")
        tensor = ParamTensor(weights[key], transposed)
        expected = variable.get_value().shape
        if tensor.shape != expected:  # both shapes as stored
            raise CheckpointError(f"{_file_of(weights[key], source)}: tensor {key!r} has shape "
                                  f"{tuple(weights[key].shape)}, the model expects "
                                  f"{expected[::-1] if transposed else expected}")
        yield path, variable, tensor


def _file_of(tensor: np.ndarray | StoredTensor, source: str | Path) -> str | Path:
    return tensor.file if isinstance(tensor, StoredTensor) else source


# ---------------------------------------------------------------------------
# Building a Llama from HF-named weights (both GGUF and safetensors go through here).

def _hf_key(path: tuple | str) -> tuple[str, bool]:
    """HF state-dict key of an NNX param path (a tuple, or "layers/0/mlp/up_proj/kernel"), and
    whether the array is transposed there. Loading and saving both map through it."""
    *module, leaf = path.split("/") if isinstance(path, str) else (str(p) for p in path)
    if module == ["embed_tokens"]:
        return "model.embed_tokens.weight", False
    if module == ["lm_head"]:
        return "lm_head.weight", True
    return "model." + ".".join(module + [HF_LEAF_NAMES[leaf]]), leaf == "kernel"


def _place_blockwise(tensor: ParamTensor, sharding: jax.sharding.Sharding, dtype: np.dtype) -> jax.Array:
    """`tensor` as a `dtype` array with `sharding`, one device's block at a time: each block is
    read, cast and handed to its device before the next is read. (`jax.make_array_from_callback`
    reads every block before placing any, so the host held a whole extra copy of the tensor.)"""
    blocks = [jax.device_put(tensor.read(index, dtype), device)
              for device, index in sharding.addressable_devices_indices_map(tensor.shape).items()]
    return jax.make_array_from_single_device_arrays(tensor.shape, sharding, blocks)


def from_hf_weights(cfg: LlamaConfig, weights: Mapping[str, np.ndarray | StoredTensor], *,
                    dtype=jnp.float32, param_dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None,
                    rules: shd.Rules | None = None, source: str = "weights") -> Llama:
    """A `Llama` whose params are the given HF-named arrays ((out, in) linear weights), or the
    lazily read tensors of `read_safetensors_weights`.

    With a mesh, each param is placed by its logical axes through `rules` (the mesh config's
    logical_axis_rules), each device reading only its own block, cast to `param_dtype` there.
    """
    if (mesh is None) != (rules is None):
        raise ValueError("from_hf_weights: a mesh needs its logical-axis rules, and rules need a mesh")
    abstract = nnx.eval_shape(lambda: Llama(cfg, rngs=nnx.Rngs(0), dtype=dtype,
                                            param_dtype=param_dtype))
    graphdef, state = nnx.split(abstract)
    # every tensor is checked (names, shapes) before any is read
    checked = list(checked_arrays(nnx.to_flat_state(state), weights, _hf_key, source))
    used = {_hf_key(path)[0] for path, _, _ in checked}
    # a tied checkpoint may still store lm_head (a copy of the embedding); rotary tables are derived
    ignorable = {"lm_head.weight"} if cfg.tie_embeddings else set()
    unused = sorted(k for k in set(weights) - used - ignorable if not k.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"{source}: tensors not used by the Llama architecture: {unused[:8]}")
    leaves = []
    param_dtype = np.dtype(param_dtype)
    for path, variable, tensor in checked:
        if mesh is None:
            array = jnp.asarray(tensor.read(dtype=param_dtype))
        else:
            sharding = shd.named_sharding(mesh, variable.get_metadata().get("out_sharding"), rules)
            array = _place_blockwise(tensor, sharding, param_dtype)
        leaves.append((path, variable.replace(array)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


# ---------------------------------------------------------------------------
# GGUF.

_GGUF_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GGUF_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight",
                "output_norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}
SUPPORTED_GGUF_ARCHS = ("llama", "qwen2")


def _unpermute_rope(w: np.ndarray, heads: int) -> np.ndarray:
    """Invert llama.cpp's convert permutation of Q/K rows (interleaved -> rotate-half)."""
    rest = w.shape[1:]
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *rest).swapaxes(1, 2).reshape(w.shape)


def gguf_field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def gguf_config(reader, path: str | Path) -> LlamaConfig:
    arch = gguf_field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHS:
        raise CheckpointError(f"{path}: GGUF architecture {arch!r} is not supported "
                              f"(supported: {SUPPORTED_GGUF_ARCHS})")

    def need(name):
        value = gguf_field(reader, f"{arch}.{name}")
        if value is None:
            raise CheckpointError(f"{path}: GGUF metadata lacks {arch}.{name}")
        return value

    names = {t.name for t in reader.tensors}
    hidden, heads = int(need("embedding_length")), int(need("attention.head_count"))
    vocab = gguf_field(reader, f"{arch}.vocab_size")
    if vocab is None:
        vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    eos = gguf_field(reader, "tokenizer.ggml.eos_token_id")
    return LlamaConfig(
        vocab_size=int(vocab), hidden_size=hidden, intermediate_size=int(need("feed_forward_length")),
        num_layers=int(need("block_count")), num_heads=heads,
        num_kv_heads=int(gguf_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(gguf_field(reader, f"{arch}.rope.dimension_count", hidden // heads)),
        rope_theta=float(gguf_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        max_position_embeddings=int(gguf_field(reader, f"{arch}.context_length", 8192)),
        bos_token_id=gguf_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=gguf_field(reader, "tokenizer.ggml.padding_token_id"))


def read_gguf_weights(path: str | Path) -> tuple[LlamaConfig, dict[str, np.ndarray]]:
    """Config and dequantised float32 HF-named weights of a GGUF file."""
    import gguf

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"GGUF file {path} does not exist")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as err:  # gguf raises ValueError/struct.error/... on a bad file
        raise CheckpointError(f"{path}: not a readable GGUF file ({err})") from err
    cfg = gguf_config(reader, path)
    permute = gguf_field(reader, "general.architecture") == "llama"
    weights = {}
    for tensor in reader.tensors:
        if tensor.name in _GGUF_GLOBAL:
            key = _GGUF_GLOBAL[tensor.name]
        else:
            block, _, rest = tensor.name.partition(".")[2].partition(".")
            if not tensor.name.startswith("blk.") or rest not in _GGUF_NAMES:
                raise CheckpointError(f"{path}: unexpected tensor {tensor.name!r}")
            key = f"model.layers.{block}.{_GGUF_NAMES[rest]}"
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        array = np.asarray(array, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))
        if permute and key.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute_rope(array, cfg.num_heads)
        elif permute and key.endswith(("k_proj.weight", "k_proj.bias")):
            array = _unpermute_rope(array, cfg.num_kv_heads)
        weights[key] = array
    return cfg, weights


# ---------------------------------------------------------------------------
# HF safetensors checkpoints (Llama / Qwen2 / Mistral-style config.json).

def hf_config(directory: str | Path) -> LlamaConfig:
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{directory}: no config.json")
    raw = json.loads(path.read_text())
    model_type = raw.get("model_type")
    if model_type not in ("llama", "qwen2", "mistral"):
        raise CheckpointError(f"{path}: model_type {model_type!r} is not a Llama-family decoder")
    if raw.get("rope_scaling"):
        raise CheckpointError(f"{path}: rope_scaling {raw['rope_scaling']} is not supported")
    if model_type == "qwen2" and raw.get("use_sliding_window"):
        raise CheckpointError(f"{path}: sliding-window attention is not supported")
    eos = raw.get("eos_token_id")
    eos = () if eos is None else tuple(eos) if isinstance(eos, list) else (eos,)
    heads = raw["num_attention_heads"]
    return LlamaConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"], num_layers=raw["num_hidden_layers"],
        num_heads=heads, num_kv_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rope_theta=float(raw.get("rope_theta", (raw.get("rope_parameters") or {}).get("rope_theta", 10000.0))),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
        attention_bias=model_type == "qwen2" or bool(raw.get("attention_bias", False)),
        max_position_embeddings=raw.get("max_position_embeddings", 8192),
        bos_token_id=raw.get("bos_token_id"), eos_token_ids=eos,
        pad_token_id=raw.get("pad_token_id"))


SAFETENSORS_INDEX = "model.safetensors.index.json"


def _stored_tensors(file: Path) -> list[StoredTensor]:
    """The tensors of one safetensors file, from its header alone."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="numpy") as handle:
            headers = {key: handle.get_slice(key) for key in handle.keys()}
            return [StoredTensor(file, key, tuple(header.get_shape()), header.get_dtype())
                    for key, header in headers.items()]
    except Exception as err:  # safetensors raises its own error types on a damaged header
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from err


def read_safetensors_weights(directory: str | Path) -> tuple[LlamaConfig, dict[str, StoredTensor]]:
    """Config and HF-named tensors of an HF checkpoint dir, unread (`StoredTensor`s): the files
    its model.safetensors.index.json names, else every *.safetensors file."""
    directory = Path(directory)
    cfg = hf_config(directory)
    index_file = directory / SAFETENSORS_INDEX
    try:  # a checkpoint split over several files says which file holds each tensor
        index = json.loads(index_file.read_text())["weight_map"] if index_file.is_file() else {}
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index_file}: not a safetensors index with a weight_map ({err})") from err
    files = sorted({directory / name for name in index.values()} or directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no *.safetensors files")
    weights = {}
    for file in files:
        if not file.is_file():
            raise CheckpointError(f"{index_file}: names {file.name}, which does not exist")
        for tensor in _stored_tensors(file):
            if tensor.key in weights:
                raise CheckpointError(f"{file}: tensor {tensor.key!r} is also in {weights[tensor.key].file}")
            weights[tensor.key] = tensor
    misplaced = sorted(key for key, name in index.items() if key not in weights or weights[key].file != directory / name)
    if misplaced:
        raise CheckpointError(f"{index_file}: tensors not in the file it names: {misplaced[:8]}")
    return cfg, weights


def weights_hash(source: str | Path) -> str:
    """Short content hash of a checkpoint (the GGUF file, or the safetensors files of a dir)."""
    import hashlib

    from jaxdiv.assets import sha256_file

    source = Path(source)
    if source.is_file():
        return sha256_file(source)[:16]
    digest = hashlib.sha256()
    for file in sorted(source.glob("*.safetensors")):
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()[:16]


def resolve_checkpoint(source: str | Path) -> Path:
    """A GGUF file or an HF checkpoint dir, from a path or a packaged asset name."""
    from jaxdiv import assets

    path = Path(source).expanduser()
    if not path.exists():
        if str(source) not in assets.REGISTRY:
            raise CheckpointError(f"checkpoint {source!r}: neither a path nor a packaged asset "
                                  f"({sorted(assets.REGISTRY)})")
        path = assets.resolve(str(source))
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").is_file() and len(ggufs) == 1:
            return ggufs[0]
    return path


# ---------------------------------------------------------------------------
# Writing HF checkpoints (a fine-tuned model that transformers and `load_pretrained` both read).

def hf_weights(params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """HF-named float32 arrays ((out, in) linear weights) of flat NNX params {"a/b/kernel": array}."""
    weights = {}
    for path, value in params.items():
        key, transposed = _hf_key(path)
        array = np.asarray(value, np.float32)
        weights[key] = np.ascontiguousarray(array.T if transposed else array)
    return weights


def hf_config_dict(cfg: LlamaConfig) -> dict:
    """config.json for `cfg`: every field `hf_config` reads, in transformers' names. Q/K/V
    biases without an o_proj bias are Qwen2's layout (a Llama with attention_bias biases o_proj too)."""
    model_type = "qwen2" if cfg.attention_bias else "llama"
    eos = list(cfg.eos_token_ids)
    return {
        "architectures": ["Qwen2ForCausalLM" if cfg.attention_bias else "LlamaForCausalLM"],
        "model_type": model_type, "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings, "max_position_embeddings": cfg.max_position_embeddings,
        **({} if cfg.attention_bias else {"attention_bias": False, "mlp_bias": False}),
        "bos_token_id": cfg.bos_token_id, "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "pad_token_id": cfg.pad_token_id, "torch_dtype": "float32", "dtype": "float32",
    }


def save_hf_checkpoint(params: "Mapping[str, np.ndarray] | Llama", cfg: LlamaConfig,
                       tokenizer: "ChatTokenizer", directory: str | Path) -> Path:
    """Write an HF Llama (or Qwen2) checkpoint dir, atomically: model.safetensors (float32; an
    SFT update is far below bf16's resolution), config.json, generation_config.json,
    tokenizer.json and tokenizer_config.json (chat template, special tokens). Both
    `load_pretrained(directory)` and transformers' Auto classes read it. `params`: a `Llama`, or
    its flat params {"layers/0/mlp/up_proj/kernel": array} (what `train_sft` returns)."""
    from safetensors.numpy import save_file

    from jaxdiv.io import atomic_path

    if isinstance(params, nnx.Module):
        params = {"/".join(map(str, path)): v.get_value()
                  for path, v in nnx.to_flat_state(nnx.state(params, nnx.Param))}
    weights = hf_weights(params)
    expected = {_hf_key(path)[0] for path, _ in nnx.to_flat_state(nnx.state(nnx.eval_shape(
        lambda: Llama(cfg, rngs=nnx.Rngs(0))), nnx.Param))}
    if set(weights) != expected:
        raise CheckpointError(f"save_hf_checkpoint({directory}): params do not match the architecture "
                              f"(missing {sorted(expected - set(weights))[:4]}, "
                              f"extra {sorted(set(weights) - expected)[:4]})")

    def token(token_id):
        return None if token_id is None else tokenizer.tokenizer.id_to_token(token_id)

    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "chat_template": tokenizer.chat_template,
        "bos_token": token(tokenizer.bos_token_id), "eos_token": token(eos),
        "pad_token": token(tokenizer.pad_token_id), "add_bos_token": False, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": cfg.max_position_embeddings,
    }
    generation = {"bos_token_id": cfg.bos_token_id, "eos_token_id": list(cfg.eos_token_ids) or None,
                  "pad_token_id": cfg.pad_token_id}
    directory = Path(directory)
    with atomic_path(directory) as tmp:
        tmp.mkdir()
        save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config_dict(cfg), indent=2))
        (tmp / "generation_config.json").write_text(json.dumps(generation, indent=2))
        tokenizer.tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return directory


def load_pretrained(source: str | Path, *, dtype=jnp.float32, param_dtype=jnp.float32,
                    mesh: jax.sharding.Mesh | None = None, rules: shd.Rules | None = None
                    ) -> tuple[Llama, "ChatTokenizer"]:
    """Model and tokenizer from a GGUF file, an HF safetensors dir, or a packaged asset name
    (e.g. "smollm2-135m-instruct")."""
    from jaxdiv.models.tokenizer import ChatTokenizer  # here: the tokenizer module imports this one

    path = resolve_checkpoint(source)
    if path.suffix == ".gguf":
        cfg, weights = read_gguf_weights(path)
        tokenizer = ChatTokenizer.from_gguf(path)
    else:
        cfg, weights = read_safetensors_weights(path)
        tokenizer = ChatTokenizer.from_hf_dir(path)
        if not cfg.eos_token_ids and tokenizer.eos_token_ids:
            cfg = dataclasses.replace(cfg, eos_token_ids=tokenizer.eos_token_ids)
    model = from_hf_weights(cfg, weights, dtype=dtype, param_dtype=param_dtype, mesh=mesh, rules=rules,
                            source=str(path))
    return model, tokenizer
