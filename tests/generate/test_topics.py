"""LLM-written topic lists: cleaning (on real SmolLM2 replies and the lines issue 14 found),
generation until the count of clean topics is met, the cache, the pool's topics.json, and
errors that name the topic request. With the real SmolLM2 at tiny sizes."""

import collections
import json
from pathlib import Path

import pytest

from jaxdiv.data.pool import normalise
from jaxdiv.generate import recipes
from jaxdiv.generate.backends import JaxBackend, OpenAIBackend
from jaxdiv.generate.config import OpenAIBackendConfig, RecipeConfig, SamplingConfig
from jaxdiv.generate.recipes import (BRIEFS, TOPICS_VERSION, TopicList, clean_topic_lines, make_recipe,
                                     save_topics, topic_rejection)
from jaxdiv.generate.sampler import GenerationError

# raw replies of the real SmolLM2 to the first 16 topic requests per task (make_topics_fixture.py)
FIXTURE = Path(__file__).parent / "fixtures" / "topic_replies.json"

# the lines issue 14 found in a demo's topic list, and other hand-picked ones, with their reasons
HAND_PICKED = {
    "Output: 1. 2. 3": "format residue",
    "Insanity.1436026849": "format residue",
    "What's the topic?": "question",
    "Numbering- a topic - science": "format residue",
    "Numbering - a topic - the history of jazz": "format residue",
    "1. What a day is like": "question",
    "Here are some topics": "chatter",
    "Here are 10 different, specific topics for a question:": "chatter",
    "I'm ready to help. What can I help you with today?": "chatter",
    "Sure! Here you go": "chatter",
    "1.": "numbering only",
    "3)": "numbering only",
    "--": "numbering only",
    "History of": "fragment",
    "Cats and": "fragment",
    "and dogs": "fragment",
    "Love,": "fragment",
    "x": "fragment",
    "(Ancient Rome": "fragment",
    "Title: The elephant in the room": "format residue",
    "**Jazz** music": "format residue",
    "[Bagel]": "format residue",
    "SENTRY": "format residue",
    "The long history of the Roman Empire and its emperors": "too long",
}
GOOD = {"1. Ancient Rome": "Ancient Rome", "- space exploration.": "space exploration",
        "* \"Jazz music\"": "Jazz music", "NASA": "NASA", "Law and order": "Law and order",
        "6. Leadership (Avatar)": "Leadership (Avatar)", "Apollo 11": "Apollo 11",
        "How-to guides": "How-to guides", "Can openers": "Can openers"}


def test_hand_picked_lines_are_dropped_with_their_reasons():
    for line, reason in HAND_PICKED.items():
        assert topic_rejection(line) == (line, reason), line
    for line, topic in GOOD.items():
        assert topic_rejection(line) == (topic, ""), line
    seen: set[str] = set()
    topics, dropped = clean_topic_lines("\n".join([*HAND_PICKED, "", *GOOD, "ancient  ROME!"[:-1]]), seen)
    assert topics == list(GOOD.values())
    assert dropped == [{"text": line, "reason": reason} for line, reason in HAND_PICKED.items()] + [
        {"text": "ancient  ROME", "reason": "duplicate"}]
    assert seen == {normalise(t) for t in GOOD.values()}


def test_cleaning_real_smollm2_topic_lists():
    replies = json.loads(FIXTURE.read_text())["replies"]
    assert len(replies) == 48 and {r["task"] for r in replies} == {"trec", "sms_spam", "movie_sentiment"}
    kept, reasons, seen = collections.defaultdict(list), collections.Counter(), {}
    by_line = {}
    for reply in replies:
        topics, dropped = clean_topic_lines(reply["text"], seen.setdefault(reply["task"], set()))
        kept[reply["task"]] += topics
        reasons.update(d["reason"] for d in dropped)
        by_line.update({d["text"]: d["reason"] for d in dropped})
    # checked by hand: the 34 TREC topics the first 16 replies give, in order
    assert kept["trec"] == [
        "Fitness", "Sports", "Language", "Healthcare", "Literature", "Science", "History", "Society",
        "Science Fiction", "Literary Criticism", "Art", "Zombie", "Cat", "Killing the cat", "Death",
        "Virus", "Flu", "Influenza", "Coincidence", "Casino", "Ghost", "Names", "Plants",
        "Edible ingredients", "Benefits of plants", "World Order", "Electoral College", "Diplomacy",
        "National Election", "International Relations", "Leadership (Avatar)", "Public Policy",
        "Critical Thinking", "Business (Career Guidance)"]
    assert (len(kept["sms_spam"]), len(kept["movie_sentiment"])) == (40, 32)
    assert reasons == {"format residue": 80, "chatter": 36, "numbering only": 19, "too long": 9,
                       "fragment": 7, "question": 2, "duplicate": 1}
    for line, reason in {
            "1. What a day is like": "question",  # the demo's single D0 topic (issue 14)
            "One topic per line, 1 to 4 words.": "format residue",
            "Topic 1: Business Owners and Investors": "format residue",
            "{1, 2, 3, 4, 5, 6, 7, 8, 9}": "format residue",
            "I'm ready to help. What topic would you like to see?": "chatter",
            "Here are 10 different, specific topics for a question:": "chatter",
            "9. Could be a": "chatter", "* adventure to": "fragment", "* Love,": "fragment",
            "car": "duplicate", "1": "numbering only", "#### Jewel": "format residue"}.items():
        assert by_line[line] == reason, line
    for topics in kept.values():
        assert len({normalise(t) for t in topics}) == len(topics)
        assert all(topic_rejection(t) == (t, "") and 1 <= len(t.split()) <= 6 for t in topics)


@pytest.fixture(scope="module")
def jax_backend(smollm2_generator):
    return JaxBackend(smollm2_generator, "jax:smollm2-135m-instruct", "test")


@pytest.fixture(scope="module")
def topics_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("topics-cache")


def test_topic_list_generates_until_the_count_of_clean_topics(jax_backend, topics_cache):
    topic_list = TopicList("trec", jax_backend, seed=0, brief=BRIEFS["trec"], directory=topics_cache)
    assert topic_list.path.name.endswith(f"-v{TOPICS_VERSION}.json") and TOPICS_VERSION == 3
    topics = topic_list.first(5, progress=False)
    assert len(topics) == 5 and topic_list.prompts_used >= 3  # a reply gives ~2 clean topics
    assert all(topic_rejection(t) == (t, "") for t in topic_list.topics)
    assert len({normalise(t) for t in topic_list.topics}) == len(topic_list.topics)
    assert topic_list.dropped and all(d["reason"] in set(HAND_PICKED.values()) | {"duplicate"}
                                      for d in topic_list.dropped)
    cached = json.loads(topic_list.path.read_text())
    assert (cached["version"], cached["prompts"], cached["topics"], cached["dropped"]) == (
        3, topic_list.prompts_used, topic_list.topics, topic_list.dropped)
    # the next list reads the cache, and the levels' sets stay nested prefixes
    again = TopicList("trec", jax_backend, seed=0, brief=BRIEFS["trec"], directory=topics_cache)
    assert again.first(4, progress=False) == topics[:4] and again.prompts_used == topic_list.prompts_used

    # the pool's topics.json: the topics its rows draw from, and what was dropped and why
    cfg = RecipeConfig(name="topics", level=1, topic_counts=(1, 5, 20, 100, 1000, 5000, 10000),
                       topics_cache=str(topics_cache))
    recipe = make_recipe(cfg, SamplingConfig(), _task("trec"), jax_backend, seed=0, n=6, progress=False)
    save_topics(recipe, topics_cache / "pool")
    saved = json.loads((topics_cache / "pool" / "topics.json").read_text())
    assert saved == {"topic_set": f"llm-v3:{topic_list.path.stem}", "topics": topics[:5],
                     "dropped": topic_list.dropped}


def test_a_topic_list_short_after_its_requests_is_a_named_error(jax_backend, tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "TOPIC_PROMPTS_MIN", 2)
    monkeypatch.setattr(recipes, "TOPIC_PROMPTS_PER_TOPIC", 0)
    topic_list = TopicList("trec", jax_backend, seed=0, brief=BRIEFS["trec"], directory=tmp_path)
    with pytest.raises(GenerationError, match=r"^topics for task 'trec': \d+ clean topics of the 100 "
                                              r"needed after 2 topic requests \(dropped: .*\); lower "
                                              r"recipe.topic_counts or give recipe.topics_file$"):
        topic_list.first(100, progress=False)
    assert topic_list.prompts_used == 2


def test_topic_request_errors_name_the_request(tmp_path):
    closed = OpenAIBackend(OpenAIBackendConfig(model="m", base_url="http://127.0.0.1:9/v1", max_retries=0))
    topic_list = TopicList("trec", closed, seed=0, brief=BRIEFS["trec"], directory=tmp_path)
    with pytest.raises(GenerationError, match=r"^topic request 0 \(trec, area 'science'\): "
                                              r"http://127.0.0.1:9/v1/chat/completions failed after 1 "
                                              r"attempts: connection error"):
        topic_list.first(3, progress=False)


def _task(name):
    from jaxdiv.data.tasks import TaskConfig, load_task

    return load_task(TaskConfig(name=name))
