import collections
import json

import datasets
import pytest

from jaxdiv.data.tasks import budget_rows
from jaxdiv.mix.config import MixConfig
from jaxdiv.mix.mixture import Cell, MixtureError, build_mixture


@pytest.fixture(scope="module")
def real_and_synthetic(trec_task):
    """Real TREC training rows, and TREC validation rows standing in as an accepted pool."""
    real = trec_task.splits["train"]
    pool = trec_task.splits["validation"]
    synthetic = datasets.Dataset.from_dict({
        "id": [f"pool-{i:05d}" for i in range(pool.num_rows)], "text": pool["text"],
        "label": pool["label"]})
    return real, synthetic, trec_task.label_names


def per_class(mixture, source, names):
    counts = collections.Counter(
        names[label] for label, s in zip(mixture.rows["label"], mixture.rows["source"]) if s == source)
    return dict(counts)


@pytest.mark.parametrize("protocol, proportion, real_each, synthetic_each", [
    ("fixed_total", 0.0, 8, 0), ("fixed_total", 0.25, 6, 2), ("fixed_total", 0.5, 4, 4),
    ("fixed_total", 1.0, 0, 8), ("added", 0.5, 8, 4), ("added", 1.0, 8, 8),
])
def test_composition_is_exact(real_and_synthetic, protocol, proportion, real_each, synthetic_each):
    real, synthetic, names = real_and_synthetic
    mix = build_mixture(real, synthetic, names, Cell(budget=8, proportion=proportion, seed=0, protocol=protocol))
    expected_real = {n: real_each for n in names} if real_each else {}
    expected_synthetic = {n: synthetic_each for n in names} if synthetic_each else {}
    assert per_class(mix, "real", names) == expected_real
    assert per_class(mix, "synthetic", names) == expected_synthetic
    assert mix.counts == {"real": {n: real_each for n in names},
                          "synthetic": {n: synthetic_each for n in names}}
    assert mix.rows.num_rows == len(names) * (real_each + synthetic_each)
    # Ids are recorded and belong to the right source.
    assert set(mix.ids("real")) <= set(real["id"])
    assert set(mix.ids("synthetic")) <= set(synthetic["id"])
    assert len(set(mix.rows["id"])) == mix.rows.num_rows


def test_seeded_deterministic_and_nested(real_and_synthetic):
    real, synthetic, names = real_and_synthetic
    first = build_mixture(real, synthetic, names, Cell(10, 0.5, seed=3))
    again = build_mixture(real, synthetic, names, Cell(10, 0.5, seed=3))
    other = build_mixture(real, synthetic, names, Cell(10, 0.5, seed=4))
    assert first.rows["id"] == again.rows["id"]
    assert set(first.rows["id"]) != set(other.rows["id"])
    # A smaller budget at the same seed is a subset of a larger one.
    small = build_mixture(real, synthetic, names, Cell(4, 0.5, seed=3))
    assert set(small.ids("real")) <= set(first.ids("real"))
    assert set(small.ids("synthetic")) <= set(first.ids("synthetic"))
    # Independent of row order.
    shuffled = build_mixture(real.shuffle(seed=1), synthetic.shuffle(seed=1), names, Cell(10, 0.5, seed=3))
    assert sorted(shuffled.rows["id"]) == sorted(first.rows["id"])


def test_impossible_cell_names_the_cell_and_class(real_and_synthetic):
    real, synthetic, names = real_and_synthetic
    # TREC has 60 ABBR training questions and 9 ABBR validation ones.
    with pytest.raises(MixtureError,
                       match=r"cell b100-r0-p0-s0-fixed_total: class 'ABBR' needs 100 real rows, only 60"):
        build_mixture(real, synthetic, names, Cell(100, 0.0, 0))
    with pytest.raises(MixtureError,
                       match=r"cell b20-r0-p1-s0-fixed_total: class 'ABBR' needs 20 synthetic rows, only 9"):
        build_mixture(real, synthetic, names, Cell(20, 1.0, 0))
    mix = build_mixture(real, synthetic, names, Cell(20, 1.0, 0), MixConfig(allow_short_classes=True))
    assert mix.counts["synthetic"]["ABBR"] == 9 and len(mix.shortfalls) == 1
    with pytest.raises(MixtureError, match="outside"):
        bad = synthetic.map(lambda row: {"label": 9})
        build_mixture(real, bad, names, Cell(5, 0.5, 0))


def test_all_budget_and_save(real_and_synthetic, tmp_path):
    real, synthetic, names = real_and_synthetic
    mix = build_mixture(real, synthetic, names, Cell(None, 0.0, 0))
    assert mix.rows.num_rows == real.num_rows
    saved = mix.save(tmp_path / "mix")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["cell"] == {"budget": None, "proportion": 0.0, "seed": 0, "subset": 0,
                                "protocol": "fixed_total", "synthetic_cap": None}
    assert len(manifest["real_ids"]) == real.num_rows and manifest["synthetic_ids"] == []
    reloaded = datasets.Dataset.from_parquet(str(saved / "rows.parquet"))
    assert reloaded["id"] == mix.rows["id"]


def test_real_rows_are_the_subsets_budget_rows_and_synthetic_follow_the_training_seed(real_and_synthetic):
    real, synthetic, names = real_and_synthetic
    budget_ids = {real["id"][i] for rows in budget_rows(real, len(names), 6, 5).values() for i in rows}
    for seed in (0, 1):
        mix = build_mixture(real, synthetic, names, Cell(6, 0.5, seed=seed, subset=5, protocol="added"))
        assert set(mix.ids("real")) == budget_ids  # the training seed does not move the real rows
    first = build_mixture(real, synthetic, names, Cell(6, 0.5, seed=0, subset=5))
    other_seed = build_mixture(real, synthetic, names, Cell(6, 0.5, seed=1, subset=5))
    other_subset = build_mixture(real, synthetic, names, Cell(6, 0.5, seed=0, subset=6))
    assert first.ids("synthetic") != other_seed.ids("synthetic")
    assert first.ids("synthetic") == other_subset.ids("synthetic")
    assert set(first.ids("real")) < budget_ids and not set(other_subset.ids("real")) <= budget_ids


def test_synthetic_cap_keeps_the_protocols_total(real_and_synthetic):
    real, synthetic, names = real_and_synthetic
    cap = tuple(2 if name == "ABBR" else 8 for name in names)
    fixed = build_mixture(real, synthetic, names, Cell(8, 1.0, seed=0, synthetic_cap=cap))
    assert fixed.counts["synthetic"]["ABBR"] == 2 and fixed.counts["real"]["ABBR"] == 6
    assert fixed.counts["synthetic"]["HUM"] == 8 and fixed.counts["real"]["HUM"] == 0
    added = build_mixture(real, synthetic, names, Cell(8, 1.0, seed=0, protocol="added", synthetic_cap=cap))
    assert added.counts["synthetic"]["ABBR"] == 2 and added.counts["real"]["ABBR"] == 8
    with pytest.raises(MixtureError, match="protocol 'both' is not one of"):
        build_mixture(real, synthetic, names, Cell(8, 1.0, seed=0, protocol="both"))
