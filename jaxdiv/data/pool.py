"""The generated-pool store: typed rows with full provenance, appended atomically in chunks.

A pool directory holds

    pool.json              what the pool is: task, label names, generator, recipe, config hash
    config.json            the resolved config of the run that made it (configlib.save_config)
    rows/chunk-NNNNNN.jsonl  rows, one JSON object a line, each chunk written atomically

`datasets` reads the rows directly (`load_dataset("json", data_files="rows/*.jsonl")`);
`Pool.accepted()` gives the usable rows as a `datasets.Dataset` with `id`, `text`,
`label` (a ClassLabel over the task's label names) and the provenance columns.

Resume: a chunk is either fully present or absent (atomic rename), every row carries its
integer `row` index, and `append` refuses a row index already stored, so a killed job
restarted on the same directory neither duplicates nor loses rows. Malformed LLM output,
and a row a quality gate rejects (`jaxdiv.generate.gates`: truncated, echo, chatter,
label_probe, near_duplicate), is stored with `status="rejected"` and a `reason`; nothing is
dropped silently, and `counts()["reasons"]` counts every reason. Dedup
(on by default) rejects a row whose normalised text equals an earlier accepted row's.
"""

from __future__ import annotations

import dataclasses
import json
import re
import unicodedata
from pathlib import Path
from typing import Any, Iterable

import datasets

from jaxdiv.errors import JaxdivError
from jaxdiv.io import atomic_write_text

ACCEPTED = "accepted"
REJECTED = "rejected"
POOL_FILE = "pool.json"
ROWS_DIR = "rows"


class PoolError(JaxdivError, ValueError):
    """A pool directory is inconsistent or a row is invalid (names the file/row)."""


@dataclasses.dataclass(frozen=True)
class PoolRow:
    """One generated row and everything needed to reproduce or audit it."""

    row: int  # index in the job's row plan; fixes the row's seed
    id: str
    text: str  # the parsed text ("" when nothing parseable came back)
    intended_label: str  # the label the prompt asked for
    parsed_label: str  # the label the output declares or implies ("" when unparseable)
    status: str  # accepted | rejected
    reason: str  # why rejected ("" when accepted)
    raw_output: str  # the LLM's reply as received
    finish_reason: str  # eos | stop | length
    recipe: str
    level: int
    topic: str
    attributes: dict[str, Any]
    few_shot_ids: list[str]
    template_id: str
    prompt: str
    generator: str
    weights_hash: str
    sampling: dict[str, Any]
    seed: int  # the row seed: (global seed, row) -> this
    prompt_tokens: int
    completion_tokens: int
    created: str  # ISO-8601 UTC timestamp

    def __post_init__(self):
        if self.status not in (ACCEPTED, REJECTED):
            raise PoolError(f"row {self.row}: status {self.status!r} is not accepted/rejected")
        if self.status == REJECTED and not self.reason:
            raise PoolError(f"row {self.row}: a rejected row needs a reason")
        if self.status == ACCEPTED and (not self.text or self.parsed_label != self.intended_label):
            raise PoolError(f"row {self.row}: an accepted row needs a text and a parsed label equal "
                            f"to the intended one")


FIELDS = tuple(f.name for f in dataclasses.fields(PoolRow))


def normalise(text: str) -> str:
    """The dedup key: case-folded, NFKC, punctuation dropped, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


class Pool:
    """A pool directory. Create with `Pool.create`, reopen with `Pool.open`."""

    def __init__(self, directory: Path, meta: dict[str, Any]):
        self.directory = directory
        self.meta = meta
        self._rows: list[dict[str, Any]] = []
        self._seen: dict[str, str] = {}  # dedup key -> id of the first accepted row
        self._chunks = 0
        for chunk in sorted((directory / ROWS_DIR).glob("chunk-*.jsonl")):
            self._absorb(self._read_chunk(chunk))
            self._chunks += 1

    # -- opening ------------------------------------------------------------------------------
    @classmethod
    def create(cls, directory: str | Path, meta: dict[str, Any]) -> "Pool":
        """Open `directory` as a pool with this meta, creating it if absent. An existing pool
        must have been made with the same meta (resume), else PoolError."""
        directory = Path(directory)
        meta = json.loads(json.dumps(meta))  # normalise tuples etc. to their JSON form
        if "label_names" not in meta:
            raise PoolError("pool meta needs 'label_names'")
        path = directory / POOL_FILE
        if path.is_file():
            existing = json.loads(path.read_text())
            if existing != meta:
                changed = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
                raise PoolError(f"{directory} already holds a pool made with different settings "
                                f"({changed}); use another directory or the same config to resume")
        else:
            (directory / ROWS_DIR).mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(meta, indent=2))
        return cls(directory, meta)

    @classmethod
    def open(cls, directory: str | Path) -> "Pool":
        directory = Path(directory)
        path = directory / POOL_FILE
        if not path.is_file():
            raise PoolError(f"{directory} is not a pool directory (no {POOL_FILE})")
        return cls(directory, json.loads(path.read_text()))

    @classmethod
    def is_complete(cls, directory: str | Path, rows: int) -> bool:
        """Whether `directory` holds a pool of at least `rows` rows (else generating it creates or resumes it)."""
        return (Path(directory) / POOL_FILE).is_file() and len(cls.open(directory)) >= rows

    def _read_chunk(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PoolError(f"{path}:{number}: not valid JSON ({err})") from err
            missing = [f for f in FIELDS if f not in row]
            if missing:
                raise PoolError(f"{path}:{number}: row lacks fields {missing}")
            rows.append(row)
        return rows

    def _absorb(self, rows: list[dict[str, Any]]) -> None:
        done = self.done_rows()
        for row in rows:
            if row["row"] in done:
                raise PoolError(f"{self.directory}: row {row['row']} is stored twice")
            done.add(row["row"])
            if row["status"] == ACCEPTED:
                self._seen.setdefault(normalise(row["text"]), row["id"])
        self._rows.extend(rows)

    # -- writing ------------------------------------------------------------------------------
    def append(self, rows: Iterable[PoolRow], dedup: bool = True) -> list[PoolRow]:
        """Store rows as one new chunk, atomically; returns them as stored (dedup applied)."""
        stored, seen, done = [], dict(self._seen), self.done_rows()
        for row in rows:
            if row.row in done:
                raise PoolError(f"{self.directory}: row {row.row} is already stored")
            done.add(row.row)
            if row.status == ACCEPTED:
                key = normalise(row.text)
                if dedup and key in seen:
                    row = dataclasses.replace(row, status=REJECTED, reason=f"duplicate of {seen[key]}")
                else:
                    seen.setdefault(key, row.id)
            stored.append(row)
        if not stored:
            return stored
        lines = "".join(json.dumps(dataclasses.asdict(r), ensure_ascii=False) + "\n" for r in stored)
        atomic_write_text(self.directory / ROWS_DIR / f"chunk-{self._chunks:06d}.jsonl", lines)
        self._chunks += 1
        self._absorb([dataclasses.asdict(r) for r in stored])
        return stored

    # -- reading ------------------------------------------------------------------------------
    def done_rows(self) -> set[int]:
        return {row["row"] for row in self._rows}

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict[str, Any]]:
        return sorted(self._rows, key=lambda r: r["row"])

    def counts(self) -> dict[str, Any]:
        """rows, accepted, rejected, and reasons: {rejection reason: rows} (`reasons()`)."""
        accepted = sum(r["status"] == ACCEPTED for r in self._rows)
        return {"rows": len(self._rows), "accepted": accepted, "rejected": len(self._rows) - accepted,
                "reasons": self.reasons()}

    def reasons(self) -> dict[str, int]:
        """Rejection reasons with their counts, details dropped ('duplicate of X' -> 'duplicate',
        'too long (41 words > 30)' -> 'too long')."""
        out: dict[str, int] = {}
        for row in self._rows:
            if row["status"] == REJECTED:
                reason = re.sub(r"\s*\(.*\)$", "", row["reason"].split(" of ")[0].split(":")[0])
                out[reason] = out.get(reason, 0) + 1
        return out

    def dataset(self) -> datasets.Dataset:
        """Every row (accepted and rejected), provenance as JSON strings where nested."""
        return _to_dataset(self.rows(), tuple(self.meta["label_names"]), with_label=False)

    def accepted(self) -> datasets.Dataset:
        """Accepted rows: `id`, `text`, `label` (ClassLabel over the task's labels) + provenance."""
        rows = [r for r in self.rows() if r["status"] == ACCEPTED]
        return _to_dataset(rows, tuple(self.meta["label_names"]), with_label=True)


def _to_dataset(rows: list[dict[str, Any]], label_names: tuple[str, ...], with_label: bool
                ) -> datasets.Dataset:
    columns: dict[str, list] = {name: [] for name in FIELDS}
    for row in rows:
        for name in FIELDS:
            value = row[name]
            columns[name].append(json.dumps(value, sort_keys=True) if name in ("attributes", "sampling")
                                 else value)
    features = {
        "row": datasets.Value("int64"), "level": datasets.Value("int32"),
        "seed": datasets.Value("int64"), "prompt_tokens": datasets.Value("int32"),
        "completion_tokens": datasets.Value("int32"),
        "few_shot_ids": datasets.Sequence(datasets.Value("string")),
    }
    features = datasets.Features({name: features.get(name, datasets.Value("string")) for name in FIELDS})
    if with_label:
        index = {name: i for i, name in enumerate(label_names)}
        unknown = sorted({l for l in columns["parsed_label"] if l not in index})
        if unknown:
            raise PoolError(f"accepted rows carry labels {unknown} outside the task's {list(label_names)}")
        columns["label"] = [index[l] for l in columns["parsed_label"]]
        features["label"] = datasets.ClassLabel(names=list(label_names))
    dataset = datasets.Dataset.from_dict(columns, features=features)
    order = ["id", "text", "label"] if with_label else ["id", "text"]
    return dataset.select_columns(order + [c for c in dataset.column_names if c not in order])
