"""Brain mask from the (echo-combined) GRE magnitude.

Threshold on the lightly smoothed root-sum-of-squares magnitude (Otsu); the brain
is split from neck, face and scalp by a distance-map watershed (it is the thickest
blob; the dark skull and the foramen magnum are narrow necks) and kept; then
spherical (millimetre, Euclidean-distance based) closing, hole filling and a
final erosion that peels the extra-cerebral CSF.  Last, voxels whose phase cannot be
trusted leave the mask again: signal voids (skull, sinus air, haemorrhage cores that the
closing and hole filling took in) and, when the phase is given, voxels of low local phase
coherence (noise or aliasing) -- :func:`remove_unreliable`.  Morphology uses
balls in mm, never cross-shaped ``iterations=`` structuring elements (they reach only ``r/sqrt(3)``
along the diagonals).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .echoes import combine_magnitude


#: Default final erosion of :func:`brain_mask` in mm (at least the largest voxel edge is used).
DEFAULT_ERODE_MM = 2.0

#: Local phase-coherence threshold of :func:`remove_unreliable` for multi-echo phase (measured on the
#: first, shortest echo) and for a single echo; chosen on the robustness matrix's validation heads
#: (``benchmarks/RESULTS.md``, "Phase-coherence threshold").  A single echo is long, and its steep but
#: unwrappable phase near veins and iron-rich nuclei looks incoherent over a tenth to a fifth of the
#: brain: cutting all of that out lost more than it saved.  0.3 is the lowest threshold that still kept
#: every validation mask out of the neck (lower ones let 7 T single-echo masks leak to the image edge).
COHERENCE_THRESHOLD_MULTI_ECHO = 0.5
COHERENCE_THRESHOLD_SINGLE_ECHO = 0.3


#: Magnitude limit of the void rule (:func:`remove_unreliable`'s ``min_signal``: a fraction of the brain's median
#: magnitude) for multi-echo data and for a single echo; chosen on the robustness matrix's validation heads
#: (``benchmarks/RESULTS.md``, "The void rule's magnitude limit").  At one long echo the iron-rich nuclei darken
#: (the qsm-forward 7 T pallidum at 15 ms: a median 0.4 of the brain's, a tenth of it under 0.3) while their phase
#: stays coherent; each void cut there also loses the band that background removal erodes around it, about half of
#: the nucleus.  0.2 keeps them (single-echo validation rows: the qsm-forward 7 T ROI slope 0.66 -> 0.74, mean XSIM
#: +0.002); on multi-echo data, judged on all echoes' magnitude, the lower limit cost a 7 T haemorrhage 1.16x.
VOID_MIN_SIGNAL_MULTI_ECHO = 0.3
VOID_MIN_SIGNAL_SINGLE_ECHO = 0.2
#: Depth (mm) a thresholded region must rise above the neck joining it to the rest to be split off by
#: :func:`select_brain` (brain / neck / face / scalp).  4 mm since session 27 (6 in session 26, 8 before): a robustness
#: validation head's brain stayed joined to its scalp through the skull at 8 mm on every grid (the mask held 46 % of
#: the brain's volume in soft tissue and extracerebral CSF) and at 6 mm on its 1 x 1 x 2 mm grid (and into the neck on
#: its single echo); 4 mm separates them.  Below 4 mm the two hemispheres of 7 T single echoes came apart (3 mm on one
#: head, 2 mm on three), which :data:`MERGE_RISE_MM` undoes (``benchmarks/RESULTS.md``, "The split depth 6 -> 4 mm
#: with the hemispheres merged back").
SPLIT_H_MM = 4.0
#: :func:`select_brain` merges back every piece joined to the brain's piece through a pass (the deepest point of the
#: join between them, mm from the foreground's surface) above which the brain's deepest voxel rises less than this
#: (mm): a wide join, as between two hemispheres split by a dark midline, not a neck.  On the validation heads the
#: brain rose 2.6-3.3 mm above the passes between its own pieces and at least 33.9 mm above those to the neck, face
#: and scalp; 18 mm is about the middle (session 27).  0 or None: no merging.
MERGE_RISE_MM: float | None = 18.0
#: :func:`brain_mask` selects the brain on a grid of about this voxel size (mm; speed).
SELECT_MM = 2.0


def _n_echoes(*images: np.ndarray | None) -> int:
    """Echoes of the first 4-D image among ``images`` (echoes last), else 1."""
    for im in images:
        if im is not None and np.ndim(im) == 4:
            return int(np.shape(im)[-1])
    return 1


def default_min_signal(magnitude: np.ndarray, phase: np.ndarray | None = None) -> float:
    """The void rule's magnitude limit for these images (3-D: one echo; 4-D: echoes last)."""
    return VOID_MIN_SIGNAL_MULTI_ECHO if _n_echoes(phase, magnitude) > 1 else VOID_MIN_SIGNAL_SINGLE_ECHO


def default_coherence_threshold(phase: np.ndarray) -> float:
    """The phase-coherence threshold for ``phase`` (3-D: one echo; 4-D: echoes last)."""
    return COHERENCE_THRESHOLD_MULTI_ECHO if _n_echoes(phase) > 1 else COHERENCE_THRESHOLD_SINGLE_ECHO


def coherence_sigma_mm(voxel_size: Sequence[float]) -> float:
    """Gaussian sigma (mm) of :func:`phase_coherence` in :func:`remove_unreliable`: 1.5 mm, but at least 0.75 of the
    largest voxel edge (a narrower Gaussian barely averages the neighbours, and random phase would look coherent on
    coarse, >= 3 mm, grids)."""
    return max(1.5, 0.75 * max(float(v) for v in voxel_size))


def _pad(mask: np.ndarray, width: Sequence[int], mode: str = "constant") -> np.ndarray:
    return np.pad(mask, [(int(w), int(w)) for w in width], mode=mode)


def _unpad(arr: np.ndarray, width: Sequence[int]) -> np.ndarray:
    return arr[tuple(slice(int(w), arr.shape[i] - int(w)) for i, w in enumerate(width))]


def dilate_mm(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """Dilation by a ball of ``radius_mm`` (mm; Euclidean distance on the voxel grid)."""
    from scipy import ndimage

    from qsmprep.qsm.geometry import bounding_box

    m = np.asarray(mask, bool)
    if radius_mm <= 0 or not m.any():
        return m.copy()
    # only the mask's box grown by the radius can be reached: the transform there alone (the same result)
    box = bounding_box(m, _reach(radius_mm, voxel_size))
    out = np.zeros(m.shape, bool)
    out[box] = ndimage.distance_transform_edt(~m[box], sampling=voxel_size) <= radius_mm
    return out


def erode_mm(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float] = (1, 1, 1), *,
             border: str = "background") -> np.ndarray:
    """Erosion by a ball of ``radius_mm`` (mm): keep voxels farther than ``radius_mm``
    from every background voxel.

    ``border``: what lies beyond the array: ``"background"`` (the border erodes, as a boundary of
    the data) or ``"continue"`` (the mask goes on as at its edge voxels: a face of the mask cut by
    the field of view, as in slab coverage, is not peeled).
    """
    from scipy import ndimage

    if border not in ("background", "continue"):
        raise ValueError(f"border must be 'background' or 'continue', got {border!r}.")
    from qsmprep.qsm.geometry import bounding_box

    m = np.asarray(mask, bool)
    if radius_mm <= 0 or not m.any():
        return m.copy()
    # the mask's box and a ring of background (where the box is inside the array) hold every nearest
    # background voxel: the transform there alone (the same result)
    box = bounding_box(m, 1)
    width = [1] * m.ndim
    d = ndimage.distance_transform_edt(_pad(m[box], width, "edge" if border == "continue" else "constant"),
                                       sampling=voxel_size)
    out = np.zeros(m.shape, bool)
    out[box] = _unpad(d, width) > radius_mm
    return out


def _reach(radius_mm: float, voxel_size: Sequence[float]) -> list[int]:
    """Voxels per axis beyond which a ball of ``radius_mm`` (mm) cannot reach, plus one."""
    return [int(np.ceil(radius_mm / float(v))) + 1 for v in voxel_size]


def close_mm(mask: np.ndarray, radius_mm: float, voxel_size: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """Morphological closing with a ball of ``radius_mm`` (padded so the border does not erode)."""
    m = np.asarray(mask, bool)
    if radius_mm <= 0:
        return m.copy()
    width = _reach(radius_mm, voxel_size)
    p = _pad(m, width)
    return _unpad(erode_mm(dilate_mm(p, radius_mm, voxel_size), radius_mm, voxel_size), width)


def otsu_threshold(values: np.ndarray, nbins: int = 256) -> float:
    """Otsu's threshold (same units as ``values``): maximises the between-class variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    hist, edges = np.histogram(v, bins=nbins)
    centers = 0.5 * (edges[:-1] + edges[1:])
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    s0 = np.cumsum(hist * centers)
    mu0 = s0 / np.maximum(w0, 1)
    mu1 = (s0[-1] - s0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    between = between[:-1]
    best = np.flatnonzero(between >= between.max() * (1.0 - 1e-9))
    # middle of a plateau (two well separated classes give a flat maximum)
    return float(0.5 * (edges[best[0] + 1] + edges[best[-1] + 1]))


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Largest 6-connected component of a boolean mask."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    if n <= 1:
        return lab > 0
    counts = np.bincount(lab.ravel())
    counts[0] = 0
    return lab == int(np.argmax(counts))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes in 3-D and then slice by slice along each axis."""
    from scipy import ndimage

    m = ndimage.binary_fill_holes(mask)
    for ax in range(m.ndim):
        m2 = np.moveaxis(m, ax, 0).copy()
        for i in range(m2.shape[0]):
            if m2[i].any():
                m2[i] = ndimage.binary_fill_holes(m2[i])
        m = np.moveaxis(m2, 0, ax)
    return np.ascontiguousarray(m)


def phase_coherence(phase: np.ndarray, voxel_size: Sequence[float] = (1, 1, 1), sigma_mm: float = 1.5) -> np.ndarray:
    """Local phase coherence in [0, 1]: ``|G * exp(i phi)|`` with a Gaussian ``G`` (``sigma_mm``).

    About 1 in smooth tissue phase, about ``1/sqrt(#voxels in the window)`` in noise.
    ``phase`` in rad (3-D).
    """
    from scipy import ndimage

    ph = np.asarray(phase, dtype=np.float64)
    sig = [sigma_mm / float(v) for v in voxel_size]
    re = ndimage.gaussian_filter(np.cos(ph), sig, mode="nearest")
    im = ndimage.gaussian_filter(np.sin(ph), sig, mode="nearest")
    return np.hypot(re, im).astype(np.float32)


def fill_small_holes(mask: np.ndarray, max_volume_ml: float, voxel_size: Sequence[float] = (1, 1, 1)) -> np.ndarray:
    """Fill enclosed 3-D holes smaller than ``max_volume_ml`` (millilitres = 1000 mm^3)."""
    from scipy import ndimage

    m = np.asarray(mask, bool)
    holes = ndimage.binary_fill_holes(m) & ~m
    if not holes.any():
        return m.copy()
    lab, n = ndimage.label(holes)
    vol = np.bincount(lab.ravel()) * float(np.prod(voxel_size)) / 1000.0
    small = vol <= max_volume_ml
    small[0] = False
    return m | small[lab]


def select_brain(fg: np.ndarray, voxel_size: Sequence[float] = (1, 1, 1),
                 split_h_mm: float = SPLIT_H_MM, merge_rise_mm: float | None = None) -> np.ndarray:
    """The brain part of a thresholded head (bool 3-D): split ``fg`` at its narrow necks and keep
    the piece that holds the deepest voxel (:func:`brain_pieces`).

    Pieces joined to the kept one (transitively) through a pass above which the deepest voxel rises
    less than ``merge_rise_mm`` are merged back (:func:`joined_pieces`; default
    :data:`MERGE_RISE_MM`): a split that deep runs through the brain, not a neck.
    """
    m = np.asarray(fg, bool)
    if not m.any():
        return m.copy()
    pieces, depth, deepest = brain_pieces(m, voxel_size, split_h_mm)
    start = int(pieces[deepest])
    rise = MERGE_RISE_MM if merge_rise_mm is None else merge_rise_mm
    if rise and pieces.max() > 1:
        return np.isin(pieces, joined_pieces(pieces, depth, start, float(depth[deepest]) - float(rise)))
    return pieces == start


def brain_pieces(fg: np.ndarray, voxel_size: Sequence[float] = (1, 1, 1),
                 split_h_mm: float = SPLIT_H_MM) -> tuple[np.ndarray, np.ndarray, tuple]:
    """Split the component of ``fg`` (bool 3-D) that holds the deepest voxel at its narrow necks.

    Enclosed holes up to 30 ml (veins, iron-rich nuclei, haemorrhage) are filled first, so
    they cannot split the brain.  Watershed of the negated Euclidean distance map (mm) from
    markers at the distance maxima whose dynamic exceeds ``split_h_mm`` (h-domes, by grey
    reconstruction): the brain (the thickest blob, tens of mm deep) separates from the neck/face
    across the foramen magnum and from the scalp across thin bridges through the dark skull.  Lobes
    are not split because the necks between them are much less than ``split_h_mm`` shallower than
    their centres.

    Returns ``(pieces, depth, deepest)``: int32 labels 1.. of the pieces (0 elsewhere, the other
    components included), the distance map in mm on that component (0 elsewhere), and the index of
    the deepest voxel.
    """
    from scipy import ndimage
    from skimage.morphology import reconstruction
    from skimage.segmentation import watershed

    m = fill_small_holes(np.asarray(fg, bool), 30.0, voxel_size)
    if not m.any():
        raise ValueError("brain_pieces: the foreground is empty.")
    lab, n = ndimage.label(m)
    edt = ndimage.distance_transform_edt(m, sampling=voxel_size).astype(np.float32)
    deepest = np.unravel_index(int(np.argmax(edt)), edt.shape)
    comp = lab == lab[deepest]
    depth = np.where(comp, edt, 0.0).astype(np.float32)
    pieces = comp.astype(np.int32)
    # work on the bounding box of the deepest component only
    idx = np.argwhere(comp)
    lo = idx.min(0)
    hi = idx.max(0) + 1
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    e = depth[box]
    # h-domes: connected parts of {e > reconstruction(e - h)} that rise at least h above it.
    # (skimage's h_maxima marks only the tops, so two equal tops of one dome would split it.)
    rec = reconstruction(e - np.float32(split_h_mm), e, method="dilation")
    resid = e - rec
    domes, nd = ndimage.label(resid > 1e-3 * split_h_mm, structure=np.ones((3, 3, 3)))
    if nd > 1:
        height = ndimage.maximum(resid, domes, index=np.arange(1, nd + 1))
        keep = np.r_[False, np.asarray(height) >= split_h_mm * (1 - 1e-4)]
        markers, nm = ndimage.label(keep[domes], structure=np.ones((3, 3, 3)))
    else:
        markers, nm = domes, nd
    if nm > 1:
        pieces[box] = watershed(-e, markers, mask=comp[box])
    return pieces, depth, tuple(int(i) for i in deepest)


def piece_passes(labels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """The pass between every two touching pieces of ``labels`` (int array, 0 = background): the largest
    ``min(depth[u], depth[v])`` over face-neighbour voxel pairs ``u``, ``v`` across their border (``depth``:
    same shape, e.g. mm from the surface).  Returns a symmetric ``(n + 1, n + 1)`` array, -inf where two
    pieces do not touch (row and column 0: the background, never set)."""
    lab = np.asarray(labels)
    dep = np.asarray(depth, np.float64)
    n = int(lab.max())
    passes = np.full((n + 1, n + 1), -np.inf, np.float64)
    for ax in range(lab.ndim):
        a = np.moveaxis(lab, ax, 0)
        d = np.moveaxis(dep, ax, 0)
        l1, l2 = a[:-1].ravel(), a[1:].ravel()
        sel = (l1 != l2) & (l1 > 0) & (l2 > 0)
        v = np.minimum(d[:-1].ravel()[sel], d[1:].ravel()[sel])
        np.maximum.at(passes, (l1[sel], l2[sel]), v)
    return np.maximum(passes, passes.T)


def joined_pieces(labels: np.ndarray, depth: np.ndarray, start: int, min_pass: float) -> list[int]:
    """Labels reachable from ``start`` through passes (:func:`piece_passes`) at least ``min_pass`` deep.
    Returns the sorted labels, ``start`` included."""
    from scipy.sparse.csgraph import connected_components

    _, comp = connected_components(piece_passes(labels, depth) >= min_pass, directed=False)
    return [int(j) for j in np.nonzero(comp == comp[int(start)])[0]]


def brain_mask(
    magnitude: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    smooth_mm: float = 1.0,
    threshold: float | None = None,
    threshold_scale: float = 1.0,
    split_h_mm: float = SPLIT_H_MM,
    merge_rise_mm: float | None = None,
    close_radius_mm: float = 3.0,
    erode_radius_mm: float | None = None,
    phase: np.ndarray | None = None,
    coherence_threshold: float | None = None,
    select_mm: float = SELECT_MM,
    min_signal: float | None = None,
) -> np.ndarray:
    """Brain mask (bool 3-D) from GRE magnitude.

    Parameters
    ----------
    magnitude : 3-D, or 4-D with echoes last (combined by root-sum-of-squares); any units.
    voxel_size : mm.
    smooth_mm : Gaussian sigma (mm) applied before thresholding.
    threshold : absolute threshold in magnitude units; default Otsu's threshold of the
        smoothed magnitude (times ``threshold_scale``).
    split_h_mm : depth (mm) used to split the thresholded head into brain / neck / face /
        scalp (:func:`select_brain`; default :data:`SPLIT_H_MM`).
    merge_rise_mm : pieces joined to the brain through a pass it rises less than this (mm) above are
        merged back (:func:`select_brain`; default None: :data:`MERGE_RISE_MM`; 0: never).
    close_radius_mm : radius (mm) of the ball closing that smooths the outline and closes
        sulci and vessels at the surface.
    erode_radius_mm : final ball erosion (mm).  Default (None): :data:`DEFAULT_ERODE_MM` = 2 mm,
        but at least the largest voxel edge (so one voxel layer is always peeled on coarse
        grids).  It peels most of the extra-cerebral CSF and the outermost, least reliable phase
        layer, so the mask follows the brain surface rather than the inner skull surface (faces
        cut by the field of view, as in slab coverage, are not peeled: they are no surface);
        background removal erodes further (iSMV 2 mm, V-SHARP 1 mm).  Measured on the 1 mm
        validation head (seed 0, ``benchmarks/mask_study.py``, app chain with iSMV + TKD; brain-mask
        Dice / final mask outside the true brain / coverage of the true brain / chi xSIM and NRMSE
        over the true brain): 3 mm 0.984 / 0.1 % / 0.90 / 0.389, 55.2 %; **2 mm** 0.984 / 0.3 % /
        0.95 / 0.437, 47.2 %; 1 mm 0.966 / 0.8 % / 0.98 / 0.453, 44.5 %; 0 mm 0.948 / 2.9 % / 1.00 /
        0.380, 53.0 %.  Use 0 for an intracranial mask.
    phase : optional wrapped phase (rad; 3-D, or 4-D whose first echo is used): voxels
        whose local phase coherence (:func:`phase_coherence`) is below
        ``coherence_threshold`` are removed at the end (after closing and hole filling,
        so they stay out); default (None) :func:`default_coherence_threshold`: 0.5 for multi-echo
        phase, 0.3 for a single echo; 0 disables the rule.  Incoherent voxels are phase aliasing (steep fields near
        lesions, veins and sinuses, typical of one long echo at 7 T) or noise; kept, their
        unwrapping errors of 2*pi*k (0.22 ppm per turn at 7 T, TE 15 ms) dominate the
        local field (ds-t2starw, TKD: local-field correlation 0.30 with them, 0.91 without).
    select_mm : the brain/non-brain split runs on a grid of about this voxel size (speed).
    min_signal : signal voids are removed at the end: voxels whose (unsmoothed) combined
        magnitude is below ``min_signal`` times the median magnitude in the mask (before
        the erosion).  Closing and hole filling put dark skull, sinus air and haemorrhage
        cores into the mask; their phase is noise, and one such voxel spoils the V-SHARP field up to 12 mm around it
        (ds-megre sub-01: local-field correlation 0.55 with them, 0.88 without).  Default (None):
        :func:`default_min_signal`: 0.3 for multi-echo data, 0.2 for a single echo.  0 disables.

    Steps: smooth RSS -> threshold (Otsu) -> keep the brain (:func:`select_brain`) -> ball
    closing -> fill holes -> largest component -> ball erosion -> remove signal voids
    (``min_signal``) and incoherent-phase voxels (``phase``) -> largest component.
    Morphology is Euclidean (mm balls), never cross-shaped iterations.  The result may hold
    small holes (removed voxels): they carry no usable phase, and V-SHARP works around them.
    """
    vs = [float(v) for v in voxel_size]
    fg, mag = head_foreground(magnitude, vs, smooth_mm=smooth_mm, threshold=threshold, threshold_scale=threshold_scale)
    core = _select_brain_coarse(fg, vs, split_h_mm, select_mm, merge_rise_mm)
    # the remaining steps only need the brain's bounding box plus a margin
    margin = [int(np.ceil(close_radius_mm / v)) + 2 for v in vs]
    idx = np.argwhere(core)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + 1 + np.asarray(margin), core.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    m = close_mm(core[box], close_radius_mm, vs)
    m = fill_holes(m)
    m = largest_component(m)
    # signal level of the brain, taken before the erosion so that the voids removed below do
    # not depend on it (an eroded mask stays inside the uneroded one)
    level = float(np.median(mag[box][m])) if m.any() else 0.0
    erode = max(DEFAULT_ERODE_MM, max(vs)) if erode_radius_mm is None else float(erode_radius_mm)
    if erode > 0:
        # the box's faces are background except where it meets the field of view's border, and that
        # border is no brain surface: a slab's cut faces are not peeled (benchmarks/RESULTS.md, robustness)
        eroded = erode_mm(m, erode, vs, border="continue")
        if eroded.any():
            m = largest_component(eroded)
    out = np.zeros(fg.shape, bool)
    out[box] = m
    if min_signal is None:
        min_signal = default_min_signal(magnitude, phase)
    return remove_unreliable(out, mag, vs, phase=phase, min_signal=min_signal,
                             coherence_threshold=coherence_threshold, level=level)


def head_foreground(magnitude: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), *, smooth_mm: float = 1.0,
                    threshold: float | None = None, threshold_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """The thresholded head :func:`brain_mask` starts from: ``(fg, mag)``, ``fg`` the voxels of the Gaussian-smoothed
    (``smooth_mm``) combined magnitude above ``threshold`` (default Otsu's threshold times ``threshold_scale``), ``mag``
    the combined magnitude (float32, NaN as 0).  ``magnitude``: 3-D, or 4-D with echoes last; any units."""
    from scipy import ndimage

    mag = combine_magnitude(np.asarray(magnitude))
    if mag.ndim != 3:
        raise ValueError(f"brain_mask expects a 3-D or 4-D magnitude, got shape {mag.shape}.")
    vs = [float(v) for v in voxel_size]
    mag = np.nan_to_num(mag.astype(np.float32))
    sm = ndimage.gaussian_filter(mag, [smooth_mm / v for v in vs]) if smooth_mm > 0 else mag
    thr = otsu_threshold(sm) * threshold_scale if threshold is None else float(threshold)
    fg = sm > thr
    if not fg.any():
        raise ValueError(
            "brain_mask: no voxel is above the magnitude threshold; check that the input is "
            "a magnitude image (not phase) or pass threshold= explicitly."
        )
    return fg, mag


def remove_unreliable(
    mask: np.ndarray,
    magnitude: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    phase: np.ndarray | None = None,
    min_signal: float | None = None,
    coherence_threshold: float | None = None,
    level: float | None = None,
) -> np.ndarray:
    """Drop mask voxels whose phase cannot be trusted; keep the largest remaining part (bool 3-D).

    * signal voids: combined magnitude (3-D, or 4-D echoes last, any units) below
      ``min_signal`` times ``level`` (magnitude units; default the median magnitude inside
      ``mask``; default None: :func:`default_min_signal` of ``magnitude`` and ``phase``); ``min_signal=0``
      disables the rule;
    * phase aliasing / noise (when ``phase`` is given, rad, 3-D or 4-D whose first echo is
      used): local phase coherence (:func:`phase_coherence`, Gaussian sigma 1.5 mm but at
      least 0.75 of the largest voxel edge) below ``coherence_threshold`` (default None:
      :func:`default_coherence_threshold` of ``phase``; 0 disables the rule).

    If nothing would be left the mask is returned unchanged.
    """
    m = np.asarray(mask, bool)
    if not m.any():
        return m.copy()
    keep = m.copy()
    if min_signal is None:
        min_signal = default_min_signal(magnitude, phase)
    mag = combine_magnitude(np.asarray(magnitude))
    if min_signal > 0:
        ref = float(np.median(mag[m])) if level is None else float(level)
        keep &= mag > min_signal * ref
    if phase is not None:
        ph = np.asarray(phase)
        if coherence_threshold is None:
            coherence_threshold = default_coherence_threshold(ph)
        if ph.ndim == 4:
            ph = ph[..., 0]
        if ph.shape != m.shape:
            raise ValueError(f"brain_mask: phase shape {ph.shape} differs from the magnitude shape {m.shape}.")
        if coherence_threshold > 0:
            keep &= phase_coherence(ph, voxel_size, coherence_sigma_mm(voxel_size)) >= coherence_threshold
    if not keep.any():
        return m.copy()
    return largest_component(keep)


#: :func:`surface_voids`: depth (mm) outside chi's support searched and the signal band (fractions of the
#: brain's median magnitude): below ``MIN_SIGNAL`` a voxel is a signal void by :func:`remove_unreliable`'s rule,
#: below ``FLOOR`` it has no signal at all (skull, air).  The depth is the final erosion's peel
#: (:data:`DEFAULT_ERODE_MM`): on the validation heads 3-4 mm gained a little more, but their band reaches
#: the partial-volume shell between the extra-cerebral CSF and the skull, which then joins the map
#: (``benchmarks/RESULTS.md``, "Surface voids").
SURFACE_VOID_DEPTH_MM = DEFAULT_ERODE_MM
SURFACE_VOID_FLOOR = 0.1
SURFACE_VOID_MIN_SIGNAL = 0.3


def surface_voids(
    magnitude: np.ndarray,
    brain_mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    depth_mm: float | None = None,
    floor: float | None = None,
    min_signal: float | None = None,
) -> np.ndarray:
    """Signal voids at the brain's surface: dark voxels just outside the mask that are not skull or air (bool).

    A signal void enclosed by the brain mask is a hole, and chi's support takes it back
    (``qsmprep.dl.restore.support_mask``).  A void at the surface (a cortical vein, dark at a long echo
    at 7 T) is not enclosed, so the mask's outline simply leaves it out.  Returned: the voxels within
    ``depth_mm`` (mm) of the mask with its holes filled whose combined magnitude (3-D, or 4-D echoes
    last, any units) lies in ``[floor, min_signal)`` times the median magnitude inside ``brain_mask``:
    darker than :func:`remove_unreliable`'s signal-void level, but with signal, unlike the skull, the
    air or the image background (noise level).  Extra-cerebral CSF is bright and stays out.  Defaults
    (None): :data:`SURFACE_VOID_DEPTH_MM`, :data:`SURFACE_VOID_FLOOR`, :data:`SURFACE_VOID_MIN_SIGNAL`.
    """
    from scipy import ndimage

    m = np.asarray(brain_mask) > 0
    if not m.any():
        return np.zeros(m.shape, bool)
    mag = combine_magnitude(np.asarray(magnitude)).astype(np.float32)
    if mag.shape != m.shape:
        raise ValueError(f"surface_voids: magnitude shape {mag.shape} differs from the mask shape {m.shape}.")
    depth_mm = SURFACE_VOID_DEPTH_MM if depth_mm is None else float(depth_mm)
    floor = SURFACE_VOID_FLOOR if floor is None else float(floor)
    min_signal = SURFACE_VOID_MIN_SIGNAL if min_signal is None else float(min_signal)
    level = float(np.median(mag[m]))
    sup = ndimage.binary_fill_holes(m)
    dist = ndimage.distance_transform_edt(~sup, sampling=[float(v) for v in voxel_size])
    return (dist > 0) & (dist <= depth_mm) & (mag >= floor * level) & (mag < min_signal * level)


def coarse_foreground(fg: np.ndarray, vs: Sequence[float], select_mm: float) -> tuple[np.ndarray, list, list]:
    """``fg`` (bool 3-D) on a grid of about ``select_mm`` voxels by block majority: ``(coarse, coarse voxel
    size in mm, block factors)``; ``fg`` itself when every factor is 1."""
    f = [max(1, int(round(select_mm / v))) for v in vs]
    if all(k == 1 for k in f):
        return np.asarray(fg, bool), [float(v) for v in vs], f
    pad = [(0, (-n) % k) for n, k in zip(fg.shape, f)]
    g = np.pad(fg, pad).astype(np.float32)
    sh = g.shape
    g = g.reshape(sh[0] // f[0], f[0], sh[1] // f[1], f[1], sh[2] // f[2], f[2]).mean(axis=(1, 3, 5))
    return g >= 0.5, [float(v) * k for v, k in zip(vs, f)], f


def _select_brain_coarse(fg: np.ndarray, vs: Sequence[float], split_h_mm: float, select_mm: float,
                         merge_rise_mm: float | None = None) -> np.ndarray:
    """:func:`select_brain` on a grid of about ``select_mm`` voxels (:func:`coarse_foreground`), mapped
    back: the fine foreground within one coarse voxel of the coarse brain, largest part."""
    coarse, vs_c, f = coarse_foreground(fg, vs, select_mm)
    if all(k == 1 for k in f):
        return select_brain(fg, vs, split_h_mm, merge_rise_mm)
    core_c = select_brain(coarse, vs_c, split_h_mm, merge_rise_mm)
    up = np.repeat(np.repeat(np.repeat(core_c, f[0], 0), f[1], 1), f[2], 2)
    up = up[: fg.shape[0], : fg.shape[1], : fg.shape[2]]
    near = dilate_mm(up, max(vs_c), vs)
    return largest_component(fg & near)
