"""The training engine end to end on one run (R = 1) of real TREC rows: learning, outputs,
accumulation, freezing, and the same losses on every mesh shape with the params sharded as configured."""

import json

import numpy as np
from jax.sharding import PartitionSpec as P

from jaxdiv.sharding import MeshConfig, make_mesh
from jaxdiv.train.classifier import build_model, classifier_loss, train_classifier
from jaxdiv.train.engine import build_program, init_args

from tests.train.conftest import tiny_config


def _train_losses(workdir):
    return [r["loss"] for r in map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
            if r["split"] == "train"]


def test_learns_writes_outputs_and_keeps_frozen_layers(trec_rows, tmp_path):
    train, evals, names = trec_rows
    cfg = tiny_config("optim.epochs=4", "log.every=4", "optim.eval_every=24", "optim.learning_rate=3e-3",
                      "model.frozen_layers=1")
    result = train_classifier(cfg, train, {**evals, "train": train}, tmp_path, seed=0, label_names=names)
    assert result["steps"] == 48 and len(_train_losses(tmp_path)) == 12
    assert result["eval"]["train"]["loss"] < np.log(len(names)) - 0.1  # it fits its training rows
    test = result["eval"]["test"]
    assert set(test) == {"loss", "accuracy", "macro_f1"} and 0 < test["accuracy"] < 1
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["eval"]["test"] == test and written["label_names"] == list(names)
    assert json.loads((tmp_path / "config.json").read_text())["config"]["optim"]["epochs"] == 4.0
    assert any((tmp_path / "tb").iterdir())
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "eval/test"] == [24, 48]
    assert {"examples_per_s", "tokens_per_s", "steps_per_s", "learning_rate", "grad_norm"} <= set(records[0])
    # the embeddings and layer 0 are frozen: bitwise unchanged; everything above has moved
    initial = build_model(cfg.model, len(names), 0).initial
    for key, value in result["params"].items():
        frozen = key.startswith("encoder/") and not key.startswith("encoder/layers/1/")
        assert np.array_equal(value, initial[key]) == frozen, key


MESHES = {"data8": MeshConfig(data=8), "data4_fsdp2": MeshConfig(data=4, fsdp=2),
          "data2_fsdp2_tensor2": MeshConfig(data=2, fsdp=2, tensor=2)}


def test_mesh_shapes_and_grad_accumulation_give_the_same_training(trec_rows, tmp_path):
    """data=8, data=4 x fsdp=2 (with 4 accumulated micro-batches) and data=2 x fsdp=2 x tensor=2
    train the same model: same losses (<= 1e-4) and params; the params are sharded as configured."""
    train, _, names = trec_rows
    losses, params = {}, {}
    for (name, mesh), accum in zip(MESHES.items(), (1, 4, 1)):
        cfg = tiny_config("optim.steps=4", "log.every=1", "model.dropout=false", f"optim.grad_accum={accum}",
                          f"mesh.data={mesh.data}", f"mesh.fsdp={mesh.fsdp}", f"mesh.tensor={mesh.tensor}")
        params[name] = train_classifier(cfg, train, {}, tmp_path / name, seed=0, label_names=names)["params"]
        losses[name] = _train_losses(tmp_path / name)
    for name in MESHES:
        np.testing.assert_allclose(losses[name], losses["data8"], atol=1e-4, err_msg=name)
        for key, value in params[name].items():
            np.testing.assert_allclose(value, params["data8"][key], atol=1e-4, err_msg=f"{name} {key}")

    cfg = tiny_config()
    spec = build_model(cfg.model, len(names), 0)
    rules = cfg.mesh.logical_axis_rules

    def state_on(mesh):
        program = build_program(spec, cfg.optim, make_mesh(mesh), rules, 1, loss_fn=classifier_loss(spec),
                                batch_ndims={"input_ids": 2, "attention_mask": 2, "labels": 1})
        return program.init(*init_args(spec, [None], [0], [10], shared_frozen=True))

    # one run: its run axis (size 1) is replicated, the params sharded by their logical axes
    state = state_on(MESHES["data2_fsdp2_tensor2"])
    params = state["trainable"]
    assert params["encoder/layers/0/intermediate/kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert params["encoder/layers/0/query/kernel"].sharding.spec == P(None, "fsdp", "tensor")
    assert params["encoder/layers/0/output/kernel"].sharding.spec == P(None, "tensor", "fsdp")
    assert params["encoder/word_embeddings/embedding"].sharding.spec == P(None, "tensor", "fsdp")
    kernel = params["encoder/layers/0/intermediate/kernel"]
    assert kernel.addressable_shards[0].data.shape == (1, 16, 32)  # (32, 64) split 2 x 2
    adam_mu = state["opt_state"][1][0].mu["encoder/layers/0/intermediate/kernel"]
    assert adam_mu.sharding.spec == P(None, "fsdp", "tensor")
    state8 = state_on(MESHES["data8"])
    assert state8["trainable"]["encoder/layers/0/intermediate/kernel"].sharding.spec == P(None, None, None)
    assert state8["step"].sharding.is_fully_replicated


def test_bfloat16_compute_keeps_float32_params(trec_rows, tmp_path):
    train, _, names = trec_rows
    common = ("optim.steps=2", "model.dropout=false", "log.every=1")
    f32 = train_classifier(tiny_config(*common), train, {}, tmp_path / "f32", seed=0, label_names=names)
    bf16 = train_classifier(tiny_config(*common, "model.compute_dtype=bfloat16"), train, {}, tmp_path / "bf16", seed=0,
                            label_names=names)
    assert all(v.dtype == np.float32 for v in bf16["params"].values())
    np.testing.assert_allclose(_train_losses(tmp_path / "bf16"), _train_losses(tmp_path / "f32"), atol=2e-2)
    assert not np.array_equal(bf16["params"]["classifier/kernel"], f32["params"]["classifier/kernel"])
