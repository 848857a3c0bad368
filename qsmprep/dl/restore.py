"""NSIDL for fields that went through background removal: SMV-consistent fitting and field restoration.

The shipped network was trained on *whole* local fields (the field of the sources inside the mask),
and its strong data fits assume one; after background removal (iSMV, V-SHARP) the part of the local
field that is harmonic inside the mask is gone, replaced by the removal's guess, and fitting that
guess turns into large, smooth chi errors (``benchmarks/RESULTS.md``).  :func:`invert_nsidl_chain`
therefore never fits the background-removed field strongly.  With ``f`` the total field and ``M`` the
brain mask (before background removal), ``S`` = ``M`` with its enclosed holes filled
(:func:`support_mask`: signal voids are lesions and stay in the map), the default is::

    f_loc = iSMV(f inpainted into the holes, S)            local field, the voids' sources kept
                                                           (the given local field if M has no holes)
    chi_0 = NSIDL_robust(f_loc, eroded S without voids)    the network on a local field (on slices
                                                           beyond 2.5x the in-plane voxel: on a grid
                                                           with the slices cut in two, NET_SPLIT)
    chi_0 = fit_voids(chi_0, ...)                          voids fitted from the field around them
    chi   = SMV-TV(f, M, support S, from chi_0)            qsmprep.qsm.smvfit.smv_tv: the removal
                                                           operator inside the forward model, TV,
                                                           chi on all of S
    chi   = fit_voids(chi, ..., n_iter=2)                  the voids refitted to what the final fit's
                                                           chi leaves of the field around them (one
                                                           step: FINAL_VOID_ITER)

With ``loops`` > 0 a restoration pass runs first (``smv_fit``, then the network on the restored
field ``D(chi S) + iSMV(f - D(chi S))``, then ``smv_fit`` again); on the validation heads it gave
the same accuracy in twice the time, so the default is 0.  The SMV equations hold for every
harmonic background, so no assumption about the removed harmonic part enters the data term; the
susceptibility patterns they cannot see (those whose field is harmonic inside ``M``: constants, the
magic-angle cone, some smooth patterns) keep the network's values.  chi covers the whole support
(the SMV spheres of the eroded voxels reach into the rim that background removal erodes), so the
chain's chi is no longer limited to the eroded mask.  Settings chosen on the validation heads only
(``benchmarks/RESULTS.md``).

Units: fields in ppm, chi in ppm, voxel size in mm, B0 in T, TE in s, ``b0_dir`` in array axes.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

LOG = logging.getLogger("qsmprep.dl.restore")

#: Settings of :func:`invert_nsidl_chain` (validation heads; ``benchmarks/RESULTS.md``).
CHAIN_RADII_MM = (8.0, 4.0, 2.0)
CHAIN_FIT_ITER = 5
CHAIN_REFIT_ITER = 3
CHAIN_LOOPS = 0
#: The final TV-regularised SMV-consistent fit (``qsmprep.qsm.smvfit.smv_tv``): radii, TV weight,
#: ADMM iterations and support penalty; ``None`` radii skip it.
FINAL_RADII_MM = (8.0, 4.0, 2.0)
#: TV weight of the final fit, ``"auto"`` by default: proportional to the local field's noise
#: (:func:`final_tv_lambda`).  A fixed weight cannot serve both a 1 mm head at SNR 100 and a 2 mm
#: head at SNR 30 (validation heads: the best fixed weight differs 4x between them).
FINAL_TV_LAMBDA = "auto"
#: ``lam = FINAL_TV_PER_NOISE * sigma`` (sigma: the local field's noise in ppm,
#: :func:`qsmprep.qsm.noise.field_noise`), clipped to :data:`FINAL_TV_RANGE`.  Chosen on the
#: validation heads (``benchmarks/RESULTS.md``, "TV weight of the chain's final fit").
FINAL_TV_PER_NOISE = 0.05
FINAL_TV_RANGE = (1e-5, 3e-4)
#: Thick slices (largest / smallest voxel edge >= :data:`THICK_ASPECT`) keep at most the former fixed
#: weight :data:`THICK_TV_MAX` (validation heads, 1 x 1 x 3 mm: XSIM 0.675 with it, 0.619 with the rule).
THICK_ASPECT = 2.5
THICK_TV_MAX = 3e-5
#: ADMM iterations of the final fit on a 1 mm grid (:func:`final_iterations` scales them to the grid), over-relaxed
#: by :data:`FINAL_RELAX`: the validation heads' choice (``benchmarks/RESULTS.md``, "The chain's final fit" and
#: "Over-relaxation"; 200 plain iterations until session 17).
FINAL_ITER = 130
#: The fewest iterations on coarse grids (the 2 mm validation rows' choice; 60 plain until session 17).
FINAL_ITER_MIN = 40
FINAL_SUPPORT_MU = 0.01
#: ADMM over-relaxation of the final fit (``smv_tv(relax=...)``; 1: plain ADMM; validation heads:
#: ``benchmarks/RESULTS.md``, "Over-relaxation").
FINAL_RELAX = 1.7
#: Refit the voids (:func:`fit_voids`) after the final fit: its TV, with no data inside a void, smooths the
#: void's source away (validation heads: ``benchmarks/RESULTS.md``, "The chain's final fit").
FINAL_REFIT_VOIDS = True
#: No TV in the signal voids in the final fit (``smv_tv(tv_free=voids)``): studied on the validation heads
#: (``benchmarks/RESULTS.md``) and off.
FINAL_TV_FREE_VOIDS = False
#: Conjugate-gradient iterations of that refit (:func:`fit_voids`' ``n_iter``): the first fits the box's
#: constant, the second moves the void's source one exact step along the back-projected residual.  Stopping
#: there regularises: the field next to a large void at 7 T is the least reliable, and the full solve
#: (:data:`VOID_ITER`) overshoots a haemorrhage there (validation heads: ``benchmarks/RESULTS.md``, "The
#: refit's iterations").
FINAL_VOID_ITER = 2
#: Edge-weighted TV in the final fit, guided by its start (the network's chi): ``(fraction, factor)``, the TV
#: weight times ``factor`` on the ``fraction`` of chi's support where the start's gradient is largest
#: (:func:`final_edge_tv_weight`), uniform on the signal voids and within a voxel of them (their edges in the start are
#: the fit's guess, not data); None: uniform TV.  Chosen on the validation heads (``benchmarks/RESULTS.md``,
#: "Edge-weighted TV from the network's chi").
FINAL_EDGE_TV: tuple[float, float] | None = (0.3, 0.5)
#: The edge map's ramp (:func:`edge_tv_weight`'s ``band``): the weight falls from 1 to the factor between the
#: ``1 - fraction -/+ band/2`` quantiles of the start's gradient instead of stepping at one quantile, so that
#: equivalent inputs (phase in degrees, scanner integers, real/imaginary parts) give the same chi to well under
#: 1e-3 ppm.  Chosen on the validation heads (``benchmarks/RESULTS.md``, "Edge-weighted TV from the network's chi").
FINAL_EDGE_TV_BAND = 0.1
#: Thick slices beyond the network's training (largest / smallest voxel edge above :data:`NET_SPLIT_ASPECT`; it saw
#: slices up to 2.5x the in-plane voxel): the chain's network runs on the grid whose thickest axis is cut into
#: :data:`NET_SPLIT` parts (:func:`on_split_grid`), its chi averaged back; the fits stay on the data's grid.  Chosen on
#: the validation heads (``benchmarks/RESULTS.md``, "The network on a finer slice grid").
NET_SPLIT_ASPECT = 2.5
NET_SPLIT = 2


def edge_tv_weight(guide: np.ndarray, support: np.ndarray, voxel_size: Sequence[float], fraction: float,
                   factor: float, keep: np.ndarray | None = None, band: float = 0.0) -> np.ndarray:
    """Per-voxel TV weight (float32, ``guide``'s grid): ``factor`` on the ``fraction`` of ``support`` where the
    gradient magnitude of ``guide`` (ppm/mm, forward differences, zero at the last slice) is largest, 1 elsewhere
    and on ``keep`` (e.g. the signal voids and their rim, where the guide's edges are the fit's guess).

    ``band`` > 0 replaces the step at the ``1 - fraction`` quantile of the gradient by a linear ramp from 1 to
    ``factor`` between the ``1 - fraction - band/2`` and ``1 - fraction + band/2`` quantiles, so that the map,
    and the fit that uses it, change little when the guide changes little (with a step, a voxel whose gradient
    sits at the quantile flips between 1 and ``factor``: equivalent inputs, e.g. phase stored in degrees, then
    give chi maps up to ~1e-3 ppm apart).

    MEDI's gradient mask (Liu et al., MRM 2012) takes its edges from the magnitude image; here they come from a
    susceptibility estimate (the final fit's start), whose edges are the susceptibility's own.
    """
    g = np.asarray(guide, np.float32)
    sup = np.asarray(support) > 0
    if not 0.0 <= float(fraction) < 1.0 or float(factor) < 0.0:
        raise ValueError(f"fraction must lie in [0, 1) and factor be >= 0, got {fraction}, {factor}.")
    if not 0.0 <= float(band) <= 2.0 * min(float(fraction), 1.0 - float(fraction)):
        raise ValueError(f"band must lie in [0, 2 min(fraction, 1 - fraction)], got {band} for fraction {fraction}.")
    mag = np.sqrt(sum((np.diff(g, axis=a, append=g.take([-1], axis=a)) / np.float32(v)) ** 2
                      for a, v in enumerate(voxel_size)))
    out = np.ones(g.shape, np.float32)
    if fraction > 0 and sup.any():
        q = 1.0 - float(fraction)
        if band > 0:
            lo, hi = np.quantile(mag[sup], [q - float(band) / 2, q + float(band) / 2])
            ramp = np.clip((mag[sup] - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)
            out[sup] = (1.0 - (1.0 - float(factor)) * ramp).astype(np.float32)
        else:
            cut = np.quantile(mag[sup], q)
            out[sup & (mag > cut)] = np.float32(factor)
    if keep is not None:
        out[np.asarray(keep) > 0] = 1
    return out


def final_edge_tv_weight(start: np.ndarray, support: np.ndarray, brain_mask: np.ndarray, voxel_size: Sequence[float],
                         fraction: float, factor: float, band: float = 0.0, ring: int = 1) -> np.ndarray:
    """The final fit's TV-weight map (:data:`FINAL_EDGE_TV`): :func:`edge_tv_weight` of its start on chi's
    ``support`` (with ``band``), uniform on the signal voids (``support`` outside ``brain_mask``) and within ``ring``
    voxels of them (the app: one)."""
    from scipy import ndimage

    voids = (np.asarray(support) > 0) & ~(np.asarray(brain_mask) > 0)
    return edge_tv_weight(start, support, voxel_size, fraction, factor,
                          keep=ndimage.binary_dilation(voids, iterations=int(ring)), band=band)


def net_splits(voxel_size: Sequence[float], aspect: float | None = None, k: int | None = None) -> tuple[int, ...]:
    """Parts per axis of the network's grid (:func:`on_split_grid`): the thickest axis cut into ``k`` (default
    :data:`NET_SPLIT`) when the largest voxel edge is more than ``aspect`` (default :data:`NET_SPLIT_ASPECT`) times the
    smallest, else no cut (all ones)."""
    aspect = NET_SPLIT_ASPECT if aspect is None else float(aspect)
    k = NET_SPLIT if k is None else int(k)
    vs = [float(v) for v in voxel_size]
    ks = [1] * len(vs)
    if max(vs) > aspect * min(vs):
        ks[int(np.argmax(vs))] = int(k)
    return tuple(ks)


def on_split_grid(fn, splits: Sequence[int], field: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float],
                  weight: np.ndarray | None = None) -> np.ndarray:
    """``fn(field, mask, voxel_size, weight)`` (an inversion: chi in ppm) run on the grid whose axis ``i`` is cut into
    ``splits[i]`` parts (:func:`qsmprep.qsm.geometry.split_axis`: field and weight interpolated linearly, the mask
    repeated), its chi averaged back onto the given grid (:func:`~qsmprep.qsm.geometry.merge_axis`) and zeroed outside
    ``mask`` (float32).  No cut: ``fn`` on the given arrays."""
    from qsmprep.qsm.geometry import merge_axis, split_axis

    ks = [int(k) for k in splits]
    if all(k == 1 for k in ks):
        return fn(field, mask, voxel_size, weight)
    f, m, w = np.asarray(field), np.asarray(mask), weight
    for ax, k in enumerate(ks):
        f, m = split_axis(f, ax, k), split_axis(m, ax, k, linear=False)
        w = None if w is None else split_axis(np.asarray(w), ax, k)
    chi = fn(f, m, [float(v) / k for v, k in zip(voxel_size, ks)], w)
    for ax, k in enumerate(ks):
        chi = merge_axis(chi, ax, k)
    return np.where(np.asarray(mask) > 0, chi, 0).astype(np.float32)


def final_tv_lambda(local_ppm: np.ndarray, eroded_mask: np.ndarray,
                    voxel_size: Sequence[float] | None = None) -> tuple[float, float]:
    """TV weight of the chain's final fit for this local field: ``(lam, sigma_ppm)``.

    ``sigma_ppm`` is the field's noise per voxel (:func:`qsmprep.qsm.noise.field_noise` in the
    eroded mask, ppm); ``lam = FINAL_TV_PER_NOISE * sigma_ppm`` within :data:`FINAL_TV_RANGE`
    (the lower limit also when no noise can be measured), and at most :data:`THICK_TV_MAX` on
    thick-slice grids (``voxel_size`` in mm, aspect >= :data:`THICK_ASPECT`).
    """
    from qsmprep.qsm.noise import field_noise

    sigma = field_noise(local_ppm, eroded_mask)
    lo, hi = FINAL_TV_RANGE
    lam = lo if not np.isfinite(sigma) else float(np.clip(FINAL_TV_PER_NOISE * sigma, lo, hi))
    if voxel_size is not None and max(voxel_size) >= THICK_ASPECT * min(voxel_size):
        lam = min(lam, THICK_TV_MAX)
    return lam, float(sigma)


def final_iterations(voxel_size: Sequence[float]) -> int:
    """ADMM iterations of the chain's final fit on a grid of ``voxel_size`` (mm).

    ``FINAL_ITER / V**(2/3)`` (V: voxel volume in mm^3), at least :data:`FINAL_ITER_MIN` and at most
    :data:`FINAL_ITER`: 130 at 1 mm, 82 at 1 x 1 x 2 mm, 62 at 1 x 1 x 3 mm, 40 at 2 mm.  A coarser grid has
    fewer voxels across the head, its ADMM converges sooner, and iterations past that fit noise (validation
    heads at 1 mm and 2 mm: ``benchmarks/RESULTS.md``, "The chain's final fit").
    """
    vol = float(np.prod([float(v) for v in voxel_size]))
    return int(np.clip(round(FINAL_ITER / vol ** (2.0 / 3.0)), FINAL_ITER_MIN, FINAL_ITER))


def support_mask(brain_mask: np.ndarray) -> np.ndarray:
    """chi's support for a brain mask with holes: the mask with its enclosed holes filled (bool).

    The brain mask leaves out signal voids (haemorrhage cores, calcifications, large veins: their
    phase is noise); they are lesions, so they stay in the map, with no data of their own.
    """
    from scipy import ndimage

    return ndimage.binary_fill_holes(np.asarray(brain_mask) > 0)


def inpaint_nearest(vol: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """``vol`` with every voxel outside ``valid`` set to the value of its nearest valid voxel (float32)."""
    from scipy import ndimage

    valid = np.asarray(valid, bool)
    if valid.all() or not valid.any():
        return np.asarray(vol, np.float32).copy()
    idx = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
    return np.asarray(vol, np.float32)[tuple(idx)]


#: Lesion step (:func:`fit_voids`): CG iterations, the unknowns' dilation of each void (voxels), the
#: data box around it (voxels beyond the void's bounding box), the smallest void fitted (voxels).
VOID_ITER = 30
VOID_DILATE = 1
VOID_MARGIN = 10
VOID_MIN_VOXELS = 3


def fit_voids(chi_ppm: np.ndarray, local_ppm: np.ndarray, data_mask: np.ndarray, voids: np.ndarray,
              voxel_size: Sequence[float], b0_dir: Sequence[float], weight: np.ndarray | None = None,
              n_iter: int = VOID_ITER, dilate: int = VOID_DILATE, margin: int = VOID_MARGIN,
              min_voxels: int = VOID_MIN_VOXELS) -> np.ndarray:
    """chi inside signal voids (lesions cut out of the data) from the field around them.

    A source inside a void has no data of its own, but its dipole field in the voxels around it is
    in a local field computed on the mask *with* the void (background removal then treats it as
    local).  For each void (connected component of ``voids`` with >= ``min_voxels`` voxels, grown
    by ``dilate`` voxels), in a box of ``margin`` voxels around it, conjugate gradients on
    ``min_{x, c} || W (D x + c - r) ||^2`` over the data voxels of the box, ``r = local - D chi``
    (the field ``chi`` leaves unexplained), ``x`` supported on the grown void, ``c`` a constant;
    ``chi + x`` is returned.  The moment of the source (``sum x``) is what the field around it
    determines best (RC-2's calcification moment).  ppm in and out, float32; the small per-void
    solve runs in float64 (in float32 the CG's rounding made chi in a void differ by up to 0.009 ppm
    between inputs that differ by rounding, e.g. phase stored in degrees).
    """
    from scipy import ndimage

    from qsmprep.qsm.dipole import dipole_kernel, forward_field, padded_shape

    v = np.asarray(voids, bool)
    out = np.asarray(chi_ppm, np.float32).copy()
    if not v.any():
        return out
    dm = np.asarray(data_mask, bool)
    w2 = dm.astype(np.float32) if weight is None else np.where(dm, np.asarray(weight, np.float32), 0) ** 2
    if w2[dm].size:
        w2 = w2 / max(float(np.percentile(w2[dm], 99)), 1e-30)
    r_all = np.where(dm, np.asarray(local_ppm, np.float32) - forward_field(out, voxel_size, b0_dir), 0)
    lab, n = ndimage.label(v)
    sizes = np.bincount(lab.ravel())
    for comp in range(1, n + 1):
        if sizes[comp] < min_voxels:
            continue
        sl = ndimage.find_objects((lab == comp).astype(np.int8))[0]
        box = tuple(slice(max(0, s.start - margin), min(N, s.stop + margin)) for s, N in zip(sl, v.shape))
        unk = ndimage.binary_dilation(lab[box] == comp, iterations=int(dilate)) if dilate else lab[box] == comp
        wb = np.where(dm[box] & ~unk, w2[box], 0).astype(np.float64)
        if wb.sum() <= 0:
            continue
        rb = r_all[box].astype(np.float64)
        shp = padded_shape(unk.shape, 1.5)
        d = dipole_kernel(shp, voxel_size, b0_dir, rfft=True)
        crop = tuple(slice(0, k) for k in unk.shape)

        def conv(x):
            import scipy.fft as sfft

            return sfft.irfftn(sfft.rfftn(x, s=shp) * d, s=shp)[crop]

        def apply(x, c):
            res = wb * (conv(x) + c)
            return unk * conv(res), float(res.sum())

        bx, bc = unk * conv(wb * rb), float((wb * rb).sum())
        x, c = np.zeros(unk.shape, np.float64), 0.0
        px, pc = bx.copy(), bc
        rr = float((bx * bx).sum()) + bc * bc
        for _ in range(int(n_iter)):
            ax, ac = apply(px, pc)
            pap = float((px * ax).sum()) + pc * ac
            if pap <= 0 or rr <= 1e-30:
                break
            a = rr / pap
            x += a * px
            c += a * pc
            bx -= a * ax
            bc -= a * ac
            rn = float((bx * bx).sum()) + bc * bc
            px = bx + (rn / rr) * px
            pc = bc + (rn / rr) * pc
            rr = rn
        out[box] += np.where(unk, x, 0).astype(np.float32)
    return out


#: Voids' cores (:func:`place_void_cores`), the last step of the chain: on when the phase a 1 ppm field
#: accrues at the reference echo time is at least this (rad/ppm; 7 T at a TE, or mean TE, of 15 ms: 28.1, on;
#: 7 T multi-echo at a mean TE of 10 ms: 18.7 and 3 T at 20 ms: 16.1, off), with this power of the depth (validation heads,
#: ``benchmarks/RESULTS.md``, "Where a void's moment goes").
VOID_CORE_MIN_RAD_PER_PPM = 24.0
VOID_CORE_POWER = 1.0
VOID_CORE_RING = 2


def long_echo(b0_t: float, te_s: float) -> bool:
    """True where a 1 ppm field accrues at least :data:`VOID_CORE_MIN_RAD_PER_PPM` rad at ``te_s`` (s) and
    ``b0_t`` (T): 7 T with a (mean) echo time of about 13 ms or more, where voids bloom and veins go dark."""
    from qsmprep.qsm.constants import rad_per_ppm

    return rad_per_ppm(b0_t, te_s) >= VOID_CORE_MIN_RAD_PER_PPM


def void_core_power(b0_t: float, te_s: float) -> float:
    """The power of :func:`place_void_cores` for this acquisition (0: the voids are left as they are)."""
    return VOID_CORE_POWER if long_echo(b0_t, te_s) else 0.0


#: Surface voids in chi's support (:func:`chi_support`): ``"auto"`` turns them on with long echoes
#: (:func:`long_echo`), like the voids' cores; True / False force them (studies).
SURFACE_VOIDS = "auto"
#: Where the surface voids take part: ``"chain"`` (the default: the background removal over chi's support, the
#: network's input and the final fit, while the voids' own fits and cores (:func:`fit_voids`,
#: :func:`place_void_cores`) keep to the enclosed voids), ``"all"`` (those too) or ``"final"`` (the final fit
#: alone).  Chosen on the validation heads (``benchmarks/RESULTS.md``, "Surface voids"): ``"all"`` gained most
#: on the 1 mm head and lost on the 2 mm rows (a void open to the outside has data on one side only, and its
#: fit overshoots), ``"final"`` gained least.
SURFACE_STAGE = "chain"
#: No TV inside the surface voids in the final fit (``smv_tv(tv_free=...)``): a vein a voxel or two thick, with
#: no data of its own, is what TV flattens first.  Chosen on the validation heads (``benchmarks/RESULTS.md``,
#: "Surface voids"; for the enclosed voids the same was not adopted: ``FINAL_TV_FREE_VOIDS``).
SURFACE_TV_FREE = True


def chi_support(brain_mask: np.ndarray, magnitude: np.ndarray | None = None,
                voxel_size: Sequence[float] = (1.0, 1.0, 1.0), b0_t: float | None = None,
                te_s: float | None = None, surface_voids: bool | str | None = None) -> np.ndarray:
    """chi's support in the chain: :func:`support_mask` plus, with long echoes, the voids at the brain's surface.

    ``surface_voids`` (default None: :data:`SURFACE_VOIDS`) ``"auto"``: with ``magnitude`` given and
    :func:`long_echo` of ``b0_t`` (T) and ``te_s`` (s), :func:`qsmprep.qsm.masking.surface_voids` (dark voxels
    next to the mask that are not
    skull or air: cortical veins at 7 T, which the mask's outline leaves out although they are voids like
    the enclosed ones) join the support, with no data of their own, as the holes do.  False, or no
    magnitude: :func:`support_mask` alone.  Chosen on the validation heads (``benchmarks/RESULTS.md``,
    "Surface voids"); bool.
    """
    sup = support_mask(brain_mask)
    if surface_voids is None:
        surface_voids = SURFACE_VOIDS
    if surface_voids == "auto":
        surface_voids = b0_t is not None and te_s is not None and long_echo(b0_t, te_s)
    if surface_voids and magnitude is not None:
        from qsmprep.qsm.masking import surface_voids as find

        sup = sup | find(magnitude, brain_mask, voxel_size)
    return sup


def place_void_cores(chi_ppm: np.ndarray, brain_mask: np.ndarray, voxel_size: Sequence[float],
                     power: float = VOID_CORE_POWER, ring: int = VOID_CORE_RING,
                     min_voxels: int = VOID_MIN_VOXELS, voids: np.ndarray | None = None) -> np.ndarray:
    """Each signal void's moment placed in its core.

    The field outside a compact source fixes its moment, not its extent (outside a uniformly magnetised
    sphere the field is that of a point dipole at its centre, whatever the radius), and a void is larger
    than its source: the source's own field dephases the voxels around it ("blooming"), more so at high
    field and long echo times.  Spread evenly over the void, as the fits leave it, the moment makes a
    haemorrhage too faint and too wide.  For each void (connected component of the brain mask's holes,
    :func:`support_mask`, with >= ``min_voxels`` voxels) its excess over the median chi of a ``ring``-voxel
    shell of the brain mask around it is redistributed in proportion to ``depth ** power`` (depth: the
    distance in mm from the void's edge), its sum (the moment) kept.  ``power`` 0 leaves chi as it is.
    ``voids``: those holes when the caller has them already.  ppm in and out, float32.
    """
    from scipy import ndimage

    out = np.asarray(chi_ppm, np.float32).copy()
    m = np.asarray(brain_mask) > 0
    voids = support_mask(m) & ~m if voids is None else np.asarray(voids, bool)
    if not power or not voids.any():
        return out
    lab, _ = ndimage.label(voids)
    for i, sl in enumerate(ndimage.find_objects(lab), 1):
        if sl is None:
            continue
        box = tuple(slice(max(0, s.start - ring - 1), min(n, s.stop + ring + 1)) for s, n in zip(sl, m.shape))
        c = lab[box] == i
        if c.sum() < min_voxels:
            continue
        shell = ndimage.binary_dilation(c, iterations=ring) & ~c & m[box]
        base = float(np.median(out[box][shell])) if shell.any() else 0.0
        excess = float((out[box][c].astype(np.float64) - base).sum())
        depth = ndimage.distance_transform_edt(np.pad(c, 1), sampling=[float(v) for v in voxel_size])[
            1:-1, 1:-1, 1:-1]
        p = depth[c].astype(np.float64) ** float(power)
        sub = out[box]
        sub[c] = (base + excess * p / p.sum()).astype(np.float32)
        out[box] = sub
    return out


def restored_field(chi_ppm: np.ndarray, total_ppm: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float],
                   b0_dir: Sequence[float], support: np.ndarray | None = None) -> np.ndarray:
    """Local field (ppm) of ``chi`` on ``support`` plus the data's residual without its harmonic part.

    ``D(chi S) + iSMV(f - D(chi S))`` on the iSMV-eroded data mask ``mask``, ``D(chi S)`` on the rest of
    ``S = support`` (default ``mask``), demeaned in ``S`` (``qsmprep.qsm.background.ismv``,
    ``qsmprep.qsm.dipole.forward_field``).  For the true chi the residual is the (harmonic)
    background and the result is the true local field of the sources inside ``S``.  float32, zero
    outside ``S``.
    """
    from qsmprep.qsm.background import ismv
    from qsmprep.qsm.dipole import forward_field

    m = np.asarray(mask) > 0
    sup = m if support is None else (np.asarray(support) > 0) | m
    model = forward_field(np.where(sup, chi_ppm, 0).astype(np.float32), voxel_size, b0_dir)
    resid = np.where(m, np.asarray(total_ppm, np.float32) - model, 0).astype(np.float32)
    rl, e = ismv(resid, m, voxel_size)
    out = np.where(sup, model + np.where(e, rl, 0), 0).astype(np.float32)
    out[sup] -= out[sup].mean()
    return out


def invert_nsidl_chain(
    local_ppm: np.ndarray,
    eroded_mask: np.ndarray,
    total_ppm: np.ndarray,
    brain_mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    weight: np.ndarray | None = None,
    b0_t: float = 3.0,
    te_s: float = 0.02,
    device: str = "auto",
    weights_path: str | None = None,
    radii_mm: Sequence[float] = CHAIN_RADII_MM,
    n_fit: int = CHAIN_FIT_ITER,
    n_refit: int = CHAIN_REFIT_ITER,
    loops: int = CHAIN_LOOPS,
    model=None,
    final_radii_mm: Sequence[float] | None = FINAL_RADII_MM,
    final_lam: float | str = FINAL_TV_LAMBDA,
    final_iter: int | str = "auto",
    final_support_mu: float = FINAL_SUPPORT_MU,
    final_relax: float = FINAL_RELAX,
    final_refit_voids: bool = FINAL_REFIT_VOIDS,
    final_void_iter: int = FINAL_VOID_ITER,
    final_tv_free_voids: bool = FINAL_TV_FREE_VOIDS,
    void_cores: float | str = "auto",
    magnitude: np.ndarray | None = None,
    surface_voids: bool | str | None = None,
    support: np.ndarray | None = None,
    final_edge_tv: tuple[float, float] | None = FINAL_EDGE_TV,
    final_edge_tv_band: float = FINAL_EDGE_TV_BAND,
    net_split: Sequence[int] | str = "auto",
) -> np.ndarray:
    """Susceptibility (ppm, float32, zero outside :func:`chi_support` of ``brain_mask``) from a chain's fields.

    Parameters
    ----------
    local_ppm, eroded_mask : the background-removed local field (ppm) and its (eroded) mask.
    total_ppm, brain_mask : the total field (ppm, before background removal) and the brain mask the
        removal started from (chi's support).
    voxel_size : mm.  b0_dir : unit B0 vector in array axes.
    weight : data weight (the multi-echo fit weight or a magnitude; any scale) or None.
    b0_t, te_s : field strength (T) and reference echo time (s) of the network's data term.
    device, weights_path, model : as :func:`qsmprep.dl.inference.invert_nsidl`.
    radii_mm, n_fit, n_refit : SMV radii and CG iterations of the two SMV-consistent fits.
    loops : restoration passes (network on the restored field, then a refit).
    final_radii_mm, final_lam, final_iter, final_support_mu : the final TV fit's radii, TV weight
        (``"auto"``: :func:`final_tv_lambda` of ``local_ppm`` on this grid), ADMM iterations (``"auto"``:
        :func:`final_iterations` of this grid), support penalty.
    final_relax : the final fit's ADMM over-relaxation (:func:`qsmprep.qsm.smvfit.smv_tv`'s ``relax``).
    final_refit_voids : after the final fit, fit the voids again (:func:`fit_voids`) to the field its
        chi leaves unexplained around them, with ``final_void_iter`` CG iterations.
    final_tv_free_voids : no TV in the voids and across their edges in the final fit
        (:func:`qsmprep.qsm.smvfit.smv_tv`'s ``tv_free``).
    final_edge_tv : ``(fraction, factor)`` of :func:`edge_tv_weight` from the final fit's start (the
        network's chi): the fit's TV weight on the start's edges, outside the voids and their one-voxel rim;
        None: uniform.  ``final_edge_tv_band``: that map's ramp (:func:`edge_tv_weight`'s ``band``).
    net_split : parts per axis of the grid the network runs on (:func:`on_split_grid`); ``"auto"``:
        :func:`net_splits` of ``voxel_size`` (thick slices cut in two, else the data's grid).
    void_cores : the last step, :func:`place_void_cores` with this power (``"auto"``:
        :func:`void_core_power` of ``b0_t`` and ``te_s``; 0: off).
    magnitude, surface_voids : the combined magnitude (any units) and the switch of :func:`chi_support`.
    support : :func:`chi_support` of ``brain_mask`` when the caller has it already (then ``magnitude`` and
        ``surface_voids`` are not used); it must contain :func:`support_mask` of ``brain_mask``.

    chi's support is the brain mask with its holes filled (:func:`support_mask`), with long echoes also
    the voids at its surface (:func:`chi_support`): signal voids stay in the map with zero data weight,
    their chi comes from the field around them and the network.
    """
    from qsmprep.dl.inference import invert_nsidl
    from qsmprep.qsm.smvfit import smv_fit

    m = np.asarray(brain_mask) > 0
    e = np.asarray(eroded_mask) > 0
    base = support_mask(m)
    enclosed = base & ~m
    if support is None:
        support = chi_support(m, magnitude, voxel_size, b0_t, te_s, surface_voids)
    sup = final_sup = np.asarray(support) > 0
    if (base & ~sup).any():
        raise ValueError("support must contain the brain mask with its holes filled (restore.chi_support).")
    if SURFACE_STAGE == "final":
        sup = base
    tot = np.where(m, np.asarray(total_ppm, np.float32), 0).astype(np.float32)
    w = None if weight is None else np.where(m, np.asarray(weight, np.float32), 0).astype(np.float32)
    t0 = time.time()

    def inv(field, mask, vs, wt):
        return invert_nsidl(field, mask, vs, b0_dir, weight=wt, b0_t=b0_t, te_s=te_s, device=device,
                            weights_path=weights_path, model=model, data_fit="robust",
                            weights="chain")

    if isinstance(net_split, str):
        if net_split != "auto":
            raise ValueError(f"net_split must be parts per axis or 'auto', got {net_split!r}.")
        splits = net_splits(voxel_size)
    else:
        splits = tuple(int(k) for k in net_split)

    def net(field, mask):
        return on_split_grid(inv, splits, field, mask, voxel_size, w)

    if isinstance(final_lam, str):
        if final_lam != "auto":
            raise ValueError(f"final_lam must be a number or 'auto', got {final_lam!r}.")
        final_lam, _ = final_tv_lambda(local_ppm, e, voxel_size)
    if isinstance(final_iter, str):
        if final_iter != "auto":
            raise ValueError(f"final_iter must be a number or 'auto', got {final_iter!r}.")
        final_iter = final_iterations(voxel_size)
    voids = sup & ~m
    if voids.any():
        # background removal on the mask *with* the voids (their sources then stay in the local
        # field), void values inpainted from their neighbours (no data there: weight 0)
        from qsmprep.qsm.background import ismv

        local_ppm, e = ismv(inpaint_nearest(tot, m), sup, voxel_size)
    chi = net(np.where(e & ~voids, local_ppm, 0).astype(np.float32) if voids.any() else local_ppm, e)
    LOG.info("NSIDL chain: the network on the local field done at %.1f s", time.time() - t0)
    fitv = voids if SURFACE_STAGE == "all" else enclosed
    if fitv.any():
        chi = fit_voids(chi, local_ppm, e & ~voids, fitv, voxel_size, b0_dir, weight=w)
    if loops:
        chi = smv_fit(tot, m, voxel_size, b0_dir, chi0=chi, weight=w, radii_mm=radii_mm, n_iter=n_fit, support=sup)
    for _ in range(int(loops)):
        chi = net(restored_field(chi, tot, m, voxel_size, b0_dir, support=sup), sup)
        chi = smv_fit(tot, m, voxel_size, b0_dir, chi0=chi, weight=w, radii_mm=radii_mm, n_iter=n_refit, support=sup)
    if final_radii_mm:
        from qsmprep.qsm.smvfit import smv_tv
        from qsmprep.utils.gpu import resolve_device

        # no TV in the surface voids (SURFACE_TV_FREE) nor, when asked, in the enclosed ones
        tv_free = (final_sup & ~base) if SURFACE_TV_FREE else np.zeros(m.shape, bool)
        if final_tv_free_voids:
            tv_free |= voids
        # the fit's ADMM runs in torch where the network ran, the CPU included (faster there than
        # numpy's: benchmarks/RESULTS.md, "Speed")
        chi = smv_tv(tot, m, voxel_size, b0_dir, chi_prior=chi, weight=w, radii_mm=final_radii_mm, lam=final_lam,
                     device=resolve_device(device),
                     n_iter=final_iter, support=final_sup, support_mu=final_support_mu, relax=final_relax,
                     tv_free=tv_free if tv_free.any() else None,
                     tv_weight=None if not final_edge_tv else final_edge_tv_weight(
                         chi, final_sup, m, voxel_size, *final_edge_tv, band=final_edge_tv_band))
        LOG.info("NSIDL chain: the final SMV-TV fit (%d ADMM iterations, TV weight %.2e) done at %.1f s", int(final_iter),
                 float(final_lam), time.time() - t0)
        if final_refit_voids and fitv.any():
            chi = fit_voids(chi, local_ppm, e & ~voids, fitv, voxel_size, b0_dir, weight=w, n_iter=final_void_iter)
    if voids.any():
        power = void_core_power(b0_t, te_s) if void_cores == "auto" else float(void_cores)
        chi = place_void_cores(chi, m, voxel_size, power=power, voids=fitv)
    LOG.info("NSIDL (chain: SMV fit + restoration, %d loop(s)): done in %.1f s", loops, time.time() - t0)
    return np.where(final_sup if final_radii_mm else sup, chi, 0).astype(np.float32)
