"""Background-field removal: iSMV (default) and V-SHARP.

:func:`remove_background` is the app-facing entry point; its ``method`` selects :func:`ismv` (the
default, :data:`DEFAULT_METHOD`) or :func:`vsharp`, the V-SHARP below.  Measured on the validation head (seed 0, 1 mm,
noiseless total field, true brain mask; ``benchmarks/bfr_study.py``), qsm-ci xSIM of the local
field: V-SHARP (refine=1) 0.899, coverage 0.96, 6.6 s; iSMV (r = 2 mm, CG tol 1e-4) 0.936,
coverage 0.92, 7.8 s (scored in the smaller iSMV mask, V-SHARP stays below iSMV: see
``benchmarks/RESULTS.md``).  iSMV's price is the 2-voxel erosion instead of 1.

V-SHARP (variable-radius sophisticated harmonic artifact reduction):

Maths (Li et al., NeuroImage 2011; Wen et al., MRM 2014).  With ``s_r`` the normalised sphere of radius ``r``
(mm) and ``S_r(k)`` its spectrum, a harmonic background field ``b`` satisfies
``s_r * b = b`` wherever the sphere fits inside the brain, so the high-pass
``(delta - s_r) * f`` sees only the local field there.  For radii ``r_1 > r_2 > ... > r_N``:

1. reliable (eroded) mask ``E_r = {v : (s_r * M)(v) > 0.999} & M`` -- the voxels whose whole
   sphere lies in the brain mask, by FFT convolution (not a cross-shaped binary erosion,
   which reaches only ``r/sqrt(3)`` along diagonals; see the measured pitfall in 2.4);
2. each voxel takes the high-passed field of the *largest* radius whose mask holds it:
   ``g = sum_n (E_{r_n} - E_{r_{n-1}}) * F^-1[(1 - S_{r_n}) F f]``;
3. deconvolution with the largest kernel, truncated (TSVD):
   ``f_local = E_{r_N} * F^-1[ F g / (1 - S_{r_1}) ]`` where ``|1 - S_{r_1}| > threshold``, else 0.

The final mask is ``E_{r_N}``, i.e. the brain mask eroded by the smallest radius.

4. (``refine`` >= 1, default 1) residual correction of the rim.  Step 3 treats every voxel as if
   it had been high-passed with the largest kernel, which is wrong within ``r_1`` of the mask
   edge (there ``g`` came from smaller spheres), so the rim of the local field is distorted.
   Writing ``A x = sum_n (E_{r_n} - E_{r_{n-1}}) * F^-1[(1 - S_{r_n}) F x]`` (each voxel with
   its own radius) and ``P`` for the truncated deconvolution of step 3, the iteration
   ``x <- x + P (g - A x)`` (starting from ``x = P g``) solves ``A x = g`` better in the rim.
   Measured on a simulated 1 mm head (validation seed 0): qsm-ci xSIM of the local field
   0.878 -> 0.903 with one iteration (correlation 0.945 -> 0.947); more iterations raise xSIM
   further (0.913, 0.918) but let low spatial frequencies drift (NRMSE rises), so 1 is the default.

Accuracy limit (``benchmarks/bfr_study.py --diagnose``, validation head): V-SHARP's error sits
within ~12 mm of the mask edge (relative error 0.8 within 6 mm, 0.15 deeper).  It is neither the
TSVD's low-frequency loss (the true local field through the truncated 12 mm filter alone: xSIM
0.994; maximum radii of 18 or 25 mm change nothing) nor the rim correction (solving ``A x = g``
to a 0.6 % residual: 0.914): near the edge the small spheres only see the Laplacian of the local
field, so its part that is harmonic in the eroded mask is not in the data, and V-SHARP's TSVD fills
it in worse than iSMV's assumption (local field ~ 0 on the 2 mm rim: 0.936; V-SHARP with the same
2 mm erosion 0.917).  On the four benchmark heads V-SHARP scores 0.86-0.88, below the issue's 0.90.

Speed: the volume is cropped to the mask's bounding box plus a margin of the largest
radius, the field and mask are transformed once (``rfftn``, float32/complex64), and each
radius costs three real FFTs (sphere kernel, mask erosion, filtered field); each refinement
iteration costs one real FFT per radius plus three.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm.dipole import fft_workers
from qsmprep.qsm.geometry import bounding_box
from qsmprep.qsm.solvers import conjugate_gradient

#: Erosion threshold on ``SMV_r * mask``: a voxel is reliable when its sphere lies (all but
#: round-off) inside the mask.
EROSION_LEVEL = 0.999

#: Default method of :func:`remove_background` (see the measurements in the module docstring).
DEFAULT_METHOD = "ismv"


def remove_background(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    method: str = DEFAULT_METHOD,
) -> tuple[np.ndarray, np.ndarray]:
    """Background-field removal with the app's defaults: :func:`ismv` or :func:`vsharp`.

    ``method`` is one of :data:`METHODS` (default :data:`DEFAULT_METHOD`).  The field may be in
    ppm or Hz (the operation is linear; the output is in the input's unit).  Returns
    ``(local field, eroded mask)``: float32, zero outside the eroded mask (bool) where it is valid.
    """
    name = str(method).lower()
    if name not in METHODS:
        raise ValueError(f"background-removal method must be one of {METHODS}, got {method!r}.")
    return METHODS[name](field_ppm, mask, voxel_size)


def default_radii_mm(voxel_size: Sequence[float] = (1.0, 1.0, 1.0), max_radius_mm: float = 12.0) -> list[float]:
    """Default V-SHARP radii in mm: from ``max_radius_mm`` (12 mm) down to the largest voxel edge.

    Step = the largest voxel edge ``d``, i.e. ``12, 12-d, 12-2d, ... >= d``.  At 1 mm isotropic
    this is ``[12, 11, ..., 2, 1]`` (12 kernels); at 0.8 x 0.8 x 2 mm it is ``[12, 10, ..., 2]``.
    The smallest radius fixes the final erosion (one voxel along the coarsest axis).
    """
    d = float(max(voxel_size))
    if d <= 0:
        raise ValueError(f"voxel_size must be positive, got {tuple(voxel_size)}.")
    radii = []
    r = float(max_radius_mm)
    while r >= d - 1e-6:
        radii.append(round(r, 6))
        r -= d
    if not radii:
        radii = [d]
    return radii


def sphere_kernel(shape: Sequence[int], voxel_size: Sequence[float], radius_mm: float,
                  isotropic_moments: bool = True) -> np.ndarray:
    """Normalised discrete sphere (sum 1) of radius ``radius_mm`` centred at index 0 (wrapped).

    A voxel belongs to the sphere when the distance between voxel centres, in mm, is
    ``<= radius_mm`` (+1e-6).  Anisotropic voxels give an ellipsoid in index space.

    ``isotropic_moments`` (default): on anisotropic grids the discrete sphere's second moments
    ``M_a = sum_v w_v x_a^2`` (mm^2) differ between axes (1 x 1 x 2 mm, r = 2 mm: 0.93, 0.93, 0.53),
    so ``1 - S(k) ~ sum_a M_a k_a^2 / 2`` is an anisotropic Laplacian and the SMV no longer keeps
    harmonic fields: iSMV then solves the wrong boundary-value problem (local-field xSIM 0.39 on
    the true total field of a 1 x 1 x 2 mm head, 0.17 at 1 x 1 x 3 mm).  Weight
    ``(M_max - M_a) / (2 h_a^2)`` is added to the two neighbours along each axis ``a`` (edge
    ``h_a``) before normalising, which makes the moments equal (xSIM 0.93 and 0.92).  Isotropic
    grids have equal moments by symmetry: the kernel is unchanged there.
    Returns float32 of ``shape`` ready for ``rfftn``.
    """
    vs = [float(d) for d in voxel_size]
    half = [int(np.floor(radius_mm / d + 1e-6)) for d in vs]
    if isotropic_moments:
        half = [max(h, 1) for h in half]  # room for the axial neighbours
    for h, n in zip(half, shape):
        if 2 * h + 1 > n:
            raise ValueError(
                f"V-SHARP sphere of radius {radius_mm} mm does not fit in a grid of shape {tuple(shape)}; "
                "use smaller radii_mm."
            )
    axes = [np.arange(-h, h + 1) * d for h, d in zip(half, vs)]
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    inside = (gx**2 + gy**2 + gz**2) <= radius_mm**2 + 1e-6
    ball = inside.astype(np.float32)
    ball /= ball.sum()
    if isotropic_moments:
        w = inside / float(inside.sum())
        moments = np.array([(w * g**2).sum() for g in (gx, gy, gz)])
        if moments.max() - moments.min() > 1e-9 * moments.max():
            centre = tuple(half)
            for a in range(3):
                c = (moments.max() - moments[a]) / (2.0 * vs[a] ** 2)
                for step in (-1, 1):
                    idx = list(centre)
                    idx[a] += step
                    w[tuple(idx)] += c
            ball = (w / w.sum()).astype(np.float32)
    ker = np.zeros(shape, dtype=np.float32)
    idx = np.ix_(*[np.arange(-h, h + 1) % n for h, n in zip(half, shape)])
    ker[idx] = ball
    return ker


def ismv_radius_mm(voxel_size: Sequence[float] = (1.0, 1.0, 1.0)) -> float:
    """Default iSMV radius in mm: ``max(2 * smallest voxel edge, largest voxel edge)``.

    Two voxels at isotropic resolution (the paper's choice: 2 mm at 1 mm, 4 mm at 2 mm, as
    before), but on thick slices no more than one slice: 2 mm at 1 x 1 x 2 mm and 0.6 x 0.6 x 2 mm,
    3 mm at 1 x 1 x 3 mm, where twice the largest edge (6 mm) would erode a quarter of the brain
    (true total field of a 1 x 1 x 3 mm head, true brain mask: coverage 0.75 at 6 mm, 0.88 at 3 mm;
    local-field xSIM 0.95 and 0.92 with the moment-corrected sphere of :func:`sphere_kernel`).
    """
    vs = [float(v) for v in voxel_size]
    return max(2.0 * min(vs), max(vs))


def vsharp(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    radii_mm: Sequence[float] | None = None,
    threshold: float = 0.05,
    refine: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """V-SHARP background-field removal (the steps in the module docstring).

    Parameters
    ----------
    field_ppm : 3-D total (unwrapped) field in ppm (Hz input works too: the operation is linear,
        the output is in the input's unit).
    mask : 3-D brain mask (bool or 0/1).
    voxel_size : voxel edge lengths in mm.
    radii_mm : SMV radii in mm, any order (sorted descending here).  Default
        :func:`default_radii_mm` -- 12 mm down to the largest voxel edge in steps of it.
    threshold : TSVD threshold on ``|1 - S_{r_max}(k)|`` for the final deconvolution (0.05).
    refine : residual-correction iterations for the rim (step 4 above; 0 = classic V-SHARP).

    Returns
    -------
    (local_ppm, eroded_mask) : the local field (float32, same unit as ``field_ppm``, zero
        outside ``eroded_mask``) and the final reliable mask (bool; the brain mask eroded by
        the smallest radius).
    """
    field = np.asarray(field_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    _check_inputs(field, m, "vsharp")
    vs = tuple(float(v) for v in voxel_size)
    radii = sorted((float(r) for r in (radii_mm if radii_mm is not None else default_radii_mm(vs))), reverse=True)
    if not radii or radii[-1] <= 0:
        raise ValueError(f"radii_mm must be positive, got {radii_mm}.")

    # Crop to the mask's bounding box + a margin of the largest sphere, round to fast FFT sizes.
    margin = [int(np.ceil(radii[0] / d)) + 2 for d in vs]
    box = bounding_box(m, margin)
    mc = m[box]
    fc = np.where(mc, field[box], 0.0).astype(np.float32)
    shape = tuple(int(sfft.next_fast_len(n + mg, real=True)) for n, mg in zip(mc.shape, margin))
    w = fft_workers()

    def pad(a):
        out = np.zeros(shape, dtype=np.float32)
        out[tuple(slice(0, n) for n in a.shape)] = a
        return out

    crop = tuple(slice(0, n) for n in mc.shape)
    f_k = sfft.rfftn(pad(fc), workers=w).astype(np.complex64, copy=False)
    m_k = sfft.rfftn(pad(mc.astype(np.float32)), workers=w).astype(np.complex64, copy=False)

    g = np.zeros(mc.shape, dtype=np.float32)
    which = np.full(mc.shape, -1, dtype=np.int16)  # index into radii of each voxel's sphere
    kernels = []  # 1 - S_r half spectra, kept for the refinement
    eroded = mc
    for i, r in enumerate(radii):
        s_k = sfft.rfftn(sphere_kernel(shape, vs, r), workers=w).real.astype(np.float32)
        one_minus_s = (1.0 - s_k).astype(np.float32)
        del s_k
        if refine > 0 or i == 0:
            kernels.append(one_minus_s)
        eroded = (sfft.irfftn(m_k * (1.0 - one_minus_s), s=shape, workers=w)[crop] > EROSION_LEVEL) & mc
        new = eroded & (which < 0)
        if new.any():
            hp = sfft.irfftn(f_k * one_minus_s, s=shape, workers=w)[crop]
            g[new] = hp[new]
            which[new] = i
    if not eroded.any():
        raise ValueError(
            f"V-SHARP eroded the whole mask (smallest radius {radii[-1]} mm); the mask is too small "
            "or radii_mm too large."
        )
    del f_k, m_k
    g[~eroded] = 0.0  # final mask = erosion by the smallest radius

    one_minus = kernels[0]
    inv = np.zeros_like(one_minus)
    keep = np.abs(one_minus) > threshold
    inv[keep] = 1.0 / one_minus[keep]
    del keep

    def deconvolve(y):
        return np.where(eroded, sfft.irfftn(sfft.rfftn(pad(y), workers=w) * inv, s=shape, workers=w)[crop], 0.0)

    loc = deconvolve(g).astype(np.float32)
    for _ in range(int(refine)):
        xk = sfft.rfftn(pad(loc), workers=w)
        ax = np.zeros(mc.shape, dtype=np.float32)
        for i, ker in enumerate(kernels):
            sel = which == i
            if sel.any():
                ax[sel] = sfft.irfftn(xk * ker, s=shape, workers=w)[crop][sel]
        del xk
        loc = (loc + deconvolve(np.where(eroded, g - ax, 0.0).astype(np.float32))).astype(np.float32)

    out = np.zeros(field.shape, dtype=np.float32)
    out[box] = loc
    out_mask = np.zeros(field.shape, dtype=bool)
    out_mask[box] = eroded
    return out, out_mask


def _eroded_mask(m_k: np.ndarray, shape, crop, vs, radius_mm: float, mc: np.ndarray, w: int):
    """(eroded mask, S_r half spectrum): voxels of ``mc`` whose whole r-sphere lies in ``mc``."""
    s_k = sfft.rfftn(sphere_kernel(shape, vs, radius_mm), workers=w).real.astype(np.float32)
    eroded = (sfft.irfftn(m_k * s_k, s=shape, workers=w)[crop] > EROSION_LEVEL) & mc
    return eroded, s_k


def ismv(
    field_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    radius_mm: float | None = None,
    tol: float = 1e-4,
    max_iter: int = 500,
) -> tuple[np.ndarray, np.ndarray]:
    """iSMV background-field removal (Wen et al., MRM 2014), fixed point solved by conjugate gradients.

    With ``E`` the mask eroded by the sphere of radius ``r`` (default :func:`ismv_radius_mm`:
    two voxels at isotropic resolution, the paper's choice, one slice on thick slices) and ``R = M - E`` the rim, iSMV finds the background ``b`` that equals
    the total field ``f`` on the rim and satisfies the mean-value property ``b = s_r * b`` on
    ``E`` (a harmonic function with Dirichlet data on the rim; the local field on the rim is
    assumed negligible).  The original fixed-point iteration ``b <- E (s_r * b) + R f`` converges
    slowly; the same fixed point solves the symmetric positive-definite system
    ``(I - P_E S P_E) b_E = P_E S (R f)``, which conjugate gradients solves in far fewer FFTs.
    ``tol`` is the relative residual ``||r|| / ||rhs||`` at which CG stops (1e-4: on the 1 mm
    validation head CG stops after ~55 iterations; 1e-3 stops after ~20, before convergence,
    xSIM 0.918 instead of 0.936), ``max_iter`` its iteration cap (500).  Anisotropic voxels give
    an ellipsoid in index space whose second moments are made equal (:func:`sphere_kernel`).

    Returns ``(local_ppm, E)``: ``f - b`` on ``E`` (float32, the input's unit), 0 elsewhere,
    and ``E`` (bool).  The CG iteration count of the last call is in ``ismv.last_iterations``.
    """
    field = np.asarray(field_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    _check_inputs(field, m, "ismv")
    vs = tuple(float(v) for v in voxel_size)
    r = float(radius_mm) if radius_mm is not None else ismv_radius_mm(vs)
    if r <= 0:
        raise ValueError(f"ismv radius_mm must be positive, got {radius_mm}.")
    margin = [int(np.ceil(r / d)) + 2 for d in vs]
    box = bounding_box(m, margin)
    mc = m[box]
    # zero padding of at least the margin on every axis: where the mask reaches the edge of the image
    # (slab coverage) the box is clipped there, and the FFT's wrap-around would join the two ends
    inner = bounding_box(mc)
    gap = [sl.start + (n - sl.stop) for sl, n in zip(inner, mc.shape)]
    shape = tuple(int(sfft.next_fast_len(n + max(0, mg - gp), real=True)) for n, mg, gp in zip(mc.shape, margin, gap))
    crop = tuple(slice(0, n) for n in mc.shape)
    w = fft_workers()

    def pad(a):
        out = np.zeros(shape, dtype=np.float32)
        out[crop] = a
        return out

    m_k = sfft.rfftn(pad(mc.astype(np.float32)), workers=w).astype(np.complex64, copy=False)
    eroded, s_k = _eroded_mask(m_k, shape, crop, vs, r, mc, w)
    del m_k
    if not eroded.any():
        raise ValueError(f"iSMV eroded the whole mask (radius {r} mm); the mask is too small or radius_mm too large.")
    fc = field[box]
    rim = mc & ~eroded
    bc = np.where(rim, fc, 0.0).astype(np.float32)

    def smv(x):
        return sfft.irfftn(sfft.rfftn(pad(x), workers=w) * s_k, s=shape, workers=w)[crop].astype(np.float32)

    def A(x):
        return x - np.where(eroded, smv(x), 0.0)

    rhs = np.where(eroded, smv(bc), 0.0).astype(np.float32)
    b = np.where(eroded, fc, 0.0).astype(np.float32)  # iSMV's start: the total field
    b, ismv.last_iterations = conjugate_gradient(A, rhs, b, tol=tol, max_iter=max_iter)
    loc = np.where(eroded, fc - b, 0.0).astype(np.float32)
    out = np.zeros(field.shape, dtype=np.float32)
    out[box] = loc
    out_mask = np.zeros(field.shape, dtype=bool)
    out_mask[box] = eroded
    return out, out_mask


def _check_inputs(field: np.ndarray, m: np.ndarray, name: str) -> None:
    if field.ndim != 3 or field.shape != m.shape:
        raise ValueError(f"{name} needs a 3-D field and a mask of the same shape, got {field.shape} and {m.shape}.")
    if not m.any():
        raise ValueError(f"{name} got an empty brain mask; check the masking step.")
    if not np.all(np.isfinite(field[m])):
        raise ValueError(f"{name} got non-finite field values inside the mask; check the field fit.")


#: Background-removal methods of :func:`remove_background` by name.
METHODS = {"ismv": ismv, "vsharp": vsharp}
