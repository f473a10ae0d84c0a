"""Pool store: typed rows, atomic chunks, dedup, resume invariants, datasets round trip."""

import dataclasses
import json

import datasets
import pytest

from jaxdiv.data.pool import ACCEPTED, REJECTED, Pool, PoolError, PoolRow, normalise

LABELS = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]
META = {"task": "trec", "label_names": LABELS, "recipe": "topics", "level": 2}


def _row(row, text, label="HUM", status=ACCEPTED, reason="", parsed=None):
    return PoolRow(
        row=row, id=f"trec-topics-d2-{row:06d}", text=text, intended_label=label,
        parsed_label=label if parsed is None else parsed, status=status, reason=reason,
        raw_output=text + "\n", finish_reason="stop", recipe="topics", level=2, topic="volcanoes",
        attributes={"topic_set": "llm-v1:x", "topic_count": 20}, few_shot_ids=["trec-a", "trec-b"],
        template_id="topic-fewshot-v2", prompt="Write one new question ...", generator="jax:smollm2",
        weights_hash="abc123", sampling={"temperature": 0.8, "top_p": 0.95}, seed=1000 + row,
        prompt_tokens=120, completion_tokens=14, created="2026-11-21T19:00:00+00:00")


def test_rows_round_trip_with_provenance_and_classlabel(tmp_path):
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?"), _row(1, "Where is Mount Etna?", "LOC")])
    pool.append([_row(2, "", status=REJECTED, reason="empty output", parsed="")])
    reopened = Pool.open(tmp_path)
    assert reopened.counts() == {"rows": 3, "accepted": 2, "rejected": 1, "reasons": {"empty output": 1}}
    accepted = reopened.accepted()
    assert accepted.column_names[:3] == ["id", "text", "label"]
    assert accepted.features["label"].names == LABELS
    assert accepted["label"] == [LABELS.index("HUM"), LABELS.index("LOC")]
    assert accepted["few_shot_ids"][0] == ["trec-a", "trec-b"]
    assert json.loads(accepted["sampling"][0]) == {"temperature": 0.8, "top_p": 0.95}
    assert set(accepted.column_names) >= {"topic", "template_id", "prompt", "generator", "weights_hash",
                                          "seed", "created", "recipe", "level", "intended_label"}
    everything = reopened.dataset()
    assert everything.num_rows == 3 and everything["reason"][2] == "empty output"
    # the chunks are plain JSONL that `datasets` reads by itself
    raw = datasets.load_dataset("json", data_files=str(tmp_path / "rows" / "*.jsonl"), split="train")
    assert sorted(raw["row"]) == [0, 1, 2]


def test_dedup_rejects_normalised_duplicates_with_the_first_id(tmp_path):
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?")])
    stored = pool.append([_row(1, "who  built the Pyramids ?"), _row(2, "Who built Rome?"),
                          _row(3, "WHO BUILT ROME")])
    assert [r.status for r in stored] == [REJECTED, ACCEPTED, REJECTED]
    assert stored[0].reason == "duplicate of trec-topics-d2-000000"
    assert stored[2].reason == "duplicate of trec-topics-d2-000002"
    assert Pool.open(tmp_path).reasons() == {"duplicate": 2}
    kept = Pool.create(tmp_path / "nodedup", META)
    kept.append([_row(0, "Who built Rome?"), _row(1, "who built rome")], dedup=False)
    assert kept.counts()["accepted"] == 2
    assert normalise("  Who  built\tRome?! ") == "who built rome"


def test_resume_invariants(tmp_path):
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?")])
    with pytest.raises(PoolError, match="row 0 is already stored"):
        Pool.open(tmp_path).append([_row(0, "Who built the pyramids again?")])
    with pytest.raises(PoolError, match=r"different settings \(\['level'\]\)"):
        Pool.create(tmp_path, {**META, "level": 3})
    assert Pool.create(tmp_path, META).done_rows() == {0}  # same settings: resumes
    # a leftover temporary from a killed write is not a chunk
    (tmp_path / "rows" / ".chunk-000001.jsonl.abc.tmp").mkdir()
    assert len(Pool.open(tmp_path)) == 1


def test_bad_rows_and_files_raise_named_errors(tmp_path):
    with pytest.raises(PoolError, match="needs a reason"):
        _row(0, "x", status=REJECTED)
    with pytest.raises(PoolError, match="parsed label equal"):
        _row(0, "Who is it?", parsed="LOC")
    with pytest.raises(PoolError, match="not a pool directory"):
        Pool.open(tmp_path / "nothing")
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?")])
    chunk = next((tmp_path / "rows").glob("chunk-000000-*.jsonl"))
    chunk.write_text(chunk.read_text() + "{broken\n")
    with pytest.raises(PoolError, match=r"chunk-000000-\w+.jsonl:2: not valid JSON"):
        Pool.open(tmp_path)
    row = dataclasses.asdict(_row(5, "Where?"))
    del row["prompt"]
    chunk.write_text(json.dumps(row) + "\n")
    with pytest.raises(PoolError, match=r"chunk-000000-\w+.jsonl:1: row lacks fields \['prompt'\]"):
        Pool.open(tmp_path)


def test_parse_failures_count_only_outputs_that_did_not_parse(tmp_path):
    pool = Pool.create(tmp_path, META)
    pool.append([_row(0, "Who built the pyramids?"),
                 _row(1, "", status=REJECTED, reason="empty output", parsed=""),  # did not parse
                 _row(2, "Is it fun?", status=REJECTED, reason="no label", parsed="FUN"),  # unknown label
                 _row(3, "What a day is like?", status=REJECTED, reason="label_probe"),  # parsed; a gate said no
                 _row(4, "Here's a question:", status=REJECTED, reason="chatter"),
                 _row(5, "", status=REJECTED, reason="request_failed: HTTP 503", parsed="")])  # no output
    assert Pool.open(tmp_path).parse_failures() == 2
    assert Pool.open(tmp_path).counts()["rejected"] == 5
