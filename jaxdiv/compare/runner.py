"""`run_compare`: one fine-tune by the JAX engine and by its PyTorch twin, on the same rows.

Writes <workdir>/config.json, compare.json (parity figures, curves, speed, memory) and
loss_curves.png; the JAX run's own outputs (metrics.jsonl, results.json) go to <workdir>/jax.
Peak memory is the process's peak resident set during each framework's run: the kernel's
high-water mark is reset before each (/proc/self/clear_refs), so the second run does not
inherit the first one's peak. Both frameworks share the process, so each figure includes the
resident interpreter, the other framework's libraries and the tokenised rows.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import statistics
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxdiv import configlib
from jaxdiv.compare.config import CompareJobConfig
from jaxdiv.compare.memory import peak_rss_mb, reset_peak_rss
from jaxdiv.io import atomic_write_bytes, atomic_write_text
from jaxdiv.train import data as data_lib
from jaxdiv.train.config import TrainConfig


def select_rows(source: Any, label_names: tuple[str, ...], limit: int, what: str) -> list[dict[str, Any]]:
    """The first `limit` (0: all) rows of a split or file, as {"text", "label" id} dicts."""
    texts, labels, _ = data_lib.read_rows(source, label_names, what=what)
    stop = limit or len(texts)
    return [{"text": t, "label": y} for t, y in zip(texts[:stop], labels[:stop])]


def versions() -> dict[str, str]:
    import flax
    import optax
    import torch
    import transformers

    return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "machine": f"{platform.machine()} {platform.processor()}".strip(),
            "cpu_count": str(__import__("os").cpu_count()),
            "jax_devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}"}


def initial_logits(spec, rows: data_lib.EncodedRows, size: int = 32) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(the first `size` rows, the JAX classifier's logits on them at its initial weights)."""
    batch = rows.take(np.arange(min(size, len(rows))))
    logits = jax.jit(lambda params, ids, mask: spec.apply(params)(ids, mask))(
        spec.initial, batch["input_ids"], batch["attention_mask"])
    return batch, np.asarray(logits)


def _median_step(seconds: list[float]) -> float:
    """Median step time without the first step (compilation / allocator warm-up)."""
    return statistics.median(seconds[1:] if len(seconds) > 1 else seconds)


def _speed(seconds: list[float], batch_size: int, peak_mb: float) -> dict[str, float]:
    step = _median_step(seconds)
    return {"step_s": step, "examples_per_s": batch_size / step, "first_step_s": seconds[0],
            "peak_rss_mb": peak_mb}


def plot_curves(jax_loss: list[float], torch_loss: list[float], title: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(jax_loss) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
    top.plot(steps, jax_loss, label="jaxdiv (JAX)", lw=2)
    top.plot(steps, torch_loss, label="PyTorch twin", lw=1, ls="--")
    top.set_ylabel("train loss (batch mean)")
    top.set_title(title)
    top.legend()
    bottom.plot(steps, np.asarray(jax_loss) - np.asarray(torch_loss), color="black", lw=1)
    bottom.axhline(0.0, color="grey", lw=0.5)
    bottom.set_ylabel("JAX - torch")
    bottom.set_xlabel("step")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


@dataclasses.dataclass
class JaxSide:
    """The JAX run of a comparison: its prepared rows and model, the initial logits on the first
    test rows, and the run's per-step losses and times, test metrics and peak memory."""

    job: Any  # the TrainJobConfig actually run
    prepared: Any  # jaxdiv.train.classifier.Prepared (one run)
    steps: int
    logits_batch: dict[str, np.ndarray]
    initial_logits: np.ndarray
    loss: list[float]
    step_seconds: list[float]
    test: dict[str, float]
    peak_rss_mb: float
    peak_resettable: bool


def run_jax_side(cfg: CompareJobConfig, train_source: Any = None, *, progress: bool = True) -> JaxSide:
    """Train with `jaxdiv.train.classifier.train_classifier` (logging every step, no resume) in
    <workdir>/jax. `train_source`: rows to train on (a file, a `datasets.Dataset` or dicts;
    default: the task's train split); evaluation is on the task's test split."""
    from jaxdiv.data.tasks import load_task
    from jaxdiv.train.classifier import RunSpec, prepare, train_classifier
    from jaxdiv.train.engine import total_steps

    workdir = Path(cfg.workdir)
    task = load_task(cfg.train.task)
    train_rows = select_rows(task.splits["train"] if train_source is None else train_source,
                             task.label_names, cfg.parity.train_rows, "train rows")
    test_rows = select_rows(task.splits["test"], task.label_names, cfg.parity.test_rows, "test rows")
    job = dataclasses.replace(
        cfg.train, log=dataclasses.replace(cfg.train.log, every=1, tensorboard=False, progress=progress),
        checkpoint=dataclasses.replace(cfg.train.checkpoint, every=0, resume=False))
    shutil.rmtree(workdir / "jax", ignore_errors=True)  # a fresh curve each time (no resume)

    prepared = prepare(job, [RunSpec(train_rows, job.seed)], {"test": test_rows}, task.label_names)
    batch, logits = initial_logits(prepared.spec, prepared.evals["test"])
    resettable = reset_peak_rss()
    result = train_classifier(configlib.stage_part(job, TrainConfig), train_rows, {"test": test_rows},
                              workdir / "jax", seed=job.seed, task=job.task, label_names=task.label_names)
    peak = peak_rss_mb()
    records = [json.loads(line) for line in (workdir / "jax" / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    return JaxSide(job, prepared, total_steps(job.optim, len(prepared.train[0])), batch, logits,
                   [r["loss"] for r in train_records], [1.0 / r["steps_per_s"] for r in train_records],
                   result["eval"]["test"], peak, resettable)


def run_compare(cfg: CompareJobConfig, train_source: Any = None, *, progress: bool = True) -> dict[str, Any]:
    """Fine-tune with both frameworks on the same rows and compare (see the module docstring);
    `train_source` as in `run_jax_side`."""
    import torch

    from jaxdiv.compare import torch_twin
    from jaxdiv.train.classifier import model_dir

    cfg = configlib.validate(cfg)
    workdir = Path(cfg.workdir)
    configlib.save_config(cfg, workdir)
    if cfg.parity.torch_threads:
        torch.set_num_threads(cfg.parity.torch_threads)
    ours = run_jax_side(cfg, train_source, progress=progress)
    job, prepared, steps = ours.job, ours.prepared, ours.steps

    reset_peak_rss()
    model = torch_twin.build_twin(model_dir(job.model), prepared.spec, job.model.frozen_layers)
    torch_logits = torch_twin.twin_logits(model, ours.logits_batch)
    twin = torch_twin.train_twin(model, job.optim, prepared.train[0], steps, job.seed, progress=progress)
    torch_eval = torch_twin.evaluate_twin(model, prepared.evals["test"], job.optim.eval_batch_size)
    torch_peak = peak_rss_mb()

    logits_gap = float(np.abs(ours.initial_logits - torch_logits).max())
    gaps = np.abs(np.asarray(ours.loss) - np.asarray(twin["loss"]))
    jax_speed = _speed(ours.step_seconds, job.optim.batch_size, ours.peak_rss_mb)
    torch_speed = _speed(twin["step_seconds"], job.optim.batch_size, torch_peak)
    report = {
        "steps": steps, "train_rows": len(prepared.train[0]), "test_rows": len(prepared.evals["test"]),
        "batch_size": job.optim.batch_size, "max_length": job.model.max_length,
        "initial_logits": {"rows": int(len(torch_logits)), "max_abs_diff": logits_gap,
                           "jax": ours.initial_logits.tolist(), "torch": torch_logits.tolist(),
                           "tolerance": cfg.parity.logits_tolerance,
                           "ok": logits_gap <= cfg.parity.logits_tolerance},
        "loss_curves": {"jax": ours.loss, "torch": twin["loss"], "max_abs_gap": float(gaps.max()),
                        "mean_abs_gap": float(gaps.mean()), "final_gap": float(gaps[-1]),
                        "correlation": float(np.corrcoef(ours.loss, twin["loss"])[0, 1]) if steps > 2 else 1.0,
                        "tolerance": cfg.parity.loss_tolerance,
                        "ok": bool(gaps.max() <= cfg.parity.loss_tolerance)},
        "test": {"jax": ours.test, "torch": torch_eval},
        "speed": {"jax": jax_speed, "torch": torch_speed,
                  "jax_over_torch_examples_per_s": jax_speed["examples_per_s"] / torch_speed["examples_per_s"],
                  "peak_rss_per_framework": ours.peak_resettable},
        "versions": versions(), "torch_threads": torch.get_num_threads(),
    }
    report["ok"] = report["initial_logits"]["ok"] and report["loss_curves"]["ok"]
    atomic_write_text(workdir / "compare.json", json.dumps(report, indent=2))
    atomic_write_bytes(workdir / "loss_curves.png", plot_curves(
        ours.loss, twin["loss"], f"MiniLM fine-tune on {cfg.train.task.name}: {len(prepared.train[0])} rows, "
                                 f"batch {job.optim.batch_size}, {steps} steps"))
    return report
