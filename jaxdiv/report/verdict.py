"""Verdicts from measurements: levels ranked by a measured diversity metric, paired comparisons,
the budget interaction, trends within each budget × proportion, and the ID/OOD claim.

Tables (see jaxdiv.study.runner): results has one row per trained cell; real-only cells have
mechanism "real" and level "real-only" and are one set per (budget, subset, seed); synthetic
cells carry the pool (and its gen_seed) they drew from. Pairs share (budget, subset, seed,
gen_seed) when both sides have a pool, (budget, subset, seed) against the real-only baseline.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from jaxdiv.errors import JaxdivError
from jaxdiv.report.config import ReportConfig
from jaxdiv.report.stats import MIN_PAIRS, PairedComparison, bootstrap_trend, budget_trend, paired_bootstrap

REAL = "real"
# The arm of a synthetic cell: cells of one arm differ only in level, budget and replicate.
ARM = ("mechanism", "protocol", "label_probe", "proportion")
BASELINE_KEYS = ("budget", "subset", "seed")
PAIR_KEYS = BASELINE_KEYS + ("gen_seed",)

MODERATE_RULE = ("Levels are ranked by the mean of `{metric}` over their pool replicates (pools.parquet). "
                 "Only levels whose mean `{shift}` lies within {tolerance:g} of the lowest level's enter the "
                 "verdict (minimal shift). Among those k levels, in measured order: low = the lowest, "
                 "high = the highest, moderate = the median rank (position ⌊(k−1)/2⌋ from the lowest; with "
                 "k < 3 there is no moderate level and the claim is not testable).")


class ReportError(JaxdivError, ValueError):
    """The study directory cannot be reported on; the message says what is missing."""


def normalise_results(frame: pd.DataFrame) -> pd.DataFrame:
    """Fill the columns a table written before replicates and mechanisms existed lacks: a cell with
    proportion 0 is real-only, one real subset (0), one pool replicate (0), protocol fixed_total."""
    frame = frame.copy()
    if "mechanism" not in frame:
        frame["mechanism"] = np.where(frame["proportion"] == 0, REAL, "prompt")
    frame.loc[frame["mechanism"] == REAL, "level"] = "real-only"
    defaults = {"subset": 0, "gen_seed": 0, "protocol": "fixed_total", "label_probe": "", "label_leak": False,
                "fallback": ""}
    for column, value in defaults.items():
        if column not in frame:
            frame[column] = value
    frame["gen_seed"] = frame["gen_seed"].astype("Float64").where(frame["mechanism"] != REAL)
    frame["label_probe"] = frame["label_probe"].fillna("").astype(str)
    frame["fallback"] = frame["fallback"].fillna("").astype(str)
    return frame


def rows_of_budget(frame: pd.DataFrame, budget) -> pd.DataFrame:
    """The rows of one budget; a missing budget (all labels) matches missing budgets."""
    return frame[frame["budget"].isna()] if pd.isna(budget) else frame[frame["budget"].eq(budget).fillna(False)]


def status_text(part: pd.DataFrame) -> str:
    """Protocol and leak / oracle status of a set of cells: every title carries it."""
    protocols = ", ".join(sorted(set(part["protocol"].dropna().astype(str)) - {""})) or "–"
    leak = "LABEL LEAK" if part["label_leak"].fillna(False).astype(bool).any() else "no label leak"
    probes = sorted(set(part["label_probe"]) - {""})
    probe = ("ORACLE label filter (uses labels the cells lack)" if "oracle" in probes
             else f"label filter: {', '.join(probes)}" if probes else "no label filter")
    return f"protocol {protocols} · {leak} · {probe}"


# ---------------------------------------------------------------------------
# Levels ranked by measurement.

@dataclasses.dataclass
class LevelRanking:
    mechanism: str
    table: pd.DataFrame  # one row per level, measured order: pools, accepted, metric means, qualifies
    qualified: list[str]
    low: str | None
    moderate: str | None
    high: str | None

    @property
    def order(self) -> list[str]:
        return list(self.table["level"])


def rank_levels(pools: pd.DataFrame, mechanism: str, cfg: ReportConfig) -> LevelRanking:
    """Rank one mechanism's levels by the mean headline metric over pool replicates; qualify the
    levels within the shift tolerance of the lowest; name low, moderate and high among those."""
    for column in (cfg.diversity_metric, cfg.shift_metric):
        if column not in pools:
            raise ReportError(f"pools.parquet lacks column {column!r} (report.diversity_metric / "
                              f"report.shift_metric); it has {sorted(pools.columns)}")
    part = pools[pools["mechanism"] == mechanism] if "mechanism" in pools else pools
    quality = cfg.quality_metric if cfg.quality_metric in part else None
    scored = next((c for c in ("used_rows", "accepted") if c in part), None)
    grouped = part.groupby("level")
    table = pd.DataFrame({
        "pools": grouped.size(),
        # the rows each pool's metrics were measured on: equal n within a comparison
        "rows scored": grouped[scored].agg(lambda s: f"{s.min()}–{s.max()}" if s.min() != s.max() else f"{s.min()}")
        if scored else "",
        cfg.diversity_metric: grouped[cfg.diversity_metric].mean(),
        cfg.shift_metric: grouped[cfg.shift_metric].mean(),
        **({quality: grouped[quality].mean()} if quality else {}),
    }).reset_index().sort_values([cfg.diversity_metric, "level"]).reset_index(drop=True)
    lowest_shift = table[cfg.shift_metric].min()
    table["minimal shift"] = table[cfg.shift_metric] <= lowest_shift + cfg.shift_tolerance
    qualified = list(table.loc[table["minimal shift"], "level"])
    k = len(qualified)
    moderate = qualified[(k - 1) // 2] if k >= 3 else None
    table["role"] = [{qualified[0]: "low", qualified[-1]: "high", moderate: "moderate"}.get(level, "")
                     if k >= 2 else "" for level in table["level"]]
    return LevelRanking(mechanism, table, qualified, qualified[0] if k >= 2 else None, moderate,
                        qualified[-1] if k >= 2 else None)


# ---------------------------------------------------------------------------
# Paired comparisons.

def baseline(frame: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The real-only cells, one value per (budget, subset, seed)."""
    real = frame[frame["mechanism"] == REAL]
    return real.groupby(list(BASELINE_KEYS), dropna=False)[metric].mean().reset_index()


def pair(left: pd.DataFrame, right: pd.DataFrame, keys: tuple[str, ...], metric: str
         ) -> tuple[np.ndarray, np.ndarray]:
    """Values of `metric` aligned on `keys` (inner join: a pair needs both sides)."""
    merged = left[list(keys) + [metric]].merge(right[list(keys) + [metric]], on=list(keys), suffixes=("_a", "_b"))
    return merged[f"{metric}_a"].to_numpy(np.float64), merged[f"{metric}_b"].to_numpy(np.float64)


def compare(cells: pd.DataFrame, a_level: str, b_level: str | None, base: pd.DataFrame, metric: str,
            cfg: ReportConfig, seed_offset: int) -> PairedComparison:
    """a_level − b_level within one arm and budget (b_level None: − the real-only baseline)."""
    left = cells[cells["level"] == a_level]
    if b_level is None:
        a, b = pair(left, base, BASELINE_KEYS, metric)
    else:
        a, b = pair(left, cells[cells["level"] == b_level], PAIR_KEYS, metric)
    return paired_bootstrap(a, b, seed=cfg.seed + seed_offset, resamples=cfg.resamples, confidence=cfg.confidence)


def _arms(frame: pd.DataFrame) -> list[tuple]:
    synthetic = frame[(frame["mechanism"] != REAL) & (frame["proportion"] > 0)]
    return sorted(synthetic.groupby(list(ARM), dropna=False).groups, key=str)


def _arm_cells(frame: pd.DataFrame, arm: tuple) -> pd.DataFrame:
    mask = np.ones(len(frame), bool)
    for column, value in zip(ARM, arm):
        mask &= (frame[column] == value).to_numpy()
    return frame[mask]


def arm_label(arm: tuple) -> str:
    mechanism, protocol, probe, proportion = arm
    return (f"{mechanism} · {protocol} · synthetic {proportion:.0%}"
            + (f" · {'ORACLE ' if probe == 'oracle' else ''}label filter {probe}" if probe and probe != "off" else ""))


def comparisons(frame: pd.DataFrame, rankings: dict[str, LevelRanking], metric: str, cfg: ReportConfig
                ) -> pd.DataFrame:
    """Every qualified level against real-only, and moderate against high, per arm and budget."""
    base = baseline(frame, metric)
    rows = []
    for number, arm in enumerate(_arms(frame)):
        ranking = rankings.get(arm[0])
        if ranking is None:
            continue
        cells = _arm_cells(frame, arm)
        for budget, part in cells.groupby("budget", dropna=False):
            base_part = rows_of_budget(base, budget)
            tests = [(f"{level} − real-only", level, None) for level in ranking.qualified]
            if ranking.moderate is not None:
                tests.append((f"moderate {ranking.moderate} − high {ranking.high}", ranking.moderate, ranking.high))
            for offset, (name, a_level, b_level) in enumerate(tests):
                result = compare(part, a_level, b_level, base_part, metric, cfg, 1000 * number + offset)
                rows.append({"arm": arm_label(arm), **dict(zip(ARM, arm)), "budget": budget, "comparison": name,
                             "a": a_level, "b": b_level or "real-only", "result": result})
    return pd.DataFrame(rows)


@dataclasses.dataclass
class ArmVerdict:
    arm: tuple
    word: str
    text: str


def claim_verdicts(table: pd.DataFrame, frame: pd.DataFrame, rankings: dict[str, LevelRanking], metric: str,
                   cfg: ReportConfig) -> list[ArmVerdict]:
    """Study A's claim per arm, at its lowest budget: moderate beats real-only, and beats high;
    then whether the gain over real-only shrinks as the budget grows."""
    verdicts = []
    base = baseline(frame, metric)
    for number, arm in enumerate(_arms(frame)):
        ranking = rankings.get(arm[0])
        label = f"{arm_label(arm)} ({status_text(_arm_cells(frame, arm))})"
        if ranking is None or ranking.moderate is None:
            qualified = ranking.qualified if ranking else []
            verdicts.append(ArmVerdict(arm, "Not testable", f"**Not testable** — {label}: {len(qualified)} level(s) "
                                       f"qualify as minimal shift ({', '.join(qualified) or 'none'}); a moderate "
                                       f"level needs 3."))
            continue
        rows = table[(table["arm"] == arm_label(arm))]
        lowest = min(pd.Series(rows["budget"]).dropna().unique(), default=None)
        at_low = rows_of_budget(rows, lowest) if lowest is not None else rows
        helps = at_low[at_low["a"].eq(ranking.moderate) & at_low["b"].eq("real-only")]["result"].iloc[0]
        hurts = at_low[at_low["b"].eq(ranking.high)]["result"].iloc[0]
        if not (helps.testable and hurts.testable):
            word = "Not testable"
        elif helps.ci_low > 0 and hurts.ci_low > 0:
            word = "Reproduced"
        elif helps.effect > 0 and hurts.effect > 0:
            word = "Weakly reproduced (right direction, an interval includes zero)"
        else:
            word = "Not reproduced"
        cells = _arm_cells(frame, arm)
        gains = {}
        for budget, part in cells.groupby("budget"):
            a, b = pair(part[part["level"] == ranking.moderate], rows_of_budget(base, budget), BASELINE_KEYS, metric)
            gains[float(budget)] = a - b
        trend = budget_trend(gains, seed=cfg.seed + 7919 * (number + 1), resamples=cfg.resamples,
                             confidence=cfg.confidence)
        if trend["ci"][0] is None:
            interaction = (f"Budget interaction: not testable (needs ≥ 2 budgets with ≥ {MIN_PAIRS} pairs; "
                           f"have {trend['n_pairs'] or 'none'}).")
        else:
            shrinks = ("shrinks" if trend["ci"][1] < 0 else "grows" if trend["ci"][0] > 0
                       else "does not change detectably")
            interaction = (f"Budget interaction: the gain of moderate over real-only changes by "
                           f"{trend['slope_per_doubling']:+.4f} per doubling of the budget ({cfg.confidence:.0%} CI "
                           f"[{trend['ci'][0]:+.4f}, {trend['ci'][1]:+.4f}]; pairs per budget "
                           f"{ {int(b): n for b, n in trend['n_pairs'].items()} }): it {shrinks} as the budget grows.")
        text = (f"**{word}** — {label}, at the lowest budget ({budget_label(lowest)}): moderate "
                f"({ranking.moderate}) − real-only: {helps.text()}; moderate − high ({ranking.high}): {hurts.text()}. "
                f"{interaction}")
        verdicts.append(ArmVerdict(arm, word, text))
    return verdicts


def budget_label(budget) -> str:
    return "all labels" if budget is None or pd.isna(budget) else f"{int(budget)} labels/class"


# ---------------------------------------------------------------------------
# Trends within each budget × proportion, and the ID/OOD claim.

def attach_pool_metrics(frame: pd.DataFrame, pools: pd.DataFrame | None, columns: list[str]) -> pd.DataFrame:
    """pool_<metric> columns: each synthetic cell's pool's measured metrics (by pool id; by level
    when the results carry no pool ids and each level has one pool)."""
    if pools is None:
        return frame
    present = [c for c in columns if c in pools]
    renamed = {c: f"pool_{c}" for c in present}
    if "pool" in frame and "pool" in pools:
        return frame.merge(pools[["pool"] + present].drop_duplicates("pool").rename(columns=renamed),
                           on="pool", how="left")
    if pools["level"].is_unique:
        return frame.merge(pools[["level"] + present].rename(columns=renamed), on="level", how="left")
    return frame


def trend_table(frame: pd.DataFrame, xs: dict[str, str], ys: list[str], cfg: ReportConfig) -> pd.DataFrame:
    """Fitted trends of each y on each x, within each arm × budget (never pooled across budgets or
    proportions: n and the real share would drive the trend), with bootstrap intervals."""
    rows = []
    for number, arm in enumerate(_arms(frame)):
        for budget, part in _arm_cells(frame, arm).groupby("budget", dropna=False):
            for y in ys:
                for x_name, x in xs.items():
                    if x not in part:
                        continue
                    fit = bootstrap_trend(part[x], part[y], seed=cfg.seed + 31 * number, resamples=cfg.resamples,
                                          confidence=cfg.confidence)
                    rows.append({"arm": arm_label(arm), "budget": budget_label(budget), "y": y, "x": x_name, **fit})
    return pd.DataFrame(rows)


def _ci_text(value: float, ci: tuple, digits: int = 3) -> str:
    if ci[0] is None or not math.isfinite(value):
        return "not testable"
    return f"{value:+.{digits}f} [{ci[0]:+.{digits}f}, {ci[1]:+.{digits}f}]"


def id_ood_verdict(trends: pd.DataFrame, quality: str, diversity: str) -> tuple[str, pd.DataFrame]:
    """Study B's claim, per arm × budget: ID accuracy rises with quality and OOD accuracy rises
    with diversity (Pearson r with its interval above 0). Holds / partly / does not hold."""
    rows = []
    for (arm, budget), part in trends.groupby(["arm", "budget"], sort=False):
        fits = {(r.y, r.x): r for r in part.itertuples()}
        needed = [("accuracy_id", quality), ("accuracy_ood", diversity)]
        if any(k not in fits or fits[k].pearson_ci[0] is None for k in needed):
            word = "not testable"
        else:
            supported = [fits[k].pearson_ci[0] > 0 for k in needed]
            word = "holds" if all(supported) else "partly holds" if any(supported) else "does not hold"
        row = {"arm": arm, "budget": budget}
        for y in ("accuracy_id", "accuracy_ood"):
            for x in (quality, diversity):
                fit = fits.get((y, x))
                row[f"r({y.split('_')[1].upper()}, {x})"] = (_ci_text(fit.pearson, fit.pearson_ci, 2) if fit else "–")
        row["n"] = max((r.n for r in part.itertuples()), default=0)
        row["quality → ID, diversity → OOD"] = word
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return "Not testable: no synthetic cells with ID and OOD accuracy.", table
    counts = table["quality → ID, diversity → OOD"].value_counts()
    summary = ("\"Quality drives ID, diversity drives OOD\" "
               + ", ".join(f"{word} in {n} of {len(table)} arm × budget group(s)" for word, n in counts.items())
               + f". Rule: it holds in a group when Pearson r(ID accuracy, {quality}) and r(OOD accuracy, "
               f"{diversity}) both have intervals above 0 (r within each budget × proportion, pool metrics "
               f"as x, bootstrap over cells).")
    return summary, table
