"""PNG plots of a study's results table, each readable without the surrounding text.

The results table has one row per trained cell (see jaxdiv.report.verdict for its columns).
Every study plot shows one arm (mechanism × protocol × label filter) and carries its protocol
and leak / oracle status in the title; trends are drawn within each budget × proportion.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jaxdiv.report.stats import mean_ci, paired_bootstrap  # noqa: E402
from jaxdiv.report.verdict import budget_label, rows_of_budget  # noqa: E402


def _budgets(frame: pd.DataFrame) -> list:
    return sorted(frame["budget"].unique(), key=lambda b: float("inf") if pd.isna(b) else b)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_and_interval(values, seed: int = 0) -> tuple[float, float, float]:
    """Mean and its percentile bootstrap interval (nan bounds below 3 values: not testable)."""
    values = np.asarray(values, np.float64)
    result = paired_bootstrap(values, np.zeros_like(values), seed=seed)  # one-sample: mean(values - 0)
    if not result.testable:
        return result.effect, np.nan, np.nan
    return result.effect, result.ci_low, result.ci_high


def accuracy_vs_level(frame: pd.DataFrame, baseline: pd.DataFrame, levels: list[str], path: Path,
                      metric: str, status: str) -> Path:
    """One panel per budget: metric against level (in measured diversity order), a line per
    synthetic proportion, mean and 95% bootstrap interval over replicates; the real-only
    baseline of the same budget as a dashed line with its band."""
    budgets = _budgets(frame)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.9), squeeze=False, sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, max(frame["proportion"].nunique(), 1)))
    x = np.arange(len(levels))
    for ax, budget in zip(axes[0], budgets):
        for colour, (proportion, group) in zip(colours, sorted(rows_of_budget(frame, budget).groupby("proportion"))):
            stats = np.array([mean_and_interval(group[group["level"] == level][metric]) for level in levels])
            errors = np.nan_to_num(np.abs(stats[:, 1:].T - stats[:, 0]))
            ax.errorbar(x, stats[:, 0], yerr=errors, marker="o", capsize=3, color=colour,
                        label=f"synthetic {proportion:.0%}")
        real = rows_of_budget(baseline, budget)[metric]
        if len(real):
            mean, low, high = mean_and_interval(real)
            ax.axhline(mean, color="grey", ls="--", lw=1, label="real only")
            if np.isfinite(low):
                ax.axhspan(low, high, color="grey", alpha=0.15)
        ax.set_xticks(x, levels)
        ax.set_title(budget_label(budget))
        ax.set_xlabel("level, in measured diversity order (low → high)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric} (mean, 95% bootstrap CI)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Test {metric} against the synthetic data's level\n{status}", fontsize=10)
    return _save(fig, path)


def heatmaps(frame: pd.DataFrame, levels: list[str], path: Path, metric: str, status: str) -> Path:
    """Level × proportion heatmap of the mean metric, one panel per budget."""
    proportions = sorted(frame["proportion"].unique())
    budgets = _budgets(frame)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.4 * len(budgets), 3.9), squeeze=False,
                             layout="constrained")
    means = frame.groupby(["budget", "level", "proportion"], dropna=False)[metric].mean()
    low, high = float(means.min()), float(means.max())
    for ax, budget in zip(axes[0], budgets):
        grid = np.array([[means.get((budget, level, p), np.nan) for p in proportions] for level in levels])
        image = ax.imshow(grid, cmap="magma", vmin=low, vmax=high, aspect="auto", origin="lower")
        for (i, j), value in np.ndenumerate(grid):
            if np.isfinite(value):
                ax.text(j, i, f"{value:.3f}", ha="center", va="center", fontsize=7,
                        color="white" if value < (low + high) / 2 else "black")
        ax.set_xticks(range(len(proportions)), [f"{p:.0%}" for p in proportions])
        ax.set_yticks(range(len(levels)), levels)
        ax.set_xlabel("synthetic proportion")
        ax.set_ylabel("level (measured order)")
        ax.set_title(budget_label(budget))
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=f"mean test {metric}")
    fig.suptitle(f"Mean test {metric}: level × synthetic proportion\n{status}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def trend_grid(frame: pd.DataFrame, x: str, path: Path, metric: str, x_label: str, status: str) -> Path:
    """Metric against a measured quantity, one panel per budget (rows) × proportion (columns), each
    with its own least-squares line: trends are never pooled across budgets or proportions."""
    budgets, proportions = _budgets(frame), sorted(frame["proportion"].unique())
    # wide enough for the two-line title even with one proportion
    fig, axes = plt.subplots(len(budgets), len(proportions), figsize=(max(3.6 * len(proportions), 6.8), 3.0 * len(budgets)),
                             squeeze=False, sharex=True)
    for row, budget in zip(axes, budgets):
        for ax, proportion in zip(row, proportions):
            part = rows_of_budget(frame, budget)
            part = part[(part["proportion"] == proportion) & part[x].notna() & part[metric].notna()]
            for level, group in part.groupby("level"):
                ax.scatter(group[x], group[metric], s=16, alpha=0.8, label=level)
            if part[x].nunique() >= 2:
                slope, intercept = np.polyfit(part[x].to_numpy(float), part[metric].to_numpy(float), 1)
                xs = np.linspace(part[x].min(), part[x].max(), 20)
                ax.plot(xs, intercept + slope * xs, "k--", lw=1)
            ax.set_title(f"{budget_label(budget)}, synthetic {proportion:.0%}", fontsize=9)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"test {metric}")
    for ax in axes[-1]:
        ax.set_xlabel(x_label)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        axes[0][-1].legend(handles, labels, fontsize=7, loc="best")
    fig.suptitle(f"Test {metric} against {x_label}\n(within each budget × proportion; {status})", fontsize=9)
    return _save(fig, path)


def metric_by_round(frame: pd.DataFrame, panels: list[tuple[str, str]], path: Path, title: str) -> Path:
    """One panel per (column, axis label): the column against the round, one line per chain.
    Error bars: the column's own interval (`<column>_ci_low` / `_ci_high`, e.g. a pool metric's
    half-sample CI) where the table has one, else a 95% t-interval over the rows of the round (seeds)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.6), squeeze=False)
    rounds = sorted(frame["round"].unique())
    for ax, (column, label) in zip(axes[0], panels):
        for chain, group in frame.groupby("chain", sort=False):
            by_round = group.groupby("round")
            if f"{column}_ci_low" in group:
                first = by_round.first()
                means = first[column].to_numpy(float)
                errors = np.abs([means - first[f"{column}_ci_low"].to_numpy(float),
                                 first[f"{column}_ci_high"].to_numpy(float) - means])
            else:
                stats = np.array([mean_ci(values) for _, values in by_round[column]])
                means, errors = stats[:, 0], stats[:, 1]
            ax.errorbar(list(by_round.groups), means, yerr=errors, marker="o", capsize=3, label=chain)
        ax.set_xticks(rounds)
        ax.set_xlabel("round t (pool of generator G_t)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    return _save(fig, path)
