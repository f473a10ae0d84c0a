"""The quality gates (jaxdiv/generate/gates.py) on real SmolLM2 completions, hand labelled.

fixtures/gate_cases.json holds real completions of the packaged SmolLM2 (made by
make_gate_fixture.py), each labelled by hand: echo, chatter, truncated, or good (none of the
three; a "good" row may still fail the parser or the label probe).
"""

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from jaxdiv.configlib import apply_overrides
from jaxdiv.data.pool import ACCEPTED, Pool
from jaxdiv.data.tasks import budget_rows
from jaxdiv.generate.config import GatesConfig, GenerateConfig, GenerateJob
from jaxdiv.generate.gates import (CHATTER, ECHO, LABEL_PROBE, LABEL_PROBE_ORACLE, NEAR_DUPLICATE,
                                   TRUNCATED, LabelProbe, is_truncated, near_duplicate_verdicts,
                                   rule_reason)
from jaxdiv.generate.recipes import BRIEFS

CASES = json.loads((Path(__file__).parent / "fixtures" / "gate_cases.json").read_text())["cases"]


def _verdict(case, cfg=GatesConfig()) -> str:
    return rule_reason(case["raw_output"], case["text"], case["finish_reason"], case["prompt"],
                       case["few_shot_texts"], BRIEFS[case["task"]].must_end_with, cfg) or "good"


def test_fixture_is_real_and_hand_labelled():
    assert len(CASES) >= 60
    assert {c["hand_label"] for c in CASES} <= {"echo", "chatter", "truncated", "good"}
    labels = collections.Counter(c["hand_label"] for c in CASES)
    assert all(labels[k] >= 3 for k in ("chatter", "truncated", "good")), labels
    assert {c["task"] for c in CASES} == {"trec", "movie_sentiment"}


def test_rules_agree_with_the_hand_labels():
    confusion = collections.Counter((c["hand_label"], _verdict(c)) for c in CASES)
    # 109 of 112 (97%) get the hand label's reason; 111 of 112 the hand label's keep/reject.
    # Misses: a mangled few-shot copy read as good (word Jaccard 0.39), and a bare header
    # ("Original movie review snippet:", twice) called chatter where the hand said echo.
    assert confusion == {("truncated", "truncated"): 43, ("good", "good"): 29, ("echo", "echo"): 20,
                         ("chatter", "chatter"): 17, ("echo", "chatter"): 2, ("echo", "good"): 1}, confusion
    # above all: no good row is rejected, and every truncation is found
    assert sum(n for (hand, rule), n in confusion.items() if hand == "good" and rule != "good") == 0


@pytest.mark.parametrize("task_name, flagged", [("trec", 2), ("movie_sentiment", 26), ("sms_spam", 35)])
def test_chatter_rules_rarely_fire_on_real_texts(task_name, flagged):
    """Real training texts are what a good row looks like: the rules call 0.05% of TREC's 3,766
    questions chatter ("What do you need to do ...?"), 0.4% of 7,048 review snippets ("Here's a
    British flick ...") and 1.1% of 3,158 SMS ("let me know", "feel free": an SMS talks to someone)."""
    from jaxdiv.data.tasks import TaskConfig, load_task
    from jaxdiv.generate.gates import is_chatter

    texts = load_task(TaskConfig(name=task_name)).splits["train"]["text"]
    assert sum(is_chatter(t) for t in texts) == flagged


def test_each_gate_switches_off():
    off = GatesConfig(truncation=False, echo=False, chatter=False)
    assert all(_verdict(c, off) == "good" for c in CASES)
    no_chatter = GatesConfig(chatter=False)
    assert not any(_verdict(c, no_chatter) == "chatter" for c in CASES)
    assert any(_verdict(c) == "chatter" for c in CASES)


def test_truncation_needs_the_limit_and_no_natural_end():
    # the finish reason alone decides nothing: a length-stopped text that ended is kept
    assert is_truncated("The film drags in its second half", "The film drags in its second half", "length")
    assert not is_truncated("The film drags.", "The film drags.", "length")
    assert not is_truncated("He said \"never again.\"", "He said \"never again.\"", "length")
    assert not is_truncated("The film drags", "The film drags", "stop")
    # a task's end mark replaces the sentence end
    assert is_truncated("Who painted the ceiling of the.", "Who painted the ceiling of the.", "length", "?")
    assert not is_truncated("Who painted it?", "Who painted it?", "length", "?")
    # the first line ended before the limit: a natural end
    assert not is_truncated("A fine film\nAnd then", "A fine film", "length")
    truncated = [c for c in CASES if c["hand_label"] == "truncated"]
    assert truncated and all(c["finish_reason"] == "length" for c in truncated)


@pytest.fixture(scope="module")
def embedder():
    from jaxdiv.score.embed import Embedder

    return Embedder()


# real MiniLM cosines (all-MiniLM-L6-v2): France a/b 0.956, a/c 0.945, b/c 0.972; spider 0.967;
# Moby Dick 0.942; WW2 0.880
FRANCE_A, FRANCE_B, FRANCE_C = ("What's the capital of France?", "What is the capital city of France?",
                                "Which city is the capital of France?")
TEXTS = [FRANCE_A, "Who wrote the novel Moby Dick?", FRANCE_B, "How many legs does a spider have?",
         FRANCE_C, "How many legs do spiders have?", "Who is the author of Moby Dick?",
         "When did the Second World War end?", "What year did World War II end?", "WHAT'S THE CAPITAL OF FRANCE?"]
EXPECTED = ["", "", NEAR_DUPLICATE, "", "", NEAR_DUPLICATE, "", "", "", "exact"]


def test_near_duplicates_are_decided_in_row_order_against_kept_rows(embedder):
    from jaxdiv.data.pool import normalise

    x = embedder.embed(TEXTS, progress=False)
    keys = [normalise(t) for t in TEXTS]
    # FRANCE_C is within 0.95 of FRANCE_B only, which was itself rejected: C is kept
    assert near_duplicate_verdicts(x, x[:0], 0.95, keys) == EXPECTED
    # resume: any split into stored rows + a new chunk decides the same
    for split in range(1, len(TEXTS)):
        kept = [i for i in range(split) if not EXPECTED[i]]
        assert near_duplicate_verdicts(x[split:], x[kept], 0.95, keys[split:],
                                       {keys[i] for i in kept}) == EXPECTED[split:]
    # without dedup keys the exact copy is a near duplicate too; a lower threshold takes Moby Dick
    assert near_duplicate_verdicts(x, x[:0], 0.95)[-1] == NEAR_DUPLICATE
    assert near_duplicate_verdicts(x, x[:0], 0.94, keys)[6] == NEAR_DUPLICATE


def test_budget_probe_trains_on_the_cells_rows_only_and_oracle_on_all(trec_task, embedder):
    cfg = GenerateConfig()
    budget = LabelProbe(cfg, trec_task, embedder, real_budget=8, real_subset=3)
    train = trec_task.splits["train"]
    groups = budget_rows(train, trec_task.num_labels, 8, 3)
    budget_ids = {train["id"][i] for rows in groups.values() for i in rows}
    assert set(budget.training_ids) == budget_ids and len(budget_ids) == 8 * trec_task.num_labels
    assert budget.meta() == {"arm": "budget", "oracle": False, "reason": LABEL_PROBE,
                             "trained_on": "the cell's real budget rows", "training_rows": 48,
                             "min_probability": 0.5}
    other = LabelProbe(cfg, trec_task, embedder, real_budget=8, real_subset=4)
    assert set(other.training_ids) != budget_ids
    oracle = LabelProbe(apply_overrides(cfg, ["gates.labels.label_probe=oracle"]), trec_task, embedder,
                        real_budget=8, real_subset=3)
    assert oracle.reason == LABEL_PROBE_ORACLE and oracle.meta()["oracle"]
    assert "ORACLE" in oracle.meta()["trained_on"] and len(oracle.training_ids) == len(train)
    # on real test questions the oracle keeps more correctly labelled rows than the 8-per-class probe
    test = trec_task.splits["test"]
    x = embedder.embed(test["text"], progress=False)
    names = [trec_task.label_names[i] for i in test["label"]]
    kept_budget, kept_oracle = budget.keeps(x, names).mean(), oracle.keeps(x, names).mean()
    assert 0.2 < kept_budget < kept_oracle and kept_oracle > 0.7, (kept_budget, kept_oracle)


@pytest.mark.slow  # ~3.5 min on the loaded 2-core CPU (SmolLM2 compiles, MiniLM probe)
def test_generation_applies_the_gates_and_resumes_to_the_same_decisions(smollm2_generator, tmp_path):
    """Real SmolLM2 on TREC, every gate on (budget probe of 8 rows per class): rejected rows carry
    the gate's name, accepted rows pass every rule, and a pool whose last chunks were lost is
    regenerated to exactly the same rows and decisions."""
    from jaxdiv.generate.backends import JaxBackend
    from jaxdiv.generate.runner import run_generate_job
    from jaxdiv.score.pool_reader import read_pool

    backend = JaxBackend(smollm2_generator, "jax:smollm2-135m-instruct", "test")
    cfg = apply_overrides(GenerateJob(), [
        "recipe.name=temperature", "recipe.level=6", "n=16", "chunk_rows=4", "real_budget=8",
        "sampling.max_new_tokens=24", f"workdir={tmp_path / 'pool'}", "gates.labels.min_probability=0.3"])
    pool = run_generate_job(cfg, backend=backend, progress=False)
    meta = json.loads((tmp_path / "pool" / "pool.json").read_text())
    assert meta["gates"]["label_probe"]["arm"] == "budget" and meta["gates"]["label_probe"]["training_rows"] == 48
    rows = pool.rows()
    counts = pool.counts()
    assert counts["rows"] == 16 and sum(counts["reasons"].values()) == counts["rejected"]
    gated = {r["reason"] for r in rows} & {TRUNCATED, ECHO, CHATTER, LABEL_PROBE, NEAR_DUPLICATE}
    assert gated, counts  # D6 at temperature 1.3 with 24 tokens: some rows fail a gate
    for row in rows:
        if row["status"] == ACCEPTED:
            assert not rule_reason(row["raw_output"], row["text"], row["finish_reason"], row["prompt"], [],
                                   "?", GatesConfig()), row
    # the score report counts every reason; a gated row parsed (text and label), so it is
    # rejected but never a parse failure
    read = read_pool(tmp_path / "pool")
    assert read.rejections == counts["reasons"] and read.rejected == counts["rejected"]
    gated_rows = [r for r in rows if r["reason"] in (TRUNCATED, ECHO, CHATTER, LABEL_PROBE, NEAR_DUPLICATE)]
    assert all(r["text"] and r["parsed_label"] == r["intended_label"] for r in gated_rows)
    assert read.parse_failures == sum(r["status"] != ACCEPTED and not r["text"] for r in rows)

    # resume: lose the last two chunks, run again: the same rows, texts and decisions
    for chunk in sorted((tmp_path / "pool" / "rows").glob("chunk-*.jsonl"))[-2:]:
        chunk.unlink()
    again = run_generate_job(cfg, backend=backend, progress=False).rows()
    fields = ("row", "text", "status", "reason")
    assert [{k: r[k] for k in fields} for r in again] == [{k: r[k] for k in fields} for r in rows]


def test_unfilled_template_slots_are_echo_and_real_brackets_are_not():
    from jaxdiv.generate.gates import is_echo

    slot = "What is the capital of the country of [country_name] in [land_capital_city_name]?"  # a D6 row
    assert is_echo(slot, "", [], 0.5, 0.7)
    assert is_echo("Who wrote {book_title} ?", "", [], 0.5, 0.7)
    assert is_echo("What does [insert acronym] stand for?", "", [], 0.5, 0.7)
    for text in ("What does `` [sic] '' mean ?", "What is e^[x] ?", "Who sang <Help> ?"):
        assert not is_echo(text, "", [], 0.5, 0.7)
