"""The PyTorch twin of the JAX encoder fine-tune (needs the `torch` extra; imported lazily).

transformers' `BertForSequenceClassification` on the same checkpoint, trained exactly as
`jaxdiv.train` trains its `BertClassifier`:
- the same tokenised rows (`jaxdiv.train.data.encode_rows`) and the same batch order
  (`batch_indices(seed, step, ...)`);
- the same pooler/head initialisation (copied from the JAX model's initial weights);
- AdamW with decay on matrices only (`decayed_keys`: kernels and embeddings, not biases or
  LayerNorm scales), the same betas/eps/decay, global-norm clipping, and the same
  warmup + decay schedule (`learning_rate_schedule`, evaluated once for every step);
- frozen bottom layers and embeddings when `frozen_layers` > 0; dropout off.
One documented difference: the JAX step averages `grad_accum` micro-batch means, the twin
takes the whole batch at once (the same mean for equal micro-batches).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiv.train.config import OptimConfig
from jaxdiv.train.data import EncodedRows, batch_indices, eval_batches
from jaxdiv.train.metrics import classification_metrics
from jaxdiv.train.state import ModelSpec


def build_twin(model_directory: str | Path, spec: ModelSpec, frozen_layers: int = 0):
    """`BertForSequenceClassification` on the checkpoint's weights, dropout off, with the JAX
    classifier's initial pooler and head copied in (JAX kernels are (in, out): transposed)."""
    import torch
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification.from_pretrained(
        str(model_directory), num_labels=spec.num_labels, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, classifier_dropout=0.0, attn_implementation="eager")
    heads = {"pooler": model.bert.pooler.dense, "classifier": model.classifier}
    with torch.no_grad():
        for name, layer in heads.items():
            layer.weight.copy_(torch.tensor(spec.initial[f"{name}/kernel"].T))
            layer.bias.copy_(torch.tensor(spec.initial[f"{name}/bias"]))
    frozen = [model.bert.embeddings] + list(model.bert.encoder.layer[:frozen_layers]) if frozen_layers else []
    for module in frozen:
        module.requires_grad_(False)
    return model


def make_twin_optimizer(model, optim: OptimConfig):
    """torch AdamW over the trainable params, decay on >= 2-D params only (as `decayed_keys`).
    torch's decoupled decay p -= lr*wd*p before the Adam step equals optax's
    add_decayed_weights then -lr scaling (both use the pre-step p)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.ndim >= 2], "weight_decay": optim.weight_decay},
              {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.learning_rate, betas=(optim.b1, optim.b2), eps=optim.eps)


def learning_rates(optim: OptimConfig, steps: int) -> np.ndarray:
    """The per-step learning rate of the JAX schedule (the JAX function itself, evaluated once)."""
    from jaxdiv.train.state import learning_rate_schedule

    return np.asarray(learning_rate_schedule(optim, steps)(np.arange(steps)), np.float64)


def _tensors(batch: dict[str, np.ndarray], device: Any = "cpu") -> dict[str, Any]:
    import torch

    return {"input_ids": torch.from_numpy(batch["input_ids"].astype(np.int64)).to(device),
            "attention_mask": torch.from_numpy(batch["attention_mask"].astype(np.int64)).to(device)}


def twin_logits(model, batch: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    model.eval()
    with torch.no_grad():
        return model(**_tensors(batch)).logits.numpy()


def evaluate_twin(model, rows: EncodedRows, batch_size: int) -> dict[str, float]:
    """Loss, accuracy and macro-F1 with the JAX engine's metric function."""
    predictions, losses = [], []
    for batch in eval_batches(rows, batch_size):
        keep = batch.pop("weights") > 0
        logits = twin_logits(model, batch)[keep]
        shifted = logits - logits.max(-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
        labels = batch["labels"][keep]
        losses.append(-log_probs[np.arange(len(labels)), labels])
        predictions.append(logits.argmax(-1))
    return classification_metrics(rows.labels, np.concatenate(predictions), np.concatenate(losses))


def train_twin(model, optim: OptimConfig, train: EncodedRows, steps: int, seed: int, *,
               progress: bool = True, compute_dtype: str = "float32") -> dict[str, list[float]]:
    """Train in place for `steps` steps on the JAX engine's batches, on the model's device;
    returns per-step losses (before each update, as the JAX metrics) and per-step wall seconds.
    compute_dtype="bfloat16": torch's autocast (bf16 matmuls, f32 params), as the JAX model's."""
    import torch
    from tqdm.auto import tqdm

    device = next(model.parameters()).device

    optimizer = make_twin_optimizer(model, optim)
    rates = learning_rates(optim, steps)
    trainable = [p for p in model.parameters() if p.requires_grad]
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    losses, seconds = [], []
    for step in tqdm(range(steps), desc="torch twin", unit="step", disable=not progress, dynamic_ncols=True):
        start = time.perf_counter()
        batch = train.take(batch_indices(seed, step, optim.batch_size, len(train)))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=compute_dtype == "bfloat16"):
            logits = model(**_tensors(batch, device)).logits
        loss = loss_fn(logits.float(), torch.from_numpy(batch["labels"].astype(np.int64)).to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, optim.max_grad_norm)
        for group in optimizer.param_groups:
            group["lr"] = float(rates[step])
        optimizer.step()
        losses.append(float(loss.detach()))
        seconds.append(time.perf_counter() - start)
    return {"loss": losses, "step_seconds": seconds}
