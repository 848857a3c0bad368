"""Total-variation dipole inversion (weighted linear data term, ADMM), a classical anchor.

FANSI's weighted-linear TV (Milovic et al., MRM 2018;80:814; Bilgic et al., MRM 2014;72:1444)::

    min_chi  lam ||grad chi||_1 + 1/2 || W (D chi - f) ||^2

solved by ADMM with the splits ``z = grad chi`` (soft thresholding) and ``y = D chi`` (a per-voxel
weighted average of the data and the model), so every chi update is one division in k-space::

    chi = F^-1[ (mu1 F(grad^T (z - s)) + mu2 D F(y - t)) / (mu1 |E|^2 + mu2 D^2 + eps) ]
    z   = shrink(grad chi + s, lam / mu1)
    y   = (W^2 f + mu2 (D chi + t)) / (W^2 + mu2)
    s  += grad chi - z;   t += D chi - y

``E`` the forward-difference gradient's spectrum (1/mm), ``D`` the dipole kernel
(``qsmprep.qsm.dipole``, D(0) = 0), ``W`` the data weight (normalised to [0, 1]; 0 outside the mask).
The grid is the mask's bounding box zero-padded by ``pad_factor``.  Four real FFTs per iteration.

Units: local field in ppm, chi in ppm, voxel size in mm, ``lam`` in ppm/mm-scaled units of the
gradient penalty (the field is in ppm, so ``lam`` trades ppm^2 of data misfit against ppm/mm of
gradient).  Defaults tuned on the validation heads (``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qsmprep.qsm.inversion import _check_inputs, _Grid, _normalised_weight

#: Defaults (validation heads, ``benchmarks/chain_benchmark.py --tune``).
TV_LAMBDA = 3e-5
TV_MU_RATIO = 100.0  # mu1 = ratio * lam (FANSI's choice)
TV_MU2 = 1.0
TV_N_ITER = 60


def _grad(x: np.ndarray, vs) -> list[np.ndarray]:
    return [(np.roll(x, -1, axis=a) - x) / np.float32(vs[a]) for a in range(3)]


def _grad_t(z: list[np.ndarray], vs) -> np.ndarray:
    out = np.zeros_like(z[0])
    for a in range(3):
        out += (np.roll(z[a], 1, axis=a) - z[a]) / np.float32(vs[a])
    return out


def checked_tv_weight(tv_weight, shape) -> np.ndarray | None:
    """A TV-weight map (float32) after checking it is finite, non-negative and of the mask's ``shape``; None stays None."""
    if tv_weight is None:
        return None
    tw = np.asarray(tv_weight, np.float32)
    if tw.shape != tuple(shape) or not np.all(np.isfinite(tw)) or np.any(tw < 0):
        raise ValueError(f"tv_weight must be a finite, non-negative map of the mask's shape {tuple(shape)}.")
    return tw


def weighted_threshold(thr, tw: np.ndarray, pad) -> np.ndarray:
    """The soft threshold ``thr`` times the TV-weight map ``tw`` on the padded grid (``pad``: the mask's grid to it),
    1 beyond the crop, as a scalar threshold has it."""
    return (thr * (pad(tw - np.float32(1)) + np.float32(1))).astype(np.float32)


def tv_admm(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    weight: np.ndarray | None = None,
    lam: float = TV_LAMBDA,
    n_iter: int = TV_N_ITER,
    mu_ratio: float = TV_MU_RATIO,
    mu2: float = TV_MU2,
    pad_factor: float = 1.5,
    chi_prior: np.ndarray | None = None,
    prior_weight: float = 0.0,
    tv_weight: np.ndarray | None = None,
) -> np.ndarray:
    """Weighted-linear TV inversion by ADMM (module docstring); chi in ppm, float32, zero outside the mask.

    Parameters
    ----------
    local_ppm : local field (ppm).  mask : brain mask.  voxel_size : mm.  b0_dir : unit B0 vector.
    weight : data weight (magnitude or 1/noise; normalised to [0, 1]), default the mask.
    lam : TV weight.  n_iter : ADMM iterations.  mu_ratio, mu2 : ADMM penalties
        (``mu1 = mu_ratio * lam``).  pad_factor : zero padding.
    chi_prior, prior_weight : adds ``prior_weight/2 ||chi - chi_prior||^2`` (e.g. a network's
        estimate, which then fills what neither the data nor TV determine); also the start.
    tv_weight : a per-voxel factor (>= 0, the mask's grid) of ``lam`` on the differences from each voxel (a
        spatially weighted TV, as MEDI's gradient mask; ``qsmprep.qsm.smvfit.smv_tv``'s); None: 1.
    """
    if lam <= 0 or mu2 <= 0:
        raise ValueError(f"tv_admm needs lam > 0 and mu2 > 0, got {lam}, {mu2}.")
    f, m = _check_inputs(local_ppm, mask, "tv_admm")
    w2 = _normalised_weight(weight, m, "tv_admm") ** 2
    g = _Grid(m, voxel_size, b0_dir, pad_factor)
    vs = g.voxel_size
    d = g.d
    mu1 = np.float32(mu_ratio * lam)
    mu2 = np.float32(mu2)
    pw = np.float32(prior_weight)
    denom = (mu1 * g.gradient_kernel() + mu2 * d * d + pw).astype(np.float32)
    if not pw:
        denom.flat[0] = 1.0  # k = 0: gradient and D both vanish; chi's mean stays 0
    w2p = g.pad(w2)
    fp = g.pad(f)
    w2f = w2p * fp
    x = np.zeros(g.shape, np.float32)
    prior_k = None
    if chi_prior is not None:
        x = g.pad(np.where(m, np.asarray(chi_prior, np.float32), 0))
        prior_k = g.rfft(x) * pw if pw else None
    z = [np.zeros_like(x) for _ in range(3)]
    s = [np.zeros_like(x) for _ in range(3)]
    y = np.zeros_like(x)
    t = np.zeros_like(x)
    thr = np.float32(lam / mu1)
    if tv_weight is not None:
        thr = weighted_threshold(thr, checked_tv_weight(tv_weight, m.shape), g.pad)
    if chi_prior is not None:  # warm start: the splits at the prior
        z = _grad(x, vs)
        y = g.irfft(d * g.rfft(x))
    for _ in range(int(n_iter)):
        num = mu1 * g.rfft(_grad_t([zi - si for zi, si in zip(z, s)], vs)) + mu2 * d * g.rfft(y - t)
        if prior_k is not None:
            num = num + prior_k
        xk = num / denom
        if not pw:
            xk.flat[0] = 0.0
        x = g.irfft(xk)
        dx = g.irfft(d * xk)
        gx = _grad(x, vs)
        for a in range(3):
            v = gx[a] + s[a]
            z[a] = np.sign(v) * np.maximum(np.abs(v) - thr, 0).astype(np.float32)
            s[a] = v - z[a]
        y = (w2f + mu2 * (dx + t)) / (w2p + mu2)
        t = t + dx - y
    return g.to_full(x)
