"""Read a pool to score: a generated-pool directory, parquet, JSONL / JSON, CSV, or a `datasets` directory.

- A generated-pool directory (`jaxdiv.data.pool`, with its `pool.json`): its accepted rows are
  scored with their labels; every rejection reason is counted (`rejections`, from
  `Pool.reasons()`); rows rejected for a reason other than a duplicate or a quality gate
  (`jaxdiv.generate.gates.GATE_REASONS`) count as parse failures.
- Any other table with a text column (and optionally a label column): a row *failed to parse*
  when its text is missing or blank, or when the table has a `parse_error_column` and that
  row's value there is non-empty.
Failed rows are counted (parse_failure_share) and not scored, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import datasets

from jaxdiv.data.pool import ACCEPTED, POOL_FILE, Pool, PoolError


@dataclasses.dataclass
class PoolRows:
    source: str
    texts: list[str]            # the rows that parsed
    labels: list[str] | None    # their labels as strings (None: the pool has no label column)
    total_rows: int             # all rows, parse failures included
    rejections: dict[str, int] = dataclasses.field(default_factory=dict)  # generated pools: reason -> rows

    @property
    def parse_failures(self) -> int:
        return self.total_rows - len(self.texts)


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
    builder = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}.get(path.suffix.lower())
    if builder is None:
        raise PoolError(f"{path}: unsupported pool file type {path.suffix!r} "
                        f"(use .parquet, .jsonl, .json, .csv or a `datasets` directory)")
    if path.stat().st_size == 0:
        raise PoolError(f"{path} is empty")
    try:
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # the loaders raise several kinds for a malformed file
        raise PoolError(f"{path}: could not be read as {builder}: {err}") from err


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
    from jaxdiv.generate.gates import GATE_REASONS

    pool = Pool.open(path)
    accepted = [r for r in pool.rows() if r["status"] == ACCEPTED]
    rejections = pool.reasons()
    failed = sum(n for reason, n in rejections.items() if reason != "duplicate" and reason not in GATE_REASONS)
    return PoolRows(str(path), [r["text"] for r in accepted], [r["intended_label"] for r in accepted],
                    len(accepted) + failed, rejections)
