"""`jaxdiv report STUDY_DIR`: a Markdown (and HTML) report with PNG plots.

A study directory holds `results.parquet` (one row per cell and seed) and, optionally,
`pools.parquet` (one row per generated pool with its measured metrics).
"""

from __future__ import annotations

import dataclasses
import html
import math
from pathlib import Path

import pandas as pd

from jaxdiv.io import atomic_write_text
from jaxdiv.report import plots
from jaxdiv.report.stats import bootstrap_difference, mean_ci
from jaxdiv.errors import JaxdivError

# The measured quantities plotted against accuracy, first match wins.
DIVERSITY_COLUMNS = ("data_vendi_q1", "data_dcscore", "data_mean_cosine_distance")
SHIFT_COLUMNS = ("data_mmd2", "data_frechet_distance")
# The pools table in the report: the headline metric of each family (every metric is in pools.csv).
POOL_COLUMNS = ("level", "rows", "accepted", "vendi_q1", "vendi_q1_ci", "dcscore", "dcscore_ci",
                "mean_cosine_distance", "distinct_2", "self_bleu", "compression_ratio", "mmd2", "mmd2_ci",
                "frechet_distance", "label_fidelity", "parse_failure_share", "length_tokens_mean")


class ReportError(JaxdivError, ValueError):
    """The study directory cannot be reported on; the message says what is missing."""


@dataclasses.dataclass
class Verdict:
    """Does the study reproduce study A's claim? (REFERENCES.md: moderate diversity helps at low
    label budgets when the shift is small; high diversity hurts.)"""

    text: str
    moderate_vs_real: tuple[float, float, float, float] | None
    high_vs_moderate: tuple[float, float, float, float] | None


def _fmt(value: float, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_fmt(v) if isinstance(v, float) else str(v) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule] + body)


def best_proportions(frame: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """For each (budget, level): the proportion with the best mean metric, and its CI."""
    rows = []
    for (budget, level), group in frame.groupby(["budget", "level"], dropna=False):
        by_p = {p: mean_ci(g[metric]) for p, g in group.groupby("proportion")}
        best = max(by_p, key=lambda p: by_p[p][0])
        real_only = by_p.get(0.0, (math.nan, math.nan))[0]
        rows.append({"budget": plots.budget_label(budget), "level": level, "best proportion": f"{best:.0%}",
                     f"mean {metric}": by_p[best][0], "± 95% CI": by_p[best][1],
                     "gain over real only": by_p[best][0] - real_only})
    table = pd.DataFrame(rows)
    order = {label: i for i, label in enumerate(plots.ordered_levels(frame))}
    return table.sort_values(["budget", "level"], key=lambda s: s.map(order) if s.name == "level" else s)


def verdict(frame: pd.DataFrame, metric: str = "accuracy", seed: int = 0) -> Verdict:
    """Test the claim at the lowest label budget with bootstrap intervals over cells and seeds."""
    levels = plots.ordered_levels(frame)
    budgets = sorted(frame["budget"].dropna().unique()) or [None]
    low = budgets[0]
    part = frame[frame["budget"].isna()] if low is None else frame[frame["budget"] == low]
    real = part[part["proportion"] == 0][metric].to_numpy()
    synthetic = part[part["proportion"] > 0]
    if len(levels) < 2 or real.size == 0 or synthetic.empty:
        return Verdict("Not testable: the claim needs at least two diversity levels, real-only cells "
                       "(proportion 0) and cells with synthetic data at the lowest budget.", None, None)
    third = max(1, len(levels) // 3)
    moderate_levels = levels[third:len(levels) - third] or levels[:1]
    high_levels = levels[-third:]
    moderate = synthetic[synthetic["level"].isin(moderate_levels)][metric].to_numpy()
    high = synthetic[synthetic["level"].isin(high_levels)][metric].to_numpy()
    helps = bootstrap_difference(moderate, real, seed=seed)
    hurts = bootstrap_difference(moderate, high, seed=seed + 1)
    helps_sure, hurts_sure = helps[1] > 0, hurts[1] > 0
    helps_lean, hurts_lean = helps[0] > 0, hurts[0] > 0
    if helps_sure and hurts_sure:
        word = "Reproduced"
    elif helps_lean and hurts_lean:
        word = "Weakly reproduced (right direction, intervals include zero)"
    else:
        word = "Not reproduced"
    shift_note = ""
    shift_col = next((c for c in SHIFT_COLUMNS if c in frame.columns), None)
    if shift_col:
        shift_note = (f" Mean {shift_col} of the moderate cells: "
                      f"{_fmt(float(synthetic[synthetic['level'].isin(moderate_levels)][shift_col].mean()), 4)}"
                      f" (high: {_fmt(float(synthetic[synthetic['level'].isin(high_levels)][shift_col].mean()), 4)}).")
    text = (f"**{word}.** At the lowest budget ({plots.budget_label(low)}), moderate diversity "
            f"({', '.join(map(str, moderate_levels))}) changes test {metric} by {helps[0]:+.4f} over real data "
            f"alone (95% bootstrap CI [{helps[1]:+.4f}, {helps[2]:+.4f}], P(gain) = {helps[3]:.2f}), and "
            f"beats high diversity ({', '.join(map(str, high_levels))}) by {hurts[0]:+.4f} "
            f"(CI [{hurts[1]:+.4f}, {hurts[2]:+.4f}], P = {hurts[3]:.2f}).{shift_note}")
    return Verdict(text, helps, hurts)


def write_report(study_dir: str | Path, metric: str = "accuracy") -> Path:
    """Write `report/report.md`, `report/report.html` and the PNG plots; return the Markdown path."""
    study_dir = Path(study_dir)
    results_path = study_dir / "results.parquet"
    if not results_path.is_file():
        raise ReportError(f"{study_dir} has no results.parquet: is it a study directory?")
    frame = pd.read_parquet(results_path)
    needed = {"level", "proportion", "budget", "seed", metric}
    if missing := needed - set(frame.columns):
        raise ReportError(f"{results_path} lacks columns {sorted(missing)}")
    if frame.empty:
        raise ReportError(f"{results_path} has no rows yet")
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str, str | None]] = []  # (title, markdown body, image file)

    result = verdict(frame, metric)
    sections.append(("Summary", result.text, None))
    plots.accuracy_vs_level(frame, out / "accuracy_vs_level.png", metric)
    sections.append((f"Test {metric} against diversity level",
                     "Each line is one synthetic proportion; bars are 95% t-intervals over seeds.",
                     "accuracy_vs_level.png"))
    plots.heatmaps(frame, out / "heatmap_level_proportion.png", metric)
    sections.append(("Diversity level × proportion", f"Mean test {metric} per cell, one panel per budget.",
                     "heatmap_level_proportion.png"))
    for title, columns in (("measured diversity", DIVERSITY_COLUMNS), ("distribution shift", SHIFT_COLUMNS)):
        column = next((c for c in columns if c in frame.columns and frame[c].notna().any()), None)
        if column:
            name = f"{metric}_vs_{column}.png"
            _, trend = plots.metric_scatter(frame, column, out / name, metric, x_label=column)
            sections.append((f"Test {metric} against {title}",
                             f"Fitted trend over cells with synthetic data: slope {_fmt(trend['slope'], 4)}, "
                             f"Pearson {_fmt(trend['pearson'], 2)}, Spearman {_fmt(trend['spearman'], 2)} "
                             f"(n = {trend['n']}).", name))
    sections.append(("Best proportion per level and budget", markdown_table(best_proportions(frame, metric)),
                     None))
    pools_path = study_dir / "pools.parquet"
    if pools_path.is_file():
        pools = pd.read_parquet(pools_path)
        headline = pools[[c for c in POOL_COLUMNS if c in pools.columns]]
        sections.append(("Generated pools", markdown_table(headline) + "\n\nEvery metric of every pool, "
                         "with per-label shift: `pools.csv`.", None))
    seeds = frame["seed"].nunique()
    header = (f"# Study report: {study_dir.name}\n\n{len(frame)} trained cells "
              f"({frame['level'].nunique()} levels × {frame['proportion'].nunique()} proportions × "
              f"{frame['budget'].nunique(dropna=False)} budgets × {seeds} seeds).\n")
    markdown = header + "".join(
        f"\n## {title}\n\n{body}\n" + (f"\n![{title}]({image})\n" if image else "")
        for title, body, image in sections)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", _html(header, sections, frame, pools_path))
    return out / "report.md"


def _html(header: str, sections, frame: pd.DataFrame, pools_path: Path) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>jaxdiv report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             f"<h1>{html.escape(header.splitlines()[0].lstrip('# '))}</h1>",
             f"<p>{html.escape(header.splitlines()[2])}</p>"]
    for title, body, image in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if body.startswith("|"):
            rows = [line.strip("|").split("|") for line in body.splitlines() if not line.startswith("| ---")]
            parts.append("<table>" + "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>"
                                 for c in row) + "</tr>" for i, row in enumerate(rows)) + "</table>")
        else:
            parts.append(f"<p>{html.escape(body).replace('**', '')}</p>")
        if image:
            parts.append(f"<img src='{image}' alt='{html.escape(title)}' style='max-width:100%'>")
    return "\n".join(parts)
