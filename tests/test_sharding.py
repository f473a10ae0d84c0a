"""Logical-axis rules live in the mesh config: a config file or `--set` changes where arrays go,
bad rules are named errors, and the rules round-trip through the saved config."""

import json
from pathlib import Path

import pytest
from jax.sharding import PartitionSpec as P

from jaxdiv.configlib import ConfigError, apply_overrides, from_dict, load_config, to_dict
from jaxdiv.sharding import (MeshConfig, batch_sharding, logical_to_spec, make_mesh, named_sharding, rules_without,
                             shard_count)
from jaxdiv.train.config import TrainJobConfig
from jaxdiv.train.classifier import build_model, classifier_loss
from jaxdiv.train.engine import build_program, run_rules

from tests.train.conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
# embed unsharded, the MLP over fsdp instead of tensor, the batch over data alone
OVERRIDE = "mesh.logical_axis_rules=(('batch', ('data',)), ('mlp', ('fsdp',)), ('heads', ('tensor',)))"


def test_default_rules_are_the_maxtext_style_table():
    assert MeshConfig().logical_axis_rules == (
        ("batch", ("data", "fsdp")), ("runs", ("data",)), ("embed", ("fsdp",)), ("mlp", ("tensor",)),
        ("heads", ("tensor",)), ("kv_heads", ("tensor",)), ("vocab", ("tensor",)))


def test_a_rules_override_in_the_config_changes_the_partition_spec():
    default = load_config(ROOT / "configs/train_trec.py", ["mesh.data=4", "mesh.fsdp=2"])
    changed = load_config(ROOT / "configs/train_trec.py", ["mesh.data=4", "mesh.fsdp=2", OVERRIDE])
    assert changed.mesh.logical_axis_rules == (("batch", ("data",)), ("mlp", ("fsdp",)), ("heads", ("tensor",)))
    mesh = make_mesh(changed.mesh)
    assert batch_sharding(mesh, 2, default.mesh.logical_axis_rules).spec == P(("data", "fsdp"), None)
    assert batch_sharding(mesh, 2, changed.mesh.logical_axis_rules).spec == P("data", None)
    assert logical_to_spec(("embed", "mlp"), default.mesh.logical_axis_rules, mesh) == P("fsdp", None)
    assert logical_to_spec(("embed", "mlp"), changed.mesh.logical_axis_rules, mesh) == P(None, "fsdp")
    assert shard_count(mesh, default.mesh.logical_axis_rules, "batch") == 8
    assert shard_count(mesh, changed.mesh.logical_axis_rules, "batch") == 4


def test_the_train_state_is_placed_by_the_configs_rules():
    """The state's params follow cfg.mesh.logical_axis_rules, not a module constant."""
    for overrides, expected in (((), P("fsdp", "tensor")), ((OVERRIDE,), P(None, "fsdp"))):
        cfg = tiny_config("mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", *overrides)
        spec = build_model(cfg.model, 6, 0)
        program = build_program(spec, cfg.optim, make_mesh(cfg.mesh), cfg.mesh.logical_axis_rules, 1,
                                loss_fn=classifier_loss(spec), batch_ndims={"input_ids": 2, "labels": 1})
        state = program.abstract_state()
        assert state["trainable"]["encoder/layers/0/intermediate/kernel"].sharding.spec == P(None, *expected), overrides


def test_the_run_axis_is_replicated_when_the_runs_do_not_divide_its_mesh_axes():
    rules = MeshConfig().logical_axis_rules
    mesh = make_mesh(MeshConfig(data=8))
    assert run_rules(rules, mesh, 8) == rules
    assert run_rules(rules, mesh, 3) == rules_without(rules, "runs")
    assert named_sharding(mesh, ("runs", "batch"), rules).spec == P("data", None)
    assert named_sharding(mesh, ("runs", "batch"), run_rules(rules, mesh, 3)).spec == P(None, "data")
    # runs moved to fsdp by the config: 2 runs divide over fsdp=2, the batch keeps data
    cfg = apply_overrides(TrainJobConfig(), ["mesh.data=4", "mesh.fsdp=2",
                                             "mesh.logical_axis_rules=(('batch', ('data', 'fsdp')), ('runs', 'fsdp'))"])
    mesh = make_mesh(cfg.mesh)
    moved = run_rules(cfg.mesh.logical_axis_rules, mesh, 2)
    assert named_sharding(mesh, ("runs", "batch"), moved).spec == P("fsdp", "data")


@pytest.mark.parametrize("value, message", [
    ("(('batch', ('dat',)),)", "unknown mesh axis 'dat'"),
    ("(('batch', ('data', 'data')),)", "a mesh axis is listed twice"),
    ("(('batch', ('data',)), ('batch', ()))", "a logical axis is listed twice"),
    ("batch:data", r"\[0\]: expected 2 items"),
])
def test_bad_rules_are_named_errors(value, message):
    with pytest.raises(ConfigError, match=r"mesh\.logical_axis_rules.*" + message):
        apply_overrides(TrainJobConfig(), [f"mesh.logical_axis_rules={value}"])


def test_rules_round_trip_through_the_saved_config():
    cfg = apply_overrides(TrainJobConfig(), [OVERRIDE])
    stored = json.loads(json.dumps(to_dict(cfg)))  # tuples become lists, as in config.json
    assert stored["mesh"]["logical_axis_rules"][0] == ["batch", ["data"]]
    assert from_dict(TrainJobConfig, stored) == cfg
    assert from_dict(TrainJobConfig, json.loads(json.dumps(to_dict(TrainJobConfig())))) == TrainJobConfig()
