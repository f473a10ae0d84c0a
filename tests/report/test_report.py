import numpy as np
import pandas as pd
import pytest

from jaxdiv.report.report import ReportError, best_proportions, verdict, write_report
from jaxdiv.report.stats import bootstrap_difference, linear_trend, mean_ci


def study_frame(effect: float, seeds: int = 4, noise: float = 0.004) -> pd.DataFrame:
    """Accuracies shaped like study A's claim when effect > 0: moderate levels help at a low
    budget, high levels hurt; reversed when effect < 0."""
    rng = np.random.default_rng(0)
    rows = []
    levels = ["D0", "D2", "D4", "D6"]
    bump = {"D0": 0.0, "D2": 1.0, "D4": 1.0, "D6": -1.0}
    for budget in (10, 50):
        for level in levels:
            for proportion in (0.0, 0.5):
                for seed in range(seeds):
                    gain = effect * bump[level] * (proportion > 0) * (1.0 if budget == 10 else 0.2)
                    rows.append({"level": level, "proportion": proportion, "budget": budget, "seed": seed,
                                 "accuracy": 0.6 + gain + noise * rng.standard_normal(),
                                 "data_vendi_q1": 5.0 + levels.index(level) * (proportion > 0),
                                 "data_mmd2": 0.01 * levels.index(level)})
    return pd.DataFrame(rows)


def test_stats_against_direct_formulas():
    values = [0.5, 0.7, 0.6, 0.8]
    mean, half = mean_ci(values)
    assert mean == pytest.approx(0.65)
    assert half == pytest.approx(3.182446305 * np.std(values, ddof=1) / 2, rel=1e-6)
    assert mean_ci([0.4]) == (0.4, 0.0)
    diff, low, high, p = bootstrap_difference([1.0, 1.1, 0.9], [0.0, 0.1, -0.1])
    assert diff == pytest.approx(1.0) and 0.7 < low < 1.0 < high < 1.3 and p == 1.0
    trend = linear_trend([0, 1, 2, 3], [1, 3, 5, 7])
    assert trend["slope"] == pytest.approx(2.0) and trend["intercept"] == pytest.approx(1.0)
    assert trend["spearman"] == pytest.approx(1.0)


def test_verdict_detects_the_claim_and_its_absence():
    assert verdict(study_frame(0.05)).text.startswith("**Reproduced.**")
    assert verdict(study_frame(-0.05)).text.startswith("**Not reproduced.**")
    assert verdict(study_frame(0.05)[lambda f: f.proportion > 0]).text.startswith("Not testable")


def test_best_proportion_table():
    table = best_proportions(study_frame(0.05))
    low = table[table["budget"] == "10 labels/class"].set_index("level")
    assert low.loc["D2", "best proportion"] == "50%" and low.loc["D6", "best proportion"] == "0%"
    assert low.loc["D2", "gain over real only"] == pytest.approx(0.05, abs=0.01)


def test_report_writes_markdown_html_and_plots(tmp_path):
    study_frame(0.05).to_parquet(tmp_path / "results.parquet")
    pd.DataFrame({"level": ["D0", "D6"], "n": [600, 600], "vendi_q1": [5.1, 30.2]}).to_parquet(
        tmp_path / "pools.parquet")
    path = write_report(tmp_path)
    text = path.read_text()
    assert "**Reproduced.**" in text and "## Generated pools" in text
    for image in ("accuracy_vs_level.png", "heatmap_level_proportion.png",
                  "accuracy_vs_data_vendi_q1.png", "accuracy_vs_data_mmd2.png"):
        assert f"]({image})" in text
        png = (path.parent / image).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert "<img src='accuracy_vs_level.png'" in (path.parent / "report.html").read_text()


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="has no results.parquet"):
        write_report(tmp_path)
    pd.DataFrame({"level": ["D0"], "seed": [0]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ReportError, match=r"lacks columns \['accuracy', 'budget', 'proportion'\]"):
        write_report(tmp_path)
