"""ROMEO's multi-echo path: echo-independent phase offset, template echo, temporal unwrapping.

Units: phase in rad, echo times in s, voxel sizes in mm; 4-D arrays have the echoes on the LAST
axis.  Called by :func:`qsmprep.qsm.unwrap.unwrap_echoes` (``method="romeo"``, two echoes or
more); the spatial unwrapping is :mod:`qsmprep.qsm.unwrap_romeo`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .unwrap_common import TWO_PI, wrap
from .unwrap_romeo import reunwrap, unwrap_quality


def estimate_phase_offset(
    phase4d: np.ndarray,
    mag4d: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    sigma_mm: float = 2.0,
) -> np.ndarray:
    """Echo-independent phase offset phi0 (rad, unwrapped, smooth), MCPC-3D-S style.

    From the first two echoes: ``phi0 = phi_1 - TE_1 * dphi / (TE_2 - TE_1)`` with
    ``dphi = angle(S_2 conj(S_1))``; when ``TE_1/(TE_2 - TE_1)`` is an integer n this is
    ``angle(S_1 conj(dS)^n)`` without any unwrapping, otherwise ``dphi`` is unwrapped
    spatially first (median in [-pi, pi), i.e. the mean field is assumed near 0).
    The complex offset is smoothed (Gaussian, ``sigma_mm``, magnitude-weighted; a larger
    sigma lowers the noise but biases a curved offset by about ``sigma^2/2 * Laplacian``)
    and spatially unwrapped.  Returns float64 rad, 0 outside the mask.
    """
    from scipy import ndimage

    te = np.asarray(te_s, dtype=np.float64)
    ph = np.asarray(phase4d, dtype=np.float64)
    dte = te[1] - te[0]
    r = te[0] / dte
    dphi = wrap(ph[..., 1] - ph[..., 0])
    if abs(r - round(r)) < 1e-3:
        off = wrap(ph[..., 0] - round(r) * dphi)
    else:
        mag = None if mag4d is None else np.asarray(mag4d)[..., 0]
        d_uw = unwrap_quality(dphi.astype(np.float32), mag, mask).astype(np.float64)
        off = wrap(ph[..., 0] - r * d_uw)
    wgt = mask.astype(np.float64)
    if mag4d is not None:
        wgt = wgt * np.asarray(mag4d, dtype=np.float64)[..., 0]
    sig = [sigma_mm / float(v) for v in voxel_size]
    re = ndimage.gaussian_filter(wgt * np.cos(off), sig, mode="constant")
    im = ndimage.gaussian_filter(wgt * np.sin(off), sig, mode="constant")
    off_s = np.arctan2(im, re)
    del re, im, off
    # the smoothed offset varies slowly: unwrap it on a grid of about sigma_mm voxels and
    # carry the 2*pi*k back to the full grid (exact wherever the interpolation error < pi)
    f = [max(1, int(round(sigma_mm / float(v)))) for v in voxel_size]
    if all(k == 1 for k in f):
        return unwrap_quality(off_s.astype(np.float32), None, mask).astype(np.float64)
    sl = tuple(slice(k // 2, None, k) for k in f)
    # a coarse sample is inside if any fine mask voxel maps to it (nearest-sample rule below)
    coarse_m = ndimage.maximum_filter(mask.astype(np.uint8), size=[2 * (k // 2) + 1 for k in f])[sl] > 0
    coarse = unwrap_quality(off_s[sl].astype(np.float32), None, coarse_m).astype(np.float64)
    # nearest coarse sample for every fine voxel
    idx = [
        np.clip(np.round((np.arange(n) - k // 2) / k).astype(int), 0, c - 1)
        for n, k, c in zip(mask.shape, f, coarse.shape)
    ]
    up = coarse[np.ix_(*idx)]
    uw = off_s + TWO_PI * np.rint((up - off_s) / TWO_PI)
    return np.where(mask, uw, 0.0)


def _template_turns(uw_t: np.ndarray, c: np.ndarray, te: np.ndarray, t: int, m: np.ndarray, others: list[int]):
    """Global 2*pi*k of the spatially unwrapped template echo ``uw_t``: the median rule (median
    in [-pi, pi)), unless a candidate k0-2..k0+2 predicts the other echoes (wrapped phases ``c``)
    by the TE ratio better by more than 0.02 in mean cos(residual)."""
    k0 = -np.round(np.median(uw_t[m]) / TWO_PI) if m.any() else 0.0
    sub = np.flatnonzero(m.ravel())
    if sub.size > 200_000:
        sub = sub[:: sub.size // 200_000]
    best_k, best_score, score0 = k0, -np.inf, None
    for k in k0 + np.arange(-2, 3):
        base = uw_t.ravel()[sub] + TWO_PI * k
        sc = np.mean([np.mean(np.cos(c[..., e].ravel()[sub] - base * te[e] / te[t])) for e in others])
        if k == k0:
            score0 = sc
        if sc > best_score + 1e-9:
            best_k, best_score = k, sc
    if score0 is not None and score0 >= best_score - 0.02:
        best_k = k0
    return best_k


def _line_prediction(done: dict, te: np.ndarray, wts: np.ndarray | None, uw_t: np.ndarray, t: int, e: int):
    """Phase (rad) of echo ``e`` predicted by the weighted straight line with intercept through the
    echoes unwrapped so far (``done``: echo -> rad; weights ``wts`` per echo, None = equal): immune
    to what is left of the phase offset after the smooth correction.  Where the fit is singular,
    the template's slope ``uw_t / TE_t`` through 0."""
    shape = uw_t.shape
    sw = np.zeros(shape, np.float64)
    st = np.zeros(shape, np.float64)
    sp = np.zeros(shape, np.float64)
    stt = np.zeros(shape, np.float64)
    stp = np.zeros(shape, np.float64)
    for j, u in done.items():
        wj = np.ones(shape) if wts is None else wts[..., j] + 1e-30
        sw += wj
        st += wj * te[j]
        sp += wj * u
        stt += wj * te[j] ** 2
        stp += wj * te[j] * u
    det = sw * stt - st**2
    ok = det > 1e-30 * np.maximum(sw * stt, 1e-300)
    det = np.where(ok, det, 1.0)
    slope = np.where(ok, (sw * stp - st * sp) / det, uw_t / te[t])
    icpt = np.where(ok, (sp - slope * st) / np.where(sw > 0, sw, 1.0), 0.0)
    return icpt + slope * te[e]


def romeo_multi_echo(ph, mag, te, m, voxel_size, t, offset_correction, temporal_threshold):
    """Body of :func:`qsmprep.qsm.unwrap.unwrap_echoes` for ``method="romeo"`` and E >= 2.

    Arrays already cropped to the mask's box: ``ph``/``mag`` (X, Y, Z, E), ``m`` bool 3-D
    (not empty), ``te`` in s, ``t`` the template echo.  Returns float32 rad (X, Y, Z, E).
    """
    n_echo = ph.shape[-1]
    if offset_correction:
        off = estimate_phase_offset(ph, mag, te, m, voxel_size)
    else:
        off = np.zeros(m.shape, np.float64)
    c = np.empty(ph.shape, np.float32)  # offset-corrected wrapped phases
    for e in range(n_echo):
        c[..., e] = wrap(ph[..., e] - off)
    t2 = t + 1 if t + 1 < n_echo else t - 1
    magt = None if mag is None else mag[..., t]
    uw_t = unwrap_quality(c[..., t], magt, m, phase2=c[..., t2], te_ratio=te[t] / te[t2], correct_global=False)
    uw_t = uw_t.astype(np.float64)
    others = [e for e in range(n_echo) if e != t]
    uw_t = np.where(m, uw_t + TWO_PI * _template_turns(uw_t, c, te, t, m, others), 0.0)

    done = {t: uw_t}
    wts = None if mag is None else mag.astype(np.float64) ** 2
    for e in sorted(others, key=lambda e: abs(te[e] - te[t])):
        if len(done) == 1:
            pred = uw_t * (te[e] / te[t])  # ROMEO's TE-ratio rule (offset removed above)
        else:
            pred = _line_prediction(done, te, wts, uw_t, t, e)
        ce = c[..., e].astype(np.float64)
        uw_e = ce + TWO_PI * np.rint((pred - ce) / TWO_PI)
        tq = 1.0 - np.abs(pred - uw_e) / np.pi
        good = (tq >= temporal_threshold) & m
        if np.any(m & ~good):
            uw_e = reunwrap(c[..., e], uw_e, good, None if mag is None else mag[..., e], m)
        done[e] = np.where(m, uw_e, 0.0)
    out = np.zeros(ph.shape, np.float32)
    for e in range(n_echo):
        out[..., e] = np.where(m, done[e] + off, 0.0)
    return out
