"""Read a pool to score: a generated-pool directory, parquet, JSONL / JSON, CSV, or a `datasets` directory.

- A generated-pool directory (`jaxdiv.data.pool`, with its `pool.json`): its accepted rows are
  scored with their labels; every other row counts as rejected (`rejected_share`), and those
  whose output gave no text, or a label outside the task's, as parse failures.
  Every rejection reason is counted too (`rejections`, from `Pool.reasons()`).
- Any other table with a text column (and optionally a label column): a row *failed to parse*
  when its text is missing or blank, or when the table has a `parse_error_column` and that
  row's value there is non-empty.
Left-out rows are counted (rejected_share, parse_failure_share) and not scored, never silently
dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets

from jaxdiv.data.pool import ACCEPTED, POOL_FILE, Pool, PoolError
from jaxdiv.data.tasks import TABLE_BUILDERS, load_table


@dataclasses.dataclass
class PoolRows:
    source: str
    texts: list[str]            # the rows that parsed
    labels: list[str] | None    # their labels as strings (None: the pool has no label column)
    total_rows: int             # all rows, the rows left out included
    parse_failure_rows: int | None = None  # None: every row left out failed to parse
    rejections: dict[str, int] = dataclasses.field(default_factory=dict)  # generated pools: reason -> rows

    @property
    def rejected(self) -> int:
        return self.total_rows - len(self.texts)

    @property
    def parse_failures(self) -> int:
        return self.rejected if self.parse_failure_rows is None else self.parse_failure_rows


def _open(path: Path) -> datasets.Dataset:
    if path.is_dir():
        try:
            table = datasets.load_from_disk(str(path))
        except Exception as err:  # not a saved Dataset / DatasetDict
            raise PoolError(f"{path}: not a `datasets` directory ({err})") from err
        if isinstance(table, datasets.DatasetDict):
            if len(table) != 1:
                raise PoolError(f"{path}: a DatasetDict with splits {list(table)}; pass one split's folder")
            table = next(iter(table.values()))
        return table
    if path.suffix.lower() not in TABLE_BUILDERS:
        raise PoolError(f"{path}: unsupported pool file type {path.suffix!r} "
                        f"(use .parquet, .jsonl, .json, .csv or a `datasets` directory)")
    return load_table(path, PoolError)


def read_pool(path: str | Path, text_column: str = "text", label_column: str = "label",
              parse_error_column: str = "parse_error") -> PoolRows:
    path = Path(path).expanduser()
    if not path.exists():
        raise PoolError(f"pool {path} does not exist")
    if (path / POOL_FILE).is_file():
        return _read_generated_pool(path)
    table = _open(path)
    if text_column not in table.column_names:
        raise PoolError(f"{path}: no text column {text_column!r}; it has {table.column_names}")
    raw_texts = table[text_column]
    errors = table[parse_error_column] if parse_error_column in table.column_names else [None] * len(raw_texts)
    raw_labels = table[label_column] if label_column and label_column in table.column_names else None
    texts, labels = [], []
    for row, (text, error) in enumerate(zip(raw_texts, errors)):
        if text is None or not str(text).strip() or error:
            continue
        if raw_labels is not None:
            if raw_labels[row] is None or str(raw_labels[row]).strip() == "":
                raise PoolError(f"{path}: row {row} has text but no {label_column!r}")
            labels.append(str(raw_labels[row]))
        texts.append(str(text))
    return PoolRows(str(path), texts, labels if raw_labels is not None else None, len(raw_texts))


def _read_generated_pool(path: Path) -> PoolRows:
    pool = Pool.open(path)
    rows = pool.rows()
    accepted = [r for r in rows if r["status"] == ACCEPTED]
    return PoolRows(str(path), [r["text"] for r in accepted], [r["intended_label"] for r in accepted],
                    len(rows), pool.parse_failures(), pool.reasons())
