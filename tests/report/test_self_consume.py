"""The self-consumption report on a hand-built results table (the columns
jaxdiv.study.self_consume.results_table writes): its plots and its Markdown."""

import numpy as np
import pandas as pd

from jaxdiv.report import plots
from jaxdiv.report.self_consume import write_report

CHAINS, ROUNDS, SEEDS = ("replace", "mix_real"), 3, 3


def results_frame() -> pd.DataFrame:
    """Vendi falls by 1 a round and `replace`'s accuracy by 0.1; the last round has no SFT."""
    rng = np.random.default_rng(0)
    return pd.DataFrame([
        {"chain": chain, "round": r, "seed": s, "generator": f"jax:G{r}-{chain}", "pool_rows": 12,
         "accepted": 10, "accept_rate": 10 / 12, "vendi_q1": 5.0 - r, "vendi_q1_ci_low": 4.5 - r,
         "vendi_q1_ci_high": 5.2 - r, "distinct_2": 0.8 - 0.1 * r, "label_fidelity": 0.9,
         "accuracy": 0.6 - 0.1 * r * (chain == "replace") + 0.01 * rng.standard_normal(), "macro_f1": 0.5,
         "sft_train_loss": np.nan if r == ROUNDS - 1 else 2.0 - 0.1 * r,
         "sft_heldout_real_loss": np.nan if r == ROUNDS - 1 else 2.5}
        for chain in CHAINS for r in range(ROUNDS) for s in range(SEEDS)])


def test_metric_by_round_plots_a_line_per_chain(tmp_path):
    frame = results_frame()
    path = plots.metric_by_round(frame, [("vendi_q1", "Vendi"), ("accuracy", "accuracy")], tmp_path / "p.png", "t")
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_report_has_the_summary_the_changes_and_a_plot_per_measured_group(tmp_path):
    path = write_report(tmp_path / "tiny", results_frame())
    assert path == tmp_path / "tiny" / "report" / "report.md"
    text = path.read_text()
    assert text.startswith("# Self-consumption report: tiny")
    assert "2 chains × 3 rounds × 3 classifier seeds" in text
    summary = [line for line in text.splitlines() if line.startswith("| replace |") or line.startswith("| mix_real |")]
    assert len(summary) == len(CHAINS) * ROUNDS  # a row per chain and round
    assert "**vendi_q1**: replace 5.000 → 3.000; mix_real 5.000 → 3.000" in text
    assert "**mmd2**" not in text  # a column the table lacks is left out
    for image in ("diversity.png", "quality.png", "downstream.png", "sft.png"):
        assert f"]({image})" in text and (path.parent / image).read_bytes()[:4] == b"\x89PNG"
    assert "shift.png" not in text and not (path.parent / "shift.png").exists()  # no shift metric measured
