"""Laplacian phase unwrapping (Schofield & Zhu 2003): discrete Laplacian and a DST Poisson solver.

Units: phase in rad, voxel sizes in mm, Laplacians in rad/mm^2.  The public entry point is
:func:`unwrap_laplacian` (also exported by :mod:`qsmprep.qsm.unwrap`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

from .dipole import fft_workers
from .geometry import bounding_box
from .unwrap_common import axis_slices, wrap


def discrete_laplacian(
    phase: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
    *,
    wrapped: bool = False,
) -> np.ndarray:
    """7-point discrete Laplacian in rad/mm^2 (float64).

    Only differences between two voxels that are both inside ``mask`` count (so
    at the mask edge this is the graph Laplacian of the masked region); 0 outside
    the mask.  With ``wrapped=True`` each neighbour difference is wrapped to
    [-pi, pi) first, which gives the Laplacian of the true (unwrapped) phase
    wherever neighbouring true differences are smaller than pi.
    """
    x = np.asarray(phase, dtype=np.float64)
    m = np.ones(x.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    lap = np.zeros(x.shape, np.float64)
    for ax in range(x.ndim):
        lo, hi = axis_slices(x.ndim, ax)
        d = x[hi] - x[lo]
        if wrapped:
            d = wrap(d)
        d *= (m[lo] & m[hi]) / float(voxel_size[ax]) ** 2
        lap[lo] += d
        lap[hi] -= d
    lap[~m] = 0.0
    return lap


def _dst_len(n: int, pad_factor: float) -> int:
    """Padded length N with N + 1 FFT-friendly (DST-I of N points uses an FFT of 2(N+1))."""
    target = max(n + 2, int(np.ceil(n * pad_factor)))
    return int(sfft.next_fast_len(target + 1, real=True)) - 1


def solve_poisson_dirichlet(rhs: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Solve ``L x = rhs`` exactly (7-point Laplacian, x = 0 just outside the box) with DST-I.

    ``rhs`` in rad/mm^2, result in rad (float64).  The DST-I diagonalises the
    discrete Dirichlet Laplacian with eigenvalues ``sum_i 2 (cos(pi k_i/(N_i+1)) - 1)/dx_i^2``,
    all non-zero, so the solve is exact and has no free constant.
    """
    w = fft_workers()
    spec = sfft.dstn(rhs, type=1, workers=w)
    eig = np.zeros(rhs.shape, np.float64)
    for ax, n in enumerate(rhs.shape):
        k = np.arange(1, n + 1)
        lam = 2.0 * (np.cos(np.pi * k / (n + 1)) - 1.0) / float(voxel_size[ax]) ** 2
        sh = [1] * rhs.ndim
        sh[ax] = n
        eig = eig + lam.reshape(sh)
    spec /= eig
    return sfft.idstn(spec, type=1, workers=w)


def unwrap_laplacian(
    phase: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
    *,
    pad_factor: float = 1.5,
) -> np.ndarray:
    """Laplacian phase unwrapping (Schofield & Zhu 2003), exact up to a harmonic function.

    The Laplacian of the true phase is computed from wrapped neighbour differences
    inside ``mask`` (:func:`discrete_laplacian` with ``wrapped=True``), and the
    Poisson equation is solved with a DST on the mask's bounding box zero-padded to
    about ``pad_factor`` times its size (Dirichlet condition at the padded border).  The
    result's discrete Laplacian equals the true phase's at every voxel whose six
    neighbours are in the mask, so result - truth is harmonic there; it is NOT
    congruent with the input (not input + 2*pi*k) and each call has its own
    offset.  The constant is chosen so the result agrees with the wrapped input on
    average (circular mean of the difference in the mask is 0).

    Parameters: phase in rad (wrapped), voxel_size in mm, mask bool (default all).
    Returns float32 rad, 0 outside the mask.
    """
    ph = np.asarray(phase, dtype=np.float64)
    if ph.ndim != 3:
        raise ValueError(f"unwrap_laplacian expects a 3-D phase volume, got shape {ph.shape}.")
    m = np.ones(ph.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    if not m.any():
        return np.zeros(ph.shape, np.float32)
    box = bounding_box(m, 1)
    phb, mb = ph[box], m[box]
    lap = discrete_laplacian(phb, voxel_size, mb, wrapped=True)
    big = tuple(_dst_len(n, pad_factor) for n in phb.shape)
    starts = tuple((b - n) // 2 for b, n in zip(big, phb.shape))
    inner = tuple(slice(s, s + n) for s, n in zip(starts, phb.shape))
    rhs = np.zeros(big, np.float64)
    rhs[inner] = lap
    del lap
    x = solve_poisson_dirichlet(rhs, voxel_size)[inner]
    del rhs
    c = np.angle(np.sum(np.exp(1j * (phb[mb] - x[mb]))))
    out = np.zeros(ph.shape, np.float32)
    ob = out[box]
    ob[mb] = x[mb] + c
    return out
