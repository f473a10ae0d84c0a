"""Selection as a diversity mechanism, on real TREC questions and their MiniLM embeddings (the
real training rows stand in for a large pool: one prompt distribution, many rows per class)."""

import json

import numpy as np
import pandas as pd
import pytest

from jaxdiv.cli import main
from jaxdiv.data.tasks import budget_rows
from jaxdiv.generate.selection import SelectionError
from jaxdiv.mix.select import select_subsets
from jaxdiv.score.diversity import vendi_scores


@pytest.fixture(scope="module")
def rows(trec_task):
    """30 TREC training questions per class (every class has at least 60)."""
    train = trec_task.splits["train"]
    picked = sorted(i for indices in budget_rows(train, 6, 30, seed=0).values() for i in indices)
    return train.select(picked)


@pytest.fixture(scope="module")
def embeddings(rows):
    from jaxdiv.score.embed import Embedder

    return Embedder().embed(rows["text"], progress=False)


def test_subsets_at_equal_n_are_named_by_measured_diversity(rows, embeddings, trec_task):
    per_class = (4, 6, 6, 6, 6, 6)
    subsets = select_subsets(embeddings, rows["label"], trec_task.label_names, per_class, [1.0, 0.0, 0.5])
    assert [s.name for s in subsets] == ["S0", "S1", "S2"]
    assert [s.position for s in subsets] == [0.0, 0.5, 1.0]  # here the measured order is the asked one
    measured = [vendi_scores(embeddings[s.indices])["vendi_q1"] for s in subsets]
    assert measured == pytest.approx([s.measured for s in subsets], rel=1e-6)
    assert measured[0] < measured[1] < measured[2]
    labels = np.asarray(rows["label"])
    for subset in subsets:
        assert np.bincount(labels[subset.indices], minlength=6).tolist() == list(per_class)
        for name, detail in subset.per_class.items():
            assert detail["low"] <= detail["achieved"] <= detail["high"]
            assert detail["target"] == pytest.approx(detail["low"] + subset.position * (detail["high"] - detail["low"]))
    # Each class's ends are its tightest cluster and its farthest-point spread.
    assert all(d["achieved"] == d["low"] for d in subsets[0].per_class.values())
    assert all(d["achieved"] == d["high"] for d in subsets[2].per_class.values())
    with pytest.raises(SelectionError, match="class 'ABBR': 30 rows, 31 asked"):
        select_subsets(embeddings, rows["label"], trec_task.label_names, (31,) * 6, [0.0, 1.0])


def test_select_cli_writes_the_subsets_and_their_diversity(rows, embeddings, trec_task, tmp_path, capsys):
    table = tmp_path / "pool.parquet"
    pd.DataFrame({"text": rows["text"], "label": [trec_task.label_names[i] for i in rows["label"]]}).to_parquet(table)
    out = tmp_path / "selected"
    assert main(["select", str(table), "--targets", "1,0", "--n", "5", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "selection.json").read_text())
    assert [(s["name"], s["position"], s["rows"]) for s in summary["subsets"]] == [("S0", 0.0, 30), ("S1", 1.0, 30)]
    assert summary["subsets"][0]["vendi_q1"] < summary["subsets"][1]["vendi_q1"]
    for subset in summary["subsets"]:
        written = pd.read_parquet(out / f"{subset['name']}.parquet")
        assert written.groupby("label").size().to_dict() == {name: 5 for name in trec_task.label_names}
        assert vendi_scores(embeddings[written["index"].to_numpy()])["vendi_q1"] == pytest.approx(
            subset["vendi_q1"], rel=1e-6)
    assert "S1" in capsys.readouterr().out
    assert main(["select", str(table), "--targets", "0,2", "--n", "5", "--out", str(out)]) == 2
    assert "must be positions in [0, 1] of the reachable range" in capsys.readouterr().err
