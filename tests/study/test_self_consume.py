"""The self-consumption experiment: its pieces (config, cache keys, real rows written as
completions, `jaxdiv run` dispatch) by default, and a tiny end-to-end run of the real
components (SmolLM2 generator fine-tuned for real, MiniLM embedder, TREC) in the slow tier.
Its report alone: tests/report/test_self_consume.py."""

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from jaxdiv.configlib import ConfigError, apply_overrides, load_config
from jaxdiv.study import self_consume as sc
from jaxdiv.study.config import SelfConsumeConfig

CONFIGS = Path(__file__).parents[2] / "configs"


def tiny_overrides(workdir: Path) -> list[str]:
    """2 rounds x both chains, 12-row pools of 32-token questions (no label probe), 2 SFT steps of
    the top 2 layers, a 1-layer classifier: the real components at their smallest useful size."""
    return [
        f"workdir={workdir}", "chains.rounds=2", "chains.pool_rows=12", "chains.seeds=0,1",
        "chains.sft_eval_rows=4", "generate.sampling.max_new_tokens=32", "generate.jax.batch_buckets=(12,)",
        "generate.gates.labels.label_probe=off",  # 12 rows: the gates are not what this test is about
        "generate.chunk_rows=12", "score.bootstrap.samples=2", "score.quality.classifier_steps=20",
        "train.model.pretrained=false", "train.model.num_hidden_layers=1", "train.model.hidden_size=32",
        "train.model.num_attention_heads=2", "train.model.intermediate_size=64", "train.model.frozen_layers=0",
        "train.model.max_length=32", "train.optim.steps=3", "train.optim.batch_size=8",
        "train.optim.eval_batch_size=128", "train.log.progress=false",
        "sft.optim.steps=2", "sft.optim.batch_size=8", "sft.optim.eval_batch_size=8", "sft.model.frozen_layers=28",
        "sft.log.progress=false", "sft.mesh.data=1", "sft.mesh.fsdp=8",  # one sharded copy, not 8 replicas
    ]


def prompt_rows(task, per_label: int = 2) -> list[dict]:
    """Pool-like rows: a prompt per label, each showing one real training row as its few-shot example."""
    train = task.splits["train"]
    rows = []
    for label, name in enumerate(task.label_names):
        shown = [i for i, y in enumerate(train["label"]) if y == label][:per_label]
        rows += [{"prompt": f"write a {name} question ({k})", "intended_label": name,
                  "few_shot_ids": [train["id"][i]]} for k, i in enumerate(shown)]
    return rows


# ---------------------------------------------------------------------------
# Pieces (default tier).

def test_configs_load_and_owned_keys_are_errors():
    for name in ("self_consume_cpu.py", "self_consume_gpu.py"):
        cfg = load_config(CONFIGS / name)
        assert isinstance(cfg, SelfConsumeConfig) and set(cfg.chains.chains) == {"replace", "mix_real"}
    gpu = load_config(CONFIGS / "self_consume_gpu.py")
    assert gpu.sft.model.frozen_layers == 0 and gpu.sft.model.compute_dtype == "bfloat16"
    assert gpu.chains.pool_rows >= 1000 and gpu.chains.rounds > load_config(CONFIGS / "self_consume_cpu.py").chains.rounds
    with pytest.raises(ConfigError, match="sft.model.checkpoint: set by the experiment"):
        apply_overrides(SelfConsumeConfig(), ["sft.model.checkpoint=other.gguf"])
    for key in ("generate.n", "sft.seed", "train.workdir"):
        with pytest.raises(ConfigError, match=f"unknown config key '{key}'"):
            apply_overrides(SelfConsumeConfig(), [f"{key}=5"])
    with pytest.raises(ConfigError, match="generate.backend: set by the experiment"):
        apply_overrides(SelfConsumeConfig(), ["generate.backend=openai"])
    with pytest.raises(ConfigError, match=r"chains.chains: unknown \['fresh'\]"):
        apply_overrides(SelfConsumeConfig(), ["chains.chains=replace,fresh"])


def test_real_rows_become_completions_of_prompts_for_their_label(trec_task):
    rows = prompt_rows(trec_task)
    draw = lambda seed, count: sc.real_completions(trec_task, "train", rows, count,
                                                    np.random.default_rng(seed), "test")
    pairs = draw(0, 40)
    assert len(pairs) == 40 and len({p["id"] for p in pairs}) == 40
    by_prompt = {r["prompt"]: r for r in rows}
    ids = trec_task.splits["train"]["id"]
    texts = dict(zip(ids, trec_task.splits["train"]["text"]))
    for pair in pairs:
        source = by_prompt[pair["prompt"]]
        assert source["intended_label"] == trec_task.label_names[pair["label"]]  # a prompt for its label
        assert pair["id"] not in source["few_shot_ids"]  # that does not show it
        assert pair["response"] == texts[pair["id"]]
    assert draw(0, 40) == pairs and draw(1, 40) != pairs  # seeded
    with pytest.raises(sc.SelfConsumeError, match="no prompt asking for label 'NUM'"):
        sc.real_completions(trec_task, "train", [r for r in rows if r["intended_label"] != "NUM"], 200,
                            np.random.default_rng(0), "round 3")
    with pytest.raises(sc.SelfConsumeError, match="needs 100000 real train rows"):
        draw(0, 100_000)


def test_cache_keys_chain_through_generators_and_ignore_places(tmp_path):
    cfg = apply_overrides(SelfConsumeConfig(), [f"workdir={tmp_path}"])
    g0 = sc.base_generator(cfg)
    assert g0.path.suffix == ".gguf" and g0.round == 0
    pool = sc.RoundPool(sc.pool_key(cfg, g0), None, [], float("nan"))
    key = sc.generator_key(cfg, "replace", g0, pool)
    # where things run and how they log do not change results
    moved = apply_overrides(cfg, ["workdir=/elsewhere", "sft.log.progress=false", "sft.checkpoint.every=7"])
    assert sc.pool_key(moved, g0) == pool.key and sc.generator_key(moved, "replace", g0, pool) == key
    # everything a generator depends on does: its chain, its parent, its data, the SFT settings
    assert sc.generator_key(cfg, "mix_real", g0, pool) != key
    other_parent = sc.Generator(1, "another-lineage", tmp_path / "g1")
    assert sc.generator_key(cfg, "replace", other_parent, pool) != key
    assert sc.pool_key(cfg, other_parent) != pool.key
    assert sc.generator_key(apply_overrides(cfg, ["sft.optim.learning_rate=1e-3"]), "replace", g0, pool) != key
    # LoRA is part of the SFT and classifier settings: another adapter config trains anew
    rank = lambda r: sc.generator_key(apply_overrides(cfg, [f"sft.model.lora.rank={r}"]), "replace", g0, pool)
    assert len({key, rank(8), rank(16)}) == 3 and rank(16) == rank(16)
    rows = [{"text": "What is a shrew?", "label": 0}]
    cell = sc.cell_key(cfg, rows, 0)
    assert sc.cell_key(apply_overrides(moved, ["train.log.progress=false"]), rows, 0) == cell
    assert sc.cell_key(apply_overrides(cfg, ["train.model.lora.rank=8"]), rows, 0) != cell
    mixed = sc.generator_key(cfg, "mix_real", g0, pool)
    assert sc.generator_key(apply_overrides(cfg, ["chains.real_fraction=0.25"]), "mix_real", g0, pool) != mixed
    assert sc.generator_key(apply_overrides(cfg, ["chains.real_fraction=0.25"]), "replace", g0, pool) == key
    assert sc.pool_key(apply_overrides(cfg, ["generate.sampling.temperature=0.3"]), g0) != pool.key


def test_lora_generator_is_written_merged_and_reused(smollm2, trec_task, tmp_path, monkeypatch):
    """`--set sft.model.lora.rank=4`: G_{t+1} is G_t's weights with the trained adapters folded in
    (W + A·B·alpha/rank), a plain checkpoint that the next round loads; a rerun reuses it."""
    from flax import nnx

    from jaxdiv.models import checkpoints, llama
    from jaxdiv.train import sft

    # G_t: a 2-layer random decoder with SmolLM2's tokenizer, stored as a round stores its generator
    _, tokenizer = smollm2
    arch = llama.LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=48, num_layers=2,
                             num_heads=4, num_kv_heads=2, head_dim=8, eos_token_ids=tokenizer.eos_token_ids,
                             pad_token_id=tokenizer.pad_token_id)
    base = llama.Llama(arch, rngs=nnx.Rngs(0))
    parent = sc.Generator(0, "tiny-parent", checkpoints.save_hf_checkpoint(base, arch, tokenizer, tmp_path / "G0"))
    cfg = apply_overrides(SelfConsumeConfig(), [
        f"workdir={tmp_path}", "sft.model.lora.rank=4", "sft.model.lora.alpha=8", "sft.model.max_length=64",
        "sft.optim.steps=2", "sft.optim.batch_size=8", "sft.optim.learning_rate=1e-2",
        "sft.optim.warmup_fraction=0", "sft.optim.eval_batch_size=8", "sft.log.progress=false",
        "sft.log.tensorboard=false"])
    questions = trec_task.splits["train"].select(range(8))["text"]
    pool = sc.RoundPool("tiny-pool", None, [{"prompt": "Write a question.", "text": q} for q in questions],
                        float("nan"))
    eval_rows = [{"prompt": "Write a question.", "response": q} for q in questions[:4]]
    train_sft, results = sft.train_sft, []
    monkeypatch.setattr(sft, "train_sft", lambda *args, **kwargs: results.append(train_sft(*args, **kwargs))
                        or results[-1])

    child, _ = sc.ensure_next_generator(cfg, trec_task, "replace", parent, pool, eval_rows, tmp_path)
    (trained,) = results
    params = trained["params"]
    flat = lambda model: {"/".join(map(str, path)): np.asarray(v.get_value())
                          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    merged, parent_weights = flat(checkpoints.load_pretrained(child.path)[0]), flat(base)
    adapted = {key.removesuffix("lora_a") + "kernel" for key in params if key.endswith("/lora_a")}
    assert len(adapted) == 7 * 2 and merged.keys() == parent_weights.keys()  # every projection; no adapter left
    for key, value in merged.items():
        np.testing.assert_array_equal(params[key], parent_weights[key], err_msg=key)  # the base stayed frozen
        expected = params[key]
        if key in adapted:
            lora_a, lora_b = (params[key.removesuffix("kernel") + name].astype(np.float64)
                              for name in ("lora_a", "lora_b"))
            assert np.any(lora_b != 0), key  # trained: the merge has something to fold in
            expected = params[key] + lora_a @ lora_b * (8 / 4)
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-6, err_msg=key)
    # the same config finds G_{t+1} stored: no second fine-tune
    assert sc.ensure_next_generator(cfg, trec_task, "replace", parent, pool, eval_rows, tmp_path)[0] == child
    assert len(results) == 1


def test_run_dispatches_on_the_config_type(tmp_path, capsys):
    from jaxdiv.cli import main

    config = tmp_path / "train_only.py"
    config.write_text("from jaxdiv.train.config import TrainJobConfig\n\ndef get_config():\n"
                      "    return TrainJobConfig()\n")
    assert main(["run", str(config)]) == 2
    assert "returned a TrainJobConfig; `jaxdiv run` takes a StudyConfig or a SelfConsumeConfig" in (
        capsys.readouterr().err)
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "SelfConsumeConfig" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# End to end (slow tier: ~8 minutes on a shared 2-core CPU, most of it the SmolLM2 SFT programs).

def snapshot(workdir: Path) -> dict[str, int]:
    return {str(p.relative_to(workdir)): p.stat().st_mtime_ns
            for sub in ("pools", "scores", "cells", "generators", "sft") for p in (workdir / sub).rglob("*")
            if p.is_file()}


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, trec_task):
    workdir = tmp_path_factory.mktemp("self_consume") / "tiny"
    cfg = load_config(CONFIGS / "self_consume_cpu.py", tiny_overrides(workdir))
    report = sc.run_self_consumption(cfg, progress=False)
    return cfg, workdir, report


@pytest.mark.slow
def test_every_chain_round_and_seed_is_reported(experiment):
    _, workdir, report = experiment
    frame = pd.read_parquet(workdir / "results.parquet")
    assert len(frame) == 2 * 2 * 2  # chains x rounds x seeds
    assert set(zip(frame["chain"], frame["round"], frame["seed"])) == {
        (c, r, s) for c in ("replace", "mix_real") for r in (0, 1) for s in (0, 1)}
    for column in ("vendi_q1", "vendi_q1_ci_low", "distinct_2", "mmd2", "label_fidelity", "accuracy", "macro_f1",
                   "accept_rate", "train_seconds"):
        assert np.isfinite(frame[column]).all(), column
    assert frame["accuracy"].between(0, 1).all() and (frame["vendi_q1"] >= 1).all()
    first, last = frame[frame["round"] == 0], frame[frame["round"] == 1]
    assert np.isfinite(first[["sft_train_loss", "sft_heldout_real_loss", "sft_seconds"]]).all().all()
    assert last["sft_heldout_real_loss"].isna().all()  # the last round is not fine-tuned on
    # round 0 is shared: one pool, one score, the same classifiers for both chains
    assert first["pool"].nunique() == 1 and last["pool"].nunique() == 2
    assert (first.groupby("seed")["accuracy"].nunique() == 1).all()
    assert (first[first["chain"] == "mix_real"]["sft_real_rows"] == first["accepted"].iloc[0]).all()
    assert (first[first["chain"] == "replace"]["sft_real_rows"] == 0).all()
    text = report.read_text()
    for image in ("diversity.png", "shift.png", "quality.png", "downstream.png", "sft.png"):
        assert (report.parent / image).read_bytes()[:4] == b"\x89PNG" and image in text
    assert (workdir / "results.csv").is_file() and json.loads((workdir / "config.json").read_text())[
        "config_class"] == "SelfConsumeConfig"


@pytest.mark.slow
def test_round_one_generates_with_the_fine_tuned_generator(experiment, smollm2_gguf):
    from safetensors.numpy import load_file

    from jaxdiv.data.pool import Pool
    from jaxdiv.models.checkpoints import read_gguf_weights, weights_hash

    _, workdir, _ = experiment
    _, base = read_gguf_weights(smollm2_gguf)
    frame = pd.read_parquet(workdir / "results.parquet")
    for chain in ("replace", "mix_real"):
        (directory,) = (workdir / "generators").glob(f"G1-{chain}-*")
        tuned = load_file(directory / "model.safetensors")
        # SFT moved the top (trainable) layers and left the frozen ones as they were
        assert not np.array_equal(tuned["model.layers.29.mlp.up_proj.weight"], base["model.layers.29.mlp.up_proj.weight"])
        np.testing.assert_array_equal(tuned["model.layers.3.mlp.up_proj.weight"], base["model.layers.3.mlp.up_proj.weight"])
        # ... and round 1's pool was generated by that checkpoint, as its rows record
        row = frame[(frame["chain"] == chain) & (frame["round"] == 1)].iloc[0]
        (pool_dir,) = (workdir / "pools").glob(f"round1-{row['pool']}")
        pool = Pool.open(pool_dir)
        assert pool.meta["generator"] == f"jax:{directory.name}" == row["generator"]
        assert pool.meta["weights_hash"] == weights_hash(directory) == row["generator_weights_hash"]
        assert {r["weights_hash"] for r in pool.rows()} == {weights_hash(directory)}
    assert set(frame[frame["round"] == 0]["generator_weights_hash"]) == {weights_hash(smollm2_gguf)}


@pytest.mark.slow
def test_rerun_is_served_from_the_cache(experiment):
    cfg, workdir, _ = experiment
    before = snapshot(workdir)
    table = pd.read_parquet(workdir / "results.parquet")
    started = time.perf_counter()
    sc.run_self_consumption(cfg, progress=False)
    assert snapshot(workdir) == before  # nothing regenerated, rescored, retrained or fine-tuned
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / "results.parquet"), table)
    assert time.perf_counter() - started < 60
