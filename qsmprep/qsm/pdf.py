"""Projection onto dipole fields (PDF): background-field removal that keeps the whole brain mask.

Liu T, Khalidov I, de Rochefort L, et al.  A novel background field removal method for MRI using
projection onto dipole fields (PDF).  NMR Biomed 2011;24:1129-1136 (doi 10.1002/nbm.1670).

The background field is modelled as the field of susceptibility sources *outside* the brain mask
``M``::

    chi_b = argmin_{chi_b = (1 - M) chi_b}  || W (f - D chi_b) ||^2_M        (conjugate gradients)
    f_local = M (f - D chi_b)

``D`` the dipole convolution (``qsmprep.qsm.dipole.dipole_kernel``, D(0) = 0) on the mask's bounding
box grown by ``margin_mm`` (the sources live in that margin and in any holes of the mask), ``W`` a
data weight (magnitude or 1/noise; default the mask).  Unlike SMV-based removal (iSMV, V-SHARP) no
voxel of the mask is eroded, and the local field keeps its part that is harmonic inside the mask
whenever outside sources cannot explain it -- which is what lets a strong data fit (NSIDL's
``strong`` preset and its field extrapolation) use the field up to the mask's edge.

Units: field in ppm (or Hz: the operation is linear), voxel size in mm, ``b0_dir`` in array axes.
One CG iteration costs two FFT pairs on the grid.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm.dipole import dipole_kernel, fft_workers
from qsmprep.qsm.geometry import bounding_box
from qsmprep.qsm.solvers import conjugate_gradient

#: Defaults (chosen on the validation heads, ``benchmarks/RESULTS.md``).
PDF_MARGIN_MM = 20.0
PDF_TOL = 1e-3
PDF_MAX_ITER = 60


def pdf(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    weight: np.ndarray | None = None,
    margin_mm: float = PDF_MARGIN_MM,
    tol: float = PDF_TOL,
    max_iter: int = PDF_MAX_ITER,
) -> tuple[np.ndarray, np.ndarray]:
    """PDF background-field removal (module docstring).

    Parameters
    ----------
    field_ppm : 3-D total (unwrapped) field, ppm or Hz.  mask : 3-D brain mask (bool or 0/1).
    voxel_size : mm.  b0_dir : B0 direction in array axes.
    weight : data weight (any scale, >= 0; e.g. the multi-echo fit weight), default the mask.
    margin_mm : the outside sources live within this distance of the mask's bounding box.
    tol, max_iter : CG stopping rule (relative residual of the normal equations; iterations).

    Returns ``(local field, mask)``: float32 in the input's unit, zero outside the mask, mean
    removed inside it; the mask (bool) is the input mask (nothing is eroded).  The CG iteration
    count of the last call is in ``pdf.last_iterations``.
    """
    f = np.asarray(field_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"pdf needs a 3-D field and a mask of the same shape, got {f.shape} and {m.shape}.")
    if not m.any():
        raise ValueError("pdf got an empty brain mask; check the masking step.")
    if not np.all(np.isfinite(f[m])):
        raise ValueError("pdf got non-finite field values inside the mask; check the field fit.")
    vs = tuple(float(v) for v in voxel_size)
    margin = [int(np.ceil(margin_mm / d)) for d in vs]
    box = bounding_box(m, 0)
    lo = [s.start - g for s, g in zip(box, margin)]
    shape = tuple(int(sfft.next_fast_len(s.stop - s.start + 2 * g, real=True)) for s, g in zip(box, margin))
    # the grid may reach beyond the volume: place the cropped volume inside it
    src = tuple(slice(max(a, 0), min(a + n, N)) for a, n, N in zip(lo, shape, f.shape))
    dst = tuple(slice(s.start - a, s.stop - a) for s, a in zip(src, lo))
    mc = np.zeros(shape, bool)
    mc[dst] = m[src]
    fc = np.zeros(shape, np.float32)
    fc[dst] = np.where(m[src], f[src], 0)
    if weight is None:
        w2 = mc.astype(np.float32)
    else:
        w = np.zeros(shape, np.float32)
        w[dst] = np.where(m[src], np.abs(np.nan_to_num(np.asarray(weight, np.float32)[src])), 0)
        scale = float(np.percentile(w[mc], 99)) if mc.any() else 1.0
        w2 = (np.clip(w / max(scale, 1e-30), 0, 1) ** 2).astype(np.float32)
    d = dipole_kernel(shape, vs, b0_dir, rfft=True).astype(np.float32)
    wk = fft_workers()
    out_m = (~mc).astype(np.float32)

    def conv(x):
        return sfft.irfftn(sfft.rfftn(x, workers=wk) * d, s=shape, workers=wk).astype(np.float32)

    def apply_a(x):
        return out_m * conv(w2 * conv(x))

    rhs = out_m * conv(w2 * fc)
    chib, pdf.last_iterations = conjugate_gradient(apply_a, rhs, tol=tol, max_iter=max_iter)
    loc = np.where(mc, fc - conv(chib), 0).astype(np.float32)
    loc[mc] -= loc[mc].mean()
    out = np.zeros(f.shape, np.float32)
    out[src] = loc[dst]
    return out, m.copy()
