"""Known-answer tests of qsmprep.group_stats (group means, CIs, effect sizes, fits, FDR, repeated measures)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from qsmprep import group_stats as gs


def test_mean_ci_known_answer():
    r = gs.mean_ci([1, 2, 3, 4, 5, np.nan])  # NaN dropped
    assert r["n"] == 5 and r["mean"] == 3.0
    assert r["sd"] == pytest.approx(math.sqrt(2.5)) and r["sem"] == pytest.approx(math.sqrt(0.5))
    half = 2.7764451051977987 * math.sqrt(0.5)  # t(0.975, 4)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((3 - half, 3 + half))
    one = gs.mean_ci([0.2])
    assert one["mean"] == 0.2 and math.isnan(one["sd"]) and math.isnan(one["ci_low"])
    assert gs.mean_ci([])["n"] == 0
    r90 = gs.mean_ci([1, 2, 3, 4, 5], confidence=0.90)
    assert r90["ci_high"] - 3 == pytest.approx(2.131846786 * math.sqrt(0.5), rel=1e-8)


def test_cohens_d_and_hedges_g_known_answer():
    a, b = [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]  # difference 2, both SDs 1 -> d = 2
    r = gs.hedges_g(a, b)
    assert r["cohens_d"] == pytest.approx(2.0)
    j = math.gamma(2) / (math.sqrt(2) * math.gamma(1.5))  # exact J for df = 4
    assert gs.hedges_correction(4) == pytest.approx(j) and j == pytest.approx(0.797885, abs=1e-6)
    assert r["hedges_g"] == pytest.approx(2 * j)
    g = 2 * j
    se = math.sqrt(6 / 9 + g * g / 12)
    assert r["hedges_g_ci_low"] == pytest.approx(g - 1.959963985 * se)
    assert gs.hedges_g(b, a)["hedges_g"] == pytest.approx(-2 * j)  # sign: second minus first
    assert gs.hedges_correction(1000) == pytest.approx(1 - 3 / (4 * 1000 - 1), abs=1e-7)  # classic approximation
    assert math.isnan(gs.hedges_g([1.0], b)["cohens_d"]) and math.isnan(gs.hedges_g([1, 1], [2, 2])["hedges_g"])
    assert gs.pooled_sd([1, 2, 3], [2, 4, 6]) == pytest.approx(math.sqrt((2 * 1 + 2 * 4) / 4))


def test_welch_difference_known_answer():
    from scipy import stats

    a, b = [1.0, 2.0, 3.0], [3.0, 4.0, 5.0]
    r = gs.welch_difference(a, b)
    assert r["difference"] == 2.0 and r["t"] == pytest.approx(2 / math.sqrt(2 / 3)) and r["df"] == pytest.approx(4)
    ref = stats.ttest_ind(b, a, equal_var=False)
    assert r["p"] == pytest.approx(ref.pvalue) and r["p"] == pytest.approx(0.0705, abs=5e-4)
    half = 2.7764451051977987 * math.sqrt(2 / 3)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - half, 2 + half))
    rng = np.random.default_rng(1)  # unequal variances and sizes: compare with scipy
    x, y = rng.normal(0, 1, 7), rng.normal(0.5, 3, 12)
    r = gs.welch_difference(x, y)
    ref = stats.ttest_ind(y, x, equal_var=False)
    assert r["t"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    ci = ref.confidence_interval(0.95)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_one_way_known_answer():
    from scipy import stats

    r = gs.one_way([[1, 2, 3], [4, 5, 6]])  # SSb 13.5, SSw 4, MSw 1
    assert r["F"] == pytest.approx(13.5) and (r["df_between"], r["df_within"]) == (1, 4)
    assert r["eta_squared"] == pytest.approx(13.5 / 17.5)
    assert r["omega_squared"] == pytest.approx(12.5 / 18.5)
    assert r["p"] == pytest.approx(stats.f_oneway([1, 2, 3], [4, 5, 6]).pvalue)
    groups = [[0.1, 0.2, 0.15, 0.3], [0.4, 0.35, 0.5], [0.2, 0.25, 0.1, 0.3, 0.22]]
    r = gs.one_way(groups)
    ref = stats.f_oneway(*groups)
    assert r["F"] == pytest.approx(ref.statistic) and r["p"] == pytest.approx(ref.pvalue)
    assert math.isnan(gs.one_way([[1, 2, 3]])["F"])


def test_linear_fit_known_answer():
    f = gs.linear_fit([1, 2, 3, 4, 5], [2, 4, 5, 4, 5])  # slope 0.6, intercept 2.2, SSE 2.4
    assert f["slope"] == pytest.approx(0.6) and f["intercept"] == pytest.approx(2.2) and f["n"] == 5
    assert f["r"] == pytest.approx(math.sqrt(0.6)) and f["r_squared"] == pytest.approx(0.6)
    se = math.sqrt(2.4 / 3 / 10)
    assert f["slope_se"] == pytest.approx(se)
    assert f["slope_ci_high"] == pytest.approx(0.6 + 3.182446305284263 * se)  # t(0.975, 3)
    from scipy import stats

    assert f["p"] == pytest.approx(stats.linregress([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]).pvalue)
    # chi (ppm) against age (years): 0.001 ppm/year exactly
    age = np.array([20.0, 35, 50, 65, 80, np.nan])
    chi = 0.05 + 0.001 * (age - 50)
    f = gs.linear_fit(age, chi)
    assert f["n"] == 5 and f["slope"] == pytest.approx(0.001) and f["p"] == 0.0 and f["r"] == pytest.approx(1.0)
    assert math.isnan(gs.linear_fit([1, 1, 1], [1, 2, 3])["slope"])  # constant covariate
    assert math.isnan(gs.linear_fit([1, 2], [1, 2])["slope"])  # too few points


def test_fdr_bh_known_answer():
    from statsmodels.stats.multitest import multipletests

    p = np.array([0.01, 0.04, 0.03, 0.2, np.nan])
    q = gs.fdr_bh(p)
    assert q[:4] == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2]) and np.isnan(q[4])
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.2, 17)
    assert gs.fdr_bh(p) == pytest.approx(multipletests(p, method="fdr_bh")[1])
    assert gs.fdr_bh([]).size == 0


def _long(rows):
    return pd.DataFrame(rows, columns=["participant_id", "session_id", "acquisition", "run", "structure",
                                       "hemisphere", "mean_ppm"])


def test_participant_means_averages_repeated_measures():
    rows = [
        # sub-1: two sessions (0.10 / 0.14 left, 0.20 / 0.22 right) -> 0.12 / 0.21, bilateral 0.165
        ("sub-1", "ses-a", "n/a", "1", "putamen", "L", 0.10), ("sub-1", "ses-a", "n/a", "1", "putamen", "R", 0.20),
        ("sub-1", "ses-b", "n/a", "1", "putamen", "L", 0.14), ("sub-1", "ses-b", "n/a", "1", "putamen", "R", 0.22),
        # sub-2: three runs, one right value missing -> bilateral only from the runs with both sides
        ("sub-2", "n/a", "n/a", "1", "putamen", "L", 0.30), ("sub-2", "n/a", "n/a", "1", "putamen", "R", 0.40),
        ("sub-2", "n/a", "n/a", "2", "putamen", "L", 0.33), ("sub-2", "n/a", "n/a", "2", "putamen", "R", np.nan),
        ("sub-2", "n/a", "n/a", "3", "putamen", "L", 0.36), ("sub-2", "n/a", "n/a", "3", "putamen", "R", 0.44),
        # sub-3: no value at all -> kept with NaN, n_runs 0
        ("sub-3", "n/a", "n/a", "1", "putamen", "L", np.nan), ("sub-3", "n/a", "n/a", "1", "putamen", "R", np.nan),
    ]
    pm = gs.participant_means(_long(rows)).set_index(["participant_id", "hemisphere"])
    assert list(pm.loc["sub-1"].index) == ["L", "R", "bilateral"]
    assert pm.loc[("sub-1", "L"), "mean_ppm"] == pytest.approx(0.12)
    assert pm.loc[("sub-1", "R"), "mean_ppm"] == pytest.approx(0.21)
    assert pm.loc[("sub-1", "bilateral"), "mean_ppm"] == pytest.approx(0.165)
    assert tuple(pm.loc[("sub-1", "L"), ["n_runs", "n_sessions"]]) == (2, 2)
    assert pm.loc[("sub-2", "L"), "mean_ppm"] == pytest.approx(0.33)
    assert pm.loc[("sub-2", "R"), "mean_ppm"] == pytest.approx(0.42)
    assert pm.loc[("sub-2", "bilateral"), "mean_ppm"] == pytest.approx((0.35 + 0.40) / 2)
    assert tuple(pm.loc[("sub-2", "R"), ["n_runs", "n_sessions"]]) == (2, 1)
    assert tuple(pm.loc[("sub-2", "bilateral"), ["n_runs"]]) == (2,)
    assert np.isnan(pm.loc[("sub-3", "L"), "mean_ppm"]) and pm.loc[("sub-3", "L"), "n_runs"] == 0
    assert len(gs.participant_means(_long(rows), bilateral=False)) == 6


def _cohort(diff=0.02, slope=0.001):
    """Participant means of one region: 5 controls, 5 patients (+diff); chi = 0.05 + slope * (age - 50) + noise."""
    ages = [30, 40, 50, 60, 70]
    noise = [0.001, -0.002, 0.002, -0.002, 0.001]  # sums to 0, orthogonal to age
    rows, groups, age = [], {}, {}
    for i in range(10):
        pid, patient = f"sub-{i}", i >= 5
        v = 0.05 + slope * (ages[i % 5] - 50) + noise[i % 5] + (diff if patient else 0)
        rows.append({"participant_id": pid, "structure": "putamen", "hemisphere": "L", "mean_ppm": v,
                     "n_runs": 1, "n_sessions": 1})
        groups[pid] = "patient" if patient else "control"
        age[pid] = ages[i % 5]
    return pd.DataFrame(rows), groups, age


def test_group_tables_recover_known_difference():
    pm, groups, _ = _cohort(diff=0.02, slope=0.0)
    d = gs.group_descriptives(pm, groups, ["control", "patient"]).set_index("level")
    assert d.loc["control", "mean_ppm"] == pytest.approx(0.05) and d.loc["patient", "mean_ppm"] == pytest.approx(0.07)
    assert d.loc["patient", "n"] == 5
    e = gs.group_effects(pm, groups, ["control", "patient"], "control")
    row = e.iloc[0]
    assert row.contrast == "patient - control" and row.difference_ppm == pytest.approx(0.02)
    sd = np.std([0.001, -0.002, 0.002, -0.002, 0.001], ddof=1)
    assert row.cohens_d == pytest.approx(0.02 / sd) and row.hedges_g == pytest.approx(gs.hedges_correction(8) * 0.02 / sd)
    assert row.anova_F == pytest.approx(row.t ** 2)  # equal variances, two groups: F = t^2
    assert row.p_fdr == pytest.approx(row.p) and row.eta_squared > 0.9
    # three levels: omnibus over all, contrasts against the reference
    groups3 = {**groups, "sub-0": "mci", "sub-1": "mci"}
    e3 = gs.group_effects(pm, groups3, ["control", "mci", "patient"], "control")
    assert list(e3.contrast) == ["mci - control", "patient - control"]
    assert e3.anova_df_between.iloc[0] == 2 and e3.anova_F.nunique() == 1


def test_covariate_fits_recover_known_slope():
    pm, _, age = _cohort(diff=0.0, slope=0.001)
    f = gs.covariate_fits(pm, age, "age").iloc[0]
    assert f.n == 10 and f.slope_ppm_per_unit == pytest.approx(0.001, abs=1e-12)
    assert f.slope_ci_low_ppm_per_unit < 0.001 < f.slope_ci_high_ppm_per_unit
    assert f.intercept_ppm == pytest.approx(0.0)  # 0.05 - 0.001 * 50
    f0 = gs.covariate_fits(pm.assign(mean_ppm=pm.mean_ppm - 0.001 * pm.participant_id.map(age)), age, "age")
    assert f0.slope_ppm_per_unit.iloc[0] == pytest.approx(0.0, abs=1e-12)
