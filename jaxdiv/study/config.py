"""The study config: one section per pipeline stage, plus the grid of cells to train."""

from __future__ import annotations

import dataclasses

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.data.tasks import TaskConfig
from jaxdiv.generate.config import GenerateConfig
from jaxdiv.mix.config import MixConfig
from jaxdiv.score.config import ScoreConfig
from jaxdiv.train.config import TrainJobConfig


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The cells: diversity levels x synthetic proportions x label budgets x seeds."""

    levels: tuple[int, ...] = param((0, 3, 6), help="diversity levels D0..D6 to generate a pool at")
    proportions: tuple[float, ...] = param((0.0, 0.25, 0.5, 1.0), help="synthetic proportions (see mix.protocol)")
    budgets: tuple[int, ...] = param((10, 50), help="real labelled rows per class (0: all of them)")
    seeds: tuple[int, ...] = param((0, 1, 2), help="training seeds (mixture draw, init, data order)")
    pool_rows: int = param(600, ge=1, help="rows generated per level (accepted + rejected)")

    def check(self) -> None:
        for name in ("levels", "proportions", "budgets", "seeds"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: needs at least one value")
        if any(not 0 <= level <= 6 for level in self.levels):
            raise ConfigError(f"levels: {self.levels} must lie in 0..6")
        if any(not 0.0 <= p <= 1.0 for p in self.proportions):
            raise ConfigError(f"proportions: {self.proportions} must lie in [0, 1]")
        if any(b < 0 for b in self.budgets):
            raise ConfigError(f"budgets: {self.budgets} must be >= 0 (0: all)")


# Keys of the stage sections that the study sets itself, from `task`, `grid`, `workdir`
# and `seed`. Setting them by hand would be silently overwritten, so it is an error.
STUDY_OWNED = {
    "generate": ("task", "workdir", "n", "seed"),
    "score": ("task", "real", "workdir"),
    "train": ("task", "workdir", "seed"),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """`jaxdiv run`: generate pools per level, score them, mix them with real budgets, fine-tune
    every cell, and report downstream quality against diversity, proportion and budget."""

    task: TaskConfig = section(TaskConfig)
    generate: GenerateConfig = section(GenerateConfig)
    score: ScoreConfig = section(ScoreConfig)
    mix: MixConfig = section(MixConfig)
    train: TrainJobConfig = section(TrainJobConfig)
    grid: GridConfig = section(GridConfig)
    train_group_size: int = param(8, ge=1, help="cells trained together in one vmapped program "
                                                "(memory grows with it: each holds its own params)")
    mixture_bootstrap: int = param(0, ge=0, help="half-samples for the CIs of each mixture's metrics "
                                                 "(pools always get score.bootstrap.samples)")
    workdir: str = param("runs/study", help="the study directory: pools, cells, results, report")
    seed: int = param(0, help="generation seed (training seeds are grid.seeds)")

    def check(self) -> None:
        for name, keys in STUDY_OWNED.items():
            stage, default = getattr(self, name), type(getattr(self, name))()
            for key in keys:
                if getattr(stage, key) != getattr(default, key):
                    raise ConfigError(f"{name}.{key}: set by the study (from task, grid.pool_rows, "
                                      f"workdir or seed); leave it at its default")
