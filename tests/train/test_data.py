"""Input pipeline: row validation, deterministic order, eval padding, per-process blocks."""

import jax
import numpy as np
import pytest

from jaxdiv.sharding import MeshConfig, batch_sharding, make_mesh, named_sharding
from jaxdiv.train import data as data_lib


def test_read_rows_accepts_datasets_dicts_and_files(trec_task, tmp_path):
    rows = trec_task.splits["train"].select(range(5))
    texts, labels, names = data_lib.read_rows(rows)
    assert names == trec_task.label_names and labels == rows["label"] and texts == rows["text"]
    as_dicts = [{"text": t, "label": names[y]} for t, y in zip(texts, labels)]
    assert data_lib.read_rows(as_dicts, names)[1] == labels
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(f'{{"text": "{t}", "label": "{names[y]}"}}\n' for t, y in zip(texts, labels)))
    assert data_lib.read_rows(path, names)[1] == labels


@pytest.mark.parametrize("rows, message", [
    ([{"text": "ok", "label": "A"}, {"text": "  ", "label": "A"}], "row 1 has a blank"),
    ([{"text": "ok", "label": "Z"}], "row 0 has label 'Z'"),
    ([{"text": "ok"}], "row 0 lacks"),
    ([{"text": "ok", "label": 7}], "row 0 has label 7"),
])
def test_bad_rows_are_named(rows, message):
    with pytest.raises(data_lib.DataError, match=message):
        data_lib.read_rows(rows, ("A", "B"))


def test_batch_order_is_a_seeded_permutation_per_epoch():
    n, batch = 10, 4
    stream = np.concatenate([data_lib.batch_indices(3, s, batch, n) for s in range(5)])
    assert sorted(stream[:n]) == list(range(n)) and sorted(stream[n:2 * n]) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n:2 * n])  # a fresh order each epoch
    again = np.concatenate([data_lib.batch_indices(3, s, batch, n) for s in range(5)])
    np.testing.assert_array_equal(stream, again)
    assert not np.array_equal(stream, np.concatenate(
        [data_lib.batch_indices(4, s, batch, n) for s in range(5)]))


def test_eval_batches_pad_with_zero_weight():
    rows = data_lib.EncodedRows(np.arange(10)[:, None], np.ones((10, 1)), np.arange(10))
    batches = list(data_lib.eval_batches(rows, 4))
    assert [b["weights"].sum() for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(batches[-1]["labels"][:2], [8, 9])


def test_global_batch_places_each_block():
    mesh_cfg = MeshConfig(data=4, fsdp=2)
    mesh, rules = make_mesh(mesh_cfg), mesh_cfg.logical_axis_rules
    values = np.arange(8 * 3).reshape(8, 3)
    out = data_lib.global_batch({"x": values}, {"x": batch_sharding(mesh, 2, rules)})["x"]
    np.testing.assert_array_equal(np.asarray(out), values)
    assert out.sharding.spec == jax.sharding.PartitionSpec(("data", "fsdp"), None)
    runs = np.arange(4 * 8).reshape(4, 8)
    sharding = named_sharding(mesh, ("runs", "batch"), rules)
    assert data_lib.local_block(sharding, runs.shape) == (slice(0, 4), slice(0, 8))
    np.testing.assert_array_equal(np.asarray(data_lib.global_batch({"r": runs}, {"r": sharding})["r"]), runs)
