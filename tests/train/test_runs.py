"""The engine with R > 1 runs in one program: each run (different seeds, data subsets and sizes,
a mixture) equals the same run trained alone, R = 1 (<= 1e-5)."""

import dataclasses

import numpy as np
import pytest

from jaxdiv.sharding import MeshConfig
from jaxdiv.train.classifier import RunSpec, train_classifier, train_classifier_runs

from tests.train.conftest import tiny_config


def test_each_run_equals_the_run_alone(trec_rows, tmp_path):
    train, evals, names = trec_rows
    cfg = tiny_config("optim.epochs=1", "model.frozen_layers=1", "mesh.data=4", "mesh.fsdp=2")
    mixture = train.select(range(0, 48, 2)).to_list() + train.select(range(48, 56)).to_list()
    runs = [RunSpec(train.select(range(40)), seed=0, name="subset40"),
            RunSpec(train.select(range(40, 64)), seed=1, name="subset24"),
            RunSpec(mixture, seed=2, name="mixture"),
            RunSpec(train.select(range(40)), seed=3, name="seed3")]
    results = train_classifier_runs(cfg, runs, evals, tmp_path / "runs", label_names=names)
    assert [r["steps"] for r in results] == [5, 3, 4, 5]  # per-run step masks: 40, 24, 32, 40 rows
    assert results[0]["eval"]["test"] != results[3]["eval"]["test"]
    for index in (1, 2):  # a smaller subset with its own seed; a mixture with its own seed
        run = runs[index]
        alone = train_classifier(cfg, run.train_rows, evals, tmp_path / f"alone{index}", seed=run.seed,
                                 label_names=names)
        for key, value in alone["params"].items():
            np.testing.assert_allclose(results[index]["params"][key], value, atol=1e-5, err_msg=f"run {index} {key}")
        for metric, value in alone["eval"]["test"].items():
            assert results[index]["eval"]["test"][metric] == pytest.approx(value, abs=1e-5)


@pytest.mark.slow  # a second engine compile (~30 s); the default run covers the engine above
def test_runs_sharing_a_frozen_encoder_hold_it_once(trec_rows, tmp_path):
    """Runs with the same init (here: the same seed) share their frozen layers without a run
    axis; each still equals its run alone. The run axis is sharded over data=2."""
    train, evals, names = trec_rows
    cfg = tiny_config("optim.epochs=1", "model.frozen_layers=1", "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2")
    runs = [RunSpec(train.select(range(32)), seed=5, name="a"),
            RunSpec(train.select(range(32, 56)), seed=5, name="b")]
    results = train_classifier_runs(cfg, runs, evals, tmp_path / "runs", label_names=names)
    frozen_key = "encoder/layers/0/query/kernel"
    assert results[0]["params"][frozen_key] is results[1]["params"][frozen_key]  # one shared copy
    alone = train_classifier(cfg, runs[1].train_rows, evals, tmp_path / "alone", seed=5, label_names=names)
    for key, value in alone["params"].items():
        np.testing.assert_allclose(results[1]["params"][key], value, atol=1e-5, err_msg=key)
    assert results[1]["eval"]["test"]["loss"] == pytest.approx(alone["eval"]["test"]["loss"], abs=1e-5)


def test_runs_that_fit_neither_axis_are_padded_and_share_frozen_features(trec_rows, tmp_path):
    """3 runs of batch 4 on data=8: neither divides, so the run axis is filled with masked
    copies. The runs share one init, so their frozen layer's output comes from one feature
    table. The results are the 3 runs', and each still equals its run alone."""
    train, evals, names = trec_rows
    cfg = tiny_config("optim.steps=2", "optim.batch_size=4", "mesh.data=8", "model.frozen_layers=1")
    runs = [RunSpec(train.select(range(start, start + 30)), seed=2, name=str(start)) for start in (0, 20, 40)]
    results = train_classifier_runs(cfg, runs, evals, tmp_path / "runs", label_names=names)
    assert [r["name"] for r in results] == ["0", "20", "40"] and all(r["steps"] == 2 for r in results)
    frozen_key = "encoder/layers/0/query/kernel"
    assert results[0]["params"][frozen_key] is results[2]["params"][frozen_key]  # one shared copy
    alone_cfg = dataclasses.replace(cfg, mesh=MeshConfig(data=4, tensor=2))  # batch 4 fits
    alone = train_classifier(alone_cfg, runs[2].train_rows, evals, tmp_path / "alone", seed=2, label_names=names)
    for key, value in alone["params"].items():
        np.testing.assert_allclose(results[2]["params"][key], value, atol=1e-5, err_msg=key)
