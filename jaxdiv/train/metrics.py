"""Classification metrics, the metrics writer (JSONL + TensorBoard, process 0 only), the
progress bar and the analytic FLOP count behind achieved-FLOP/s and MFU figures."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdiv.models.bert import BertConfig


def classification_metrics(labels: np.ndarray, predictions: np.ndarray, losses: np.ndarray
                           ) -> dict[str, float]:
    """Mean loss, accuracy and macro-F1 (over the classes present in labels or predictions,
    as scikit-learn's `f1_score(average="macro")`)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    f1s = []
    for cls in np.union1d(labels, predictions):
        tp = np.sum((predictions == cls) & (labels == cls))
        fp = np.sum((predictions == cls) & (labels != cls))
        fn = np.sum((predictions != cls) & (labels == cls))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return {"loss": float(np.mean(losses)), "accuracy": float(np.mean(labels == predictions)),
            "macro_f1": float(np.mean(f1s))}


def bert_layers_flops(cfg: BertConfig, length: int, layers: int, *, cls_only: bool = False) -> float:
    """Matmul FLOPs per example of a forward through `layers` encoder layers (projections,
    QK^T and PV). `cls_only`: the last of them computes only the [CLS] row, its keys and
    values still covering every token."""
    if layers == 0:
        return 0.0
    h, m = cfg.hidden_size, cfg.intermediate_size
    per_token = 2 * (4 * h * h + 2 * h * m) + 2 * 2 * length * h
    last = length * 2 * (2 * h * h) + per_token - 2 * (2 * h * h) if cls_only else length * per_token
    return float(length * per_token * (layers - 1) + last)


def bert_train_flops(cfg: BertConfig, num_labels: int, batch: int, length: int, frozen_layers: int = 0,
                     *, cls_only: bool = True, lora: bool = False) -> float:
    """Matmul FLOPs of one classifier train step as executed: forward through everything,
    backward (2x the forward) through the trained layers, pooler and head only. `cls_only`:
    the last layer computes the [CLS] row only, as jaxdiv's classifier does (False: every row,
    as `BertForSequenceClassification` does). `lora`: the trained layers' weights are frozen
    under adapters, so their backward is the input gradient alone (1x; the adapters' rank-r
    matmuls are not counted). Embedding gathers, softmax and norms are not counted (they are
    a few percent)."""
    layers, h = cfg.num_hidden_layers, cfg.hidden_size
    head = 2 * (h * h + h * num_labels)  # per example
    forward = bert_layers_flops(cfg, length, layers, cls_only=cls_only) + head
    backward = ((1 if lora else 2) * bert_layers_flops(cfg, length, layers - frozen_layers, cls_only=cls_only)
                + 2 * head)
    return float(batch * (forward + backward))


# Dense peak FLOP/s per chip at bf16 (vendor figures), for MFU. CPUs have no entry: there the
# benchmark compares with the measured f32 matmul rate instead.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
                   "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
                   "TPU v6 lite": 918e12}


def peak_flops(device: jax.Device | None = None) -> float | None:
    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "")
    for name, flops in PEAK_BF16_FLOPS.items():
        if name.lower() in kind.lower():
            return flops
    return None


class MetricsWriter:
    """Appends one JSON object a line to <workdir>/metrics.jsonl and mirrors scalars to
    TensorBoard; a no-op on every process but 0."""

    def __init__(self, workdir: str | Path, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = Path(workdir) / "metrics.jsonl"
        self._tb = None
        if self.active:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(str(Path(workdir) / "tb"))

    def truncate(self, step: int) -> None:
        """Drop records after `step`: a run resumed from the checkpoint of `step` logs the steps
        after it again, so the log holds each step once."""
        if not self.active or not self.path.is_file():
            return
        from jaxdiv.io import atomic_write_text

        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.strip() and _step_of(line) <= step]
        if len(kept) != len(lines):
            atomic_write_text(self.path, "".join(kept))

    def write(self, step: int, split: str, values: dict[str, Any]) -> None:
        if not self.active:
            return
        record = {"step": int(step), "split": split, "time": time.time(),
                  **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return float("inf")  # a line cut by the kill: dropped with the replayed steps


class Throughput:
    """Steps/s, examples/s, tokens/s (non-padding) and MFU over the steps since the last call."""

    def __init__(self, examples_per_step: int, flops_per_step: float):
        self.examples_per_step, self.flops_per_step = examples_per_step, flops_per_step
        self.peak = peak_flops()
        self._time, self._steps, self._tokens = time.perf_counter(), 0, 0

    def add(self, tokens: int) -> None:
        self._steps += 1
        self._tokens += tokens

    def read(self) -> dict[str, float]:
        now = time.perf_counter()
        elapsed = max(now - self._time, 1e-9)
        rate = self._steps / elapsed
        out = {"steps_per_s": rate, "examples_per_s": rate * self.examples_per_step,
               "tokens_per_s": self._tokens / elapsed, "gflops_per_s": rate * self.flops_per_step / 1e9}
        if self.peak:
            out["mfu"] = rate * self.flops_per_step / (self.peak * jax.device_count())
        self._time, self._steps, self._tokens = now, 0, 0
        return out
