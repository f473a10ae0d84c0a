"""`jaxdiv score` end to end on real TREC rows, the pool reader, and the report's consistency."""

import csv
import dataclasses
import json

import datasets
import numpy as np
import pytest

from jaxdiv.cli import main
from jaxdiv.score.config import DiversityConfig, EmbedderConfig
from jaxdiv.score.diversity import embedding_diversity
from jaxdiv.score.embed import Embedder
from jaxdiv.data.pool import PoolError
from jaxdiv.score.pool_reader import read_pool


@pytest.fixture(scope="module")
def files(trec_task, tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    names = trec_task.label_names
    validation = trec_task.splits["validation"].select(range(30))
    rows = [{"text": r["text"], "label": names[r["label"]], "parse_error": ""} for r in validation]
    rows += [{"text": "  ", "label": "HUM", "parse_error": ""},
             {"text": "half a question", "label": "HUM", "parse_error": "no closing quote"}]
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps(r) + "\n" for r in rows))
    real = root / "real.csv"
    with open(real, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for r in trec_task.splits["train"].select(range(120)):
            writer.writerow([r["text"], names[r["label"]]])
    return root, pool, real, rows


@pytest.fixture(scope="module")
def report(files):
    root, pool, real, _ = files
    code = main(["score", str(pool), "--real", "file", "--workdir", str(root / "out"), "--no-progress",
                 "--set", f"task.path={real}", "--set", "bootstrap.samples=3",
                 "--set", "diversity.kmeans_clusters=4", "--set", "diversity.block_size=64",
                 "--set", f"embedder.cache_dir={root / 'cache'}", "--set", "embedder.batch_size=16"])
    assert code == 0
    return json.loads((root / "out" / "score_report.json").read_text())


def test_report_has_every_family_with_intervals(report, files):
    values = {m["metric"]: m for m in report["metrics"]}
    assert report["n"] == 30 and report["n_rows"] == 32
    assert values["parse_failure_share"]["value"] == pytest.approx(2 / 32)
    for name in ("vendi_q1", "dcscore", "distinct_2", "self_bleu", "length_tokens_mean",
                 "exact_duplicate_rate", "near_duplicate_rate", "label_fidelity", "mmd2", "frechet_distance"):
        entry = values[name]
        assert np.isfinite(entry["value"]) and entry["ci_low"] is not None, name
        assert entry["n"] == 30
    assert values["vendi_q1"]["biased_under_subsampling"] and not values["mmd2"]["biased_under_subsampling"]
    # 30 rows over 6 labels in 384 dims: every per-label Frechet is fitted on a PCA projection
    assert any(name.startswith("frechet_pca/") for name in values)
    assert not any(name.startswith("frechet_distance/") for name in values)
    assert all(1 <= entry["value"] <= 16 for name, entry in values.items() if name.startswith("frechet_pca_dims/"))
    assert 0.0 <= values["label_fidelity"]["value"] <= 1.0
    assert report["embedder"]["weights_hash"] and report["real_task"]
    assert json.loads((files[0] / "out" / "config.json").read_text())["config"]["real"] == "file"


def test_report_values_equal_the_kernel_on_the_same_embeddings(report, files):
    root, _, _, rows = files
    embedder = Embedder(EmbedderConfig(cache_dir=str(root / "cache"), batch_size=16))
    x = embedder.embed([r["text"] for r in rows[:30]], progress=False)
    direct = embedding_diversity(x, DiversityConfig(kmeans_clusters=4, block_size=64))
    values = {m["metric"]: m["value"] for m in report["metrics"]}
    for name in ("vendi_q1", "vendi_qinf", "chamfer_distance", "dcscore", "kmeans_inertia"):
        assert values[name] == pytest.approx(direct[name], rel=1e-5), name


def test_unknown_label_is_a_clear_error(files, capsys):
    root, _, real, rows = files
    bad = root / "bad.jsonl"
    bad.write_text("".join(json.dumps({"text": r["text"], "label": "WEATHER"}) + "\n" for r in rows[:4]))
    code = main(["score", str(bad), "--real", "file", "--set", f"task.path={real}", "--no-progress",
                 "--workdir", str(root / "bad"), "--set", f"embedder.cache_dir={root / 'cache'}"])
    assert code == 2
    assert "row 0 has label 'WEATHER'" in capsys.readouterr().err


def test_pool_reader_formats_and_errors(files):
    root, pool, _, rows = files
    table = datasets.Dataset.from_list(rows)
    table.to_parquet(str(root / "pool.parquet"))
    table.save_to_disk(str(root / "pool_dir"))
    for source in (pool, root / "pool.parquet", root / "pool_dir"):
        read = read_pool(source)
        assert read.texts == [r["text"] for r in rows[:30]] and read.parse_failures == 2
    assert read_pool(pool, label_column="").labels is None
    with pytest.raises(PoolError, match="no text column 'prompt'"):
        read_pool(pool, text_column="prompt")
    with pytest.raises(PoolError, match="does not exist"):
        read_pool(root / "missing.jsonl")


def test_reads_a_generated_pool_directory(files):
    from jaxdiv.data.pool import ACCEPTED, REJECTED, Pool, PoolRow

    root, _, _, rows = files

    def row(index, text, status=ACCEPTED, reason=""):
        return PoolRow(row=index, id=f"p-{index}", text=text, intended_label="HUM",
                       parsed_label="HUM" if status == ACCEPTED else "", status=status, reason=reason,
                       raw_output=text, finish_reason="stop", recipe="topics", level=1, topic="t",
                       attributes={}, few_shot_ids=[], template_id="t", prompt="p", generator="g",
                       weights_hash="w", sampling={}, seed=index, prompt_tokens=1, completion_tokens=1,
                       created="2026-11-21T00:00:00+00:00")

    pool = Pool.create(root / "generated", {"label_names": ["HUM", "LOC"]})
    pool.append([row(0, rows[0]["text"]), row(1, rows[1]["text"]), row(2, rows[0]["text"]),  # a duplicate
                 row(3, "", REJECTED, "no question in the output"), *(dataclasses.replace(row(i, text, REJECTED, reason), parsed_label="HUM")  # gated: parsed fine
                   for i, text, reason in ((4, "Sure!", "chatter"), (5, rows[2]["text"], "near_duplicate")))])
    read = read_pool(root / "generated")
    assert read.texts == [rows[0]["text"], rows[1]["text"]] and read.labels == ["HUM", "HUM"]
    # every reason is counted; gated rows (text and label present) are rejected, not parse failures
    assert read.parse_failures == 1 and read.rejected == 4 and read.total_rows == 6
    assert read.rejections == {"duplicate": 1, "no question in the output": 1, "chatter": 1, "near_duplicate": 1}
