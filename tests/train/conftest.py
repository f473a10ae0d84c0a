"""Shared pieces of the training tests: one tiny configuration of the real classifier (the
MiniLM architecture and tokenizer, shrunk and seeded-randomly initialised, so compiles stay
short) and small slices of the real TREC data."""

from pathlib import Path

import pytest

from jaxdiv.configlib import apply_overrides
from jaxdiv.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

TINY = ["model.pretrained=false", "model.num_hidden_layers=2", "model.hidden_size=32",
        "model.num_attention_heads=2", "model.intermediate_size=64", "model.max_length=16",
        "optim.batch_size=8", "optim.eval_batch_size=64", "optim.learning_rate=1e-3",
        "optim.warmup_fraction=0.2", "log.progress=false", "checkpoint.every=0"]


def tiny_config(*overrides: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), TINY + list(overrides))


@pytest.fixture(scope="session")
def trec_rows(trec_task):
    """(train rows, eval splits, label names): 96 training and 64 test questions."""
    return (trec_task.splits["train"].select(range(96)),
            {"test": trec_task.splits["test"].select(range(64))}, trec_task.label_names)


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """A compilation cache shared by this session's tests and the processes they spawn: the
    same tiny programs recur across tests (compiling dominates on a 2-core CPU). Fresh per
    session, so every session still compiles each program once. Spawned processes get it
    through `subprocess_env`."""
    import jax

    directory = str(tmp_path_factory.mktemp("jax_cache"))
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def subprocess_env(cache_dir: str, devices: int = 8, **extra: str) -> dict[str, str]:
    """Environment of a spawned training process: forced host devices, the shared cache."""
    import os

    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
           "JAX_COMPILATION_CACHE_DIR": cache_dir, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
           "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1", "PYTHONPATH": str(ROOT)}
    env.update(extra)
    return env
