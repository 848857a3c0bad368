"""Group statistics of regional susceptibility: plain functions, arrays/DataFrames in and out.

No file I/O here; :func:`qsmprep.group.run_group` reads the tables, calls these functions and
writes the results.  Every value in ppm stays in ppm (differences, means, CIs); effect sizes
are unitless; slopes are in ppm per unit of the covariate.

Repeated measures: a participant may have several sessions/runs.  :func:`participant_means`
averages them first (the mean over the participant's runs with a finite value), so each
participant counts once in every test; the number of runs and sessions averaged is kept.

Conventions: ``confidence`` is the two-sided coverage (0.95 -> 95 % CI); standard deviations
use ddof=1; non-finite values are dropped before every computation.
"""

from __future__ import annotations

import math

import numpy as np

#: Default two-sided confidence level of every interval.
CONFIDENCE = 0.95
#: Name of the pseudo-hemisphere holding the mean of the left and right values.
BILATERAL = "bilateral"
#: Smallest number of participants per group for a CI / an effect size.
MIN_PER_GROUP = 2
#: Smallest number of participants with a finite covariate for a linear fit with a CI.
MIN_FIT = 3


def _finite(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def _tcrit(df: float, confidence: float) -> float:
    from scipy import stats

    return float(stats.t.ppf(0.5 + confidence / 2.0, df))


# ----------------------------------------------------------------------------- elementary
def mean_ci(values, confidence: float = CONFIDENCE) -> dict:
    """Mean with a t-based confidence interval.

    ``values`` in any unit (ppm here); returns ``n``, ``mean``, ``sd`` (ddof=1), ``sem`` =
    sd/sqrt(n), ``ci_low``/``ci_high`` = mean -/+ t_{(1+confidence)/2, n-1} * sem, all in the
    unit of ``values``.  With n < 2 only ``mean`` (n = 1) is defined; the rest is NaN.

    >>> r = mean_ci([1, 2, 3, 4, 5]); round(r["ci_low"], 5), round(r["ci_high"], 5)
    (1.03676, 4.96324)
    """
    v = _finite(values)
    n = int(v.size)
    out = {"n": n, "mean": float(v.mean()) if n else math.nan, "sd": math.nan, "sem": math.nan,
           "ci_low": math.nan, "ci_high": math.nan}
    if n >= 2:
        sd = float(v.std(ddof=1))
        sem = sd / math.sqrt(n)
        half = _tcrit(n - 1, confidence) * sem
        out.update(sd=sd, sem=sem, ci_low=out["mean"] - half, ci_high=out["mean"] + half)
    return out


def pooled_sd(a, b) -> float:
    """Pooled standard deviation sqrt(((n1-1) s1^2 + (n2-1) s2^2) / (n1 + n2 - 2)), unit of the data."""
    a, b = _finite(a), _finite(b)
    n1, n2 = a.size, b.size
    if n1 < 2 or n2 < 2:
        return math.nan
    return math.sqrt(((n1 - 1) * a.var(ddof=1) + (n2 - 1) * b.var(ddof=1)) / (n1 + n2 - 2))


def hedges_correction(df: float) -> float:
    """Exact small-sample factor J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2)) of Hedges' g.

    >>> round(hedges_correction(4), 6)
    0.797885
    """
    from scipy.special import gammaln

    if not df > 1:
        return math.nan
    return float(math.exp(gammaln(df / 2.0) - gammaln((df - 1) / 2.0)) / math.sqrt(df / 2.0))


def hedges_g(a, b, confidence: float = CONFIDENCE) -> dict:
    """Standardised difference of ``b`` minus ``a`` (unitless).

    ``cohens_d`` = (mean(b) - mean(a)) / pooled SD; ``hedges_g`` = J(n1 + n2 - 2) * d, the
    bias-corrected estimate (:func:`hedges_correction`); ``hedges_g_ci_low``/``_high``: the
    normal approximation g -/+ z * SE with SE^2 = (n1+n2)/(n1 n2) + g^2 / (2 (n1+n2))
    (Hedges & Olkin 1985).  NaN when a group has fewer than 2 values or the pooled SD is 0.
    """
    from scipy import stats

    a, b = _finite(a), _finite(b)
    n1, n2 = a.size, b.size
    out = {"cohens_d": math.nan, "hedges_g": math.nan, "hedges_g_ci_low": math.nan,
           "hedges_g_ci_high": math.nan}
    sp = pooled_sd(a, b)
    if not (sp > 0):
        return out
    d = (b.mean() - a.mean()) / sp
    g = hedges_correction(n1 + n2 - 2) * d
    se = math.sqrt((n1 + n2) / (n1 * n2) + g * g / (2.0 * (n1 + n2)))
    z = float(stats.norm.ppf(0.5 + confidence / 2.0))
    out.update(cohens_d=float(d), hedges_g=float(g), hedges_g_ci_low=g - z * se, hedges_g_ci_high=g + z * se)
    return out


def welch_difference(a, b, confidence: float = CONFIDENCE) -> dict:
    """Difference of means ``mean(b) - mean(a)`` with Welch's t-test (unequal variances).

    Returns ``difference``, ``ci_low``, ``ci_high`` (unit of the data), ``t``, ``df``
    (Welch-Satterthwaite) and the two-sided ``p``.  NaN where a group has fewer than 2 values
    or both variances are 0.
    """
    from scipy import stats

    a, b = _finite(a), _finite(b)
    n1, n2 = a.size, b.size
    out = {"difference": float(b.mean() - a.mean()) if n1 and n2 else math.nan,
           "ci_low": math.nan, "ci_high": math.nan, "t": math.nan, "df": math.nan, "p": math.nan}
    if n1 < 2 or n2 < 2:
        return out
    v1, v2 = a.var(ddof=1) / n1, b.var(ddof=1) / n2
    se = math.sqrt(v1 + v2)
    if not se > 0:
        return out
    df = (v1 + v2) ** 2 / (v1 ** 2 / (n1 - 1) + v2 ** 2 / (n2 - 1))
    t = out["difference"] / se
    half = _tcrit(df, confidence) * se
    out.update(ci_low=out["difference"] - half, ci_high=out["difference"] + half, t=float(t),
               df=float(df), p=float(2.0 * stats.t.sf(abs(t), df)))
    return out


def one_way(groups) -> dict:
    """One-way ANOVA over a list of samples: ``F``, ``df_between``, ``df_within``, ``p`` and effect sizes.

    ``eta_squared`` = SS_between / SS_total (unitless, biased upwards in small samples);
    ``omega_squared`` = (SS_between - (k-1) MS_within) / (SS_total + MS_within), the less
    biased estimate of the share of variance explained by the groups (may be slightly < 0).
    Samples with no finite value are ignored; NaN with < 2 samples or no within-group variance.
    """
    from scipy import stats

    samples = [s for s in (_finite(g) for g in groups) if s.size]
    k = len(samples)
    n = sum(s.size for s in samples)
    out = {"F": math.nan, "df_between": float(k - 1), "df_within": float(n - k), "p": math.nan,
           "eta_squared": math.nan, "omega_squared": math.nan}
    if k < 2 or n - k < 1:
        return out
    grand = np.concatenate(samples).mean()
    ss_b = float(sum(s.size * (s.mean() - grand) ** 2 for s in samples))
    ss_w = float(sum(((s - s.mean()) ** 2).sum() for s in samples))
    ss_t = ss_b + ss_w
    ms_w = ss_w / (n - k)
    if not ms_w > 0:
        return out
    f = (ss_b / (k - 1)) / ms_w
    out.update(F=f, p=float(stats.f.sf(f, k - 1, n - k)), eta_squared=ss_b / ss_t if ss_t > 0 else math.nan,
               omega_squared=(ss_b - (k - 1) * ms_w) / (ss_t + ms_w))
    return out


def linear_fit(x, y, confidence: float = CONFIDENCE) -> dict:
    """Ordinary least squares ``y = intercept + slope * x`` on the pairs where both are finite.

    Units: ``slope`` (and its ``slope_se``, ``slope_ci_low``/``_high``, t-based with n-2
    degrees of freedom) in units of y per unit of x (ppm per year for chi against age);
    ``intercept`` in units of y (the value at x = 0); ``r`` Pearson's correlation,
    ``r_squared``, ``p`` the two-sided p-value of slope = 0, ``n`` the number of pairs.
    NaN where n < 3 or x is constant.

    >>> f = linear_fit([1, 2, 3, 4, 5], [2, 4, 5, 4, 5]); round(f["slope"], 6), round(f["r_squared"], 6)
    (0.6, 0.6)
    """
    from scipy import stats

    x = np.asarray(x, dtype=float).ravel()
    y = np.asarray(y, dtype=float).ravel()
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    out = {"n": n, "slope": math.nan, "slope_se": math.nan, "slope_ci_low": math.nan,
           "slope_ci_high": math.nan, "intercept": math.nan, "r": math.nan, "r_squared": math.nan,
           "p": math.nan}
    if n < MIN_FIT:
        return out
    xm, ym = x.mean(), y.mean()
    sxx = float(((x - xm) ** 2).sum())
    if not sxx > 0:
        return out
    syy = float(((y - ym) ** 2).sum())
    sxy = float(((x - xm) * (y - ym)).sum())
    slope = sxy / sxx
    intercept = ym - slope * xm
    sse = max(syy - slope * sxy, 0.0)
    se = math.sqrt(sse / (n - 2) / sxx)
    half = _tcrit(n - 2, confidence) * se
    r = sxy / math.sqrt(sxx * syy) if syy > 0 else math.nan
    if se > 0:
        p = float(2.0 * stats.t.sf(abs(slope / se), n - 2))
    else:  # a perfect fit: p is 0 unless the slope is exactly 0
        p = 1.0 if slope == 0 else 0.0
    out.update(slope=slope, slope_se=se, slope_ci_low=slope - half, slope_ci_high=slope + half,
               intercept=float(intercept), r=r, r_squared=r * r if np.isfinite(r) else math.nan, p=p)
    return out


def fdr_bh(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values); NaN entries stay NaN and are not counted.

    q_(i) = min_{j >= i} p_(j) * m / j over the m finite p-values sorted ascending, capped at 1.

    >>> fdr_bh([0.01, 0.04, 0.03, 0.2]).round(6).tolist()
    [0.04, 0.053333, 0.053333, 0.2]
    """
    p = np.asarray(p, dtype=float)
    q = np.full(p.shape, np.nan)
    ok = np.where(np.isfinite(p))[0]
    m = ok.size
    if not m:
        return q
    order = ok[np.argsort(p[ok], kind="stable")]
    ranked = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    return q


# ----------------------------------------------------------------------------- tables
def participant_means(long_df, value: str = "mean_ppm", *, bilateral: bool = True):
    """One value per participant and region: the mean over the participant's runs.

    ``long_df``: the long group table (``participant_id``, ``session_id``, ``structure``,
    ``hemisphere``, ``value`` in ppm; one row per run and region).  Sessions, acquisitions
    and runs of a participant are repeated measures: their finite values are averaged
    (equal weight per run), so each participant counts once.  With ``bilateral`` a
    pseudo-hemisphere :data:`BILATERAL` is added: per run the mean of the left and right
    values (only where both are finite), then averaged over runs the same way.

    Returns a DataFrame ``participant_id, structure, hemisphere, <value>, n_runs, n_sessions``
    (``n_runs``: runs with a finite value that were averaged; ``n_sessions``: their distinct
    ``session_id`` values, 'n/a' counting as one), sorted by participant, structure order of
    appearance, then L, R, bilateral.  Participant/region pairs with no finite value are kept
    with NaN and ``n_runs`` 0.
    """
    import pandas as pd

    from qsmprep.group import RUN_KEYS, fill_run_keys

    keys = list(RUN_KEYS)
    df = fill_run_keys(long_df.copy())
    df = df[keys + ["structure", "hemisphere", value]].copy()
    df[value] = pd.to_numeric(df[value], errors="coerce")
    structures = list(dict.fromkeys(df["structure"]))
    hemis = list(dict.fromkeys(df["hemisphere"]))
    if bilateral:
        side = df[df["hemisphere"].isin(["L", "R"])]
        wide = side.set_index(keys + ["structure", "hemisphere"])[value].unstack("hemisphere")
        if {"L", "R"} <= set(wide.columns):
            both = wide["L"].where(np.isfinite(wide["L"]) & np.isfinite(wide["R"]))
            bi = ((both + wide["R"]) / 2.0).rename(value).reset_index()
            bi["hemisphere"] = BILATERAL
            df = pd.concat([df, bi[df.columns]], ignore_index=True)
            hemis.append(BILATERAL)
    fin = df[np.isfinite(df[value])]
    grp = fin.groupby(["participant_id", "structure", "hemisphere"], sort=False)
    agg = grp.agg(**{value: (value, "mean"), "n_runs": (value, "size"),
                     "n_sessions": ("session_id", "nunique")}).reset_index()
    full = df[["participant_id", "structure", "hemisphere"]].drop_duplicates()
    out = full.merge(agg, on=["participant_id", "structure", "hemisphere"], how="left")
    out["n_runs"] = out["n_runs"].fillna(0).astype(int)
    out["n_sessions"] = out["n_sessions"].fillna(0).astype(int)
    out["_s"] = out["structure"].map({s: i for i, s in enumerate(structures)})
    out["_h"] = out["hemisphere"].map({h: i for i, h in enumerate(hemis)})
    out = out.sort_values(["participant_id", "_s", "_h"], kind="stable").drop(columns=["_s", "_h"])
    return out.reset_index(drop=True)


def _region_rows(pm):
    """``(structure, hemisphere, row mask of pm)`` for each region of ``pm``, in order of appearance."""
    for s, h in dict.fromkeys(zip(pm["structure"], pm["hemisphere"])):
        yield s, h, (pm["structure"] == s) & (pm["hemisphere"] == h)


def group_descriptives(pm, groups, levels, value: str = "mean_ppm", confidence: float = CONFIDENCE):
    """Per region and group level: n participants, mean, SD, SEM and the t-based CI (ppm).

    ``pm``: :func:`participant_means` output; ``groups``: mapping participant_id -> level
    (participants absent or mapped to None/NaN are left out); ``levels``: the level order.
    Returns ``structure, hemisphere, level, n, mean_ppm, sd_ppm, sem_ppm, ci_low_ppm,
    ci_high_ppm`` (the ``_ppm`` names follow ``value``'s unit; NaN where undefined).
    """
    import pandas as pd

    lv = pm["participant_id"].map(dict(groups))
    rows = []
    for s, h, sel in _region_rows(pm):
        for level in levels:
            r = mean_ci(pm.loc[sel & (lv == level), value], confidence)
            rows.append({"structure": s, "hemisphere": h, "level": level, "n": r["n"],
                         "mean_ppm": r["mean"], "sd_ppm": r["sd"], "sem_ppm": r["sem"],
                         "ci_low_ppm": r["ci_low"], "ci_high_ppm": r["ci_high"]})
    return pd.DataFrame(rows)


def group_effects(pm, groups, levels, reference, value: str = "mean_ppm",
                  confidence: float = CONFIDENCE):
    """Per region: every level with >= 2 participants against ``reference``, plus a one-way ANOVA.

    Contrast ``level - reference``: Welch difference of participant means (ppm) with CI, t,
    df, p; Benjamini-Hochberg ``p_fdr`` over all regions of the same contrast; Cohen's d,
    Hedges' g and its CI (unitless; :func:`hedges_g`).  Omnibus columns (the same on every
    row of a region): ``anova_F``, ``anova_df_between``, ``anova_df_within``, ``anova_p``,
    ``anova_p_fdr`` (BH over regions), ``eta_squared``, ``omega_squared`` over the levels
    with >= 2 participants (:func:`one_way`).
    """
    import pandas as pd

    lv = pm["participant_id"].map(dict(groups))
    rows = []
    for s, h, sel in _region_rows(pm):
        samples = {level: _finite(pm.loc[sel & (lv == level), value]) for level in levels}
        usable = [level for level in levels if samples[level].size >= MIN_PER_GROUP]
        omni = one_way([samples[level] for level in usable])
        ref = samples[reference]
        for level in usable:
            if level == reference:
                continue
            w = welch_difference(ref, samples[level], confidence)
            g = hedges_g(ref, samples[level], confidence)
            rows.append({
                "structure": s, "hemisphere": h, "contrast": f"{level} - {reference}",
                "level": level, "reference": reference, "n_level": int(samples[level].size),
                "n_reference": int(ref.size), "difference_ppm": w["difference"],
                "ci_low_ppm": w["ci_low"], "ci_high_ppm": w["ci_high"], "t": w["t"], "df": w["df"],
                "p": w["p"], **g, "anova_F": omni["F"], "anova_df_between": omni["df_between"],
                "anova_df_within": omni["df_within"], "anova_p": omni["p"],
                "eta_squared": omni["eta_squared"], "omega_squared": omni["omega_squared"],
            })
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out.insert(out.columns.get_loc("p") + 1, "p_fdr", np.nan)
    for _, idx in out.groupby("contrast", sort=False).groups.items():
        out.loc[idx, "p_fdr"] = fdr_bh(out.loc[idx, "p"])
    first = out.drop_duplicates(["structure", "hemisphere"])
    q = dict(zip(zip(first["structure"], first["hemisphere"]), fdr_bh(first["anova_p"])))
    out.insert(out.columns.get_loc("anova_p") + 1, "anova_p_fdr",
               [q[k] for k in zip(out["structure"], out["hemisphere"])])
    return out


def covariate_fits(pm, covariate_values, covariate: str, value: str = "mean_ppm",
                   confidence: float = CONFIDENCE):
    """Per region: linear fit of participant means (ppm) against a numeric covariate.

    ``covariate_values``: mapping participant_id -> number (unit U, e.g. years).  Returns
    ``structure, hemisphere, covariate, n, slope_ppm_per_unit, slope_se_ppm_per_unit,
    slope_ci_low_ppm_per_unit, slope_ci_high_ppm_per_unit, intercept_ppm, r, r_squared, p,
    p_fdr`` (:func:`linear_fit`; BH over all regions).
    """
    import pandas as pd

    x_all = pd.to_numeric(pm["participant_id"].map(dict(covariate_values)), errors="coerce")
    rows = []
    for s, h, sel in _region_rows(pm):
        f = linear_fit(x_all[sel], pm.loc[sel, value], confidence)
        rows.append({"structure": s, "hemisphere": h, "covariate": covariate, "n": f["n"],
                     "slope_ppm_per_unit": f["slope"], "slope_se_ppm_per_unit": f["slope_se"],
                     "slope_ci_low_ppm_per_unit": f["slope_ci_low"],
                     "slope_ci_high_ppm_per_unit": f["slope_ci_high"], "intercept_ppm": f["intercept"],
                     "r": f["r"], "r_squared": f["r_squared"], "p": f["p"]})
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_fdr"] = fdr_bh(out["p"])
    return out
