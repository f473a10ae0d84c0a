"""The generated-pool store: typed rows with full provenance, appended atomically in chunks.

A pool directory holds

    pool.json              what the pool is: task, label names, generator, recipe, config hash
    config.json            the resolved config of the run that made it (configlib.save_config)
    rows/chunk-NNNNNN-WRITER.jsonl  rows, one JSON object a line, each chunk written atomically
    .lock                  held (fcntl.flock) by the one process writing the pool

`datasets` reads the rows directly (`load_dataset("json", data_files="rows/*.jsonl")`);
`Pool.accepted()` gives the usable rows as a `datasets.Dataset` with `id`, `text`,
`label` (a ClassLabel over the task's label names) and the provenance columns.

Resume: a chunk is either fully present or absent (atomic rename), every row carries its
integer `row` index, and `append` refuses a row index already stored, so a killed job
restarted on the same directory neither duplicates nor loses rows. A writer holds an exclusive
lock on the folder for its lifetime, so a second `jaxdiv generate` on it fails at once; chunk
names carry a per-writer id, so no writer overwrites another's chunk. A row found stored twice
(left by an older, unlocked version) warns, naming both chunks, and the first copy is kept.
Malformed LLM output,
and a row a quality gate rejects (`jaxdiv.generate.gates`: truncated, echo, chatter,
label_probe, near_duplicate), is stored with `status="rejected"` and a `reason`; nothing is
dropped silently, and `counts()["reasons"]` counts every reason. Dedup
(on by default) rejects a row whose normalised text equals an earlier accepted row's.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import unicodedata
import uuid
import warnings
import weakref
from pathlib import Path
from typing import Any, Iterable

import datasets

from jaxdiv.errors import JaxdivError, JaxdivWarning
from jaxdiv.io import atomic_write_text

ACCEPTED = "accepted"
REJECTED = "rejected"
POOL_FILE = "pool.json"
ROWS_DIR = "rows"
LOCK_FILE = ".lock"


class PoolError(JaxdivError, ValueError):
    """A pool directory is inconsistent or a row is invalid (names the file/row)."""


class PoolWarning(JaxdivWarning):
    """A pool holds something odd but readable (a row stored twice); names the files."""


# directory -> [file descriptor holding the flock, Pool writers of this process using it]. flock
# excludes other processes; writers inside one process share the lock (their chunk names differ).
_LOCKS: dict[Path, list[int]] = {}


def _lock(directory: Path) -> Path:
    key = directory.resolve()
    if key in _LOCKS:
        _LOCKS[key][1] += 1
        return key
    descriptor = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise PoolError(f"another jaxdiv generate is writing {directory} (it holds "
                        f"{directory / LOCK_FILE}); wait for it to end or use another workdir") from None
    _LOCKS[key] = [descriptor, 1]
    return key


def _unlock(key: Path) -> None:
    held = _LOCKS[key]
    held[1] -= 1
    if held[1] == 0:
        os.close(held[0])  # closing the descriptor releases the flock
        del _LOCKS[key]


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
    # What the server reported about itself (OpenAI backend: model id, system_fingerprint),
    # beside the configured `generator` name a server may ignore. Absent from older pools.
    served: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.status not in (ACCEPTED, REJECTED):
            raise PoolError(f"row {self.row}: status {self.status!r} is not accepted/rejected")
        if self.status == REJECTED and not self.reason:
            raise PoolError(f"row {self.row}: a rejected row needs a reason")
        if self.status == ACCEPTED and (not self.text or self.parsed_label != self.intended_label):
            raise PoolError(f"row {self.row}: an accepted row needs a text and a parsed label equal "
                            f"to the intended one")


FIELDS = tuple(f.name for f in dataclasses.fields(PoolRow))
REQUIRED_FIELDS = tuple(f.name for f in dataclasses.fields(PoolRow)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
# The reason of a row whose request failed (the backend ran out of retries): stored so the
# chunk's finished rows are kept, but not done, so the next run asks again and stores the
# new copy in its place.
REQUEST_FAILED = "request_failed"


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
        self._chunk_of: dict[int, str] = {}  # row index -> the chunk file holding it
        self._failed: dict[int, dict[str, Any]] = {}  # rows whose request failed: to do again
        self._chunks = 0
        self._writer = uuid.uuid4().hex[:8]
        self._unlock = None
        for chunk in sorted((directory / ROWS_DIR).glob("chunk-*.jsonl")):
            self._absorb(self._read_chunk(chunk), chunk.name)
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
        (directory / ROWS_DIR).mkdir(parents=True, exist_ok=True)
        key = _lock(directory)  # before anything is read: another writer may be mid-way
        try:
            if path.is_file():
                existing = _read_meta(path)
                if existing != meta:
                    changed = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
                    raise PoolError(f"{directory} already holds a pool made with different settings "
                                    f"({changed}); use another directory or the same config to resume")
            else:
                atomic_write_text(path, json.dumps(meta, indent=2))
            pool = cls(directory, meta)
        except BaseException:
            _unlock(key)
            raise
        pool._unlock = weakref.finalize(pool, _unlock, key)
        return pool

    def close(self) -> None:
        """Release the writer's lock (also done when the pool is garbage collected)."""
        if self._unlock is not None:
            self._unlock()

    @classmethod
    def open(cls, directory: str | Path) -> "Pool":
        directory = Path(directory)
        path = directory / POOL_FILE
        if not path.is_file():
            raise PoolError(f"{directory} is not a pool directory (no {POOL_FILE})")
        return cls(directory, _read_meta(path))

    @classmethod
    def is_complete(cls, directory: str | Path, rows: int) -> bool:
        """Whether `directory` holds a pool of at least `rows` rows (else generating it creates or resumes it)."""
        return (Path(directory) / POOL_FILE).is_file() and len(cls.open(directory).done_rows()) >= rows

    def _read_chunk(self, path: Path) -> list[dict[str, Any]]:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise PoolError(f"{path}:{number}: not valid JSON ({err})") from err
            missing = [f for f in REQUIRED_FIELDS if f not in row]
            if missing:
                raise PoolError(f"{path}:{number}: row lacks fields {missing}")
            rows.append(row)
        return rows

    def _absorb(self, rows: list[dict[str, Any]], chunk: str) -> None:
        kept = []
        for row in rows:
            row.setdefault("served", {})
            if row["row"] in self._failed:  # a retried request: the new copy replaces the failed one
                self._rows.remove(self._failed.pop(row["row"]))
                del self._chunk_of[row["row"]]
            if row["row"] in self._chunk_of:
                warnings.warn(f"{self.directory}: row {row['row']} is stored twice (in "
                              f"{self._chunk_of[row['row']]} and {chunk}); keeping the first",
                              PoolWarning, stacklevel=3)
                continue
            self._chunk_of[row["row"]] = chunk
            if row["reason"].startswith(REQUEST_FAILED):
                self._failed[row["row"]] = row
            if row["status"] == ACCEPTED:
                self._seen.setdefault(normalise(row["text"]), row["id"])
            kept.append(row)
        self._rows.extend(kept)

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
        name = f"chunk-{self._chunks:06d}-{self._writer}.jsonl"
        atomic_write_text(self.directory / ROWS_DIR / name, lines)
        self._chunks += 1
        self._absorb([dataclasses.asdict(r) for r in stored], name)
        return stored

    # -- reading ------------------------------------------------------------------------------
    def done_rows(self) -> set[int]:
        """Rows stored for good (a failed request's row is stored but not done)."""
        return set(self._chunk_of) - set(self._failed)

    def failed_rows(self) -> list[int]:
        """Rows whose request failed: stored as rejected, asked for again by the next run."""
        return sorted(self._failed)

    def __len__(self) -> int:
        return len(self._rows)

    def rows(self) -> list[dict[str, Any]]:
        return sorted(self._rows, key=lambda r: r["row"])

    def counts(self) -> dict[str, Any]:
        """rows, accepted, rejected, and reasons: {rejection reason: rows} (`reasons()`)."""
        accepted = sum(r["status"] == ACCEPTED for r in self._rows)
        return {"rows": len(self._rows), "accepted": accepted, "rejected": len(self._rows) - accepted,
                "reasons": self.reasons()}

    def parse_failures(self) -> int:
        """Rejected rows whose output did not parse (no text, or a label outside the task's); rows
        a gate rejected parsed, and failed requests are not outputs at all."""
        labels = set(self.meta["label_names"])
        return sum(r["status"] != ACCEPTED and not r["reason"].startswith(REQUEST_FAILED)
                   and (not r["text"] or r["parsed_label"] not in labels) for r in self._rows)

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


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PoolError(f"{path} is damaged (not valid JSON: {err}); restore it or delete the pool "
                        f"folder to start over") from None


def _to_dataset(rows: list[dict[str, Any]], label_names: tuple[str, ...], with_label: bool
                ) -> datasets.Dataset:
    columns: dict[str, list] = {name: [] for name in FIELDS}
    for row in rows:
        for name in FIELDS:
            value = row[name]
            columns[name].append(json.dumps(value, sort_keys=True)
                                 if name in ("attributes", "sampling", "served") else value)
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
