"""Classical dipole inversions: local field (ppm) -> susceptibility chi (ppm).

All functions share one signature head ``(local_ppm, mask, voxel_size, b0_dir, ...)`` and
return chi in ppm (float32, zero outside ``mask``, *not* referenced -- see
:mod:`qsmprep.qsm.reference`).  The dipole kernel is :func:`qsmprep.qsm.dipole.dipole_kernel`
(``D(0) = 0``).  Each function crops the volume to the mask's bounding box, zero-pads it by
``pad_factor`` (default 1.5, FFT-friendly sizes) and crops back, so the circular FFT
convolution acts like a linear one.

* :func:`tkd` -- truncated k-space division, one FFT pair (Shmueli et al., MRM 2009).
* :func:`cgl2` -- conjugate-gradient solve of the weighted, gradient-regularised
  least-squares problem ``min 1/2 ||W (D chi - f)||^2 + lam/2 ||grad chi||^2``, stopped early.
* :func:`ndi` -- nonlinear dipole inversion (Polak et al., NMR Biomed 2020): gradient descent
  on ``1/2 ||W (exp(i s D chi) - exp(i phi))||^2`` with early stopping (2.6, 1.2).

The iterative solvers keep chi supported on the mask (projected after every update): the
local field has no sources outside the brain, and a free padded grid would let outside sources
mimic the in-brain field (on a noiseless 64^3 test, correlation 0.86 without the support
constraint and 0.95 with it, NDI 100 steps).  One iteration costs four real FFTs.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm.dipole import dipole_kernel, fft_workers, kspace_grid, padded_shape
from qsmprep.qsm.geometry import bounding_box
from qsmprep.qsm.solvers import conjugate_gradient

Vec3 = Sequence[float]

#: Defaults, tuned on one simulated validation head (see ``benchmarks/RESULTS.md``).
TKD_THRESHOLD = 0.2
CGL2_LAMBDA = 0.005  # mm^2, weight of the squared-gradient penalty
CGL2_MAX_ITER = 10
CGL2_TOL = 1e-3
NDI_N_ITER = 50
NDI_STEP = 4.0  # in units of 1/(s^2 w_max^2); the stability bound is 4.5 (2/L, L = 4 s^2 w_max^2/9)
#: Phase scale used by :func:`ndi` when none is given: 4 rad/ppm (about 3 T at TE = 5 ms).
#: On the validation head (chain local field, fit weights, 50 steps) s = 16 rad/ppm (3 T, 20 ms)
#: gave NRMSE 81 % against 51 % for s = 3: the haemorrhage's local field (up to 0.57 ppm)
#: saturates the sin term and is not recovered.  A small s keeps NDI close to a weighted
#: Landweber iteration while still bounding the influence of gross outliers.
NDI_DEFAULT_RAD_PER_PPM = 4.0


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


class _Grid:
    """Crop-to-mask + zero-pad bookkeeping and the half-spectrum dipole kernel."""

    def __init__(self, mask: np.ndarray, voxel_size: Vec3, b0_dir: Vec3, pad_factor: float, margin: int = 2):
        self.full_shape = mask.shape
        self.box = bounding_box(mask, margin)
        self.mask = mask[self.box]
        self.crop_shape = self.mask.shape
        self.shape = padded_shape(self.crop_shape, pad_factor) if pad_factor > 1 else tuple(
            int(sfft.next_fast_len(n, real=True)) for n in self.crop_shape
        )
        self.inner = tuple(slice(0, n) for n in self.crop_shape)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.d = dipole_kernel(self.shape, self.voxel_size, b0_dir, rfft=True)
        self.workers = fft_workers()

    def pad(self, vol_full: np.ndarray) -> np.ndarray:
        """Crop a full-size volume to the box and zero-pad to the FFT grid (float32)."""
        out = np.zeros(self.shape, dtype=np.float32)
        out[self.inner] = vol_full[self.box]
        return out

    def rfft(self, x: np.ndarray) -> np.ndarray:
        return sfft.rfftn(x, workers=self.workers).astype(np.complex64, copy=False)

    def irfft(self, x: np.ndarray) -> np.ndarray:
        return sfft.irfftn(x, s=self.shape, workers=self.workers).astype(np.float32, copy=False)

    def to_full(self, x_padded: np.ndarray) -> np.ndarray:
        """Crop the FFT grid back to the box, mask, and place into a full-size volume."""
        out = np.zeros(self.full_shape, dtype=np.float32)
        out[self.box] = np.where(self.mask, x_padded[self.inner], 0.0)
        return out

    def gradient_kernel(self) -> np.ndarray:
        """|F grad|^2 of forward differences: sum_i (2 sin(pi k_i d_i) / d_i)^2, in 1/mm^2."""
        ks = kspace_grid(self.shape, self.voxel_size, rfft=True)
        out = np.zeros(self.d.shape, dtype=np.float64)
        for k, dd in zip(ks, self.voxel_size):
            out = out + (2.0 * np.sin(np.pi * k * dd) / dd) ** 2
        return out.astype(np.float32)


def _check_inputs(local_ppm, mask, name: str):
    f = np.asarray(local_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"{name} needs a 3-D local field and a mask of the same shape, got {f.shape} and {m.shape}.")
    if not m.any():
        raise ValueError(f"{name} got an empty mask; check the brain mask / V-SHARP erosion.")
    if not np.all(np.isfinite(f[m])):
        raise ValueError(f"{name} got non-finite local-field values inside the mask; check background removal.")
    return np.where(m, f, 0.0).astype(np.float32), m


def _normalised_weight(weight, m: np.ndarray, name: str) -> np.ndarray:
    """Data weight in [0, 1], zero outside the mask (default: the mask itself).

    A magnitude or 1/noise map is divided by its 99th percentile inside the mask and clipped.
    """
    if weight is None:
        return m.astype(np.float32)
    w = np.asarray(weight, dtype=np.float32)
    if w.shape != m.shape:
        raise ValueError(f"{name}: weight shape {w.shape} differs from the mask shape {m.shape}.")
    w = np.where(m & np.isfinite(w), np.abs(w), 0.0)
    scale = float(np.percentile(w[m], 99)) if m.any() else 0.0
    if scale <= 0:
        raise ValueError(f"{name}: the weight is zero everywhere inside the mask; pass weight=None.")
    return np.clip(w / scale, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# TKD
# --------------------------------------------------------------------------------------------


def tkd(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    threshold: float = TKD_THRESHOLD,
    pad_factor: float = 1.5,
) -> np.ndarray:
    """Truncated k-space division: ``chi = F^-1[ F f * D+ ]``.

    ``D+ = 1/D`` where ``|D| > threshold``, else ``sign(D)/threshold`` (``D+(0) = 0``).

    Parameters
    ----------
    local_ppm : local field in ppm (3-D); values outside ``mask`` are ignored.
    mask : brain mask of the local field (e.g. the V-SHARP eroded mask).
    voxel_size : voxel edges in mm.  b0_dir : unit B0 vector in array axes.
    threshold : truncation level delta on ``|D|`` (0.2; range (0, 1/3]).
    pad_factor : zero padding per axis (>= 1).

    Returns chi in ppm (float32, zero outside the mask).  TKD underestimates chi by roughly
    10-30 % depending on ``threshold`` and has streaks near the magic-angle cone.
    """
    if not 0 < threshold <= 2.0 / 3.0:
        raise ValueError(f"tkd threshold must be in (0, 2/3], got {threshold}.")
    f, m = _check_inputs(local_ppm, mask, "tkd")
    g = _Grid(m, voxel_size, b0_dir, pad_factor)
    d = g.d
    inv = np.where(np.abs(d) > threshold, 1.0 / np.where(d == 0, 1.0, d), np.sign(d) / threshold).astype(np.float32)
    inv.flat[0] = 0.0
    chi = g.irfft(g.rfft(g.pad(f)) * inv)
    return g.to_full(chi)


# --------------------------------------------------------------------------------------------
# CG-L2
# --------------------------------------------------------------------------------------------


def cgl2(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    weight: np.ndarray | None = None,
    lam: float = CGL2_LAMBDA,
    max_iter: int = CGL2_MAX_ITER,
    tol: float = CGL2_TOL,
    pad_factor: float = 1.5,
    callback: Callable[[int, Callable[[], np.ndarray]], None] | None = None,
) -> np.ndarray:
    """Weighted L2 inversion by conjugate gradients, stopped early (iLSQR-like).

    Solves the normal equations of
    ``min_{chi = M chi} 1/2 ||W (D chi - f)||^2 + lam/2 ||grad chi||^2``, i.e.
    ``M (D W^2 D + lam G) M chi = M D W^2 f`` with ``G = sum_i (2 sin(pi k_i d_i)/d_i)^2``
    (forward-difference gradient, 1/mm^2, applied in k-space), starting from chi = 0 and
    stopping when the relative residual drops below ``tol`` or after ``max_iter``
    iterations (early stopping is part of the regularisation).  chi is supported on the
    mask ``M`` (the local field has no sources outside it), which removes most of the
    null space a free padded grid would have.  Four real FFTs per iteration.

    Parameters
    ----------
    local_ppm : local field (ppm).  mask : brain mask.  voxel_size : mm.  b0_dir : unit vector.
    weight : optional data weight (magnitude or 1/noise; normalised to [0, 1] here);
        default = the mask.
    lam : gradient-penalty weight in mm^2 (default tuned on a validation head).
    max_iter, tol : CG stopping rule.  pad_factor : zero padding.
    callback : optional ``callback(iteration, current)`` for monitoring; ``current()``
        returns the current full-size, masked chi (ppm).

    Returns chi in ppm (float32, masked).
    """
    if lam < 0:
        raise ValueError(f"cgl2 lam must be >= 0, got {lam}.")
    f, m = _check_inputs(local_ppm, mask, "cgl2")
    w2 = _normalised_weight(weight, m, "cgl2") ** 2
    g = _Grid(m, voxel_size, b0_dir, pad_factor)
    d = g.d
    reg = (lam * g.gradient_kernel()).astype(np.float32)
    w2p = g.pad(w2)
    mp = g.pad(m.astype(np.float32))

    def apply_a(x):
        xk = g.rfft(x)
        return mp * g.irfft(d * g.rfft(w2p * g.irfft(d * xk)) + reg * xk)

    b = mp * g.irfft(d * g.rfft(w2p * g.pad(f)))
    monitor = None if callback is None else (lambda it, x: callback(it, lambda: g.to_full(x)))
    x, _ = conjugate_gradient(apply_a, b, tol=tol, max_iter=max_iter, callback=monitor)
    return g.to_full(x)


# --------------------------------------------------------------------------------------------
# NDI
# --------------------------------------------------------------------------------------------


def ndi_cost(chi_ppm: np.ndarray, phase_rad: np.ndarray, weight: np.ndarray, voxel_size: Vec3, b0_dir: Vec3,
             rad_per_ppm: float, pad_factor: float = 1.5) -> float:
    """NDI data cost ``1/2 ||W (exp(i s D chi) - exp(i phi))||^2 = sum W^2 (1 - cos(s D chi - phi))``.

    Computed on the full array (no cropping), with ``D`` applied on a grid zero-padded by
    ``pad_factor``.  ``phase_rad = s * f`` (wrapped or not), ``weight`` the data weight
    (0 outside the mask).  Unit-free.  Used to check :func:`ndi_gradient` numerically.
    """
    from qsmprep.qsm.dipole import forward_field

    dchi = forward_field(np.asarray(chi_ppm, np.float64).astype(np.float32), voxel_size, b0_dir, pad_factor)
    w = np.asarray(weight, dtype=np.float64)
    return float(np.sum(w**2 * (1.0 - np.cos(rad_per_ppm * dchi.astype(np.float64) - phase_rad))))


def ndi_gradient(chi_ppm: np.ndarray, phase_rad: np.ndarray, weight: np.ndarray, voxel_size: Vec3, b0_dir: Vec3,
                 rad_per_ppm: float, pad_factor: float = 1.5) -> np.ndarray:
    """Gradient of :func:`ndi_cost` w.r.t. chi (1/ppm): ``s * D[ W^2 sin(s D chi - phi) ]``.

    ``D`` is real and symmetric in k-space, so ``D^T = D``.  Same grid as :func:`ndi_cost`.
    """
    from qsmprep.qsm.dipole import forward_field

    dchi = forward_field(np.asarray(chi_ppm, np.float32), voxel_size, b0_dir, pad_factor)
    w = np.asarray(weight, dtype=np.float32)
    res = (w**2 * np.sin(rad_per_ppm * dchi - np.asarray(phase_rad, np.float32))).astype(np.float32)
    return rad_per_ppm * forward_field(res, voxel_size, b0_dir, pad_factor)


def ndi(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    weight: np.ndarray | None = None,
    rad_per_ppm: float | None = None,
    n_iter: int = NDI_N_ITER,
    step: float = NDI_STEP,
    tikhonov: float = 0.0,
    pad_factor: float = 1.5,
    callback: Callable[[int, Callable[[], np.ndarray]], None] | None = None,
) -> np.ndarray:
    """Nonlinear dipole inversion by plain gradient descent with early stopping.

    Cost ``F(chi) = 1/2 ||W (exp(i s D chi) - exp(i phi))||^2 + tikhonov/2 * s^2 ||chi||^2``
    with ``phi = s * f`` (the local phase in rad), gradient
    ``s D[W^2 sin(s D chi - phi)] + tikhonov s^2 chi``, Lipschitz constant of the data term
    ``L = 4 s^2 w_max^2 / 9`` (``|D| <= 2/3``), so the update
    ``chi <- chi - alpha * grad`` with ``alpha = step / (s^2 w_max^2)`` is stable for
    ``step < 4.5`` (``alpha < 2/L``).  Starts from chi = 0; ``n_iter`` (early stopping) is the
    regulariser.  chi is projected onto the mask after every step (support constraint).  In
    the small-residual limit the iterations do not depend on ``s``.

    Parameters
    ----------
    local_ppm : local field (ppm).  mask : brain mask.  voxel_size : mm.  b0_dir : unit vector.
    weight : data weight W (magnitude, normalised to its 99th percentile and clipped to [0, 1]
        here; w_max = 1); default = the mask.
    rad_per_ppm : phase scale s in rad/ppm, ``qsmprep.qsm.constants.rad_per_ppm(b0_t, te_s)``
        for a reference echo time; default :data:`NDI_DEFAULT_RAD_PER_PPM` = 4 (see there why a
        small s is preferred for an unwrapped, fitted field).
    n_iter : gradient steps (default 50 with step 4, i.e. the same step x iterations budget as
        FANSI's 100 steps of 2; tuned on a validation head).
    step : step in units of ``1/(s^2 w_max^2)``, must be < 4.5 (default 4.0).
    tikhonov : optional tiny Tikhonov weight (unit-free, as in FANSI's alpha ~ 1e-5).
    pad_factor : zero padding.
    callback : optional ``callback(iteration, current)``; ``current()`` returns the current
        full-size, masked chi (ppm).

    Returns chi in ppm (float32, masked).
    """
    if not 0 < step < 4.5:
        raise ValueError(f"ndi step must be in (0, 4.5) (stability bound 2/L), got {step}.")
    s = float(NDI_DEFAULT_RAD_PER_PPM if rad_per_ppm is None else rad_per_ppm)
    if s <= 0:
        raise ValueError(f"ndi rad_per_ppm must be positive, got {rad_per_ppm}.")
    f, m = _check_inputs(local_ppm, mask, "ndi")
    w2 = _normalised_weight(weight, m, "ndi") ** 2
    g = _Grid(m, voxel_size, b0_dir, pad_factor)
    d = g.d
    w2p = g.pad(w2)
    phi = g.pad(s * f)
    alpha = np.float32(step / s**2)  # w_max = 1 after normalisation
    mp = g.pad(m.astype(np.float32))
    sd = (np.float32(s) * d).astype(np.float32)
    x = np.zeros(g.shape, dtype=np.float32)
    for it in range(int(n_iter)):
        res = w2p * np.sin(g.irfft(sd * g.rfft(x)) - phi)
        grad = g.irfft(sd * g.rfft(res))
        if tikhonov:
            grad += np.float32(tikhonov * s * s) * x
        x -= alpha * grad
        x *= mp
        if callback is not None:
            callback(it, lambda: g.to_full(x))
    return g.to_full(x)


#: Inversion methods by name (used by the CLI, workflows and benchmarks).
METHODS: dict[str, Callable[..., np.ndarray]] = {"tkd": tkd, "cgl2": cgl2, "ndi": ndi}


def field_noise(local_ppm: np.ndarray, mask: np.ndarray) -> dict:
    """Robust estimate of the white-noise level of a local field (ppm), for choosing regularisation.

    ``r = f - (mean of the 6 face neighbours of f)`` has variance ``sigma^2 (1 + 1/6)`` for white
    noise of std ``sigma``, while a smooth field contributes only its (small, sparse) Laplacian,
    so ``sigma = 1.4826 MAD(r) / sqrt(7/6)`` over the voxels whose neighbours are all in the mask.
    ``spread = 1.4826 MAD(f)`` is the robust std of the field itself.  Returns ``dict(sigma_ppm,
    spread_ppm, relative = sigma / spread)``.  A noise-free 1 mm simulated local field reads
    ``relative`` ~ 0.04 (its fine structure), the app's chain on a 3 T, 4-echo head ~ 0.27.
    """
    f = np.asarray(local_ppm, dtype=np.float32)
    m = np.asarray(mask) > 0
    if f.shape != m.shape or f.ndim != 3:
        raise ValueError(f"field_noise needs a 3-D field and a mask of the same shape, got {f.shape} and {m.shape}.")
    if m.any():  # work in the mask's bounding box, padded by one zero voxel (same result, less work)
        bb = bounding_box(m)
        m = np.pad(m[bb], 1)
        f = np.pad(np.where(m[1:-1, 1:-1, 1:-1], f[bb], 0.0).astype(np.float32), 1)
    else:
        f = np.zeros_like(f)
    # interior = voxels whose 6 face neighbours are all in the mask (binary erosion, face connectivity);
    # nb = the sum of the 6 face neighbours (zero outside the mask)
    c = (slice(1, -1),) * 3
    inner = m[c].copy()
    nb = np.zeros(inner.shape, np.float32)
    for ax in range(3):
        for d in (-1, 1):
            sl = list(c)
            sl[ax] = slice(1 + d, m.shape[ax] - 1 + d)
            inner &= m[tuple(sl)]
            nb += f[tuple(sl)]
    if inner.sum() < 27:
        raise ValueError("field_noise: the mask has too few interior voxels to estimate the noise.")
    v = f[c][inner]
    r = v - nb[inner] / np.float32(6.0)
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r)))) / float(np.sqrt(7.0 / 6.0))
    spread = 1.4826 * float(np.median(np.abs(v - np.median(v))))
    return {"sigma_ppm": sigma, "spread_ppm": spread, "relative": sigma / spread if spread > 0 else float("inf")}
