"""Config of `jaxdiv compile`: a TPU topology, a decoder shape, and the programs to compile.

One config file per model shape (configs/scale/); the topology is a field
(`--set topology=v5p:4x4x4`). Each program has its own mesh whose data axis (-1) takes the
devices the other axes leave, so one file serves every topology.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.models.lora import LoRAConfig
from jaxdiv.sharding import MeshConfig

PROGRAMS = ("classifier", "sft", "prefill", "decode")


@dataclasses.dataclass(frozen=True)
class DecoderShape:
    """The decoder's architecture (a `LlamaConfig`; weights are never materialised)."""

    name: str = param("llama-3.2-1b", help="the shape's name in the tables")
    vocab_size: int = param(128256, ge=1, help="vocabulary size")
    hidden_size: int = param(2048, ge=1, help="model width")
    intermediate_size: int = param(8192, ge=1, help="MLP width")
    num_layers: int = param(16, ge=1, help="decoder layers")
    num_heads: int = param(32, ge=1, help="query heads")
    num_kv_heads: int = param(8, ge=1, help="key/value heads (grouped-query attention)")
    head_dim: int = param(64, ge=1, help="per-head width")
    tie_embeddings: bool = param(True, help="the LM head reuses the token embeddings")
    rope_theta: float = param(500000.0, gt=0.0, help="RoPE base")

    def check(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")


@dataclasses.dataclass(frozen=True)
class ClassifierProgram:
    """The classifier train step (`jaxdiv.train.step`, AdamW) on an encoder of this shape (default:
    all-MiniLM-L6-v2's): every layer trains, or (lora.rank > 0) the adapters and the head."""

    vocab_size: int = param(30522, ge=1, help="encoder vocabulary")
    hidden_size: int = param(384, ge=1, help="encoder width")
    num_layers: int = param(6, ge=1, help="encoder layers")
    num_heads: int = param(12, ge=1, help="attention heads")
    intermediate_size: int = param(1536, ge=1, help="MLP width")
    num_labels: int = param(6, ge=2, help="classes of the head")
    batch_size: int = param(256, ge=1, help="global examples per step (divisible by the mesh's batch shards)")
    max_length: int = param(128, ge=4, le=512, help="tokens per example")
    compute_dtype: Literal["float32", "bfloat16"] = param("bfloat16", help="matmul dtype; params and "
                                                                         "optimizer state stay float32")
    mesh: MeshConfig = section(MeshConfig)
    lora: LoRAConfig = section(LoRAConfig)  # as ModelConfig.lora


@dataclasses.dataclass(frozen=True)
class SFTProgram:
    """The decoder's SFT step (`jaxdiv.train.sft`'s loss, AdamW; f32 trainable params and optimizer
    state): full fine-tuning, or (lora.rank > 0) LoRA, where only the adapters train and hold
    optimizer state, over a frozen base held in lora.base_dtype."""

    batch_size: int = param(64, ge=1, help="global sequences per step (divisible by the mesh's batch shards)")
    max_length: int = param(4096, ge=8, help="tokens per sequence")
    grad_accum: int = param(1, ge=1, help="micro-batches per step (batch_size must divide by it)")
    compute_dtype: Literal["float32", "bfloat16"] = param("bfloat16", help="matmul dtype")
    remat: bool = param(True, help="recompute each layer's activations in the backward pass "
                                   "(LMModelConfig.remat): only layer inputs stay live")
    mesh: MeshConfig = section(MeshConfig)
    lora: LoRAConfig = section(LoRAConfig)  # as LMModelConfig.lora

    def check(self) -> None:
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class GenerateProgram:
    """The generation programs of `jaxdiv.generate.sampler.JaxGenerator`: the prefill (prompt into
    a fresh KV cache, first token) and one decode chunk (`decode_chunk` steps against the cache)."""

    batch_size: int = param(64, ge=1, help="rows per batch (divisible by the mesh's batch shards)")
    prompt_length: int = param(1024, ge=1, help="prompt bucket: tokens per (left-padded) prompt")
    new_tokens: int = param(1024, ge=1, help="decode slots in the cache after the prompt")
    decode_chunk: int = param(16, ge=1, help="decode steps per program call")
    top_k: int = param(0, ge=0, help="top-k of the sampler (0: off)")
    top_p: bool = param(True, help="compile the top-p (nucleus) path of the sampler")
    dtype: Literal["float32", "bfloat16"] = param("bfloat16", help="params, compute and KV-cache dtype")
    mesh: MeshConfig = section(MeshConfig)


@dataclasses.dataclass(frozen=True)
class CompileConfig:
    """Ahead-of-time compilation of jaxdiv's device programs for a TPU topology, on any host."""

    topology: str = param("v5p:4x4x4", help="TPU topology name, e.g. v5e:16x16, v5p:4x4x4, v4:4x4x4, "
                                            "v6e:8x8 (jax.experimental.topologies; needs the tpu extra)")
    programs: tuple[str, ...] = param(PROGRAMS, help=f"which programs to compile, of {list(PROGRAMS)}")
    decoder: DecoderShape = section(DecoderShape)
    classifier: ClassifierProgram = section(ClassifierProgram)
    sft: SFTProgram = section(SFTProgram)
    generate: GenerateProgram = section(GenerateProgram)
    report: str = param("docs/benchmarks/tpu_aot.md", help="Markdown file whose section for this "
                                                           "decoder and topology is (re)written; empty: none")
    seed: int = param(0, help="seed of the (abstract) init; it fixes nothing compiled but the RNG layout")

    def check(self) -> None:
        unknown = sorted(set(self.programs) - set(PROGRAMS))
        if unknown or not self.programs:
            raise ConfigError(f"programs: {unknown or 'none'} given; choose from {list(PROGRAMS)}")
