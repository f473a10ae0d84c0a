"""The study end to end, on tiny configurations of the real components (SmolLM2 generator,
MiniLM embedder, a 1-layer BERT classifier with MiniLM's tokenizer, real TREC)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from jaxdiv.configlib import ConfigError, load_config
from jaxdiv.study.runner import run_study

DEMO = Path(__file__).parents[2] / "configs" / "demo.py"
TOPICS = ["sports", "history", "science", "music", "geography", "food", "film", "space"]


def tiny_overrides(workdir: Path, topics: Path) -> list[str]:
    return [
        f"workdir={workdir}", "grid.levels=0,2", "grid.proportions=0,1", "grid.budgets=2", "grid.seeds=0,1",
        "grid.pool_rows=24", "mix.allow_short_classes=true",
        f"generate.recipe.topics_file={topics}", "generate.recipe.few_shot=1",
        "generate.sampling.max_new_tokens=24", "generate.jax.batch_buckets=(24,)",
        "generate.jax.prompt_buckets=(256,)", "generate.chunk_rows=12",
        "score.bootstrap.samples=2", "score.quality.classifier_steps=20",
        "train.model.pretrained=false", "train.model.num_hidden_layers=1", "train.model.hidden_size=32",
        "train.model.num_attention_heads=2", "train.model.intermediate_size=64", "train.model.frozen_layers=0",
        "train.model.max_length=32", "train.optim.steps=3", "train.optim.batch_size=8",
        "train.optim.eval_batch_size=128", "train.log.progress=false",
        # 24-row pools of 24-token completions: the quality gates would leave a row or two
        "generate.gates.truncation=false", "generate.gates.echo=false", "generate.gates.chatter=false",
        "generate.gates.near_duplicate=false", "generate.gates.labels.label_probe=off",
    ]


@pytest.fixture(scope="module")
def topics_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("topics") / "topics.txt"
    path.write_text("\n".join(TOPICS) + "\n")
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, topics_file, trec_task):
    workdir = tmp_path_factory.mktemp("study") / "tiny"
    cfg = load_config(DEMO, tiny_overrides(workdir, topics_file))
    report = run_study(cfg, progress=False)
    return cfg, workdir, report


def snapshot(workdir: Path) -> dict[str, float]:
    """Modification times of every stored stage output (pools, scores, cells)."""
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns for sub in ("pools", "scores", "cells")
            for p in (workdir / sub).rglob("*") if p.is_file()}


def test_results_table_has_every_cell_and_seed(study, trec_task):
    cfg, workdir, report = study
    results = pd.read_parquet(workdir / "results.parquet")
    # 2 levels x 2 proportions x 1 budget x 2 seeds.
    assert len(results) == 8
    assert set(results["level"]) == {"D0", "D2"} and set(results["proportion"]) == {0.0, 1.0}
    assert set(results["seed"]) == {0, 1} and set(results["budget"]) == {2}
    real_only = results[results["proportion"] == 0.0]
    assert (real_only["real_rows"] == 2 * 6).all() and (real_only["synthetic_rows"] == 0).all()
    # Real-only cells do not depend on the level: trained once, reported at each level.
    by_seed = real_only.groupby("seed")["accuracy"].nunique()
    assert (by_seed == 1).all()
    assert set(real_only.groupby("seed")["cell"].nunique()) == {1}
    synthetic = results[results["proportion"] == 1.0]
    assert (synthetic["real_rows"] == 0).all() and (synthetic["synthetic_rows"] > 0).all()
    assert results["accuracy"].between(0, 1).all() and results["macro_f1"].between(0, 1).all()
    for column in ("data_vendi_q1", "data_mmd2", "data_distinct_2", "train_seconds", "config_hash"):
        assert results[column].notna().all(), column
    assert (workdir / "results.csv").is_file() and (workdir / "config.json").is_file()
    # Mixtures record exactly which rows they hold.
    manifest = json.loads(next((workdir / "cells").glob("*.mixture/manifest.json")).read_text())
    assert len(manifest["real_ids"]) + len(manifest["synthetic_ids"]) == sum(
        sum(v.values()) for v in manifest["counts"].values())


def test_pools_are_scored_and_reported(study):
    cfg, workdir, report = study
    pools = pd.read_parquet(workdir / "pools.parquet")
    assert list(pools["level"]) == ["D0", "D2"] and (pools["rows"] == 24).all()
    assert (pools["vendi_q1"] >= 1).all() and (pools["accepted"] <= pools["rows"]).all()
    text = report.read_text()
    for section in ("## Summary", "## Test accuracy against diversity level", "## Best proportion",
                    "## Generated pools"):
        assert section in text
    for image in ("accuracy_vs_level.png", "heatmap_level_proportion.png"):
        assert (report.parent / image).read_bytes()[:4] == b"\x89PNG"


def test_rerun_is_cached_and_a_changed_parameter_recomputes_only_what_depends_on_it(study, tmp_path, topics_file):
    cfg, workdir, _ = study
    before = snapshot(workdir)
    started = time.perf_counter()
    run_study(cfg, progress=False)
    assert snapshot(workdir) == before  # nothing regenerated, rescored or retrained
    cached_seconds = time.perf_counter() - started

    copy = tmp_path / "changed"
    shutil.copytree(workdir, copy)
    changed = load_config(DEMO, tiny_overrides(copy, topics_file) + ["generate.sampling.temperature=0.5"])
    run_study(changed, progress=False)
    old = pd.read_parquet(workdir / "results.parquet").set_index(["level", "proportion", "seed"])
    new = pd.read_parquet(copy / "results.parquet").set_index(["level", "proportion", "seed"])
    # Real-only cells are reused as they were; cells with synthetic rows were recomputed.
    assert (new.xs(0.0, level="proportion")["cell"] == old.xs(0.0, level="proportion")["cell"]).all()
    assert not set(new.xs(1.0, level="proportion")["cell"]) & set(old.xs(1.0, level="proportion")["cell"])
    assert len(list((copy / "pools").iterdir())) == 4  # two old pools kept, two new ones
    assert cached_seconds < 60


@pytest.mark.slow  # a third full study in a subprocess (~2 min on an idle 2-core CPU)
def test_killed_study_resumes_to_the_same_results(study, tmp_path, topics_file):
    cfg, workdir, _ = study
    resumed = tmp_path / "resumed"
    script = ("import sys; from jaxdiv.configlib import load_config; from jaxdiv.study.runner import run_study;"
              f"run_study(load_config({str(DEMO)!r}, sys.argv[1:]), progress=False)")
    env = {**os.environ, "PYTHONPATH": str(DEMO.parents[1])}
    process = subprocess.Popen([sys.executable, "-c", script, *tiny_overrides(resumed, topics_file)], env=env)
    deadline = time.monotonic() + 600
    # Kill it once the first training group has started (pools and mixtures are on disk).
    while not list((resumed / "train").glob("*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert process.poll() is None, "the study finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (resumed / "results.parquet").exists()
    run_study(load_config(DEMO, tiny_overrides(resumed, topics_file)), progress=False)
    expected = pd.read_parquet(workdir / "results.parquet").drop(columns=["train_seconds"])
    actual = pd.read_parquet(resumed / "results.parquet").drop(columns=["train_seconds"])
    pd.testing.assert_frame_equal(actual, expected)


def test_stage_keys_owned_by_the_study_are_errors():
    with pytest.raises(ConfigError, match="generate.n: set by the study"):
        load_config(DEMO, ["generate.n=5"])
    with pytest.raises(ConfigError, match=r"grid.proportions: \(0.0, 2.0\) must lie in \[0, 1\]"):
        load_config(DEMO, ["grid.proportions=0,2"])
