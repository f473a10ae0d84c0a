"""Config sections of the training stage: `TrainConfig` and `SFTConfig` (the stage sections a study
holds), and the `jaxdiv train` jobs that extend them (`TrainJobConfig`, see configs/train_trec.py;
`SFTJobConfig`)."""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.models.lora import LoRAConfig
from jaxdiv.sharding import MeshConfig


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which encoder to fine-tune, and how much of it."""

    asset: str = param("minilm-l6-v2", help="a packaged asset name, or a folder with config.json, "
                                              "model.safetensors and tokenizer.json")
    pretrained: bool = param(True, help="load the checkpoint's weights (false: seeded random init of "
                                        "its architecture, optionally shrunk below; tokenizer kept)")
    num_hidden_layers: int = param(0, ge=0, help="random init only: layers (0: the checkpoint's)")
    hidden_size: int = param(0, ge=0, help="random init only: width (0: the checkpoint's)")
    num_attention_heads: int = param(0, ge=0, help="random init only: heads (0: the checkpoint's)")
    intermediate_size: int = param(0, ge=0, help="random init only: MLP width (0: the checkpoint's)")
    frozen_layers: int = param(0, ge=0, help="freeze the embeddings and this many bottom layers")
    max_length: int = param(64, ge=4, help="tokens per example (truncated / padded)")
    dropout: bool = param(True, help="apply the checkpoint's dropout rates while training")
    compute_dtype: Literal["float32", "bfloat16"] = param(
        "float32", help="matmul dtype; params and optimizer state stay float32")
    lora: LoRAConfig = section(LoRAConfig)  # rank > 0: only the adapters (and the head) train

    def check(self) -> None:
        shrunk = any((self.num_hidden_layers, self.hidden_size, self.num_attention_heads,
                      self.intermediate_size))
        if shrunk and self.pretrained:
            raise ConfigError("num_hidden_layers/hidden_size/...: architecture overrides need pretrained=false")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Batching, AdamW, learning-rate schedule and evaluation cadence."""

    steps: int = param(0, ge=0, help="optimizer steps (0: derive from epochs)")
    epochs: float = param(3.0, gt=0.0, help="passes over the training rows when steps=0")
    batch_size: int = param(32, ge=1, help="global examples per optimizer step")
    grad_accum: int = param(1, ge=1, help="micro-batches per step (batch_size must divide by it)")
    learning_rate: float = param(5e-5, gt=0.0, help="peak learning rate")
    warmup_fraction: float = param(0.1, ge=0.0, le=1.0, help="share of steps with linear warmup")
    decay: Literal["cosine", "linear", "constant"] = param("linear", help="decay after warmup")
    weight_decay: float = param(0.01, ge=0.0, help="AdamW decoupled weight decay (not on biases/norms)")
    b1: float = param(0.9, ge=0.0, lt=1.0, help="AdamW beta1")
    b2: float = param(0.999, ge=0.0, lt=1.0, help="AdamW beta2")
    eps: float = param(1e-8, gt=0.0, help="AdamW epsilon")
    max_grad_norm: float = param(1.0, ge=0.0, help="clip the global gradient norm (0: no clipping)")
    eval_every: int = param(0, ge=0, help="evaluate every N steps (0: only at the end)")
    eval_batch_size: int = param(64, ge=1, help="examples per evaluation batch")

    def check(self) -> None:
        if self.batch_size % self.grad_accum:
            raise ConfigError(f"batch_size {self.batch_size} is not divisible by grad_accum {self.grad_accum}")


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    """Orbax checkpoints in <workdir>/checkpoints."""

    every: int = param(100, ge=0, help="save every N steps (0: only the final step)")
    keep: int = param(3, ge=1, help="keep the last K checkpoints")
    async_save: bool = param(True, help="save in the background while training continues")
    resume: bool = param(True, help="resume from the latest good checkpoint in the workdir. The "
                         "config must equal the workdir's config.json except in workdir, log.*, "
                         "checkpoint.*, mesh.*, distributed.*, optim.eval_every and "
                         "optim.eval_batch_size (applied and recorded in config.json); any other "
                         "change (e.g. optim.steps, which reshapes the learning-rate schedule) is "
                         "an error naming the keys. false: train from scratch without restoring (and "
                         "without the check)")


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Multi-host setup: `jax.distributed.initialize` (skipped for a single process)."""

    mode: Literal["auto", "off", "explicit"] = param(
        "auto", help="auto: initialize when the environment describes a cluster (TPU pod, "
                     "JAXDIV_COORDINATOR / SLURM / OMPI variables); explicit: use the fields below")
    coordinator: str = param("", help="explicit: host:port of process 0")
    num_processes: int = param(1, ge=1, help="explicit: number of processes")
    process_id: int = param(0, ge=0, help="explicit: this process's id")
    cpu_collectives: Literal["gloo", "mpi", "none"] = param(
        "gloo", help="CPU cross-process collectives (for multi-process CPU runs)")

    def check(self) -> None:
        if self.mode == "explicit" and not self.coordinator:
            raise ConfigError("coordinator: mode=explicit needs coordinator host:port")
        if self.process_id >= self.num_processes:
            raise ConfigError(f"process_id {self.process_id} must be < num_processes {self.num_processes}")


@dataclasses.dataclass(frozen=True)
class LogConfig:
    """Metrics outputs (written by process 0 only)."""

    every: int = param(10, ge=1, help="log train metrics every N steps")
    tensorboard: bool = param(True, help="also write TensorBoard event files to <workdir>/tb")
    progress: bool = param(True, help="show a tqdm progress bar")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The classifier-training stage's own settings. The task, workdir and seed are passed to
    `train_classifier` / `train_classifier_runs` beside it."""

    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    mesh: MeshConfig = section(MeshConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    distributed: DistributedConfig = section(DistributedConfig)
    log: LogConfig = section(LogConfig)


@dataclasses.dataclass(frozen=True)
class TrainJobConfig(TrainConfig):
    """`jaxdiv train` of a classifier: fine-tune an encoder on a task or on rows from a file."""

    task: TaskConfig = section(TaskConfig)
    workdir: str = param("runs/train", help="outputs: config, metrics, checkpoints, results")
    seed: int = param(0, help="seed of init, data order and dropout")


@dataclasses.dataclass(frozen=True)
class SFTDataConfig:
    """(prompt, response) rows for supervised fine-tuning of a causal LM."""

    path: str = param("", help="a CSV / JSONL / parquet file of rows (or pass rows to train_sft)")
    prompt_column: str = param("prompt", help="the column holding the prompt")
    response_column: str = param("response", help="the column holding the response")
    eval_fraction: float = param(0.1, ge=0.0, lt=1.0, help="share of rows held out (hash split) for eval loss")
    chat_template: bool = param(True, help="wrap the prompt as a user turn of the model's chat template")
    system_prompt: str = param("", help="chat_template only: a system turn before every prompt "
                                        "(empty: none)")


@dataclasses.dataclass(frozen=True)
class LMModelConfig:
    """Which causal LM to fine-tune."""

    checkpoint: str = param("smollm2-135m-instruct", help="a packaged asset, a .gguf file, or an HF "
                                                          "Llama/Qwen2 safetensors folder")
    pretrained: bool = param(True, help="load the weights (false: seeded random init of the architecture, "
                                        "optionally shrunk below; tokenizer kept)")
    num_layers: int = param(0, ge=0, help="random init only: layers (0: the checkpoint's)")
    hidden_size: int = param(0, ge=0, help="random init only: width (0: the checkpoint's)")
    intermediate_size: int = param(0, ge=0, help="random init only: MLP width (0: the checkpoint's)")
    num_heads: int = param(0, ge=0, help="random init only: query heads (0: the checkpoint's)")
    num_kv_heads: int = param(0, ge=0, help="random init only: key/value heads (0: the checkpoint's)")
    frozen_layers: int = param(0, ge=0, help="freeze the token embeddings (with a tied LM head, the head "
                                             "too) and this many bottom layers (0: train everything)")
    max_length: int = param(256, ge=8, help="tokens per example, prompt + response (longer rows are cut)")
    remat: bool = param(False, help="recompute each decoder layer's activations in the backward pass "
                                    "(only layer inputs stay live: long sequences fit, ~1/3 more FLOPs)")
    compute_dtype: Literal["float32", "bfloat16"] = param(
        "float32", help="matmul dtype; params and optimizer state stay float32")
    lora: LoRAConfig = section(LoRAConfig)  # rank > 0: only the adapters train

    def check(self) -> None:
        shrunk = any((self.num_layers, self.hidden_size, self.intermediate_size, self.num_heads,
                      self.num_kv_heads))
        if shrunk and self.pretrained:
            raise ConfigError("num_layers/hidden_size/...: architecture overrides need pretrained=false")


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """The SFT stage's own settings: supervised fine-tuning of a causal LM on (prompt, response)
    pairs, loss on response tokens. The workdir and seed are passed to `train_sft` beside it."""

    data: SFTDataConfig = section(SFTDataConfig)
    model: LMModelConfig = section(LMModelConfig)
    optim: OptimConfig = section(OptimConfig)
    mesh: MeshConfig = section(MeshConfig)
    checkpoint: CheckpointConfig = section(CheckpointConfig)
    distributed: DistributedConfig = section(DistributedConfig)
    log: LogConfig = section(LogConfig)


@dataclasses.dataclass(frozen=True)
class SFTJobConfig(SFTConfig):
    """`jaxdiv train` of a causal LM (SFT)."""

    workdir: str = param("runs/sft", help="outputs: config, metrics, checkpoints, results")
    seed: int = param(0, help="seed of init, data order and split")
