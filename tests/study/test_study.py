"""The study end to end, on tiny configurations of the real components (SmolLM2 generator,
MiniLM embedder, a 1-layer BERT classifier with MiniLM's tokenizer, real TREC)."""

import dataclasses
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
from jaxdiv.data.pool import Pool
from jaxdiv.data.tasks import budget_rows
from jaxdiv.study.runner import (PoolSlot, Replicate, StudyError, accepted_per_class, equal_n, next_pool_rows,
                                 plan_cells, run_study)

DEMO = Path(__file__).parents[2] / "configs" / "demo.py"
TOPICS = ["sports", "history", "science", "music", "geography", "food", "film", "space"]


def tiny_overrides(workdir: Path, topics: Path) -> list[str]:
    return [
        # Two prompt levels, and two selected subsets of the D2 pool (the large pool is D2's own: equal key).
        f"workdir={workdir}", "grid.mechanisms=prompt,select", "grid.levels=0,2", "grid.select_level=2",
        "grid.select_pool_rows=12", "grid.select_positions=0,1", "grid.proportions=0,1", "grid.budgets=2",
        "grid.seeds=0,1", "grid.protocols=fixed_total,added",
        # 12 rows cannot hold 2 accepted rows of each of 6 classes: every pool is extended, to at most
        # 36 rows (one or two extensions); a class still short shrinks every level to its count.
        "grid.pool_rows=12", "grid.max_pool_rows=36", "grid.short_pools=shrink",
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


RESULT_COLUMNS = ["task", "level", "mechanism", "recipe", "budget", "subset", "gen_seed", "seed", "protocol",
                  "proportion", "real_rows", "synthetic_rows", "accuracy", "macro_f1", "test_loss", "train_steps",
                  "train_seconds", "fallback", "label_leak", "label_probe", "pool"]


def test_results_table_has_every_cell_once(study, trec_task):
    cfg, workdir, report = study
    results = pd.read_parquet(workdir / "results.parquet")
    assert list(results.columns[:len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    assert list(results.columns[-2:]) == ["cell", "config_hash"]
    # real-only once per (budget, subset, seed); 4 levels (D0, D2, S0, S1) x 2 protocols x 2 seeds at p = 1.
    assert len(results) == 2 + 4 * 2 * 2 and results["cell"].is_unique
    assert set(results["level"]) == {"real-only", "D0", "D2", "S0", "S1"}
    real_only = results[results["level"] == "real-only"]
    assert len(real_only) == len(cfg.grid.budgets) * len(cfg.grid.subsets) * len(cfg.grid.seeds) == 2
    assert (real_only["proportion"] == 0.0).all() and (real_only["mechanism"] == "real").all()
    assert real_only["gen_seed"].isna().all() and (real_only["pool"] == "").all()
    assert (real_only["protocol"] == "").all() and (real_only["real_rows"] == 2 * 6).all()
    assert (real_only["synthetic_rows"] == 0).all()
    synthetic = results[results["level"] != "real-only"]
    assert (synthetic["proportion"] == 1.0).all() and (synthetic["gen_seed"] == 0).all()
    assert set(synthetic["mechanism"]) == {"prompt", "select"}
    assert set(synthetic[synthetic["mechanism"] == "select"]["recipe"]) == {"select"}
    assert set(synthetic[synthetic["mechanism"] == "prompt"]["recipe"]) == {"topics"}
    # Equal n: the levels of a mechanism hold the same synthetic rows per class (2, or the shrunk
    # count, recorded as the fallback); fixed_total fills the rest with real rows, added keeps all 12.
    pools = pd.read_parquet(workdir / "pools.parquet").set_index("pool")
    for mechanism, group in synthetic.groupby("mechanism"):
        assert group["synthetic_rows"].nunique() == 1 and group["fallback"].nunique() == 1
        assert (group["synthetic_rows"] == pools.loc[group["pool"], "used_rows"].to_numpy()).all()
        assert (group["fallback"] == "").all() == (group["synthetic_rows"] == 2 * 6).all()
    fixed = synthetic[synthetic["protocol"] == "fixed_total"]
    assert (fixed["real_rows"] + fixed["synthetic_rows"] == 2 * 6).all()
    assert (synthetic[synthetic["protocol"] == "added"]["real_rows"] == 2 * 6).all()
    assert not synthetic["label_leak"].any()
    assert results["accuracy"].between(0, 1).all() and results["macro_f1"].between(0, 1).all()
    for column in ("data_vendi_q1", "data_mmd2", "data_distinct_2", "train_seconds", "config_hash"):
        assert results[column].notna().all(), column
    assert (workdir / "results.csv").is_file() and (workdir / "config.json").is_file()
    # Mixtures record exactly which rows they hold; their real rows are the subset's budget rows.
    budget_ids = {trec_task.splits["train"]["id"][i]
                  for rows in budget_rows(trec_task.splits["train"], 6, 2, 0).values() for i in rows}
    for path in (workdir / "cells").glob("*.mixture/manifest.json"):
        manifest = json.loads(path.read_text())
        assert len(manifest["real_ids"]) + len(manifest["synthetic_ids"]) == sum(
            sum(v.values()) for v in manifest["counts"].values())
        assert set(manifest["real_ids"]) <= budget_ids
        assert set(manifest["counts"]["synthetic"].values()) <= {0, 1, 2}


def test_pools_are_extended_to_equal_n_and_scored(study):
    cfg, workdir, report = study
    pools = pd.read_parquet(workdir / "pools.parquet")
    assert list(pools["level"]) == ["D0", "D2", "S0", "S1"]
    assert list(pools["mechanism"]) == ["prompt"] * 2 + ["select"] * 2
    assert (pools["budget"] == 2).all() and (pools["subset"] == 0).all() and (pools["gen_seed"] == 0).all()
    # Every pool was first planned at 12 rows and extended (one directory each, its first rows kept).
    assert (pools["rows"] > 12).all() and (pools["rows"] <= 36).all()
    assert len(list((workdir / "pools").iterdir())) == 2
    assert (pools["vendi_q1"] >= 1).all() and pools["vendi_q1_ci"].notna().all()
    assert (pools["accepted"] >= pools["used_rows"]).all()
    # The select subsets come from D2's pool, at equal n, named by measured diversity.
    select = pools[pools["mechanism"] == "select"]
    assert set(select["parent_pool"]) == {pools.loc[pools["level"] == "D2", "pool"].item()}
    assert select["select_measured"].is_monotonic_increasing and (select["select_metric"] == "vendi_q1").all()
    assert select["vendi_q1"].tolist() == pytest.approx(select["select_measured"].tolist(), rel=1e-4)
    rows = pd.read_parquet(workdir / "accepted_rows.parquet")
    assert set(rows["pool"]) == set(pools["pool"])
    used = rows[rows["used"]]
    for mechanism, group in used.groupby("mechanism"):  # equal rows per class across the levels
        per_level = group.groupby("level")["label"].value_counts().unstack(fill_value=0)
        assert (per_level.nunique() == 1).all() and per_level.to_numpy().max() <= 2
        assert set(group.groupby("level").size()) == set(pools[pools["mechanism"] == mechanism]["used_rows"])
    text = report.read_text()
    for section in ("## Summary", "## Generated pools"):
        assert section in text


def test_short_pools_error_names_the_cell_level_and_class_or_shrink(study, trec_task):
    cfg, workdir, _ = study
    # The study's two real pools, asked for a budget of 40 (20 synthetic rows per class at the
    # demo's largest proportion, 0.5), which no pool of at most 36 rows holds.
    replicate = Replicate(budget=40, subset=0, gen_seed=0)
    slots = [PoolSlot(level, replicate, Pool.open(path), path.name.rsplit("-", 1)[1])
             for level, path in zip((0, 2), sorted((workdir / "pools").iterdir()))]
    have = {slot.level: accepted_per_class(slot.pool, trec_task.label_names) for slot in slots}
    smallest = [min(counts[label] for counts in have.values()) for label in range(6)]
    label = 0  # ABBR: the first class, and short in every pool
    level = min(have, key=lambda lv: have[lv][label])
    ask = load_config(DEMO, ["grid.max_pool_rows=600"])
    with pytest.raises(StudyError) as error:
        equal_n(ask, trec_task, slots)
    rows = len(next(slot.pool for slot in slots if slot.level == level))
    assert str(error.value) == (
        f"cells of budget 40, real subset 0, generation seed 0: level D{level}, class 'ABBR' has {smallest[0]} "
        f"accepted synthetic rows, needs 20 (pool of {rows} rows, grid.max_pool_rows=600); raise "
        f"grid.max_pool_rows or set grid.short_pools=shrink")
    shrink = dataclasses.replace(ask, grid=dataclasses.replace(ask.grid, short_pools="shrink"))
    per_class, fallback = equal_n(shrink, trec_task, slots)
    assert list(per_class) == smallest and max(smallest) < 20
    assert fallback == "shrink: " + ", ".join(f"{name} {n}/20" for name, n in zip(trec_task.label_names, smallest))


def test_pool_extension_and_real_only_planning():
    assert next_pool_rows(100, have=(10, 4), need=(8, 8), cap=1000) == 220  # 100 x 8/4 x 1.1
    assert next_pool_rows(100, have=(10, 0), need=(8, 8), cap=500) == 500
    assert next_pool_rows(100, have=(10, 9), need=(8, 8), cap=1000) == 0
    assert next_pool_rows(500, have=(10, 4), need=(8, 8), cap=500) == 0
    cfg = load_config(DEMO, ["grid.budgets=4,8,0", "grid.subsets=0,1", "grid.seeds=0,1,2", "grid.generation_seeds=0,1",
                             "grid.protocols=fixed_total,added"])
    planned = plan_cells(cfg, [])
    assert len(planned) == 3 * 2 * 3  # budgets x subsets x seeds: the baseline once, whatever else varies
    assert {(p.cell.budget, p.cell.subset, p.cell.seed) for p in planned} == {
        (b, s, k) for b in (4, 8, None) for s in (0, 1) for k in (0, 1, 2)}


def test_classifier_lora_is_in_the_cell_keys():
    keys = lambda *overrides: [p.key for p in plan_cells(load_config(DEMO, list(overrides)), [])]
    full, lora = keys(), keys("train.model.lora.rank=8")
    assert keys() == full and keys("train.model.lora.rank=8") == lora  # an unchanged config finds its cells
    assert not set(full) & set(lora) and not set(lora) & set(keys("train.model.lora.rank=16"))


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
    old, new = (pd.read_parquet(w / "results.parquet") for w in (workdir, copy))
    real_only = [frame[frame["level"] == "real-only"].sort_values("seed")["cell"].tolist() for frame in (old, new)]
    # Real-only cells are reused as they were; cells with synthetic rows were recomputed.
    assert real_only[0] == real_only[1] and len(real_only[0]) == 2
    assert not set(new[new["level"] != "real-only"]["cell"]) & set(old[old["level"] != "real-only"]["cell"])
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


def test_values_the_study_sets_are_no_stage_keys():
    # the stage sections hold only their stage: the study passes the shared values itself
    for key in ("generate.n", "generate.real_budget", "generate.seed", "score.real", "score.workdir",
                "train.seed", "train.workdir"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            load_config(DEMO, [f"{key}=5"])
    with pytest.raises(ConfigError, match=r"grid.protocols: unknown \['both'\]"):
        load_config(DEMO, ["grid.protocols=fixed_total,both"])
    with pytest.raises(ConfigError, match="grid.short_pools: 'skip' is not one of"):
        load_config(DEMO, ["grid.short_pools=skip"])
    with pytest.raises(ConfigError, match=r"grid.max_pool_rows: 50 is below the rows first planned \(96\)"):
        load_config(DEMO, ["grid.max_pool_rows=50"])
    with pytest.raises(ConfigError, match=r"grid.proportions: \(0.0, 2.0\) must lie in \[0, 1\]"):
        load_config(DEMO, ["grid.proportions=0,2"])


def test_timings_sum_over_runs_so_a_cached_rerun_keeps_the_full_runs_cost(tmp_path):
    from jaxdiv.study.runner import record_timings

    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"generate": 3000.0, "report": 6.0}))  # a file of the one-run format
    record_timings(path, {"generate": 1.5, "report": 4.0})
    written = json.loads(path.read_text())
    assert written["generate"] == 3001.5 and written["report"] == 10.0
    assert written["runs"] == [{"generate": 3000.0, "report": 6.0}, {"generate": 1.5, "report": 4.0}]
