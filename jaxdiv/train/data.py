"""Input pipeline: (text, label) rows -> fixed-shape token arrays -> globally sharded batches.

Order is a pure function of (seed, step): example p of the infinite stream is row
`perm(seed, p // n)[p % n]`, a fresh permutation each epoch. So the data position is just
the step number, a resumed run sees exactly the batches it would have seen, and every host
derives the same global batch and loads only its own rows
(`jax.make_array_from_process_local_data`).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Iterable, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from jaxdiv.data.tasks import TaskError, load_table


class DataError(TaskError):
    """Training rows are malformed. The message names the row and what is wrong."""


@dataclasses.dataclass(frozen=True)
class EncodedRows:
    """Tokenised examples: int32 arrays with one row per example."""

    input_ids: np.ndarray  # (n, length)
    attention_mask: np.ndarray  # (n, length)
    labels: np.ndarray  # (n,)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> dict[str, np.ndarray]:
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index],
                "labels": self.labels[index]}


def read_rows(source: Any, label_names: Sequence[str] | None = None, *, what: str = "rows"
              ) -> tuple[list[str], list[int], tuple[str, ...]]:
    """(texts, label ids, label names) from a `datasets.Dataset`, a list of dicts, or a
    CSV / JSONL / parquet file, each with `text` and `label` columns.

    Labels may be ids (a `ClassLabel` column, or ints with `label_names` given) or strings
    (mapped through `label_names`, or the sorted set found). Blank texts, unknown labels and
    missing columns raise DataError naming the row.
    """
    import datasets

    if isinstance(source, (str, Path)):
        source, what = load_table(source, DataError), str(source)
    if isinstance(source, datasets.Dataset):
        feature = source.features.get("label")
        if label_names is None and isinstance(feature, datasets.ClassLabel):
            label_names = tuple(feature.names)
        missing = [c for c in ("text", "label") if c not in source.column_names]
        if missing:
            raise DataError(f"{what}: missing column(s) {missing}; it has {source.column_names}")
        texts, labels = list(source["text"]), list(source["label"])
    else:
        source = list(source)
        for index, row in enumerate(source):
            if "text" not in row or "label" not in row:
                raise DataError(f"{what}: row {index} lacks 'text' or 'label': {row!r:.120}")
        texts, labels = [r["text"] for r in source], [r["label"] for r in source]
    if not texts:
        raise DataError(f"{what}: no rows")
    if label_names is None:
        if not all(isinstance(v, str) for v in labels):
            raise DataError(f"{what}: integer labels need label_names (or a ClassLabel column)")
        label_names = tuple(sorted(set(labels)))
    label_names = tuple(label_names)
    ids = []
    for index, (text, label) in enumerate(zip(texts, labels)):
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{what}: row {index} has a blank or non-string text {text!r:.60}")
        if isinstance(label, str):
            if label not in label_names:
                raise DataError(f"{what}: row {index} has label {label!r}, not one of {list(label_names)}")
            label = label_names.index(label)
        if not isinstance(label, (int, np.integer)) or not 0 <= label < len(label_names):
            raise DataError(f"{what}: row {index} has label {label!r}, outside 0..{len(label_names) - 1}")
        ids.append(int(label))
    return [str(t) for t in texts], ids, label_names


def encode_rows(tokenizer, texts: Sequence[str], labels: Sequence[int], max_length: int) -> EncodedRows:
    from jaxdiv.models.bert import encode_texts

    tokens = encode_texts(tokenizer, texts, max_length)
    return EncodedRows(tokens["input_ids"], tokens["attention_mask"], np.asarray(labels, np.int32))


def trim_padding(rows: Sequence[EncodedRows], multiple: int = 8) -> list[EncodedRows]:
    """The rows cut to their longest example (rounded up to `multiple`, never past the encoded
    length): padding columns no example uses only add work, and logits do not depend on them."""
    longest = max(int(r.attention_mask.sum(1).max(initial=1)) for r in rows)
    width = min(-(-longest // multiple) * multiple, rows[0].input_ids.shape[1])
    return [EncodedRows(r.input_ids[:, :width], r.attention_mask[:, :width], r.labels) for r in rows]


@functools.lru_cache(maxsize=8)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
    """Row indices of the global batch at `step`: positions step*B .. step*B+B-1 of the stream."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs = positions // n
    out = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        where = epochs == epoch
        out[where] = _epoch_order(seed, int(epoch), n)[positions[where] % n]
    return out


def local_block(sharding: NamedSharding, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The block of a global array that this process's devices hold (contiguous per dimension,
    as on meshes built from `jax.devices()` in process order)."""
    indices = list(sharding.addressable_devices_indices_map(shape).values())
    block = []
    for dim, size in enumerate(shape):
        spans = [index[dim] for index in indices]
        block.append(slice(min(s.start or 0 for s in spans),
                           max(size if s.stop is None else s.stop for s in spans)))
    return tuple(block)


def global_batch(arrays: dict[str, np.ndarray], shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
    """Global arrays from the full host-side batch, each process contributing only its block."""
    return {name: jax.make_array_from_process_local_data(
                shardings[name], value[local_block(shardings[name], value.shape)], value.shape)
            for name, value in arrays.items()}


def eval_batches(rows: EncodedRows, batch_size: int) -> Iterable[dict[str, np.ndarray]]:
    """Fixed-size batches in order; the last is padded with weight-0 copies of row 0."""
    for start in range(0, len(rows), batch_size):
        index = np.arange(start, min(start + batch_size, len(rows)))
        weight = np.ones(batch_size, np.float32)
        weight[len(index):] = 0.0
        index = np.concatenate([index, np.zeros(batch_size - len(index), np.int64)])
        yield {**rows.take(index), "weights": weight}
