"""Orbax checkpoints: SIGKILL then resume is bitwise identical (full fine-tuning and LoRA);
damaged or partial checkpoints fall back to the previous good one with a warning; a checkpoint
restores onto another mesh."""

import signal
import subprocess
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdiv.configlib import load_config, stage_part
from jaxdiv.sharding import MeshConfig, make_mesh
from jaxdiv.train.checkpoint import Checkpointer, CheckpointWarning
from jaxdiv.train.config import TrainConfig
from jaxdiv.train.classifier import build_model, classifier_loss, train_classifier
from jaxdiv.train.engine import build_program, to_host

from tests.train.conftest import ROOT, TINY, subprocess_env

STEPS = 120
OVERRIDES = TINY + [f"optim.steps={STEPS}", "checkpoint.every=10", "checkpoint.keep=3", "log.every=1",
                    "task.name=trec"]


def _command(workdir, overrides):
    args = [sys.executable, "-m", "jaxdiv", "train", "--config", str(ROOT / "configs/train_trec.py"),
            "--workdir", str(workdir)]
    for item in overrides:
        args += ["--set", item]
    return args


def _restore(workdir, cfg, num_labels, mesh_cfg):
    spec = build_model(cfg.model, num_labels, cfg.seed)
    program = build_program(spec, cfg.optim, make_mesh(mesh_cfg), mesh_cfg.logical_axis_rules, 1,
                            loss_fn=classifier_loss(spec), batch_ndims={"input_ids": 2, "attention_mask": 2, "labels": 1})
    return Checkpointer(workdir / "checkpoints", cfg.checkpoint).restore_latest(program.abstract_state())


def _params(state):
    """The one run's params, on the host (trainable ones carry the run axis)."""
    return {**{k: v[0] for k, v in to_host(state["trainable"]).items()}, **to_host(state["frozen"])}


def _uninterrupted(trec_task, workdir, overrides):
    """The uninterrupted run, in this process."""
    cfg = load_config(ROOT / "configs/train_trec.py", overrides)
    splits = trec_task.splits
    result = train_classifier(stage_part(cfg, TrainConfig), splits["train"],
                              {"validation": splits["validation"], "test": splits["test"]}, workdir, seed=cfg.seed,
                              task=cfg.task, label_names=trec_task.label_names)
    return cfg, workdir, result


@pytest.fixture(scope="module")
def reference_run(trec_task, tmp_path_factory):
    return _uninterrupted(trec_task, tmp_path_factory.mktemp("uninterrupted"), OVERRIDES)


# LoRA: the frozen base (held in bf16) is restored, not trained, and the adapters and head resume bitwise too
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sigkill_then_resume_is_bitwise_identical(lora, reference_run, trec_task, tmp_path, compilation_cache):
    overrides = OVERRIDES + ["model.lora.rank=4", "model.lora.base_dtype=bfloat16"] * lora
    cfg, _, reference = _uninterrupted(trec_task, tmp_path / "uninterrupted", overrides) if lora else reference_run
    env = subprocess_env(compilation_cache)
    process = subprocess.Popen(_command(tmp_path, overrides), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    checkpoints = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and process.poll() is None:
        steps = [int(p.name) for p in checkpoints.glob("*") if p.name.isdigit()] if checkpoints.exists() else []
        if steps and max(steps) >= 40:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(int(p.name) for p in checkpoints.glob("*") if p.name.isdigit())
    assert 40 <= killed_at < STEPS

    resumed = subprocess.run(_command(tmp_path, overrides), cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state, meta = _restore(tmp_path, cfg, len(trec_task.label_names), cfg.mesh)
    assert meta["step"] == STEPS and meta["examples_seen"] == STEPS * cfg.optim.batch_size
    params = _params(state)
    assert lora == any(key.endswith("/lora_b") for key in reference["params"])
    assert lora == any(value.dtype == jnp.bfloat16 for value in params.values())
    for key, value in reference["params"].items():
        assert np.array_equal(params[key], value), key  # bitwise
    assert (tmp_path / "results.json").read_text() != ""


def test_damaged_and_partial_checkpoints_fall_back(reference_run, trec_task, tmp_path):
    import shutil

    cfg, workdir, reference = reference_run
    copy = tmp_path / "run"
    shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
    latest = copy / "checkpoints" / str(STEPS)
    for path in (latest / "state").rglob("*"):  # damage every data file of the newest checkpoint
        if path.is_file() and path.stat().st_size > 0 and "metadata" not in path.name:
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    (copy / "checkpoints" / str(STEPS + 10)).mkdir()  # a partial copy: a step folder with nothing inside
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, meta = _restore(copy, cfg, len(trec_task.label_names), cfg.mesh)
    messages = [str(w.message) for w in caught if issubclass(w.category, CheckpointWarning)]
    assert meta["step"] == STEPS - 10
    assert any(str(STEPS + 10) in m for m in messages) and any(f"/{STEPS} " in m for m in messages), messages


@pytest.mark.parametrize("mesh", [MeshConfig(data=4, fsdp=2), MeshConfig(data=2, fsdp=2, tensor=2)],
                         ids=["data4_fsdp2", "data2_fsdp2_tensor2"])
def test_restores_onto_another_mesh(reference_run, trec_task, mesh):
    cfg, workdir, reference = reference_run  # saved on data=8
    state, meta = _restore(workdir, cfg, len(trec_task.label_names), mesh)
    kernel = state["trainable"]["encoder/layers/1/intermediate/kernel"]
    assert kernel.sharding.spec == (P(None, "fsdp", "tensor") if mesh.tensor > 1 else P(None, "fsdp", None))
    assert kernel.sharding.mesh.shape == {"data": mesh.data, "fsdp": mesh.fsdp, "tensor": mesh.tensor}
    params = _params(state)
    for key, value in reference["params"].items():
        assert np.array_equal(params[key], value), key
    assert jax.device_get(state["step"]).tolist() == [STEPS]
