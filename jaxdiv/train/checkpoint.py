"""Orbax checkpoints of the train state, with fallback past damaged ones.

Each checkpoint holds the whole state (trainable and frozen params, optimizer state, step,
RNG, peak learning rate) plus JSON metadata with the data position (the step and the
examples consumed; the order itself is a function of the seed, see `jaxdiv.train.data`).
Orbax writes into a temporary folder and renames it when complete, so a kill mid-save
leaves no checkpoint that looks finished. A checkpoint that still fails to restore (damaged
files, a half-copied folder) is skipped with a one-line warning and the previous one is used;
when training reaches that step again, the damaged copy is replaced. (Orbax keeps no checksum of
raw array bytes: damage that still decodes, such as flipped bits inside an uncompressed chunk,
restores as it reads.)
Restoring takes the target shardings from an abstract state, so a checkpoint saved on one
mesh shape restores onto another.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdiv.errors import JaxdivWarning
from jaxdiv.train.config import CheckpointConfig


# What a resumed run may change (ConfigError for anything else, see configlib.save_config):
# bookkeeping and layout only. Everything else (steps, learning rate, data, model) shapes the
# schedule or the state the checkpoint already holds.
RESUME_SAFE_KEYS = ("workdir", "log.", "checkpoint.", "mesh.", "distributed.", "optim.eval_every",
                    "optim.eval_batch_size")


class CheckpointWarning(JaxdivWarning):
    """A checkpoint could not be restored and an older one was used instead."""


class Checkpointer:
    def __init__(self, directory: str | Path, cfg: CheckpointConfig):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=cfg.keep,
                                               enable_async_checkpointing=cfg.async_save)
        # Replica-parallel writing splits replicated arrays across devices, which pays off on
        # accelerators but on CPU host devices (one host, one disk) only costs a compiled slice
        # per array shape: seconds per save for nothing.
        arrays = ocp.type_handlers.ArrayHandler(use_replica_parallel=jax.default_backend() != "cpu")
        state_handler = ocp.PyTreeCheckpointHandler(
            type_handler_registry=ocp.type_handlers.create_type_handler_registry((jax.Array, arrays)))
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add("state", ocp.args.PyTreeSave, state_handler)
        registry.add("state", ocp.args.PyTreeRestore, state_handler)
        registry.add("meta", ocp.args.JsonSave, ocp.JsonCheckpointHandler())
        registry.add("meta", ocp.args.JsonRestore, ocp.JsonCheckpointHandler())
        self.manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: dict[str, Any], meta: dict[str, Any]) -> None:
        if step in self.manager.all_steps():
            # Only a copy that failed to restore is still here when training reaches its step
            # again (a good one would have been resumed from): replace it.
            self.manager.delete(step)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.PyTreeSave(state),
                                                        meta=ocp.args.JsonSave(meta)), force=True)

    def restore_latest(self, abstract_state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(state, meta) of the newest checkpoint that restores cleanly, laid out as
        `abstract_state` (shapes, dtypes, shardings); None when there is none."""
        for step in reversed(self.steps()):
            try:
                with _quiet_absl():
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.PyTreeRestore(abstract_state, restore_args=ocp.checkpoint_utils
                                                     .construct_restore_args(abstract_state)),
                        meta=ocp.args.JsonRestore()))
                state, meta = restored["state"], restored["meta"]
                if int(np.max(state["step"].addressable_data(0))) != step or meta.get("step") != step:
                    raise ValueError(f"it records step {meta.get('step')}, not {step}")
                return state, meta
            except Exception as err:  # orbax/tensorstore raise many kinds for damaged files
                warnings.warn(f"checkpoint step {step} at {self.directory / str(step)} is damaged or "
                              f"incomplete ({_root_cause(err)}); trying an older one",
                              CheckpointWarning, stacklevel=2)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()



def _root_cause(err: BaseException, limit: int = 240) -> str:
    """The innermost error of a chain on one line: TensorStore's names the array and file,
    the outer ones dump the whole store spec."""
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:limit]}{'...' if len(text) > limit else ''}"


@contextlib.contextmanager
def _quiet_absl():
    """Orbax logs every failed read through absl at ERROR level (thousands of lines for one
    damaged file); the caller reports the failure itself, in one line."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)
