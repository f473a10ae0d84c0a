"""Recipes: seeded, per-row plans (labels, few-shot, topics, paraphrases, temperatures) and
parsing of LLM output into accepted / rejected rows with reasons."""

import collections

import pytest

from jaxdiv.configlib import ConfigError
from jaxdiv.generate.backends import OpenAIBackend
from jaxdiv.generate.config import OpenAIBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.generate.recipes import Recipe, clean_topic_lines, read_topics_file, row_seed
from jaxdiv.generate.sampler import Completion

# a real backend object; recipes planned from a topics file never call it
BACKEND = OpenAIBackend(OpenAIBackendConfig(model="unused", base_url="http://127.0.0.1:9/v1"))


@pytest.fixture(scope="module")
def topics_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("topics") / "topics.txt"
    path.write_text("\n".join(f"topic number {i}" for i in range(120)) + "\n")
    return path


def _recipe(trec_task, topics_file, n=60, **overrides):
    cfg = RecipeConfig(topics_file=str(topics_file), **overrides)
    return Recipe(cfg, SamplingConfig(), trec_task, BACKEND, seed=5, n=n, progress=False)


def test_topic_plans_are_seeded_balanced_and_use_the_level_topic_set(trec_task, topics_file):
    recipe = _recipe(trec_task, topics_file, name="topics", level=3)
    assert recipe.topics == [f"topic number {i}" for i in range(100)]  # D3 = first 100
    plans = [recipe.plan(r) for r in range(60)]
    again = _recipe(trec_task, topics_file, name="topics", level=3)
    assert [again.plan(r) for r in (59, 7, 0)] == [plans[59], plans[7], plans[0]]
    # labels: every block of 6 rows covers the 6 labels once
    for block in range(10):
        assert sorted(p.intended_label for p in plans[6 * block: 6 * block + 6]) == sorted(trec_task.label_names)
    train = trec_task.splits["train"]
    label_of = dict(zip(train["id"], train["label"]))
    for plan in plans:
        assert len(plan.few_shot_ids) == 3 and len(set(plan.few_shot_ids)) == 3
        assert {trec_task.label_names[label_of[i]] for i in plan.few_shot_ids} == {plan.intended_label}
        assert plan.topic in recipe.topics and plan.topic in plan.prompt
        assert plan.request.seed == row_seed(5, plan.row) and plan.request.row_id == plan.row
        assert "\n" in plan.request.sampling.stop
    assert len({p.topic for p in plans}) > 30
    low = _recipe(trec_task, topics_file, name="topics", level=0)
    assert {low.plan(r).topic for r in range(30)} == {"topic number 0"}


def test_paraphrase_fraction_and_temperature_axis(trec_task, topics_file):
    recipe = _recipe(trec_task, topics_file, n=200, name="paraphrase", level=1)
    plans = [recipe.plan(r) for r in range(200)]
    paraphrases = [p for p in plans if p.template_id == "paraphrase-v1"]
    assert len(paraphrases) == 160  # 0.8 x 200 at D1
    sources = collections.Counter(p.attributes["paraphrase_of"] for p in paraphrases)
    assert len(sources) <= 8 and sources.most_common(1)[0][1] > 10
    assert all(p.few_shot_texts[0] in p.prompt for p in paraphrases)
    for level, temperature in enumerate((0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3)):
        plan = _recipe(trec_task, topics_file, name="temperature", level=level).plan(3)
        assert plan.request.sampling.temperature == temperature and plan.topic == ""


def _parse(recipe, plan, text, reason="eos"):
    return recipe.parse(plan, Completion(plan.row, text, reason, 100, 12))


def test_parsing_accepts_clean_rows_and_keeps_malformed_ones_with_reasons(trec_task, topics_file):
    recipe = _recipe(trec_task, topics_file, name="topics", level=2)
    plan = recipe.plan(0)
    label = plan.intended_label
    other = next(l for l in trec_task.label_names if l != label)
    cases = {
        "What is the tallest volcano in Europe?": ("accepted", "", "What is the tallest volcano in Europe?"),
        "Sure! What is the tallest volcano in Europe? Let me know.": (
            "accepted", "", "What is the tallest volcano in Europe?"),
        "1. \"Question: How deep is the crater of Mount Etna?\"": (
            "accepted", "", "How deep is the crater of Mount Etna?"),
        f"Where is Etna? (type: {label})": ("accepted", "", "Where is Etna?"),
        f"Where is Etna? (type: {other})": ("rejected", f"label mismatch: output says {other!r}", "Where is Etna?"),
        "Where is Etna? (label: SPORT)": ("rejected", "unknown label tag 'SPORT'", "Where is Etna?"),
        "   \n  ": ("rejected", "empty output", ""),
        "Etna?": ("rejected", "too short (1 words < 3)", "Etna?"),
        "Volcanoes are mountains that erupt.": ("rejected", "does not end with '?'", None),
        " ".join(["word"] * 35) + "?": ("rejected", "too long (35 words > 30)", None),
        plan.few_shot_texts[0]: ("rejected", "copies a few-shot example", None),
    }
    for output, (status, reason, text) in cases.items():
        row = _parse(recipe, plan, output)
        assert (row.status, row.reason) == (status, reason), output
        assert row.raw_output == output
        if text is not None:
            assert row.text == text
        if status == "accepted":
            assert row.parsed_label == label
    truncated = _parse(recipe, plan, "The history of the volcano is long and", reason="length")
    assert truncated.reason == "truncated at max_new_tokens"
    row = _parse(recipe, plan, "What is the tallest volcano in Europe?")
    assert (row.recipe, row.level, row.template_id, row.generator) == ("topics", 2, "topic-fewshot-v2",
                                                                      BACKEND.generator_id)
    assert row.sampling["temperature"] == 0.8 and row.seed == plan.request.seed
    assert row.attributes["topic_count"] == 20 and row.topic == plan.topic


def test_topics_file_errors(tmp_path, trec_task):
    with pytest.raises(ConfigError, match="does not exist"):
        read_topics_file(tmp_path / "none.txt")
    (tmp_path / "few.jsonl").write_text('{"topic": "a"}\n{"topic": "b"}\n{"topic": "a"}\n')
    assert read_topics_file(tmp_path / "few.jsonl") == ["a", "b"]
    with pytest.raises(ConfigError, match="level D1 needs 5 topics, .*few.jsonl has 2"):
        _recipe(trec_task, tmp_path / "few.jsonl", name="topics", level=1)
    (tmp_path / "bad.jsonl").write_text('{"name": "a"}\n')
    with pytest.raises(ConfigError, match="bad.jsonl:1"):
        read_topics_file(tmp_path / "bad.jsonl")


def test_topic_parsing_skips_headers_numbering_and_sentences():
    text = ("Here are 10 specific topics:\n1. Ancient Rome\n- space exploration.\n"
            "* \"Jazz music\"\nThese topics cover a wide range of interests and areas of knowledge.\n\n")
    topics, dropped = clean_topic_lines(text, set())
    assert topics == ["Ancient Rome", "space exploration", "Jazz music"]
    assert [d["reason"] for d in dropped] == ["chatter", "chatter"]
