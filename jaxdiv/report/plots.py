"""PNG plots of a study's results table, each readable without the surrounding text.

The results table has one row per cell and seed, with at least the columns
`level`, `proportion`, `budget`, `seed`, `accuracy`, and any measured training-data
metrics (e.g. `data_vendi_q1`, `data_mmd2`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from jaxdiv.report.stats import linear_trend, mean_ci  # noqa: E402


def budget_label(budget) -> str:
    return "all labels" if budget in (None, "all") or pd.isna(budget) else f"{int(budget)} labels/class"


def ordered_levels(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["level"].unique(), key=lambda level: (len(str(level)), str(level)))


def _budgets(frame: pd.DataFrame) -> list:
    return sorted(frame["budget"].unique(), key=lambda b: float("inf") if pd.isna(b) else b)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def accuracy_vs_level(frame: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path:
    """One panel per budget: metric against diversity level, a line per proportion, mean ± 95% CI."""
    levels = ordered_levels(frame)
    budgets = _budgets(frame)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.6 * len(budgets), 3.8), squeeze=False,
                             sharey=True)
    colours = plt.cm.viridis(np.linspace(0, 0.9, frame["proportion"].nunique()))
    for ax, budget in zip(axes[0], budgets):
        part = frame[frame["budget"].isna()] if pd.isna(budget) else frame[frame["budget"] == budget]
        for colour, (proportion, group) in zip(colours, sorted(part.groupby("proportion"))):
            stats = [mean_ci(group[group["level"] == level][metric]) for level in levels]
            means = np.array([s[0] for s in stats])
            halves = np.array([s[1] for s in stats])
            x = np.arange(len(levels))
            ax.errorbar(x, means, yerr=halves, marker="o", capsize=3, color=colour,
                        label=f"synthetic {proportion:.0%}")
        ax.set_xticks(np.arange(len(levels)), levels)
        ax.set_title(budget_label(budget))
        ax.set_xlabel("diversity level (low → high)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric} (mean ± 95% CI over seeds)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle(f"Downstream {metric} against the diversity of the synthetic data")
    return _save(fig, path)


def heatmaps(frame: pd.DataFrame, path: Path, metric: str = "accuracy") -> Path:
    """Level × proportion heatmap of the mean metric, one panel per budget."""
    levels = ordered_levels(frame)
    proportions = sorted(frame["proportion"].unique())
    budgets = _budgets(frame)
    fig, axes = plt.subplots(1, len(budgets), figsize=(4.4 * len(budgets), 3.8), squeeze=False,
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
        ax.set_ylabel("diversity level")
        ax.set_title(budget_label(budget))
    fig.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label=f"mean test {metric}")
    fig.suptitle(f"Mean test {metric}: diversity level × synthetic proportion")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def metric_scatter(frame: pd.DataFrame, x: str, path: Path, metric: str = "accuracy",
                   x_label: str | None = None) -> tuple[Path, dict[str, float]]:
    """Metric against a measured quantity of the training data, with the fitted linear trend."""
    part = frame[frame["proportion"] > 0] if (frame["proportion"] > 0).any() else frame
    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    budgets = _budgets(part)
    colours = plt.cm.tab10(np.arange(len(budgets)) % 10)
    for colour, budget in zip(colours, budgets):
        group = part[part["budget"].isna()] if pd.isna(budget) else part[part["budget"] == budget]
        ax.scatter(group[x], group[metric], s=18, alpha=0.75, color=colour, label=budget_label(budget))
    trend = linear_trend(part[x], part[metric])
    if np.isfinite(trend["slope"]):
        xs = np.linspace(part[x].min(), part[x].max(), 50)
        ax.plot(xs, trend["intercept"] + trend["slope"] * xs, "k--", lw=1,
                label=f"trend: slope {trend['slope']:.3g}, Spearman {trend['spearman']:.2f}")
    ax.set_xlabel(x_label or x)
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Test {metric} against {x_label or x}\n(cells with synthetic data)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path), trend


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
