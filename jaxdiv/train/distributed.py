"""`jax.distributed.initialize` driven by config or environment.

- `explicit`: coordinator / num_processes / process_id from the config;
- `auto`: `JAXDIV_COORDINATOR`, `JAXDIV_NUM_PROCESSES`, `JAXDIV_PROCESS_ID` when set; else
  JAX's own cluster auto-detection (TPU pods, SLURM, Open MPI) when one of those
  environments is present; else a single process (nothing to do);
- `off`: never.

Must run before anything touches the JAX backend.
"""

from __future__ import annotations

import os

import jax

from jaxdiv.train.config import DistributedConfig

_CLUSTER_MARKERS = ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_JOB_ID",
                    "OMPI_MCA_orte_hnp_uri")


def initialize(cfg: DistributedConfig) -> bool:
    """Join the cluster this process belongs to; returns whether it is multi-process."""
    if cfg.mode == "off" or jax.distributed.is_initialized():
        return jax.process_count() > 1
    coordinator, num, pid = cfg.coordinator, cfg.num_processes, cfg.process_id
    if cfg.mode == "auto":
        if "JAXDIV_COORDINATOR" in os.environ:
            coordinator = os.environ["JAXDIV_COORDINATOR"]
            num = int(os.environ["JAXDIV_NUM_PROCESSES"])
            pid = int(os.environ["JAXDIV_PROCESS_ID"])
        elif any(marker in os.environ for marker in _CLUSTER_MARKERS):
            jax.distributed.initialize()  # JAX detects the TPU pod / SLURM / MPI cluster itself
            return jax.process_count() > 1
        else:
            return False
    if num == 1:
        return False
    if cfg.cpu_collectives != "none":
        jax.config.update("jax_cpu_collectives_implementation", cfg.cpu_collectives)
    jax.distributed.initialize(coordinator, num_processes=num, process_id=pid)
    return True
