"""The study config: one section per pipeline stage, plus the grid of cells to train."""

from __future__ import annotations

import dataclasses

from jaxdiv.configlib import ConfigError, param, section
from jaxdiv.data.tasks import TASKS, TaskConfig
from jaxdiv.generate.config import GenerateConfig
from jaxdiv.mix.config import PROTOCOLS, MixConfig
from jaxdiv.report.config import ReportConfig
from jaxdiv.score.config import ScoreConfig
from jaxdiv.train.config import SFTConfig, TrainConfig


MECHANISMS = ("prompt", "select")
SHORT_POOLS = ("error", "shrink")


@dataclasses.dataclass(frozen=True)
class GridConfig:
    """The cells: diversity levels x synthetic proportions x label budgets x real subsets x
    generation seeds x protocols x training seeds.

    Levels that are compared share (budget, real subset, generation seed) and hold the same
    number of synthetic rows per class: round(max(proportions) x budget) (x the class's real
    rows for budget 0). A pool short of that many accepted rows in some class is generated
    further, up to max_pool_rows; past it, short_pools decides."""

    mechanisms: tuple[str, ...] = param(("prompt",), help="how levels differ in diversity. prompt: one "
                                        "pool per level D0..D6 of the generate recipe (levels); select: "
                                        "subsets S0, S1, ... of one large pool at select_level, selected to "
                                        "set diversities (select_positions) at equal n and named by their "
                                        "measured vendi_q1 (S0 lowest). Both: two diversity axes in one study")
    levels: tuple[int, ...] = param((0, 3, 6), help="prompt mechanism: diversity levels D0..D6 to generate "
                                    "a pool at")
    select_level: int = param(6, ge=0, le=6, help="select mechanism: the recipe level of the large pool "
                              "the subsets are selected from")
    select_pool_rows: int = param(1200, ge=1, help="select mechanism: rows planned for the large pool "
                                  "(accepted + rejected; extended like any pool while a class is short)")
    select_positions: tuple[float, ...] = param((0.0, 0.5, 1.0), help="select mechanism: one subset per "
                                                "value, each class's rows selected to the diversity at "
                                                "that position of what its subsets can reach (0: its "
                                                "tightest cluster, 1: its farthest-point spread)")
    proportions: tuple[float, ...] = param((0.0, 0.25, 0.5, 1.0), help="synthetic proportions (see "
                                           "protocols); 0: the real-only baseline, trained once per "
                                           "(budget, subset, seed) and reported once, as level real-only")
    budgets: tuple[int, ...] = param((10, 50), help="real labelled rows per class (0: all of them); "
                                     "a pool's few-shot demonstrations come from its cell's budget rows")
    subsets: tuple[int, ...] = param((0,), help="real-subset seeds: which real rows make up each budget "
                                     "(jaxdiv.data.tasks.budget_rows), for the cells and their pools' "
                                     "demonstrations alike")
    generation_seeds: tuple[int, ...] = param((0,), help="generation seeds: independent pools (replicates) "
                                              "per level, budget and subset")
    protocols: tuple[str, ...] = param(("fixed_total",), help="fixed_total: round(p x b) synthetic rows "
                                       "replace real ones in a set of b per class; added: all b real rows "
                                       "plus round(p x b) synthetic ones")
    seeds: tuple[int, ...] = param((0, 1, 2), help="training seeds (synthetic row order, init, data order)")
    pool_rows: int = param(600, ge=1, help="prompt mechanism: rows first planned per pool (accepted + "
                           "rejected); extended while a class is short of accepted rows")
    max_pool_rows: int = param(2400, ge=1, help="cap on a pool's rows when it is extended for short "
                               "classes (the paraphrase recipe's row plans depend on n: its pools are "
                               "never extended)")
    short_pools: str = param("error", help="a pool still short of a class's rows at max_pool_rows: error "
                             "(names budget, subset, generation seed, level and class) or shrink (every "
                             "level of that comparison takes the smallest per-class count; recorded in "
                             "the results' fallback column and the pools table)")

    def check(self) -> None:
        for name in ("mechanisms", "proportions", "budgets", "seeds", "subsets", "generation_seeds",
                     "protocols"):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values):
                raise ConfigError(f"{name}: needs at least one value, without repeats (got {values})")
        if unknown := [m for m in self.mechanisms if m not in MECHANISMS]:
            raise ConfigError(f"mechanisms: unknown {unknown} (known: {MECHANISMS})")
        if unknown := [p for p in self.protocols if p not in PROTOCOLS]:
            raise ConfigError(f"protocols: unknown {unknown} (known: {PROTOCOLS})")
        if self.short_pools not in SHORT_POOLS:
            raise ConfigError(f"short_pools: {self.short_pools!r} is not one of {SHORT_POOLS}")
        if "prompt" in self.mechanisms and not self.levels:
            raise ConfigError("levels: the prompt mechanism needs at least one level")
        if any(not 0 <= level <= 6 for level in self.levels):
            raise ConfigError(f"levels: {self.levels} must lie in 0..6")
        if "select" in self.mechanisms and (len(self.select_positions) < 2 or any(
                not 0.0 <= p <= 1.0 for p in self.select_positions)):
            raise ConfigError(f"select_positions: {self.select_positions} needs two or more values in [0, 1]")
        if any(not 0.0 <= p <= 1.0 for p in self.proportions):
            raise ConfigError(f"proportions: {self.proportions} must lie in [0, 1]")
        if any(b < 0 for b in self.budgets):
            raise ConfigError(f"budgets: {self.budgets} must be >= 0 (0: all)")
        planned = max([self.pool_rows] + [self.select_pool_rows] * ("select" in self.mechanisms))
        if self.max_pool_rows < planned:
            raise ConfigError(f"max_pool_rows: {self.max_pool_rows} is below the rows first planned ({planned})")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """`jaxdiv run`: generate pools per level, score them, mix them with real budgets, fine-tune
    every cell, and report downstream quality against diversity, proportion and budget. The stage
    sections hold only their stage's settings; the study passes each stage the task, its workdir
    and the grid's values (rows, seeds, budget, subset) itself."""

    task: TaskConfig = section(TaskConfig)
    generate: GenerateConfig = section(GenerateConfig)
    score: ScoreConfig = section(ScoreConfig)
    mix: MixConfig = section(MixConfig)
    train: TrainConfig = section(TrainConfig)
    grid: GridConfig = section(GridConfig)
    report: ReportConfig = section(ReportConfig)
    test_domains: tuple[str, ...] = param((), help="registered tasks whose test splits every cell is also "
                                                   "evaluated on (accuracy_<task> columns; accuracy_id: "
                                                   "the training task's, accuracy_ood: the mean of the "
                                                   "others); their label names must equal the task's")
    train_group_size: int = param(8, ge=1, help="cells trained together in one vmapped program "
                                                "(memory grows with it: each holds its own params)")
    mixture_bootstrap: int = param(0, ge=0, help="half-samples for the CIs of each mixture's metrics "
                                                 "(pools always get score.bootstrap.samples)")
    workdir: str = param("runs/study", help="the study directory: pools, cells, results, report")

    def check(self) -> None:
        if unknown := [d for d in self.test_domains if d not in TASKS]:
            raise ConfigError(f"test_domains: {unknown} are not registered tasks ({sorted(TASKS)})")


# ---------------------------------------------------------------------------
# The iterative self-consumption (model-collapse) experiment: `jaxdiv run` on a SelfConsumeConfig.

CHAINS = ("replace", "mix_real")


@dataclasses.dataclass(frozen=True)
class ChainsConfig:
    """Rounds and chains: round t generates a pool with G_t; G_{t+1} is G_t fine-tuned on it."""

    rounds: int = param(3, ge=1, help="rounds t = 0..rounds-1 (G_0: generate.jax.model; the last "
                                      "round's pool is scored and trained on but not fine-tuned on)")
    chains: tuple[str, ...] = param(CHAINS, help="replace: G_{t+1} = G_t fine-tuned on its own accepted "
                                                 "round-t rows only; mix_real: plus real training rows "
                                                 "(real_fraction of the SFT rows)")
    real_fraction: float = param(0.5, ge=0.0, lt=1.0, help="mix_real: share of each round's SFT rows that "
                                 "are real training rows, written as completions of the round's prompts")
    real_in_classifier: bool = param(False, help="mix_real: also add those real rows to the round's "
                                                 "classifier training set (false: synthetic rows only)")
    pool_rows: int = param(96, ge=2, help="rows generated per round and chain (accepted + rejected)")
    seeds: tuple[int, ...] = param((0, 1), help="classifier training seeds, trained together (vmapped)")
    sft_eval_rows: int = param(32, ge=1, help="real validation rows, written as completions of round-0 "
                               "prompts: the SFT's held-out loss, the same set in every round and chain")

    def check(self) -> None:
        if not self.chains or len(set(self.chains)) != len(self.chains):
            raise ConfigError(f"chains: needs distinct values from {CHAINS}, got {self.chains}")
        if unknown := [c for c in self.chains if c not in CHAINS]:
            raise ConfigError(f"chains: unknown {unknown} (known: {CHAINS})")
        if not self.seeds:
            raise ConfigError("seeds: needs at least one value")


# Stage settings the experiment sets per round (G_t is the generator and the SFT's checkpoint, a
# local one, so the backend is jax; the SFT rows are the round's pool rows, after the system turn
# every pool prompt came after); leave them at their defaults.
SET_PER_ROUND = {
    "generate": ("backend",),
    "sft.model": ("checkpoint", "pretrained"),
    "sft.data": ("path", "system_prompt"),
}


@dataclasses.dataclass(frozen=True)
class SelfConsumeConfig:
    """`jaxdiv run` of the self-consumption experiment: per chain and round, generate a pool with
    G_t, score it, train classifiers on it, and fine-tune G_t on it into G_{t+1}."""

    task: TaskConfig = section(TaskConfig)
    generate: GenerateConfig = section(GenerateConfig)
    score: ScoreConfig = section(ScoreConfig)
    train: TrainConfig = section(TrainConfig)
    sft: SFTConfig = section(SFTConfig)
    chains: ChainsConfig = section(ChainsConfig)
    workdir: str = param("runs/self_consume", help="the experiment directory: generators, pools, "
                                                   "cells, results, report")
    seed: int = param(0, help="generation and SFT seed: every round plans the same prompts with the "
                              "same row seeds, so rounds differ only by their generator")

    def check(self) -> None:
        for name, keys in SET_PER_ROUND.items():
            stage = self
            for part in name.split("."):
                stage = getattr(stage, part)
            default = type(stage)()
            for key in keys:
                if getattr(stage, key) != getattr(default, key):
                    raise ConfigError(f"{name}.{key}: set by the experiment (per round); leave it at "
                                      f"its default")
