"""Supervised fine-tuning of a causal LM (the shared `jaxdiv.models.llama.Llama`) on
(prompt, response) pairs, with the loss on response tokens only.

    result = train_sft(cfg, rows, eval_rows, workdir, seed=0)   # rows: [{"prompt", "response"}, ...]

Each pair becomes `chat(prompt) + response + EOS` (the prompt wrapped as a user turn of the
model's chat template after an optional `data.system_prompt` turn, ending with the assistant header), cut to `model.max_length` and
right-padded. Only positions predicting a response token (or the EOS) count in the loss. It
trains as one run (R = 1) of `jaxdiv.train.engine.fit`: its sharding, checkpoints and resume.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdiv import configlib
from jaxdiv.io import atomic_write_text
from jaxdiv.models import lora
from jaxdiv.train import data as data_lib
from jaxdiv.train.checkpoint import RESUME_SAFE_KEYS
from jaxdiv.train.config import LMModelConfig, SFTConfig
from jaxdiv.train.distributed import initialize
from jaxdiv.train.engine import Run, fit, to_host
from jaxdiv.train.state import ModelSpec, spec_of


@dataclasses.dataclass(frozen=True)
class EncodedPairs:
    """Tokenised pairs: int32 (n, length) ids, attention mask and response-token mask."""

    input_ids: np.ndarray
    attention_mask: np.ndarray
    loss_mask: np.ndarray  # 1 where the token is part of the response (incl. EOS)

    def __len__(self) -> int:
        return len(self.input_ids)

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "loss_mask": self.loss_mask[index]}


def read_pairs(source: Any, cfg: SFTConfig) -> list[tuple[str, str]]:
    """(prompt, response) pairs from a list of dicts, a `datasets.Dataset` or a file; a blank
    or missing field raises DataError naming the row."""
    import datasets

    what = "sft rows"
    if isinstance(source, (str, Path)):
        source, what = data_lib.load_table(source, data_lib.DataError), str(source)
    rows = source.to_list() if isinstance(source, datasets.Dataset) else list(source)
    columns = (cfg.data.prompt_column, cfg.data.response_column)
    pairs = []
    for index, row in enumerate(rows):
        values = [row.get(c) for c in columns]
        if not all(isinstance(v, str) and v.strip() for v in values):
            raise data_lib.DataError(f"{what}: row {index} needs non-blank {list(columns)}, got {row!r:.120}")
        pairs.append((values[0], values[1]))
    if not pairs:
        raise data_lib.DataError(f"{what}: no rows")
    return pairs


def encode_pairs(tokenizer, pairs: list[tuple[str, str]], max_length: int, chat_template: bool = True,
                 system_prompt: str = "") -> EncodedPairs:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    eos = tokenizer.eos_token_ids[0] if tokenizer.eos_token_ids else None
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
    ids = np.full((len(pairs), max_length), pad, np.int32)
    mask, loss_mask = np.zeros_like(ids), np.zeros_like(ids)
    for row, (prompt, response) in enumerate(pairs):
        prompt_ids = (tokenizer.encode_chat(system + [{"role": "user", "content": prompt}]) if chat_template
                      else tokenizer.encode(prompt))
        response_ids = tokenizer.encode(response) + ([eos] if eos is not None else [])
        if len(prompt_ids) >= max_length:
            raise data_lib.DataError(f"sft row {row}: the prompt alone is {len(prompt_ids)} tokens, leaving "
                                     f"no room for the response within model.max_length={max_length}")
        tokens = (prompt_ids + response_ids)[:max_length]
        ids[row, : len(tokens)] = tokens
        mask[row, : len(tokens)] = 1
        loss_mask[row, len(prompt_ids): len(tokens)] = 1
    return EncodedPairs(ids, mask, loss_mask)


def split_pairs(pairs: list[tuple[str, str]], fraction: float, seed: int) -> tuple[list, list]:
    """A stable hash split: a pair is held out iff hash(seed, prompt, response) falls below `fraction`."""
    def score(pair):
        digest = hashlib.sha256(f"{seed}\x00{pair[0]}\x00{pair[1]}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64
    held = [score(p) < fraction for p in pairs]
    return [p for p, h in zip(pairs, held) if not h], [p for p, h in zip(pairs, held) if h]


def lm_trainable(frozen_layers: int):
    """Whether the decoder param at a state path trains: all of them, or (frozen_layers > 0) none of
    the token embeddings and of the bottom `frozen_layers` layers. Gradients then stop above them."""
    def trainable(path) -> bool:
        if frozen_layers == 0 or path[0] not in ("embed_tokens", "layers"):
            return True
        return path[0] == "layers" and int(path[1]) >= frozen_layers
    return trainable


def build_lm(cfg: LMModelConfig, seed: int):
    """(ModelSpec, ChatTokenizer) of the decoder: pretrained weights or a seeded random init,
    with LoRA adapters when `cfg.lora.rank` > 0 (then only they train)."""
    model, tokenizer = _decoder(cfg, seed)
    trainable = lm_trainable(cfg.frozen_layers)
    if not cfg.lora.rank:
        return spec_of(model, model.cfg, trainable), tokenizer
    # adapters on the layers that would train (none below frozen_layers), seeded by the run
    lora.apply_lora(model, cfg.lora, rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 3)),
                    where=trainable)
    return spec_of(model, model.cfg, lora.trainable(model, trainable),
                   frozen_dtype=jnp.dtype(cfg.lora.base_dtype)), tokenizer


def _decoder(cfg: LMModelConfig, seed: int):
    """(Llama, ChatTokenizer): the checkpoint's weights, or a seeded random init of its architecture."""
    from jaxdiv.models import checkpoints, llama
    from jaxdiv.models.tokenizer import ChatTokenizer

    dtype = jnp.bfloat16 if cfg.compute_dtype == "bfloat16" else jnp.float32
    if cfg.pretrained:
        model, tokenizer = checkpoints.load_pretrained(cfg.checkpoint, dtype=dtype)
        model.remat = cfg.remat
        if cfg.frozen_layers > model.cfg.num_layers:
            raise configlib.ConfigError(f"model.frozen_layers={cfg.frozen_layers}: {cfg.checkpoint} has "
                                        f"{model.cfg.num_layers} layers")
        return model, tokenizer
    path = checkpoints.resolve_checkpoint(cfg.checkpoint)
    if path.suffix == ".gguf":
        import gguf

        arch = checkpoints.gguf_config(gguf.GGUFReader(path), path)
        tokenizer = ChatTokenizer.from_gguf(path)
    else:
        arch, tokenizer = checkpoints.hf_config(path), ChatTokenizer.from_hf_dir(path)
    overrides = {name: getattr(cfg, name) for name in
                 ("num_layers", "hidden_size", "intermediate_size", "num_heads", "num_kv_heads")
                 if getattr(cfg, name)}
    if "hidden_size" in overrides or "num_heads" in overrides:
        hidden = overrides.get("hidden_size", arch.hidden_size)
        overrides["head_dim"] = hidden // overrides.get("num_heads", arch.num_heads)
    arch = dataclasses.replace(arch, **overrides)
    return llama.Llama(arch, rngs=nnx.Rngs(seed), dtype=dtype, remat=cfg.remat), tokenizer


# positions whose logits exist at once in the loss: (B, 64, vocab) rather than (B, T, vocab),
# SmolLM2's 49152-token vocabulary at T = 256 being ~400 MB a copy per 8 rows
LOSS_CHUNK = 64


def _token_losses(spec: ModelSpec, params, batch, dropout_key=None) -> tuple[jax.Array, jax.Array]:
    """Per-example summed cross-entropy over response targets, and their counts (`dropout_key`:
    LoRA dropout while training; the decoder itself has none). The LM head and softmax run over
    LOSS_CHUNK positions at a time, in a rematerialised scan, so the backward pass never holds
    the whole sequence's logits."""
    model = lora.with_dropout(spec.apply(params), dropout_key)
    hidden = model.sequence_hidden(batch["input_ids"], batch["attention_mask"])[:, :-1]
    targets = batch["input_ids"][:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    rows, positions = targets.shape
    count = -(-positions // LOSS_CHUNK)
    size = -(-positions // count)  # equal chunks of at most LOSS_CHUNK; padding has weight 0

    def chunks(x):  # (B, T, ...) -> (count, B, size, ...)
        x = jnp.pad(x, [(0, 0), (0, count * size - positions)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x.reshape((rows, count, size) + x.shape[2:]), 1, 0)

    @jax.checkpoint
    def add_chunk(total, chunk):
        chunk_hidden, chunk_targets, chunk_weights = chunk
        ce = optax.softmax_cross_entropy_with_integer_labels(model.logits(chunk_hidden), chunk_targets)
        return total + jnp.sum(ce * chunk_weights, axis=1), None

    total, _ = jax.lax.scan(add_chunk, jnp.zeros(rows, jnp.float32), (chunks(hidden), chunks(targets), chunks(weights)))
    return total, jnp.sum(weights, axis=1)


def lm_loss(spec: ModelSpec):
    """Mean cross-entropy per response token of the (micro-)batch (`step.LossFn`)."""
    def loss_fn(params, batch, dropout_key):
        total, count = _token_losses(spec, params, batch, dropout_key)
        return jnp.sum(total) / jnp.maximum(jnp.sum(count), 1.0), {"response_tokens": jnp.sum(count)}
    return loss_fn


def llama_train_flops(cfg, batch: int, length: int, *, causal_once: bool = False, lora: bool = False) -> float:
    """Matmul FLOPs of one SFT step: 3x the forward (projections, attention, LM head). Attention
    counts every (query, key) pair as computed (causal_once: the causal half only, MaxText's
    6·N·T + attention convention). `lora`: the weights are frozen under adapters, so their
    backward is the input gradient alone, 4·N·T (the adapters' rank-r matmuls are not counted)."""
    from jaxdiv.models.llama import forward_flops

    weights = forward_flops(cfg, batch, length, 0) if lora else 0.0  # the gradients they do not get
    return 3.0 * forward_flops(cfg, batch, length, length / 2 if causal_once else length) - weights


def train_sft(cfg: SFTConfig, rows: Any, eval_rows: Any, workdir: str | Path, *, seed: int) -> dict[str, Any]:
    """Fine-tune with `seed` (init, data order, the held-out split) into `workdir`; returns
    {"steps", "eval": {"loss", "perplexity", "tokens"}, "train": last train metrics, "params":
    final params (host), "model": the `Llama` holding them, "architecture": the LlamaConfig,
    "tokenizer": the ChatTokenizer} (params or model, architecture and tokenizer are what
    `checkpoints.save_hf_checkpoint` takes; with LoRA the params and model carry the adapters
    unmerged: write `lora.merge_lora(result["model"])`). Without rows, data.path's; without
    eval_rows, data.eval_fraction of the rows is held out."""
    initialize(cfg.distributed)
    workdir = Path(workdir)
    if jax.process_index() == 0:
        configlib.save_config(cfg, workdir, resume_safe=RESUME_SAFE_KEYS if cfg.checkpoint.resume else None,
                              shared={"workdir": str(workdir), "seed": seed})
    if rows is None and not cfg.data.path:
        raise configlib.ConfigError("data.path: no rows given; set data.path or pass --train-rows")
    pairs = read_pairs(rows if rows is not None else cfg.data.path, cfg)
    if eval_rows is None:
        pairs, eval_pairs = split_pairs(pairs, cfg.data.eval_fraction, seed)
    else:
        eval_pairs = read_pairs(eval_rows, cfg)
    spec, tokenizer = build_lm(cfg.model, seed)
    encode = lambda p: encode_pairs(tokenizer, p, cfg.model.max_length, cfg.data.chat_template,
                                    cfg.data.system_prompt)
    train, evals = encode(pairs), encode(eval_pairs) if eval_pairs else None
    results: dict[str, Any] = {}
    compiled: dict[int, Any] = {}  # by id(program): fit builds one

    def evaluate(program, state, step, writer):
        if evals is None:
            return
        if id(program) not in compiled:
            compiled[id(program)] = program.map_runs(lambda params, batch: _token_losses(spec, params, batch),
                                                     {k: 2 for k in ("input_ids", "attention_mask", "loss_mask")})
        token_losses, batch_shardings = compiled[id(program)]
        total = count = 0.0
        for start in range(0, len(evals), cfg.optim.eval_batch_size):
            index = np.arange(start, start + cfg.optim.eval_batch_size) % len(evals)
            keep = np.arange(start, start + cfg.optim.eval_batch_size) < len(evals)
            losses, counts = to_host(token_losses(state, data_lib.global_batch(evals.take(index), batch_shardings)))
            total += float(np.sum(losses[0][keep], dtype=np.float64))
            count += float(np.sum(counts[0][keep]))
        loss = total / max(count, 1.0)
        results["eval"] = {"loss": loss, "perplexity": float(np.exp(loss)), "tokens": count}
        writer.write(step, "eval/heldout", results["eval"])

    flops = llama_train_flops(spec.config, cfg.optim.batch_size, cfg.model.max_length, lora=bool(cfg.model.lora.rank))
    fitted = fit(cfg, spec, [Run(train, seed)], workdir, loss_fn=lm_loss(spec), flops_per_step=flops,
                 evaluate_fn=evaluate)
    results.update(steps=fitted.steps[0], train=fitted.train_metrics[0], resumed_from=fitted.resumed_from,
                   num_pairs=len(pairs), eval_pairs=len(eval_pairs), workdir=str(workdir))
    if jax.process_index() == 0:
        atomic_write_text(workdir / "results.json", json.dumps(results, indent=2))
    results["params"] = fitted.params(0)
    results.update(model=spec.apply(results["params"]), architecture=spec.config, tokenizer=tokenizer)
    return results


def save_merged(result: dict[str, Any], directory: str | Path) -> Path:
    """A trained decoder (`train_sft`'s result) as an HF checkpoint that `load_pretrained` and
    transformers read, any LoRA adapters folded into their base weights."""
    from jaxdiv.models import checkpoints

    return checkpoints.save_hf_checkpoint(lora.merge_lora(result["model"]), result["architecture"],
                                          result["tokenizer"], directory)


def export_model(result: dict[str, Any], directory: str | Path, base: str) -> list[Path]:
    """Write a trained decoder for other tools: <directory>/model (`save_merged`), and with LoRA
    also <directory>/adapter, the PEFT adapter of base checkpoint `base`."""
    from jaxdiv.models import peft

    directory, model = Path(directory), result["model"]
    written = [save_merged(result, directory / "model")]
    if list(lora.adapters(model)):
        written.append(peft.save_peft_adapter(directory / "adapter", model, base_model_name_or_path=base))
    return written
