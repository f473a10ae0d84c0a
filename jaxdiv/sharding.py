"""Device mesh and logical-axis sharding rules (the pjit style, as in MaxText).

Every parameter and activation is annotated with *logical* axis names (`batch`,
`embed`, `mlp`, `heads`, `vocab`, ...). A rules table maps each logical name onto
zero or more *mesh* axes (`data`, `fsdp`, `tensor`). Changing the mesh shape or the
rules switches a model between data-parallel, FSDP and tensor-parallel execution
without touching model code.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiv.configlib import ConfigError, param

MESH_AXES = ("data", "fsdp", "tensor")

# logical axis -> mesh axes. Unlisted logical axes are replicated.
DEFAULT_RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("batch", ("data", "fsdp")),
    ("runs", ("data",)),  # the leading axis of vmapped ablation runs
    ("embed", ("fsdp",)),
    ("mlp", ("tensor",)),
    ("heads", ("tensor",)),
    ("kv_heads", ("tensor",)),
    ("vocab", ("tensor",)),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh. -1 on one axis takes all remaining devices."""

    data: int = param(-1, help="data-parallel axis size (-1: all devices left over)")
    fsdp: int = param(1, ge=1, help="fully-sharded data-parallel axis size (shards params over 'embed')")
    tensor: int = param(1, ge=1, help="tensor-parallel axis size (shards 'mlp', 'heads', 'vocab')")

    def check(self) -> None:
        if self.data == 0 or self.data < -1:
            raise ConfigError("data: must be -1 or a positive size")


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all global devices)."""
    devices = list(jax.devices() if devices is None else devices)
    fixed = cfg.fsdp * cfg.tensor
    data = len(devices) // fixed if cfg.data == -1 else cfg.data
    if data < 1 or data * fixed != len(devices):
        raise ConfigError(f"mesh: data={cfg.data} x fsdp={cfg.fsdp} x tensor={cfg.tensor} does not "
                          f"fit {len(devices)} devices")
    grid = np.asarray(devices, dtype=object).reshape(data, cfg.fsdp, cfg.tensor)
    return Mesh(grid, MESH_AXES)


def logical_to_spec(logical_axes: Sequence[str | None] | None,
                    rules: Sequence[tuple[str, tuple[str, ...]]] = DEFAULT_RULES,
                    mesh: Mesh | None = None) -> PartitionSpec:
    """PartitionSpec for an array whose dimensions carry these logical names.

    A mesh axis is used at most once per array (the first dimension that claims it
    wins), and mesh axes of size 1 are dropped, so the same rules serve every mesh.
    """
    if logical_axes is None:
        return PartitionSpec()
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for name in logical_axes:
        axes = [a for a in table.get(name, ()) if a not in used
                and (mesh is None or mesh.shape[a] > 1)]
        used.update(axes)
        spec.append(tuple(axes) if len(axes) > 1 else (axes[0] if axes else None))
    return PartitionSpec(*spec)


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None] | None,
                   rules: Sequence[tuple[str, tuple[str, ...]]] = DEFAULT_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh))


def batch_sharding(mesh: Mesh, ndim: int,
                   rules: Sequence[tuple[str, tuple[str, ...]]] = DEFAULT_RULES) -> NamedSharding:
    """Sharding of a (batch, ...) array: leading axis over the data axes, the rest replicated."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)
