"""Report statistics and verdicts on hand-built study tables (the columns jaxdiv.study.runner writes)."""

import numpy as np
import pandas as pd
import pytest

from jaxdiv.report.config import ReportConfig
from jaxdiv.report.report import ReportError, write_report
from jaxdiv.report.stats import bootstrap_trend, budget_trend, paired_bootstrap
from jaxdiv.report import verdict as verdicts

# Positional order D0 < D3 < D6, measured Vendi order D0 < D6 < D3 (as on the demo's pools).
VENDI = {"D0": 5.0, "D3": 20.0, "D6": 12.0}
MMD2 = {"D0": 0.010, "D3": 0.018, "D6": 0.014}
FIDELITY = {"D0": 0.95, "D3": 0.70, "D6": 0.85}
BUDGETS = (8, 32)
SUBSETS, SEEDS, GEN_SEEDS = (0, 1), (0, 1, 2), (0, 1)


def pool_id(level, budget, subset, gen_seed):
    return f"{level}-b{budget}-s{subset}-g{gen_seed}"


def study_tables(gain: dict[str, float], noise: float = 0.003, domains: bool = False):
    """(results, pools, accepted rows). The gain of each level over real-only at budget 8 (a fifth of
    it at budget 32); with `domains`, ID accuracy follows pool label fidelity, OOD follows Vendi."""
    rng = np.random.default_rng(0)
    results, pools, accepted = [], [], []
    for budget in BUDGETS:
        scale = 1.0 if budget == 8 else 0.2
        for subset in SUBSETS:
            for seed in SEEDS:
                base = 0.6 + 0.15 * (budget == 32) + 0.01 * subset + noise * rng.standard_normal()
                results.append({"task": "trec", "level": "real-only", "mechanism": "real", "recipe": "",
                                "budget": budget, "subset": subset, "gen_seed": pd.NA, "seed": seed,
                                "protocol": "fixed_total", "proportion": 0.0, "accuracy": base, "fallback": "",
                                "label_leak": False, "label_probe": "", "pool": None})
                for level in VENDI:
                    for gen_seed in GEN_SEEDS:
                        pool = pool_id(level, budget, subset, gen_seed)
                        row = {"task": "trec", "level": level, "mechanism": "prompt", "recipe": "topics",
                               "budget": budget, "subset": subset, "gen_seed": gen_seed, "seed": seed,
                               "protocol": "fixed_total", "proportion": 0.5,
                               "accuracy": base + scale * gain[level] + noise * rng.standard_normal(),
                               "fallback": "short_class" if (level, seed) == ("D3", 2) else "",
                               "label_leak": False, "label_probe": "budget", "pool": pool}
                        if domains:
                            fidelity = FIDELITY[level] + 0.02 * gen_seed
                            row["accuracy_id"] = 0.3 + 0.6 * fidelity + noise * rng.standard_normal()
                            row["accuracy_ood"] = 0.4 + 0.01 * VENDI[level] + noise * rng.standard_normal()
                        results.append(row)
                for level in VENDI:
                    for gen_seed in GEN_SEEDS:
                        if seed:
                            continue
                        pools.append({"level": level, "mechanism": "prompt", "budget": budget, "subset": subset,
                                      "gen_seed": gen_seed, "pool": pool_id(level, budget, subset, gen_seed),
                                      "rows": 40, "accepted": 36, "reject_echo": 3, "reject_truncated": 1,
                                      "vendi_q1": VENDI[level] + 0.1 * gen_seed, "vendi_q1_ci": "[4, 6]",
                                      "mmd2": MMD2[level], "label_fidelity": FIDELITY[level] + 0.02 * gen_seed})
                        for i in range(12):
                            accepted.append({"level": level, "mechanism": "prompt", "budget": budget,
                                             "subset": subset, "gen_seed": gen_seed,
                                             "pool": pool_id(level, budget, subset, gen_seed),
                                             "id": f"{level}-{budget}-{subset}-{gen_seed}-{i}",
                                             "text": f"question {i} of {level}?", "label": "HUM"})
    results = pd.DataFrame(results)
    results["budget"] = results["budget"].astype("Int64")
    results["gen_seed"] = results["gen_seed"].astype("Int64")
    if domains:
        for name, column in (("sentiment_movie", "accuracy_id"), ("sentiment_nyt", "accuracy_ood")):
            results[f"accuracy_{name}"] = results[column]
    return results, pd.DataFrame(pools), pd.DataFrame(accepted)


def write_study(directory, **kwargs):
    results, pools, accepted = study_tables(**kwargs)
    results.to_parquet(directory / "results.parquet")
    pools.to_parquet(directory / "pools.parquet")
    accepted.to_parquet(directory / "accepted_rows.parquet")
    return results, pools


def reference_paired_bootstrap(a, b, seed, resamples, confidence):
    """float64 numpy, one resample at a time, drawing the same indices as the implementation."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for r in range(resamples):
        means[r] = np.mean(d[rng.integers(0, d.size, size=d.size)])
    low, high = np.percentile(means, [100 * (0.5 - confidence / 2), 100 * (0.5 + confidence / 2)])
    return d.mean(), low, high, np.mean(means > 0)


def test_paired_bootstrap_matches_numpy_reference():
    rng = np.random.default_rng(3)
    a = rng.uniform(0.5, 0.9, 12)
    b = np.clip(a - rng.normal(0.02, 0.03, 12), 0, 1)
    result = paired_bootstrap(a, b, seed=11, resamples=500, confidence=0.9)
    effect, low, high, share = reference_paired_bootstrap(a, b, 11, 500, 0.9)
    assert result.effect == pytest.approx(effect, abs=1e-15)
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert result.share_positive == share and result.n_pairs == 12 and result.testable
    # accuracies in [0, 1]: resampled means of their differences stay within [-1, 1]
    extreme = paired_bootstrap([1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0], seed=0)
    assert -1.0 <= extreme.ci_low <= extreme.ci_high <= 1.0
    # pairing matters: a shared per-pair offset cancels, so the interval is narrow
    offsets = rng.uniform(0.0, 0.5, 12)
    paired = paired_bootstrap(0.4 + offsets + 0.01, 0.4 + offsets, seed=0)
    assert paired.effect == pytest.approx(0.01) and paired.ci_high - paired.ci_low < 1e-9


def test_fewer_than_three_pairs_is_not_testable():
    two = paired_bootstrap([0.7, 0.8], [0.6, 0.6], seed=0)
    assert not two.testable and two.ci_low is None and two.ci_high is None and two.n_pairs == 2
    assert two.effect == pytest.approx(0.15)
    assert two.text().startswith("not testable (2 pairs")
    assert paired_bootstrap([0.7, 0.8, 0.9], [0.6, 0.6, 0.6], seed=0).testable


def test_trend_statistics():
    x = np.arange(10.0)
    fit = bootstrap_trend(x, 1.0 + 2.0 * x, seed=0, resamples=200)
    assert fit["slope"] == pytest.approx(2.0) and fit["pearson"] == pytest.approx(1.0)
    assert fit["slope_ci"] == pytest.approx((2.0, 2.0)) and fit["n"] == 10
    assert bootstrap_trend([1, 2], [3, 4], seed=0)["slope_ci"] == (None, None)
    # gains of 0.08, 0.04, 0.00 at budgets 4, 8, 16: -0.04 per doubling
    gains = {4: np.full(5, 0.08), 8: np.full(5, 0.04), 16: np.full(5, 0.0)}
    trend = budget_trend(gains, seed=0, resamples=100)
    assert trend["slope_per_doubling"] == pytest.approx(-0.04) and trend["ci"] == pytest.approx((-0.04, -0.04))
    assert budget_trend({4: np.ones(5), 8: np.ones(2)}, seed=0)["ci"] == (None, None)


def test_levels_are_ranked_by_measurement_not_position():
    _, pools, _ = study_tables({"D0": 0.0, "D3": -0.03, "D6": 0.05})
    ranking = verdicts.rank_levels(pools, "prompt", ReportConfig())
    assert ranking.order == ["D0", "D6", "D3"]
    assert (ranking.low, ranking.moderate, ranking.high) == ("D0", "D6", "D3")
    # a tolerance that admits only D0 and D6: no moderate level, and D3 is listed as not qualifying
    tight = verdicts.rank_levels(pools, "prompt", ReportConfig(shift_tolerance=0.005))
    assert tight.qualified == ["D0", "D6"] and tight.moderate is None
    assert list(tight.table.set_index("level")["minimal shift"].loc[["D0", "D6", "D3"]]) == [True, True, False]


def test_verdict_follows_the_measured_order():
    # Moderate by measurement (D6) helps and beats the most diverse (D3): reproduced. Read
    # positionally (moderate = D3) the same numbers would say "not reproduced".
    results, pools, _ = study_tables({"D0": 0.0, "D3": -0.03, "D6": 0.05})
    frame = verdicts.normalise_results(results)
    cfg = ReportConfig(resamples=500)
    rankings = {"prompt": verdicts.rank_levels(pools, "prompt", cfg)}
    table = verdicts.comparisons(frame, rankings, "accuracy", cfg)
    [claim] = verdicts.claim_verdicts(table, frame, rankings, "accuracy", cfg)
    assert claim.word == "Reproduced"
    assert "moderate (D6) − real-only: +0.0" in claim.text and "moderate − high (D3): +0.0" in claim.text
    at_low = table[table["budget"] == 8].set_index("comparison")["result"]
    assert at_low["D6 − real-only"].effect == pytest.approx(0.05, abs=0.003)
    assert at_low["moderate D6 − high D3"].effect == pytest.approx(0.08, abs=0.003)
    assert at_low["D3 − real-only"].ci_high < 0 < at_low["D6 − real-only"].ci_low
    assert "protocol fixed_total" in claim.text and "no label leak" in claim.text
    # pairs: 2 subsets x 3 seeds x 2 generation seeds per budget; the baseline is one per (budget, subset, seed)
    assert "12 pairs" in claim.text and len(verdicts.baseline(frame, "accuracy")) == 2 * 2 * 3
    # the gain (0.05 at budget 8, 0.01 at 32) shrinks by 0.02 per doubling
    assert "changes by -0.02" in claim.text and "it shrinks as the budget grows" in claim.text
    flipped, pools, _ = study_tables({"D0": 0.0, "D3": 0.05, "D6": -0.03})
    frame = verdicts.normalise_results(flipped)
    table = verdicts.comparisons(frame, rankings, "accuracy", cfg)
    assert verdicts.claim_verdicts(table, frame, rankings, "accuracy", cfg)[0].word == "Not reproduced"


def test_report_renders_every_section(tmp_path):
    write_study(tmp_path, gain={"D0": 0.0, "D3": -0.03, "D6": 0.05}, domains=True)
    path = write_report(tmp_path, cfg=ReportConfig(resamples=300))
    text = path.read_text()
    assert "**Reproduced** — prompt · fixed_total · synthetic 50%" in text
    for section in ("## Summary", "## Levels ranked by measured diversity (prompt)",
                    "## Test accuracy against diversity level — prompt, protocol fixed_total",
                    "## Paired comparisons", "## Fitted trends within each budget × proportion",
                    "## In- and out-of-distribution accuracy (study B)", "## Generated pools",
                    "## Appendix: accepted rows per level"):
        assert section in text, section
    assert "low = D0, moderate = D6, high = D3" in text and "moderate = the median rank" in text
    assert "Qualified (minimal shift): D0, D6, D3" in text
    assert "holds in 2 of 2 arm × budget group(s)" in text
    assert "| prompt | D3 | 8 | 320 | 288 | 24 | 8 |" in text  # gate counts: 8 pools of 40 rows
    assert "| D3 | short_class | 8 |" in text  # fallback cells
    assert text.count("question ") == 3 * 10  # 10 sampled accepted rows per level
    for image in ("accuracy_vs_level_prompt_fixed_total_budget.png",
                  "accuracy_vs_label_fidelity_prompt_fixed_total_budget.png",
                  "accuracy_vs_vendi_q1_prompt_fixed_total_budget.png", "accuracy_id_vs_label_fidelity_prompt_fixed_total_budget.png",
                  "accuracy_ood_vs_vendi_q1_prompt_fixed_total_budget.png"):
        assert f"]({image})" in text
        assert (path.parent / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<img src='heatmap_prompt_fixed_total_budget.png'" in (path.parent / "report.html").read_text()


def test_one_seed_reads_not_testable(tmp_path):
    results, pools = write_study(tmp_path, gain={"D0": 0.0, "D3": -0.03, "D6": 0.05})
    results[(results["seed"] == 0) & (results["subset"] == 0) & results["gen_seed"].isin([0]).fillna(True)
            ].to_parquet(tmp_path / "results.parquet")
    text = write_report(tmp_path, cfg=ReportConfig(resamples=200)).read_text()
    assert "**Not testable** — prompt" in text and "not testable (1 pair, needs ≥ 3)" in text
    assert "[-0.1000, -0.1000]" not in text


def test_report_errors(tmp_path):
    with pytest.raises(ReportError, match="has no results.parquet"):
        write_report(tmp_path)
    pd.DataFrame({"level": ["D0"], "seed": [0]}).to_parquet(tmp_path / "results.parquet")
    with pytest.raises(ReportError, match=r"lacks columns \['accuracy', 'budget', 'proportion'\]"):
        write_report(tmp_path)
    write_study(tmp_path, gain={"D0": 0.0, "D3": 0.0, "D6": 0.0})
    with pytest.raises(ReportError, match="pools.parquet lacks column 'dcscore'"):
        write_report(tmp_path, cfg=ReportConfig(diversity_metric="dcscore"))


def test_cli_reads_the_report_section_of_the_study_config(tmp_path, capsys):
    import json

    from jaxdiv.cli import main

    write_study(tmp_path, gain={"D0": 0.0, "D3": -0.03, "D6": 0.05})
    # a tolerance that admits D0 and D6 only: no moderate level, so the claim is not testable
    section = {"shift_tolerance": 0.005, "resamples": 200}
    (tmp_path / "config.json").write_text(json.dumps({"config_class": "StudyConfig", "config": {"report": section}}))
    assert main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report" / "report.md").read_text()
    assert "**Not testable** — prompt" in text and "2 level(s) qualify as minimal shift (D0, D6)" in text
    assert "within 0.005 of the lowest" in text
    (tmp_path / "config.json").write_text(json.dumps({"config": {"report": {"shift_metric": "vendi_q1"}}}))
    capsys.readouterr()
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("diversity_metric and shift_metric are both 'vendi_q1'") and "Traceback" not in err[0]
