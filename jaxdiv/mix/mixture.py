"""Class-balanced, seeded mixtures of real and synthetic rows (levanter-style determinism).

Protocols, per class, for a label budget b and a synthetic proportion p (`Cell.protocol`):
  fixed_total: the set holds b rows, round(p * b) synthetic replacing real ones
               (p = 0: b real rows; p = 1: b synthetic rows).
  added:       all b real rows are kept and round(p * b) synthetic rows are added
               (p is the synthetic amount relative to the real budget; p = 1 doubles it).

Real rows are the cell's real subset: the first rows of each class in the order of
`budget_rows(..., seed=cell.subset)`, the same rows a generator serving the cell may see.
Synthetic rows are ordered by sha256(training seed, source, row id). A mixture thus depends
only on the seeds and the row ids, never on file order, and smaller budgets are subsets of
larger ones at the same seeds (budgets nest; so do proportions' synthetic parts). Every
mixture records exactly which real and synthetic row ids it holds.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from jaxdiv.data.tasks import TaskError, budget_rows
from jaxdiv.io import atomic_path, atomic_write_text
from jaxdiv.mix.config import PROTOCOLS, MixConfig, Protocol
from jaxdiv.errors import JaxdivError

SOURCES = ("real", "synthetic")


class MixtureError(JaxdivError, ValueError):
    """A mixture cannot be built as asked. The message names the cell and the class."""


@dataclasses.dataclass(frozen=True)
class Cell:
    """The coordinates of one training set in the study grid."""

    budget: int | None  # real labels per class; None = all
    proportion: float
    seed: int  # training seed: orders the synthetic rows (and the model's init and data order)
    subset: int = 0  # real-subset seed: which real rows make up the budget
    protocol: Protocol = "fixed_total"
    # At most this many synthetic rows per class (label id order): a study's short-pool fallback
    # (grid.short_pools=shrink). Under fixed_total, real rows fill the rest of the budget.
    synthetic_cap: tuple[int, ...] | None = None

    def name(self) -> str:
        budget = "all" if self.budget is None else self.budget
        return f"b{budget}-r{self.subset}-p{self.proportion:g}-s{self.seed}-{self.protocol}"


@dataclasses.dataclass
class Mixture:
    rows: datasets.Dataset  # id, text, label, source
    cell: Cell
    counts: dict[str, dict[str, int]]  # {source: {label name: rows}}
    shortfalls: list[str]  # classes that got fewer rows than asked (only with allow_short_classes)

    def ids(self, source: str) -> list[str]:
        return [i for i, s in zip(self.rows["id"], self.rows["source"]) if s == source]

    def manifest(self) -> dict:
        return {"cell": dataclasses.asdict(self.cell), "counts": self.counts,
                "shortfalls": self.shortfalls, "real_ids": self.ids("real"),
                "synthetic_ids": self.ids("synthetic")}

    def save(self, directory: str | Path) -> Path:
        """Parquet rows plus a JSON manifest, written atomically as one folder."""
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            pq.write_table(self.rows.data.table, tmp / "rows.parquet")
            atomic_write_text(tmp / "manifest.json", json.dumps(self.manifest(), indent=1))
        return directory


def build_mixture(real: datasets.Dataset, synthetic: datasets.Dataset, label_names: tuple[str, ...],
                  cell: Cell, cfg: MixConfig = MixConfig()) -> Mixture:
    """Build the training set of one cell. `real` and `synthetic` have id, text, label columns.

    Synthetic rows must already be the accepted, correctly parsed ones (the pool store's
    `accepted()`); labels are ids into `label_names`.
    """
    for name, table in (("real", real), ("synthetic", synthetic)):
        missing = {"id", "text", "label"} - set(table.column_names)
        if missing:
            raise MixtureError(f"cell {cell.name()}: {name} rows lack columns {sorted(missing)}")
    if not 0.0 <= cell.proportion <= 1.0:
        raise MixtureError(f"cell {cell.name()}: proportion {cell.proportion} is outside [0, 1]")
    if cell.budget is not None and cell.budget < 1:
        raise MixtureError(f"cell {cell.name()}: budget must be >= 1 or None (all)")
    if cell.protocol not in PROTOCOLS:
        raise MixtureError(f"cell {cell.name()}: protocol {cell.protocol!r} is not one of {PROTOCOLS}")
    if cell.synthetic_cap is not None and len(cell.synthetic_cap) != len(label_names):
        raise MixtureError(f"cell {cell.name()}: synthetic_cap needs one value per class "
                           f"({len(label_names)}), got {len(cell.synthetic_cap)}")
    try:  # every class's rows in seeded order: a class's first k rows are its k-row budget
        groups = {source: budget_rows(table, len(label_names), None, seed, source)
                  for source, table, seed in (("real", real, cell.subset), ("synthetic", synthetic, cell.seed))}
    except TaskError as error:
        raise MixtureError(f"cell {cell.name()}: {error}") from None
    chosen: dict[str, list[int]] = {"real": [], "synthetic": []}
    counts: dict[str, dict[str, int]] = {s: {} for s in SOURCES}
    shortfalls: list[str] = []
    for label, label_name in enumerate(label_names):
        available_real = len(groups["real"].get(label, []))
        budget = available_real if cell.budget is None else cell.budget
        n_synthetic = round(cell.proportion * budget)
        if cell.synthetic_cap is not None:
            n_synthetic = min(n_synthetic, cell.synthetic_cap[label])
        n_real = budget - n_synthetic if cell.protocol == "fixed_total" else budget
        for source, want in (("real", n_real), ("synthetic", n_synthetic)):
            pool = groups[source].get(label, [])
            if len(pool) < want:
                message = (f"cell {cell.name()}: class {label_name!r} needs {want} {source} rows, "
                           f"only {len(pool)} exist")
                if not cfg.allow_short_classes:
                    raise MixtureError(message + " (set mix.allow_short_classes=true to take what "
                                                 "there is)")
                shortfalls.append(message)
            picked = pool[:want]
            chosen[source] += picked
            counts[source][label_name] = len(picked)
    columns: dict[str, list] = {"id": [], "text": [], "label": [], "source": []}
    for source, table in (("real", real), ("synthetic", synthetic)):
        picked = sorted(chosen[source])
        subset = table.select(picked) if picked else None
        for name in ("id", "text", "label"):
            columns[name] += [] if subset is None else [int(v) if name == "label" else v for v in subset[name]]
        columns["source"] += [source] * len(picked)
    rows = datasets.Dataset.from_dict(columns, features=datasets.Features({
        "id": datasets.Value("string"), "text": datasets.Value("string"),
        "label": datasets.ClassLabel(names=list(label_names)), "source": datasets.Value("string")}))
    if rows.num_rows == 0:
        raise MixtureError(f"cell {cell.name()}: the mixture is empty")
    return Mixture(rows=rows, cell=cell, counts=counts, shortfalls=shortfalls)
