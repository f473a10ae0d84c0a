"""`jaxdiv report STUDY_DIR`: a Markdown (and HTML) report with PNG plots.

A study directory holds `results.parquet` (one row per trained cell), `pools.parquet` (one row
per generated pool with its measured metrics and gate counts), optionally `accepted_rows.parquet`
(the accepted rows of every pool, for the appendix) and `config.json` (whose `report` section, a
ReportConfig, sets the verdict's metrics, tolerance and bootstrap; defaults otherwise).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from jaxdiv import configlib
from jaxdiv.io import atomic_write_text
from jaxdiv.report import plots, verdict as verdicts
from jaxdiv.report.config import ReportConfig
from jaxdiv.report.verdict import REAL, ReportError

# The pools table in the report: the headline metric of each family (every metric is in pools.csv).
POOL_COLUMNS = ("mechanism", "level", "budget", "subset", "gen_seed", "rows", "accepted", "vendi_q1",
                "vendi_q1_ci", "dcscore", "mean_cosine_distance", "distinct_2", "self_bleu", "mmd2", "mmd2_ci",
                "frechet_distance", "label_fidelity", "parse_failure_share", "length_tokens_mean")

__all__ = ["ReportError", "write_report", "report_config", "markdown_table"]


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame) -> str:
    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "| " + " | ".join("---" for _ in frame.columns) + " |"
    body = ["| " + " | ".join(_fmt(v).replace("|", "\\|").replace("\n", " ") for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule] + body)


def report_config(study_dir: Path) -> ReportConfig:
    """The `report` section of the study's config.json, or the defaults."""
    path = study_dir / "config.json"
    if not path.is_file():
        return ReportConfig()
    section = json.loads(path.read_text()).get("config", {}).get("report")
    return configlib.from_dict(ReportConfig, section, prefix="report") if section else ReportConfig()


def _read(path: Path, needed: set[str]) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    if missing := needed - set(frame.columns):
        raise ReportError(f"{path} lacks columns {sorted(missing)}")
    if frame.empty:
        raise ReportError(f"{path} has no rows yet")
    return frame


def _comparison_rows(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for row in table.itertuples():
        result = row.result
        rows.append({"arm": row.arm, "budget": plots.budget_label(row.budget), "comparison": row.comparison,
                     "effect": f"{result.effect:+.4f}", "CI": "not testable" if not result.testable
                     else f"[{result.ci_low:+.4f}, {result.ci_high:+.4f}]",
                     "pairs": result.n_pairs, "P(>0)": result.share_positive if result.testable else "–"})
    return pd.DataFrame(rows)


def _trend_rows(trends: pd.DataFrame) -> pd.DataFrame:
    if trends.empty:
        return trends
    return pd.DataFrame({
        "arm": trends["arm"], "budget": trends["budget"], "y": trends["y"], "x": trends["x"], "n": trends["n"],
        "slope [CI]": [verdicts._ci_text(v, ci, 4) for v, ci in zip(trends["slope"], trends["slope_ci"])],
        "Pearson r [CI]": [verdicts._ci_text(v, ci, 2) for v, ci in zip(trends["pearson"], trends["pearson_ci"])],
    })


def _gate_table(pools: pd.DataFrame) -> pd.DataFrame:
    """Rows generated, accepted and rejected per gate reason, summed over each level's pools."""
    gates = [c for c in pools.columns if c.startswith("reject_")]
    keys = [c for c in ("mechanism", "level") if c in pools]
    sums = pools.groupby(keys)[[c for c in ("rows", "accepted") if c in pools] + gates].sum().reset_index()
    sums.insert(len(keys), "pools", pools.groupby(keys).size().to_numpy())
    return sums


def _sample_rows(path: Path, order: list[str], cfg: ReportConfig) -> str:
    rows = pd.read_parquet(path)
    if "used" in rows:  # the equal-n rows the cells drew on, where the study marks them
        rows = rows[rows["used"].astype(bool)]
    rng = np.random.default_rng(cfg.seed)
    parts = []
    levels = [lv for lv in order if lv in set(rows["level"])] + sorted(set(rows["level"]) - set(order))
    for level in levels:
        group = rows[rows["level"] == level].sort_values([c for c in ("gen_seed", "pool", "id") if c in rows])
        take = group.iloc[np.sort(rng.choice(len(group), min(cfg.sample_rows, len(group)), replace=False))]
        shown = take[[c for c in ("gen_seed", "label", "text") if c in take]].copy()
        shown["text"] = shown["text"].str.slice(0, 200)
        parts.append(f"**{level}** ({len(group)} rows over all its pools; {len(take)} drawn with seed "
                     f"{cfg.seed}):\n\n{markdown_table(shown)}")
    return "\n\n".join(parts)


def _plot_sections(frame: pd.DataFrame, pools: pd.DataFrame | None, rankings: dict, base: pd.DataFrame,
                   metric: str, cfg: ReportConfig, out: Path, has_domains: bool) -> tuple[list, list[str]]:
    """Per arm (mechanism × protocol × label filter): accuracy against level and the heatmap, then
    against each pool metric within budget × proportion; with test domains also the ID and OOD
    plots (returned apart, for the study B section)."""
    sections = []
    domain_images: list[str] = []
    for (mechanism, protocol, probe), part in frame[(frame["mechanism"] != REAL) & (frame["proportion"] > 0)].groupby(
            ["mechanism", "protocol", "label_probe"], dropna=False):
        status = verdicts.status_text(part)
        order = rankings[mechanism].order if mechanism in rankings else sorted(part["level"].unique())
        order = [lv for lv in order if lv in set(part["level"])]
        tag = f"{mechanism}_{protocol}" + (f"_{probe}" if probe else "")
        name = f"{metric}_vs_level_{tag}.png"
        plots.accuracy_vs_level(part, base, order, out / name, metric, f"{mechanism} · {status}")
        heat = f"heatmap_{tag}.png"
        plots.heatmaps(part, order, out / heat, metric, f"{mechanism} · {status}")
        sections.append((f"Test {metric} against diversity level — {mechanism}, {status}",
                         "Lines: synthetic proportions; dashed: the real-only baseline of the budget (band: its "
                         "95% bootstrap CI); bars: 95% bootstrap CIs over replicates. Heatmap: mean per cell.",
                         [name, heat]))
        attached = verdicts.attach_pool_metrics(part, pools, [cfg.diversity_metric, cfg.quality_metric,
                                                              cfg.shift_metric])
        images = []
        for x in (cfg.diversity_metric, cfg.quality_metric, cfg.shift_metric):
            if f"pool_{x}" in attached and attached[f"pool_{x}"].notna().any():
                image = f"{metric}_vs_{x}_{tag}.png"
                plots.trend_grid(attached, f"pool_{x}", out / image, metric, f"pool {x}", f"{mechanism} · {status}")
                images.append(image)
                if x != cfg.shift_metric and has_domains:  # study B: ID against quality and diversity, OOD too
                    for column in ("accuracy_id", "accuracy_ood"):
                        domain_image = f"{column}_vs_{x}_{tag}.png"
                        plots.trend_grid(attached, f"pool_{x}", out / domain_image, column, f"pool {x}",
                                         f"{mechanism} · {status}")
                        domain_images.append(domain_image)
        if images:
            sections.append((f"Test {metric} against measured diversity, label fidelity and shift — {mechanism}, "
                             f"{status}", "Each panel is one budget × proportion with its own least-squares "
                             "line; x is the measured metric of the cell's pool.", images))
    return sections, domain_images


def write_report(study_dir: str | Path, metric: str = "accuracy", cfg: ReportConfig | None = None) -> Path:
    """Write `report/report.md`, `report/report.html` and the PNG plots; return the Markdown path."""
    study_dir = Path(study_dir)
    results_path, pools_path = study_dir / "results.parquet", study_dir / "pools.parquet"
    if not results_path.is_file():
        raise ReportError(f"{study_dir} has no results.parquet: is it a study directory?")
    cfg = cfg or report_config(study_dir)
    frame = verdicts.normalise_results(_read(results_path, {"level", "proportion", "budget", "seed", metric}))
    pools = _read(pools_path, {"level"}) if pools_path.is_file() else None
    out = study_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    sections: list[tuple[str, str, list[str]]] = []  # (title, markdown body, image files)

    mechanisms = sorted(set(frame["mechanism"]) - {REAL})
    rankings = ({m: verdicts.rank_levels(pools, m, cfg) for m in mechanisms} if pools is not None else {})
    table = verdicts.comparisons(frame, rankings, metric, cfg)
    claims = verdicts.claim_verdicts(table, frame, rankings, metric, cfg)
    base = verdicts.baseline(frame, metric)
    summary = "\n\n".join(v.text for v in claims) or "Not testable: the results hold no cells with synthetic data."
    if pools is None:
        summary += "\n\nNot testable: the study has no pools.parquet, so the levels cannot be ranked by measurement."
    sections.append(("Summary", summary + (
        f"\n\nEvery effect is a paired difference of test {metric} (pairs share budget, real subset, "
        f"training seed and, between two pools, the generation seed; the real-only baseline is one cell per "
        f"budget × subset × seed: {len(base)} cells, each paired with the cell of every generation seed); "
        f"intervals are {cfg.confidence:.0%} percentile bootstraps "
        f"over the pairs ({cfg.resamples} resamples); fewer than 3 pairs reads \"not testable\"."), []))

    for mechanism, ranking in rankings.items():
        body = (verdicts.MODERATE_RULE.format(metric=cfg.diversity_metric, shift=cfg.shift_metric,
                                              tolerance=cfg.shift_tolerance)
                + f"\n\nQualified (minimal shift): {', '.join(ranking.qualified) or 'none'}; "
                f"low = {ranking.low or '–'}, moderate = {ranking.moderate or '–'}, high = {ranking.high or '–'}."
                f"\n\n{markdown_table(ranking.table)}")
        sections.append((f"Levels ranked by measured diversity ({mechanism})", body, []))

    has_domains = {"accuracy_id", "accuracy_ood"} <= set(frame.columns)
    plot_sections, domain_images = _plot_sections(frame, pools, rankings, base, metric, cfg, out, has_domains)
    sections += plot_sections
    if not table.empty:
        sections.append(("Paired comparisons", "Every qualified level against the real-only baseline, and "
                         "moderate against high, per arm and budget. \"not testable\": fewer than 3 pairs.\n\n"
                         + markdown_table(_comparison_rows(table)), []))
    attached_all = verdicts.attach_pool_metrics(frame, pools, [cfg.diversity_metric, cfg.quality_metric])
    xs = {cfg.diversity_metric: f"pool_{cfg.diversity_metric}", cfg.quality_metric: f"pool_{cfg.quality_metric}"}
    trends = verdicts.trend_table(attached_all, xs, [metric], cfg)
    if not trends.empty:
        sections.append(("Fitted trends within each budget × proportion",
                         "Least-squares slope and Pearson r of the metric on each pool metric, per arm and "
                         f"budget (never pooled), {cfg.confidence:.0%} bootstrap CIs over cells.\n\n"
                         + markdown_table(_trend_rows(trends)), []))

    if has_domains:
        domains = [c for c in frame.columns if c.startswith("accuracy_") and c not in ("accuracy_id", "accuracy_ood")]
        id_ood = verdicts.trend_table(attached_all, xs, ["accuracy_id", "accuracy_ood"], cfg)
        summary_text, table_id_ood = verdicts.id_ood_verdict(id_ood, cfg.quality_metric, cfg.diversity_metric)
        measured = frame.dropna(subset=["accuracy_id", "accuracy_ood"])
        means = measured.groupby(["budget", "level"], dropna=False)[["accuracy_id", "accuracy_ood"]].agg(
            lambda s: "{:.3f} [{:.3f}, {:.3f}]".format(*plots.mean_and_interval(s, cfg.seed))).reset_index()
        sections.append(("In- and out-of-distribution accuracy (study B)",
                         f"{summary_text}\n\nTest domains: {', '.join(d.removeprefix('accuracy_') for d in domains)}; "
                         "ID = the training task's test split, OOD = the mean over the other domains.\n\n"
                         + markdown_table(table_id_ood) + "\n\nMean accuracy per budget and level (95% bootstrap "
                         "CI over cells):\n\n" + markdown_table(means), domain_images))

    if pools is not None:
        headline = pools[[c for c in POOL_COLUMNS if c in pools.columns]]
        gates = _gate_table(pools)
        fallbacks = frame[frame["fallback"] != ""].groupby(["level", "fallback"]).size().rename("cells")
        fallback_text = ("No cell used a fallback." if fallbacks.empty else "Cells that used a fallback:\n\n"
                         + markdown_table(fallbacks.reset_index()))
        sections.append(("Generated pools", markdown_table(headline) + "\n\nGate counts (rows rejected per reason, "
                         "summed over each level's pools):\n\n" + markdown_table(gates) + "\n\n" + fallback_text
                         + "\n\nEvery metric of every pool, with per-label shift: `pools.csv`.", []))
    rows_path = study_dir / "accepted_rows.parquet"
    if rows_path.is_file() and cfg.sample_rows:
        order = [lv for r in rankings.values() for lv in r.order]
        sections.append(("Appendix: accepted rows per level", _sample_rows(rows_path, order, cfg), []))

    synthetic = frame[frame["mechanism"] != REAL]
    header = (f"# Study report: {study_dir.name}\n\n{len(base) + len(synthetic)} trained cells: {len(base)} real-only "
              f"(budget × subset × seed) and {len(synthetic)} with synthetic data "
              f"({synthetic['level'].nunique()} levels, {synthetic['proportion'].nunique()} proportions, "
              f"{frame['budget'].nunique(dropna=False)} budgets, {frame['subset'].nunique()} real subsets, "
              f"{synthetic['gen_seed'].nunique()} generation seeds, {frame['seed'].nunique()} training seeds; "
              f"{verdicts.status_text(frame)}).\n")
    markdown = header + "".join(
        f"\n## {title}\n\n{body}\n" + "".join(f"\n![{title}]({image})\n" for image in images)
        for title, body, images in sections)
    atomic_write_text(out / "report.md", markdown)
    atomic_write_text(out / "report.html", _html(header, sections))
    return out / "report.md"


def _html_block(block: str) -> str:
    if block.startswith("|"):
        rows = [line.strip("|").split(" | ") for line in block.splitlines() if not line.startswith("| ---")]
        return "<table>" + "".join(
            "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c.strip())}</{'th' if i == 0 else 'td'}>"
                             for c in row) + "</tr>" for i, row in enumerate(rows)) + "</table>"
    return f"<p>{html.escape(block).replace('**', '')}</p>"


def _html(header: str, sections) -> str:
    parts = ["<!doctype html><meta charset='utf-8'><title>jaxdiv report</title>",
             "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             f"<h1>{html.escape(header.splitlines()[0].lstrip('# '))}</h1>",
             f"<p>{html.escape(header.splitlines()[2])}</p>"]
    for title, body, images in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.extend(_html_block(block.strip()) for block in body.split("\n\n") if block.strip())
        parts.extend(f"<img src='{image}' alt='{html.escape(title)}' style='max-width:100%'>" for image in images)
    return "\n".join(parts)
