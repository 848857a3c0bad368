"""SMV-consistent data fitting: the background-removal operator inside the forward model.

Background-field removal by spherical mean values (SHARP, V-SHARP, iSMV) rests on one identity:
a field ``b`` that is harmonic inside the brain mask ``M`` satisfies ``(delta - s_r) * b = 0`` at every
voxel whose sphere of radius ``r`` lies in ``M`` (the eroded mask ``E_r``).  So for the *total* field
``f`` (local + background) and chi supported on ``M``::

    (delta - s_r) * (D chi - f) = 0    on E_r,   for every radius r,

exactly, whatever the background, with no assumption about the part of the local field that is
harmonic inside the mask -- the part every background-removal method has to guess, and the part
whose wrong guess a strong data fit turns into large, smooth chi errors (``benchmarks/RESULTS.md``).
This module fits chi to these equations (single-step QSM's data term: Chatnuntawech et al., NMR
Biomed 2017;30:e3570; the V-SHARP radius assignment of Li et al., NeuroImage 2011)::

    min_chi  sum_r || W P_r (delta - s_r) * (D chi - f) ||^2 + lam || chi - chi0 ||^2_M

``P_r`` the voxels whose largest fitting sphere has radius ``r`` (``E_r`` minus the larger radii's
``E``), ``W`` a data weight, chi supported on ``M`` (so the rim that background removal erodes keeps
its chi: the spheres of the eroded voxels reach into it).  The operator has no inverse on
susceptibility patterns whose field is harmonic inside ``M`` (constants, some low-order patterns,
the magic-angle cone), so it is solved by conjugate gradients *from* ``chi0`` (e.g. NSIDL's output):
those patterns keep ``chi0``'s values, the rest is fitted to the data.  ``(delta - s_r) * d``, the
SMV-filtered dipole kernel, vanishes beyond the radius ``r`` (the dipole field is harmonic away
from the source), so the grid only needs a margin of ``max(radii)``, not the usual 1.5x padding.

Units: fields in ppm, chi in ppm, voxel size and radii in mm, ``b0_dir`` in array axes.  Cost per
CG iteration: ``2 + 2 * len(radii)`` real FFTs on the mask's bounding box plus the margin.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import numpy as np
import scipy.fft as sfft

from qsmprep.qsm.dipole import dipole_kernel, fft_workers
from qsmprep.qsm.geometry import bounding_box
from qsmprep.qsm.tv import checked_tv_weight, weighted_threshold

#: Default radii (mm; chosen on the validation heads, ``benchmarks/RESULTS.md``).
SMV_RADII_MM = (8.0, 4.0, 2.0)
SMV_N_ITER = 20
SMV_LAMBDA = 0.0


def _sphere_spectrum(shape, vs, r):
    from qsmprep.qsm.background import sphere_kernel

    return sfft.rfftn(sphere_kernel(shape, vs, r), workers=fft_workers()).real.astype(np.float32)


def smv_operator_masks(mask: np.ndarray, voxel_size: Sequence[float], radii_mm: Sequence[float]):
    """``[(r, P_r)]`` (largest radius first): the voxels of ``mask`` whose largest sphere inside the mask
    has radius ``r`` (bool arrays of ``mask``'s shape).  Voxels with no sphere inside are in none."""
    from qsmprep.qsm.background import EROSION_LEVEL

    m = np.asarray(mask) > 0
    vs = tuple(float(v) for v in voxel_size)
    radii = sorted((float(r) for r in radii_mm), reverse=True)
    margin = [int(np.ceil(radii[0] / d)) + 2 for d in vs]
    box = bounding_box(m, margin)
    mc = m[box]
    # zero padding of the margin beyond the box even where the box meets the volume's edge
    shape = tuple(int(sfft.next_fast_len(n + g, real=True)) for n, g in zip(mc.shape, margin))
    pad = np.zeros(shape, np.float32)
    pad[tuple(slice(0, n) for n in mc.shape)] = mc
    mk = sfft.rfftn(pad, workers=fft_workers())
    taken = np.zeros(mc.shape, bool)
    out = []
    for r in radii:
        er = (sfft.irfftn(mk * _sphere_spectrum(shape, vs, r), s=shape, workers=fft_workers())
              [tuple(slice(0, n) for n in mc.shape)] > EROSION_LEVEL) & mc
        p = er & ~taken
        taken |= er
        full = np.zeros(m.shape, bool)
        full[box] = p
        out.append((r, full))
    return out


#: :func:`smv_tv`'s grid: ``sup``'s bounding box grown by ``BOX_MARGIN`` x the margin (the largest radius + 2
#: voxels) on each side, then zero-padded by one margin.  One margin of zero padding holds the SMV-filtered
#: dipole kernel (it vanishes beyond its radius, up to the discrete kernels' tails), so 0 gives the same TV fit on
#: a smaller grid (``benchmarks/RESULTS.md``, "Over-relaxation").  :func:`smv_fit` (not in the default chain)
#: keeps a margin of 1: its CG iterates feel the tails' wrap-around more.
BOX_MARGIN = 0


class _SMVGrid(NamedTuple):
    """:func:`_smv_grid`'s result."""

    parts: list  # (radius_mm, operator mask) pairs
    shape: tuple  # the padded grid's FFT shape
    pad: Callable  # a volume -> its box on the grid (float32)
    full: Callable  # the grid -> a volume (zero outside the support; float32)
    box: tuple  # the volume's box (slices of the volume)
    crop: tuple  # where that box lies on the grid (slices of the grid)


def _smv_grid(m: np.ndarray, sup: np.ndarray, vs: tuple, radii_mm: Sequence[float], who: str,
              box_margin: int = 1) -> _SMVGrid:
    """The SMV fits' shared set-up: ``parts`` (:func:`smv_operator_masks` of ``m``, the non-empty ones),
    the FFT shape of the padded grid (the bounding box of ``sup`` grown by ``box_margin`` x (the largest radius + 2
    voxels), then zero padding of the margin beyond the box even where the box meets the volume's edge), ``pad(a)``
    (``a``'s box on that grid, float32) and ``full(x)`` (back: ``x``'s box in a volume of ``m``'s shape, zero outside
    ``sup``; float32), and the box and its place on the grid (``box``, ``crop``: for torch versions of ``pad`` and
    ``full``)."""
    radii = sorted((float(r) for r in radii_mm), reverse=True)
    parts = [(r, p) for r, p in smv_operator_masks(m, vs, radii) if p.any()]
    if not parts:
        raise ValueError(f"{who}: no sphere of radius {min(radii)} mm fits in the mask.")
    margin = [int(np.ceil(radii[0] / d)) + 2 for d in vs]
    box = bounding_box(sup, [g * int(box_margin) for g in margin])
    crop = tuple(slice(0, s.stop - s.start) for s in box)
    shape = tuple(int(sfft.next_fast_len(s.stop - s.start + g, real=True)) for s, g in zip(box, margin))

    def pad(a):
        out = np.zeros(shape, np.float32)
        out[crop] = a[box]
        return out

    def full(x):
        out = np.zeros(m.shape, np.float32)
        out[box] = np.where(sup[box], x[crop], 0)
        return out

    return _SMVGrid(parts, shape, pad, full, box, crop)


def smv_fit(
    total_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    chi0: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    radii_mm: Sequence[float] = SMV_RADII_MM,
    n_iter: int = SMV_N_ITER,
    lam: float = SMV_LAMBDA,
    support: np.ndarray | None = None,
    callback=None,
) -> np.ndarray:
    """Fit chi (ppm, supported on ``mask``) to the SMV-filtered total field, from ``chi0`` (module docstring).

    Parameters
    ----------
    total_ppm : 3-D total field in ppm (background included; a local field works too, then only
        the voxels whose spheres lie where it is valid should be in ``mask``).
    mask : 3-D mask ``M`` where the field is data (the equations sit on its erosions: every voxel
        whose sphere lies in ``M``).
    support : chi's support (default ``mask``).  A larger support, e.g. ``M`` with its holes filled,
        keeps signal voids (haemorrhage cores, calcifications, large veins) in the map with no data
        of their own: their chi is what the field around them says (the SMV spheres of the voxels
        around a void see its sources) plus ``chi0`` there.
    voxel_size : mm.  b0_dir : unit B0 vector in array axes.
    chi0 : starting chi (ppm), e.g. a network's estimate; default zeros.
    weight : data weight (magnitude or 1/noise, any scale; normalised to its 99th percentile in the
        mask), default the mask.
    radii_mm : SMV radii (mm); each voxel uses the largest one whose sphere lies in the mask.
    n_iter : conjugate-gradient iterations (early stopping regularises).
    lam : weight of ``||chi - chi0||^2`` (0: early stopping only).
    callback : ``callback(iteration, current)``, ``current()`` the full-size chi.

    Returns chi in ppm (float32, zero outside ``support``).
    """
    f = np.asarray(total_ppm, np.float32)
    m = np.asarray(mask) > 0
    sup = m if support is None else (np.asarray(support) > 0) | m
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"smv_fit needs a 3-D field and a mask of the same shape, got {f.shape} and {m.shape}.")
    if not m.any():
        raise ValueError("smv_fit got an empty mask.")
    vs = tuple(float(v) for v in voxel_size)
    grid = _smv_grid(m, sup, vs, radii_mm, "smv_fit")
    parts, shape, pad, to_full = grid.parts, grid.shape, grid.pad, grid.full
    wk = fft_workers()

    mp = pad(sup.astype(np.float32))
    if weight is None:
        w2 = mp
    else:
        w = np.where(m, np.abs(np.nan_to_num(np.asarray(weight, np.float32))), 0)
        scale = float(np.percentile(w[m], 99))
        w2 = pad((np.clip(w / max(scale, 1e-30), 0, 1) ** 2).astype(np.float32))
    d = dipole_kernel(shape, vs, b0_dir, rfft=True).astype(np.float32)
    ops = []
    for r, p in parts:
        one_minus_s = (1.0 - _sphere_spectrum(shape, vs, r)).astype(np.float32)
        ops.append((one_minus_s, (one_minus_s * d).astype(np.float32), pad(p.astype(np.float32)) * w2))
    fk = sfft.rfftn(pad(np.where(m, f, 0).astype(np.float32)), workers=wk)  # data only where it is data
    # data: P_r W^2 (1 - S_r) f, pulled back through the adjoint once
    rhs_k = 0
    for oms, k_r, pw2 in ops:
        rhs_k = rhs_k + k_r * sfft.rfftn(pw2 * sfft.irfftn(oms * fk, s=shape, workers=wk), workers=wk)
    del fk
    rhs = mp * sfft.irfftn(rhs_k, s=shape, workers=wk).astype(np.float32)
    del rhs_k

    def apply_a(x):
        xk = sfft.rfftn(x, workers=wk)
        acc = 0
        for _oms, k_r, pw2 in ops:
            acc = acc + k_r * sfft.rfftn(pw2 * sfft.irfftn(k_r * xk, s=shape, workers=wk), workers=wk)
        out = mp * sfft.irfftn(acc, s=shape, workers=wk).astype(np.float32)
        if lam:
            out += np.float32(lam) * mp * x
        return out

    x0 = np.zeros(shape, np.float32) if chi0 is None else pad(np.where(sup, np.asarray(chi0, np.float32), 0))
    if lam:
        rhs = rhs + np.float32(lam) * x0
    from qsmprep.qsm.solvers import conjugate_gradient

    mon = None if callback is None else (lambda it, x: callback(it, lambda: to_full(x)))
    x, _ = conjugate_gradient(apply_a, rhs, x0, tol=0.0, max_iter=n_iter, callback=mon)
    return to_full(x)


def smv_tv(
    total_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    chi_prior: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    radii_mm: Sequence[float] = SMV_RADII_MM,
    lam: float = 3e-5,
    prior_weight: float = 0.0,
    n_iter: int = 60,
    mu_ratio: float = 100.0,
    mu2: float = 1.0,
    support: np.ndarray | None = None,
    prior_band: tuple[float, float] | None = None,
    support_mu: float = 1.0,
    device: str | None = None,
    tv_free: np.ndarray | None = None,
    relax: float = 1.0,
    callback=None,
    tv_weight: np.ndarray | None = None,
    tv_axis_weight: Sequence[float] | None = None,
    tv_center: np.ndarray | None = None,
) -> np.ndarray:
    """TV-regularised SMV-consistent fit, by ADMM::

        min_chi  sum_r || W P_r (delta - s_r) * (D chi - f) ||^2 / 2 + lam ||grad chi||_1
                 + prior_weight / 2 || chi - chi_prior ||^2

    ``prior_band = (d_max, k_min)``: the prior term acts only where ``|D(k)| < d_max`` and
    ``|k| > k_min`` (cycles/mm), i.e. on the fine structure inside the magic-angle cone, which neither
    the data nor TV determine; elsewhere the data and TV decide.  chi on ``support`` (default
    ``mask``; zero outside: a third split ``u = chi`` projected onto the support, penalty
    ``support_mu``), data on the SMV-eroded parts of ``mask`` (:func:`smv_operator_masks`).  Splits
    ``z = grad chi`` (soft thresholding) and ``y_r = K_r chi`` with ``K_r = (1 - S_r) D`` (a per-voxel
    weighted average of ``P_r (1 - S_r) f`` and the model), so the chi update is one division in
    k-space.  ``2 + 2 len(radii)`` real FFTs per iteration on the support's box plus ``max(radii)``.
    Units as :func:`smv_fit`.  Returns chi (ppm, float32, zero outside ``support``).

    ``tv_free``: voxels where TV does not act (every difference that touches one of them is left
    unpenalised), e.g. signal voids: no data decide chi there, and TV would flatten a lesion into its
    surroundings; the field around the void then sets its chi.  None (default): TV everywhere.  The same as a
    ``tv_weight`` of 0 on ``tv_free`` dilated by one voxel (the two combine by product); the zero-padded margin
    beyond the support's box keeps full TV either way, as with a scalar ``lam``.
    ``tv_weight``: a per-voxel factor (>= 0, ``mask``'s grid) of ``lam`` on the differences from each voxel
    (a spatially weighted TV, as MEDI's gradient mask: e.g. less TV on edges a guide image shows); None: 1.
    ``tv_axis_weight``: a factor per array axis on the gradient's components inside TV (an anisotropic TV: e.g.
    ``(1, 1, 2)`` penalises a difference across a thick slice as if the slice were half as thick); None: 1 on
    every axis (the gradient per mm).  The data term, the dipole kernel and the SMV spheres keep ``voxel_size``.
    ``tv_center``: TV measures chi's differences from those of this map (ppm, ``mask``'s grid, zero outside the
    support), ``lam ||grad chi - grad tv_center||_1``: a structural prior that keeps the guide's edges and fine
    structure unpenalised (e.g. a fraction of the network's chi); None: ``lam ||grad chi||_1``.

    ``device``: None runs the iterations in numpy; a torch device (``"cuda"``, ``"cpu"``) runs the
    same iterations in torch there (the set-up stays numpy; float32 rounding differs slightly).

    ``relax``: ADMM over-relaxation (Boyd et al. 2011, sec. 3.4.3; Eckstein & Bertsekas 1992): each split
    is updated towards ``relax * (its operator applied to chi) + (1 - relax) * (its previous value)``;
    1 (default) is plain ADMM, values in (1, 2) usually converge in fewer iterations to the same
    minimiser.  ``callback(iteration, current)``: called after iterations 1..n_iter, ``current()``
    the full-size chi (ppm) of that iteration (for studies; not on the hot path when None).
    """
    if not 0.0 < float(relax) < 2.0:
        raise ValueError(f"relax must lie in (0, 2), got {relax}.")
    pb = smv_tv_problem(total_ppm, mask, voxel_size, b0_dir, chi_prior=chi_prior, weight=weight, radii_mm=radii_mm,
                        lam=lam, prior_weight=prior_weight, mu_ratio=mu_ratio, mu2=mu2, support=support,
                        prior_band=prior_band, support_mu=support_mu, tv_free=tv_free, tv_weight=tv_weight,
                        tv_axis_weight=tv_axis_weight, tv_center=tv_center)
    arrays = (pb.x, pb.prior_k, pb.ks, pb.pw2, pb.g_r, pb.denom, pb.msup)
    center = pb.center
    if device is None:
        ops = _NumpyOps(pb.rfft, pb.irfft, pb.vs)
        consts = (pb.mu1, pb.mu2, pb.mu3, pb.thr)
    else:
        ops = _TorchOps(device, pb.shape, pb.vs)
        arrays = ops.put(*arrays)
        consts = (float(pb.mu1), float(pb.mu2), float(pb.mu3),
                  float(pb.lam) / float(pb.mu1) if np.ndim(pb.thr) == 0 else ops.put(pb.thr)[0])
        if center is not None:
            center = tuple(ops.put(*center))
    admm = _smv_tv_admm if device is None else _smv_tv_admm_torch

    def to_full(x):
        return pb.full(ops.to_numpy(x))

    mon = None if callback is None else (lambda it, x: callback(it, lambda: to_full(x)))
    return to_full(admm(*arrays, *consts, int(n_iter), ops, float(relax), mon, center=center))


class SMVTVProblem:
    """:func:`smv_tv`'s problem on its padded grid (:func:`smv_tv_problem`): the start ``x``, the data splits'
    spectra and weights, the chi update's denominator, the support, the ADMM constants, ``pad`` / ``full`` (a volume
    to the grid and back) and the grid's real FFTs (``rfft`` / ``irfft``, numpy)."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def smv_tv_problem(
    total_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    chi_prior: np.ndarray | None = None,
    weight: np.ndarray | None = None,
    radii_mm: Sequence[float] = SMV_RADII_MM,
    lam: float = 3e-5,
    prior_weight: float = 0.0,
    mu_ratio: float = 100.0,
    mu2: float = 1.0,
    support: np.ndarray | None = None,
    prior_band: tuple[float, float] | None = None,
    support_mu: float = 1.0,
    tv_free: np.ndarray | None = None,
    tv_weight: np.ndarray | None = None,
    tv_axis_weight: Sequence[float] | None = None,
    tv_center: np.ndarray | None = None,
) -> SMVTVProblem:
    """:func:`smv_tv`'s set-up (the same arguments, their units and meaning): everything its ADMM iterations
    need, on the padded grid, as an :class:`SMVTVProblem` (float32 numpy arrays).  Shared by :func:`smv_tv` and
    the differentiable fit of :mod:`qsmprep.dl.finalfit`.  Its ``vs`` is the spacing (mm) of TV's gradient:
    ``voxel_size`` divided by ``tv_axis_weight``; its ``center`` is None or ``(grad tv_center, grad^T grad tv_center)``
    on the padded grid (a list of three arrays and one array)."""
    f = np.asarray(total_ppm, np.float32)
    m = np.asarray(mask) > 0
    sup = m if support is None else (np.asarray(support) > 0) | m
    vs = tuple(float(v) for v in voxel_size)
    if tv_axis_weight is None:
        vs_tv = vs
    else:
        aw = tuple(float(a) for a in tv_axis_weight)
        if len(aw) != 3 or not all(np.isfinite(a) and a > 0 for a in aw):
            raise ValueError(f"tv_axis_weight must be three positive numbers, got {tv_axis_weight!r}.")
        vs_tv = tuple(v / a for v, a in zip(vs, aw))
    grid = _smv_grid(m, sup, vs, radii_mm, "smv_tv", BOX_MARGIN)
    parts, shape, pad, full = grid.parts, grid.shape, grid.pad, grid.full
    wk = fft_workers()

    def rfft(x):
        return sfft.rfftn(x, workers=wk)

    def irfft(x):
        return sfft.irfftn(x, s=shape, workers=wk).astype(np.float32)

    if weight is None:
        w2 = pad(m.astype(np.float32))
    else:
        w = np.where(m, np.abs(np.nan_to_num(np.asarray(weight, np.float32))), 0)
        w2 = pad((np.clip(w / max(float(np.percentile(w[m], 99)), 1e-30), 0, 1) ** 2).astype(np.float32))
    d = dipole_kernel(shape, vs, b0_dir, rfft=True).astype(np.float32)
    fk = rfft(pad(np.where(m, f, 0).astype(np.float32)))
    ks, pw2, g_r = [], [], []
    for r, p in parts:
        oms = (1.0 - _sphere_spectrum(shape, vs, r)).astype(np.float32)
        ks.append((oms * d).astype(np.float32))
        pw2.append(pad(p.astype(np.float32)) * w2)
        g_r.append(irfft(oms * fk))
    del fk
    from qsmprep.qsm.inversion import _Grid  # noqa: F401  (same gradient convention as tv_admm)

    grad_k = np.zeros(ks[0].shape, np.float32)
    for ax, n in enumerate(shape):
        k = np.fft.rfftfreq(n, d=vs[ax]) if ax == 2 else np.fft.fftfreq(n, d=vs[ax])
        sh = [1, 1, 1]
        sh[ax] = k.size
        grad_k = grad_k + ((2 * np.sin(np.pi * k * vs[ax]) / vs_tv[ax]) ** 2).astype(np.float32).reshape(sh)
    mu1 = np.float32(mu_ratio * lam)
    mu2 = np.float32(mu2)
    mu3 = np.float32(support_mu)
    pwt = np.float32(prior_weight)
    band = np.float32(1.0)
    if prior_band is not None:
        kk = np.zeros(ks[0].shape, np.float32)
        for ax, n in enumerate(shape):
            k = np.fft.rfftfreq(n, d=vs[ax]) if ax == 2 else np.fft.fftfreq(n, d=vs[ax])
            sh = [1, 1, 1]
            sh[ax] = k.size
            kk = kk + (k.astype(np.float32) ** 2).reshape(sh)
        band = ((np.abs(d) < prior_band[0]) & (np.sqrt(kk) > prior_band[1])).astype(np.float32)
    pwt = pwt * band
    denom = mu1 * grad_k + pwt + mu3
    for k_r in ks:
        denom = denom + mu2 * k_r * k_r
    denom = denom.astype(np.float32)
    msup = pad(sup.astype(np.float32))
    thr = np.float32(lam / mu1)
    tw = checked_tv_weight(tv_weight, m.shape)
    if tv_free is not None and np.any(tv_free):
        from scipy.ndimage import binary_dilation

        # no TV on any difference that touches a free voxel: a weight of 0 on the free voxels and their neighbours
        keep = (~binary_dilation(np.asarray(tv_free) > 0)).astype(np.float32)
        tw = keep if tw is None else tw * keep
    if tw is not None:
        thr = weighted_threshold(thr, tw, pad)
    x = np.zeros(shape, np.float32) if chi_prior is None else pad(np.where(sup, np.asarray(chi_prior, np.float32), 0))
    center = None
    if tv_center is not None:
        from qsmprep.qsm.tv import _grad, _grad_t

        c = np.asarray(tv_center, np.float32)
        if c.shape != m.shape or not np.all(np.isfinite(c)):
            raise ValueError(f"tv_center must be a finite map of the mask's shape {m.shape}.")
        gc = [g.astype(np.float32) for g in _grad(pad(np.where(sup, c, 0).astype(np.float32)), vs_tv)]
        center = (gc, _grad_t(gc, vs_tv).astype(np.float32))
    prior_k = rfft(x) * pwt if (chi_prior is not None and np.any(pwt)) else None
    return SMVTVProblem(x=x, prior_k=prior_k, ks=ks, pw2=pw2, g_r=g_r, denom=denom, msup=msup, mu1=mu1, mu2=mu2,
                        mu3=mu3, thr=thr, lam=lam, vs=vs_tv, shape=shape, pad=pad, full=full, rfft=rfft, irfft=irfft,
                        support=sup, box=grid.box, crop=grid.crop, center=center)


def _smv_tv_admm(x, prior_k, ks, pw2, g_r, denom, msup, mu1, mu2, mu3, thr, n_iter, ops, relax=1.0, callback=None,
                 center=None):
    """:func:`smv_tv`'s ADMM iterations in numpy (``ops``: :class:`_NumpyOps`, the FFTs, gradients, soft threshold
    and allocation), written as the updates read; the reference that :func:`_smv_tv_admm_torch` (the app's loop,
    on the CPU or a GPU) is tested against.  ``center``: :class:`SMVTVProblem`'s (TV about a guide's gradient) or None.
    Returns chi on the padded grid."""
    state = smv_tv_admm_start(x, ks, ops, center)
    for it in range(n_iter):
        state = smv_tv_admm_step(state, prior_k, ks, pw2, g_r, denom, msup, mu1, mu2, mu3, thr, ops, relax, center)
        if callback is not None:
            callback(it + 1, state[4])
    return state[4]


def smv_tv_admm_start(x, ks, ops, center=None):
    """The ADMM state ``(z, sz, y, t, u, su)`` at the start ``x`` (padded grid): the splits ``z = grad chi``
    (TV; ``grad chi - grad c`` with a ``center``), ``y_r = K_r chi`` (data) and ``u = chi`` (support), their scaled
    duals zero."""
    z = ops.grad(x)
    if center is not None:
        z = [zi - ci for zi, ci in zip(z, center[0])]
    sz = [ops.zeros_like(x) for _ in range(3)]
    xk = ops.rfft(x)
    y = [ops.irfft(k_r * xk) for k_r in ks]
    t = [ops.zeros_like(x) for _ in ks]
    return z, sz, y, t, ops.copy(x), ops.zeros_like(x)


def smv_tv_admm_step(state, prior_k, ks, pw2, g_r, denom, msup, mu1, mu2, mu3, thr, ops, relax=1.0, center=None):
    """One iteration of :func:`_smv_tv_admm` (new lists, inputs untouched: with torch tensors and functional
    ``ops`` it is differentiable); returns the next state, whose ``[4]`` is chi.  ``center``: ``(grad c, grad^T grad
    c)`` of TV's guide ``c`` (the split is ``z = grad chi - grad c``) or None."""
    z, sz, y, t, u, su = state
    z, sz, y, t = list(z), list(sz), list(y), list(t)
    al = np.float32(relax)
    tv_part = mu1 * ops.grad_t([zi - si for zi, si in zip(z, sz)])
    if center is not None:
        tv_part = tv_part + mu1 * center[1]
    num = ops.rfft(tv_part + mu3 * (u - su))
    for k_r, yi, ti in zip(ks, y, t):
        num = num + mu2 * k_r * ops.rfft(yi - ti)
    if prior_k is not None:
        num = num + prior_k
    xk = num / denom
    x = ops.irfft(xk)
    gx = ops.grad(x)
    if center is not None:
        gx = [g - c for g, c in zip(gx, center[0])]
    for a in range(3):
        h = gx[a] if relax == 1.0 else al * gx[a] + (1 - al) * z[a]  # (over-)relaxed grad chi
        v = h + sz[a]
        z[a] = ops.shrink(v, thr)
        sz[a] = v - z[a]
    for i, k_r in enumerate(ks):
        kx = ops.irfft(k_r * xk)
        if relax != 1.0:
            kx = al * kx + (1 - al) * y[i]
        y[i] = (pw2[i] * g_r[i] + mu2 * (kx + t[i])) / (pw2[i] + mu2)
        t[i] = t[i] + kx - y[i]
    h = x if relax == 1.0 else al * x + (1 - al) * u
    u = msup * (h + su)
    su = su + h - u
    return z, sz, y, t, u, su


def _smv_tv_admm_torch(x, prior_k, ks, pw2, g_r, denom, msup, mu1, mu2, mu3, thr, n_iter, ops, relax=1.0,
                       callback=None, center=None):
    """:func:`_smv_tv_admm`'s iterations in torch, rearranged for fewer passes over memory (the same chi up to
    float32 rounding): updates in place into buffers kept across iterations, spectra multiplied through their
    real views (a real factor is not promoted to a complex array), the soft threshold's remainder as
    ``clamp(v, -thr, thr)`` (so ``z - sz = v - 2 clamp(v)``), the data split as ``y_r = a_r + b_r (K_r x + t_r)``
    with ``a_r = P_r W^2 g_r / (P_r W^2 + mu2)`` and ``b_r = mu2 / (P_r W^2 + mu2)``.  ``pw2`` and ``g_r`` are
    replaced in place by ``b_r`` and ``a_r`` (the caller's lists).  ``relax`` != 1: the over-relaxed updates
    (with ``z = d + sz``, ``y_r = q_r + t_r``, ``u`` the previous values); 1 runs exactly the plain loop.
    ``center`` (tensors): TV about a guide's gradient, as :func:`smv_tv_admm_step`.  Returns chi on the padded grid."""
    torch = ops.torch
    vs, shape = ops.vs, ops.shape
    for i, (pw, g) in enumerate(zip(pw2, g_r)):
        den = pw + mu2
        g_r[i] = pw * g / den
        pw2[i] = mu2 / den
        del den
    a_r, b_r = g_r, pw2
    mk = [(mu2 * k_r).unsqueeze(-1) for k_r in ks]
    kr = [k_r.unsqueeze(-1) for k_r in ks]
    inv_den = (1.0 / denom).unsqueeze(-1)
    thr_neg = -thr

    def rmul(spec, factor, out=None):
        """A complex spectrum times a real one (``factor`` with a trailing axis of 1), in place or into ``out``."""
        if out is None:
            torch.view_as_real(spec).mul_(factor)
            return spec
        torch.mul(torch.view_as_real(spec), factor, out=torch.view_as_real(out))
        return out

    def grad_into(d, a, add_to=None, alpha=1.0):
        """d[i] = grad_i a; with ``add_to``: add_to[i] += alpha grad_i a (d[i] a scratch buffer)."""
        for i in range(3):
            n = shape[i]
            torch.sub(a.narrow(i, 1, n - 1), a.narrow(i, 0, n - 1), out=d[i].narrow(i, 0, n - 1))
            torch.sub(a.narrow(i, 0, 1), a.narrow(i, n - 1, 1), out=d[i].narrow(i, n - 1, 1))
            if vs[i] != 1.0:
                d[i].div_(float(vs[i]))
            if add_to is not None:
                add_to[i].add_(d[i], alpha=alpha)

    def grad_t_into(out, d):
        out.zero_()
        for i in range(3):
            n = shape[i]
            di = d[i] if vs[i] == 1.0 else d[i] / float(vs[i])
            out.sub_(di)
            out.narrow(i, 1, n - 1).add_(di.narrow(i, 0, n - 1))
            out.narrow(i, 0, 1).add_(di.narrow(i, n - 1, 1))

    # TV split: d = z - sz (what the chi update needs) and sz; at the start z = grad chi, sz = 0
    d = [torch.empty_like(x) for _ in range(3)]
    grad_into(d, x)
    gc, gtc = (None, None) if center is None else center
    if gc is not None:
        for a in range(3):
            d[a].sub_(gc[a])
    sz = [torch.zeros_like(x) for _ in range(3)]
    # data splits: q_r = y_r - t_r and t_r; at the start y_r = K_r chi, t_r = 0
    xk = torch.fft.rfftn(x, dim=(0, 1, 2))
    spec = torch.empty_like(xk)
    q = [torch.fft.irfftn(rmul(xk, k, spec), s=shape, dim=(0, 1, 2)) for k in kr]
    t = [torch.zeros_like(x) for _ in ks]
    u, su = x.clone(), torch.zeros_like(x)
    r = torch.empty_like(x)
    relaxed = relax != 1.0
    for it in range(n_iter):
        grad_t_into(r, d)
        if gtc is not None:  # grad^T (z - sz + grad c)
            r.add_(gtc)
        r.mul_(mu1).add_(u, alpha=mu3).sub_(su, alpha=mu3)
        num = torch.fft.rfftn(r, dim=(0, 1, 2))
        for k, qi in zip(mk, q):
            num.add_(rmul(torch.fft.rfftn(qi, dim=(0, 1, 2)), k))
        if prior_k is not None:
            num.add_(prior_k)
        xk = rmul(num, inv_den)
        x = torch.fft.irfftn(xk, s=shape, dim=(0, 1, 2))
        if relaxed:
            # v = relax grad chi + (1 - relax) z + sz, with z = d + sz: d <- (1 - relax) d + (2 - relax) sz first
            for a in range(3):
                d[a].mul_(1.0 - relax).add_(sz[a], alpha=2.0 - relax)
            grad_into([r, r, r], x, add_to=d, alpha=relax)
            if gc is not None:  # relax (grad chi - grad c)
                for a in range(3):
                    d[a].sub_(gc[a], alpha=relax)
        else:
            grad_into(d, x)  # d = grad chi, then v = grad chi + sz, sz = clamp(v), d = v - 2 sz
            for a in range(3):
                d[a].add_(sz[a])
                if gc is not None:
                    d[a].sub_(gc[a])
        for a in range(3):
            torch.clamp(d[a], min=thr_neg, max=thr, out=sz[a])
            d[a].sub_(sz[a], alpha=2.0)
        for k, a, b, ti, qi in zip(kr, a_r, b_r, t, q):
            s = torch.fft.irfftn(rmul(xk, k, spec), s=shape, dim=(0, 1, 2))  # K_r chi
            if relaxed:  # relax K_r chi + (1 - relax) y_r, y_r = q_r + t_r
                s.mul_(relax).add_(qi, alpha=1.0 - relax).add_(ti, alpha=1.0 - relax)
            s.add_(ti)  # + t_r
            torch.addcmul(a, b, s, out=qi)  # y_r
            torch.sub(s, qi, out=ti)  # t_r = K_r chi + t_r - y_r
            qi.sub_(ti)  # y_r - t_r
        if relaxed:  # u = P_sup (h + su), su = h + su - u, h = relax x + (1 - relax) u
            su.add_(x, alpha=relax).add_(u, alpha=1.0 - relax)
        else:
            su.add_(x)  # u = P_sup (x + su), su = x + su - u
        torch.mul(msup, su, out=u)
        su.sub_(u)
        if callback is not None:
            callback(it + 1, u)
    return u


class _NumpyOps:
    """numpy (float32) operations of :func:`_smv_tv_admm`."""

    def __init__(self, rfft, irfft, vs):
        from qsmprep.qsm.tv import _grad, _grad_t  # the gradient convention of tv_admm

        self.rfft, self.irfft = rfft, irfft
        self.grad = lambda x: _grad(x, vs)
        self.grad_t = lambda z: _grad_t(z, vs)

    @staticmethod
    def shrink(v, thr):
        return (np.sign(v) * np.maximum(np.abs(v) - thr, 0)).astype(np.float32)

    zeros_like = staticmethod(np.zeros_like)

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def to_numpy(a):
        return a


class _TorchOps:
    """torch set-up of :func:`_smv_tv_admm_torch` on ``device``: moving arrays there and back."""

    def __init__(self, device, shape, vs):
        import torch

        self.torch, self.dev, self.shape, self.vs = torch, torch.device(device), tuple(shape), vs

    def put(self, *arrays):
        """numpy arrays (or lists of them, or None) -> tensors on the device."""
        def one(a):
            return self.torch.as_tensor(np.ascontiguousarray(a), device=self.dev)

        return [None if a is None else ([one(b) for b in a] if isinstance(a, list) else one(a)) for a in arrays]

    @staticmethod
    def to_numpy(a):
        return a.float().cpu().numpy()
