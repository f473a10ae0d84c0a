"""Recipes: seeded, per-row plans (labels, few-shot, topics, paraphrases, temperatures) and
parsing of LLM output into accepted / rejected rows with reasons."""

import collections

import pytest

from jaxdiv.configlib import ConfigError
from jaxdiv.generate.backends import OpenAIBackend
from jaxdiv.generate.config import OpenAIBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.generate.recipes import (RECIPES, clean_topic_lines, make_recipe, read_topics_file, recipe_meta,
                                     row_seed)
from jaxdiv.generate.sampler import Completion

# a real backend object; recipes planned from a topics file never call it
BACKEND = OpenAIBackend(OpenAIBackendConfig(model="unused", base_url="http://127.0.0.1:9/v1"))


@pytest.fixture(scope="module")
def topics_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("topics") / "topics.txt"
    path.write_text("\n".join(f"topic number {i}" for i in range(120)) + "\n")
    return path


def _recipe(trec_task, topics_file, n=60, real_budget=0, real_subset=0, **overrides):
    cfg = RecipeConfig(topics_file=str(topics_file), **overrides)
    return make_recipe(cfg, SamplingConfig(), trec_task, BACKEND, seed=5, n=n, progress=False,
                       real_budget=real_budget, real_subset=real_subset)


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
    assert (row.recipe, row.level, row.template_id, row.generator) == ("topics", 2, "topic-fewshot-turns-v1",
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


def test_the_table_builds_one_class_per_mechanism_and_temperature_sets_the_sampling(trec_task, topics_file):
    for name, mechanism in RECIPES.items():
        RecipeConfig(name=name).check()  # each name in the table is one the config accepts
        assert type(_recipe(trec_task, topics_file, name=name, level=2)) is mechanism
    recipe = _recipe(trec_task, topics_file, name="temperature", level=5)
    plans = [recipe.plan(r) for r in range(12)]
    assert {p.request.sampling.temperature for p in plans} == {1.1}  # temperatures[5]
    assert all(p.topic == "" and p.template_id == "fewshot-turns-v1" for p in plans)
    assert recipe.topics == [] and recipe_meta(recipe)["topic_count"] == 0


def _budget_ids(task, budget, subset):
    from jaxdiv.data.tasks import budget_rows

    train = task.splits["train"]
    ids = train["id"]
    return {label: {ids[i] for i in rows}
            for label, rows in budget_rows(train, len(task.label_names), budget, subset).items()}


def test_demonstrations_come_from_the_cells_budget(trec_task, topics_file):
    """No label leak: with a budget of 8 per class, every few-shot id and paraphrase source is
    one of the cell's 8 real rows of the row's label (the mixture's own `budget_rows`)."""
    allowed = _budget_ids(trec_task, 8, 3)
    assert all(len(ids) == 8 for ids in allowed.values())
    budget_ids = set().union(*allowed.values())
    label_index = {name: i for i, name in enumerate(trec_task.label_names)}
    for name in ("topics", "paraphrase"):
        recipe = _recipe(trec_task, topics_file, n=120, name=name, level=1, few_shot=3,
                         real_budget=8, real_subset=3)
        assert not recipe.label_leak
        plans = [recipe.plan(r) for r in range(120)]
        shown = set()
        for plan in plans:
            assert set(plan.few_shot_ids) <= allowed[label_index[plan.intended_label]], plan.row
            shown |= set(plan.few_shot_ids)
        assert shown <= budget_ids and len(shown) > 24  # draws spread over the budget's rows
    # another real subset is another set of rows
    other = _recipe(trec_task, topics_file, n=60, real_budget=8, real_subset=4)
    assert {i for r in range(60) for i in other.plan(r).few_shot_ids} - budget_ids


def test_all_train_demonstrations_are_a_recorded_leak(trec_task, topics_file, tmp_path):
    from jaxdiv.configlib import apply_overrides
    from jaxdiv.data.tasks import TaskConfig
    from jaxdiv.generate.config import GenerateConfig
    from jaxdiv.generate.runner import pool_meta

    budget_ids = set().union(*_budget_ids(trec_task, 8, 3).values())
    leaking = _recipe(trec_task, topics_file, n=60, demonstrations="all_train", real_budget=8, real_subset=3)
    assert leaking.label_leak and recipe_meta(leaking)["label_leak"]
    assert recipe_meta(leaking)["demonstration_rows"] == trec_task.splits["train"].num_rows
    assert {i for r in range(60) for i in leaking.plan(r).few_shot_ids} - budget_ids
    whole = _recipe(trec_task, topics_file, n=6, demonstrations="all_train")  # no budget: no leak
    assert not whole.label_leak

    def meta(*overrides, real_budget=0, real_subset=0):
        return pool_meta(apply_overrides(GenerateConfig(), list(overrides)), TaskConfig(name=trec_task.name),
                         trec_task, BACKEND, n=6, seed=0, real_budget=real_budget, real_subset=real_subset)

    assert meta("recipe.demonstrations=all_train", real_budget=8)["label_leak"] is True
    assert meta(real_budget=8)["label_leak"] is False
    assert meta("recipe.demonstrations=all_train")["label_leak"] is False
    # the budget and the real subset are part of a pool's identity
    hashes = {meta(**o)["identity_hash"] for o in [{}, {"real_budget": 8}, {"real_budget": 8, "real_subset": 1}]}
    assert len(hashes) == 3
    with pytest.raises(ConfigError, match="demonstrations: 'some' is not budget or all_train"):
        apply_overrides(GenerateConfig(), ["recipe.demonstrations=some"])


def test_few_shot_examples_as_chat_turns(trec_task, topics_file):
    listed = _recipe(trec_task, topics_file, name="topics", level=3, shots_as="list").plan(4)
    turns = _recipe(trec_task, topics_file, name="topics", level=3).plan(4)  # the default
    assert (turns.few_shot_ids, turns.topic, turns.intended_label) == (
        listed.few_shot_ids, listed.topic, listed.intended_label)
    assert [m["role"] for m in turns.request.messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert [m["content"] for m in turns.request.messages[2:-1:2]] == turns.few_shot_texts
    assert turns.prompt == turns.request.messages[-1]["content"]
    assert f"question about {turns.topic} that" in turns.prompt
    assert not any(text in turns.prompt for text in turns.few_shot_texts)
    # the listed form: the examples, then the same request
    assert [m["role"] for m in listed.request.messages] == ["system", "user"]
    assert listed.prompt.splitlines()[1:4] == listed.few_shot_texts and listed.prompt.endswith("\n\n" + turns.prompt)
    assert (listed.template_id, turns.template_id) == ("topic-fewshot-v2", "topic-fewshot-turns-v1")
    with pytest.raises(ConfigError, match="shots_as: 'chat' is not list or turns"):
        RecipeConfig(shots_as="chat").check()
