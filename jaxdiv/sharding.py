"""Device mesh and logical-axis sharding rules (the pjit style, as in MaxText).

Every parameter and activation is annotated with *logical* axis names (`batch`,
`embed`, `mlp`, `heads`, `vocab`, ...). The mesh config's `logical_axis_rules` map each
logical name onto zero or more *mesh* axes (`data`, `fsdp`, `tensor`). Changing the mesh
shape or the rules (in a config file or with `--set mesh.logical_axis_rules=...`) switches
a model between data-parallel, FSDP and tensor-parallel execution without touching model
code. Every stage (training, scoring, generation, `jaxdiv compile`) builds its mesh with
`make_mesh` and places arrays with the rules of the same `MeshConfig`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxdiv.configlib import ConfigError, param

MESH_AXES = ("data", "fsdp", "tensor")

# (logical axis, mesh axes) pairs. Unlisted logical axes are replicated.
Rules = tuple[tuple[str, tuple[str, ...]], ...]


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Shape of the device mesh (-1 on one axis takes all remaining devices) and the rules that
    place logical array axes on it."""

    data: int = param(-1, help="data-parallel axis size (-1: all devices left over)")
    fsdp: int = param(1, ge=1, help="fully-sharded data-parallel axis size (shards params over 'embed')")
    tensor: int = param(1, ge=1, help="tensor-parallel axis size (shards 'mlp', 'heads', 'vocab')")
    logical_axis_rules: Rules = param(
        (("batch", ("data", "fsdp")),
         ("runs", ("data",)),  # the leading axis of vmapped ablation runs
         ("embed", ("fsdp",)),
         ("mlp", ("tensor",)),
         ("heads", ("tensor",)),
         ("kv_heads", ("tensor",)),
         ("vocab", ("tensor",))),
        help="(logical axis, mesh axes) pairs; a logical axis not listed is replicated. The whole "
             "table is set at once, e.g. --set \"mesh.logical_axis_rules=(('batch', ('data', 'fsdp')), "
             "('embed', ()))\"")

    def check(self) -> None:
        if self.data == 0 or self.data < -1:
            raise ConfigError("data: must be -1 or a positive size")
        names = [name for name, _ in self.logical_axis_rules]
        if len(set(names)) != len(names):
            raise ConfigError(f"logical_axis_rules: a logical axis is listed twice ({names})")
        for name, axes in self.logical_axis_rules:
            unknown = [a for a in axes if a not in MESH_AXES]
            if unknown:
                raise ConfigError(f"logical_axis_rules: {name!r} -> {axes}: unknown mesh axis {unknown[0]!r} "
                                  f"(the mesh axes are {MESH_AXES})")
            if len(set(axes)) != len(axes):
                raise ConfigError(f"logical_axis_rules: {name!r} -> {axes}: a mesh axis is listed twice")


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


def logical_to_spec(logical_axes: Sequence[str | None] | None, rules: Rules,
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


def named_sharding(mesh: Mesh, logical_axes: Sequence[str | None] | None, rules: Rules) -> NamedSharding:
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh))


def batch_sharding(mesh: Mesh, ndim: int, rules: Rules) -> NamedSharding:
    """Sharding of a (batch, ...) array: leading axis as the `batch` rule says, the rest replicated."""
    return named_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


def shard_count(mesh: Mesh, rules: Rules, logical_axis: str) -> int:
    """How many pieces an array's leading `logical_axis` is split into (e.g. the batch shards,
    which a batch size must divide by)."""
    return math.prod(mesh.shape[a] for a in dict(rules).get(logical_axis, ()))


def rules_without(rules: Rules, logical_axis: str) -> Rules:
    """`rules` with `logical_axis` replicated (its mesh axes left to the dimensions after it)."""
    return tuple((name, axes) for name, axes in rules if name != logical_axis)
