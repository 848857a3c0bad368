"""Phase unwrapping: FFT/DST Laplacian and quality-guided spanning-tree growth (ROMEO-like).

Units: phase in rad, echo times in s, voxel sizes in mm.  4-D arrays have the
echoes on the LAST axis.  See ``shared/ALGORITHMS.md`` section 2.2.

Quality-guided method (``unwrap_quality``): every pair of 6-neighbours inside the
mask is an edge with a quality in (0, 1] (phase coherence, phase-gradient
coherence with a second echo, magnitude coherence and magnitude level, each as
``0.1 + 0.9 * term`` and multiplied, as in ROMEO, Dymerska et al. MRM 2021).
Growing regions in order of edge quality from a seed is Prim's algorithm, so the
unwrapping paths are the maximum-quality spanning tree; we compute it with
``scipy.sparse.csgraph.minimum_spanning_tree`` on ``1 - quality``, root it with one
breadth-first search from a virtual node linked to one seed per connected
component, and integrate the wrapped differences along the tree with pointer
jumping (``log2(depth)`` vectorised passes) instead of a Python loop.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

from .dipole import fft_workers
from .geometry import bounding_box

TWO_PI = 2.0 * np.pi


def _wrap(x):
    """Wrap to [-pi, pi] (``x - 2*pi*rint(x/2*pi)``; keeps float32 as float32)."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return x - np.float32(TWO_PI) * np.rint(x * np.float32(1.0 / TWO_PI))
    return x - TWO_PI * np.rint(x / TWO_PI)


def _axis_slices(ndim: int, axis: int):
    lo = [slice(None)] * ndim
    hi = [slice(None)] * ndim
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    return tuple(lo), tuple(hi)


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
        lo, hi = _axis_slices(x.ndim, ax)
        d = x[hi] - x[lo]
        if wrapped:
            d = _wrap(d)
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


# --------------------------------------------------------------------------------------
# quality-guided unwrapping
# --------------------------------------------------------------------------------------


def edge_qualities(
    phase: np.ndarray,
    magnitude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    phase2: np.ndarray | None = None,
    te_ratio: float | None = None,
) -> list[np.ndarray]:
    """ROMEO-style quality of every 6-neighbour edge, one array per axis (float32, unit-free).

    ``q = prod_terms (0.1 + 0.9 * term)`` with the terms
    * phase coherence ``1 - |wrap(dphi)|/pi``;
    * phase-gradient coherence with a second echo (if ``phase2`` and
      ``te_ratio = TE_1/TE_2`` are given): ``max(0, 1 - |wrap(dphi) - wrap(dphi2)*te_ratio|)``;
    * magnitude coherence ``(m_small/m_big)^2`` and magnitude level
      ``min(1, m_small / p95(m in mask))`` (if ``magnitude`` is given).
    Array ``a`` has shape ``phase.shape`` minus one along axis ``a``; entry ``i`` is the
    edge between voxels ``i`` and ``i+1``.  Edges with an end outside the mask are 0;
    all others are in [1e-5, 1].
    """
    ph = np.asarray(phase, dtype=np.float32)
    m = np.ones(ph.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    mag = None
    if magnitude is not None:
        mag = np.asarray(magnitude, dtype=np.float32)
        vals = mag[m]
        maxmag = float(np.percentile(vals, 95)) if vals.size else 1.0
        if maxmag <= 0:
            maxmag = 1.0
    ph2 = None if phase2 is None or te_ratio is None else np.asarray(phase2, dtype=np.float32)
    out = []
    for ax in range(ph.ndim):
        lo, hi = _axis_slices(ph.ndim, ax)
        d = _wrap(ph[hi] - ph[lo])
        q = 0.1 + 0.9 * (1.0 - np.abs(d) / np.float32(np.pi))
        if ph2 is not None:
            d2 = _wrap(ph2[hi] - ph2[lo])
            gc = np.clip(1.0 - np.abs(d - d2 * np.float32(te_ratio)), 0.0, 1.0)
            q *= 0.1 + 0.9 * gc
            del d2, gc
        del d
        if mag is not None:
            a, b = mag[lo], mag[hi]
            small = np.minimum(a, b)
            big = np.maximum(a, b)
            with np.errstate(divide="ignore", invalid="ignore"):
                mc = np.where(big > 0, (small / np.where(big > 0, big, 1.0)) ** 2, 0.0)
            q *= 0.1 + 0.9 * mc
            q *= 0.1 + 0.9 * np.minimum(1.0, small / maxmag)
            del a, b, small, big, mc
        q = np.clip(q, 1e-5, 1.0).astype(np.float32)
        q[~(m[lo] & m[hi])] = 0.0
        out.append(q)
    return out


def _tree_unwrap(
    phase: np.ndarray,
    qualities: list[np.ndarray],
    mask: np.ndarray,
    fixed: np.ndarray | None = None,
    fixed_turns: np.ndarray | None = None,
    seed_turns: np.ndarray | None = None,
):
    """Integer turns ``k`` (phase + 2*pi*k) for the mask voxels, by integration along the
    maximum-quality spanning forest.

    fixed : bool 3-D, voxels whose turns are already known (``fixed_turns``, int 3-D);
        they act as sources and keep their value.
    seed_turns : int 3-D, turns given to the seed of a component that has no fixed voxel
        (default 0).
    Returns (turns int32 3-D, 0 outside the mask; component label per voxel int32, -1 outside).
    """
    from scipy.sparse import coo_matrix, csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components, minimum_spanning_tree

    shape = phase.shape
    n = int(mask.sum())
    turns3 = np.zeros(shape, np.int32)
    labels3 = np.full(shape, -1, np.int32)
    if n == 0:
        return turns3, labels3
    itype = np.int32 if n < 2**31 - 2 else np.int64
    idx = np.full(shape, -1, itype)
    idx[mask] = np.arange(n, dtype=itype)
    ph = phase[mask].astype(np.float64)
    fx = None if fixed is None else np.asarray(fixed, bool)[mask]

    srcs, dsts, costs = [], [], []
    node_q = np.zeros(n, np.float64)
    for ax, q in enumerate(qualities):
        lo, hi = _axis_slices(phase.ndim, ax)
        valid = q > 0
        s = idx[lo][valid]
        d = idx[hi][valid]
        qv = q[valid].astype(np.float64)
        node_q += np.bincount(s, weights=qv, minlength=n)
        node_q += np.bincount(d, weights=qv, minlength=n)
        c = (1.0 + 1e-6) - qv
        if fx is not None:
            c[fx[s] & fx[d]] = 1e-9
        srcs.append(s)
        dsts.append(d)
        costs.append(c)
        del valid, qv
    s = np.concatenate(srcs)
    d = np.concatenate(dsts)
    c = np.concatenate(costs)
    del srcs, dsts, costs
    graph = csr_matrix((c, (s, d)), shape=(n, n))
    del s, d, c
    tree = minimum_spanning_tree(graph).tocoo()
    del graph
    ncomp, lab = connected_components(
        csr_matrix((np.ones(tree.nnz), (tree.row, tree.col)), shape=(n, n)), directed=False
    )
    # one seed per component: a fixed voxel if there is one, else the best-connected voxel
    notfixed = np.zeros(n, bool) if fx is None else ~fx
    order = np.lexsort((-node_q, notfixed, lab))
    first = np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]
    seeds = order[first]
    rows = np.concatenate([tree.row, np.full(ncomp, n, dtype=tree.row.dtype)])
    cols = np.concatenate([tree.col, seeds.astype(tree.col.dtype)])
    rooted = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    del tree, rows, cols
    _, pred = breadth_first_order(rooted, n, directed=False, return_predecessors=True)
    del rooted
    pred = pred[:n].astype(np.int64)

    terminal = np.zeros(n, bool)
    terminal[seeds] = True
    if fx is not None:
        terminal |= fx
    ar = np.arange(n, dtype=np.int64)
    p = np.where(terminal, ar, pred)
    if np.any(p < 0):  # cannot happen for a rooted spanning forest
        raise RuntimeError("Internal error in quality-guided unwrapping: unrooted voxel.")
    acc = np.rint((ph[p] - ph) / TWO_PI).astype(np.int64)
    acc[terminal] = 0
    while True:
        pp = p[p]
        if np.array_equal(pp, p):
            break
        acc = acc + acc[p]
        p = pp
    base = np.zeros(n, np.int64)
    if seed_turns is not None:
        base[seeds] = np.asarray(seed_turns)[mask][seeds]
    if fx is not None and fixed_turns is not None:
        ft = np.asarray(fixed_turns)[mask]
        base[fx] = ft[fx]
    turns3[mask] = (acc + base[p]).astype(np.int32)
    labels3[mask] = lab.astype(np.int32)
    return turns3, labels3


def _align_components(uw: np.ndarray, labels: np.ndarray, correct_global: bool) -> np.ndarray:
    """Shift each connected component by 2*pi*k to the largest one (matching medians) and,
    with ``correct_global``, shift all so the largest component's median lies in [-pi, pi)."""
    inside = labels >= 0
    if not inside.any():
        return uw
    lab = labels[inside]
    vals = uw[inside]
    counts = np.bincount(lab)
    main = int(np.argmax(counts))
    med_main = float(np.median(vals[lab == main]))
    k_glob = -np.round(med_main / TWO_PI) if correct_global else 0.0
    target = med_main + TWO_PI * k_glob
    shift = np.zeros(counts.size, np.float64)
    if counts.size > 1:
        order = np.argsort(lab, kind="stable")
        splits = np.flatnonzero(np.diff(lab[order])) + 1
        groups = np.split(vals[order], splits)
        ids = lab[order][np.r_[0, splits]]
        for g, cid in zip(groups, ids):
            shift[cid] = np.round((target - np.median(g)) / TWO_PI)
    shift[main] = k_glob
    out = uw.copy()
    out[inside] = vals + TWO_PI * shift[lab]
    return out


def unwrap_quality(
    phase: np.ndarray,
    magnitude: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    *,
    phase2: np.ndarray | None = None,
    te_ratio: float | None = None,
    correct_global: bool = True,
) -> np.ndarray:
    """Quality-guided (ROMEO-like) spatial unwrapping of one 3-D phase volume.

    Parameters
    ----------
    phase : wrapped phase in rad, 3-D.
    magnitude : optional magnitude (any units), same shape; improves the edge qualities.
    mask : bool 3-D (default: the whole volume).  Each connected part of the mask is
        unwrapped from its own seed and then shifted by 2*pi*k to agree with the
        largest part (median match).
    phase2, te_ratio : optional second echo (rad) and ``TE_1/TE_2`` for the
        phase-gradient-coherence term.
    correct_global : shift by 2*pi*k so the median inside the largest part lies in
        [-pi, pi) (ROMEO's global correction; assumes the mean field is near 0).

    Returns float32 rad, congruent with the input (``input + 2*pi*k``) inside the
    mask, 0 outside.
    """
    ph = np.asarray(phase, dtype=np.float32)
    if ph.ndim != 3:
        raise ValueError(f"unwrap_quality expects a 3-D phase volume, got shape {ph.shape}.")
    m = np.ones(ph.shape, bool) if mask is None else np.asarray(mask, dtype=bool)
    box = bounding_box(m, 0)
    phb, mb = ph[box], m[box]
    magb = None if magnitude is None else np.asarray(magnitude)[box]
    ph2b = None if phase2 is None else np.asarray(phase2)[box]
    q = edge_qualities(phb, magb, mb, phase2=ph2b, te_ratio=te_ratio)
    turns, labels = _tree_unwrap(phb, q, mb)
    del q
    uw = np.where(mb, phb.astype(np.float64) + TWO_PI * turns, 0.0)
    uw = _align_components(uw, labels, correct_global)
    out = np.zeros(ph.shape, np.float32)
    out[box] = uw
    return out


def _reunwrap(
    phase: np.ndarray,
    uw_guess: np.ndarray,
    good: np.ndarray,
    magnitude: np.ndarray | None,
    mask: np.ndarray,
) -> np.ndarray:
    """Spatially re-unwrap the mask voxels that are not ``good``, growing from the good ones.

    Only the uncertain voxels and their good 26-neighbours enter the graph (so this costs
    little when few voxels are uncertain).  ``uw_guess`` (rad) is kept on good voxels and
    gives the turns of seeds of uncertain regions without any good neighbour.  Returns
    float64 rad on the mask, 0 outside.
    """
    from scipy import ndimage

    ph = phase.astype(np.float64)
    out = np.where(mask, uw_guess, 0.0).astype(np.float64)
    bad = mask & ~good
    if not bad.any():
        return out
    sub = ndimage.binary_dilation(bad, structure=np.ones((3, 3, 3), bool)) & mask
    box = bounding_box(sub, 0)
    subb = sub[box]
    phb = phase[box]
    turns_guess = np.rint((uw_guess[box] - ph[box]) / TWO_PI).astype(np.int64)
    q = edge_qualities(phb, None if magnitude is None else magnitude[box], subb)
    turns, _ = _tree_unwrap(
        phb, q, subb, fixed=good[box] & subb, fixed_turns=turns_guess, seed_turns=turns_guess
    )
    ob = out[box]
    ob[subb] = ph[box][subb] + TWO_PI * turns[subb]
    return out


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
    dphi = _wrap(ph[..., 1] - ph[..., 0])
    if abs(r - round(r)) < 1e-3:
        off = _wrap(ph[..., 0] - round(r) * dphi)
    else:
        mag = None if mag4d is None else np.asarray(mag4d)[..., 0]
        d_uw = unwrap_quality(dphi.astype(np.float32), mag, mask).astype(np.float64)
        off = _wrap(ph[..., 0] - r * d_uw)
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


def unwrap_echoes(
    phase4d: np.ndarray,
    mag4d: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray | None,
    method: str = "romeo",
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    template: int = 0,
    offset_correction: bool = True,
    temporal_threshold: float = 0.5,
) -> np.ndarray:
    """Unwrap all echoes of a multi-echo phase series.

    Parameters
    ----------
    phase4d : wrapped phase in rad, shape (X, Y, Z, E) (a 3-D volume is one echo).
    mag4d : magnitude, same shape, or None.
    te_s : echo times in s, length E.
    mask : bool 3-D (None: whole volume).
    method : ``"romeo"`` (quality-guided, congruent, consistent across echoes) or
        ``"laplacian"`` (each echo by :func:`unwrap_laplacian`, exact up to a harmonic
        function; each echo's arbitrary constant is removed by setting its mean in the mask
        to 0, the ALGORITHMS.md 2.3 fix, so ``fit_field`` gives the field up to a constant
        and a harmonic part, which background-field removal takes out).
    voxel_size : mm.
    template : echo unwrapped spatially (``"romeo"``).
    offset_correction : estimate the echo-independent phase offset phi0
        (:func:`estimate_phase_offset`), unwrap the offset-free phases, then add
        phi0 back (``"romeo"``, E >= 2).
    temporal_threshold : voxels whose temporal quality ``1 - |residual|/pi`` is below
        this are re-unwrapped spatially from their well-predicted neighbours.

    ``"romeo"``: the template echo is unwrapped spatially (qualities from it, its
    magnitude and the next echo), then its global 2*pi*k is chosen from the
    candidates around the median rule so that the other echoes are best predicted
    by the TE ratio (decisive when the TE ratios are not integers).  Each other echo
    (in order of distance to the template in TE) is unwrapped temporally:
    ``phi_e = phi_e_wrapped + 2*pi*round((pred_e - phi_e_wrapped)/2*pi)``, where
    ``pred_e`` is the template scaled by the TE ratio for the first one and then the
    magnitude^2-weighted straight line (with intercept) through the echoes done so far
    (all after removing the smooth offset), followed by spatial re-unwrapping of the
    voxels whose temporal quality is low.

    Returns float32 rad, shape (X, Y, Z, E), 0 outside the mask.
    """
    ph = np.asarray(phase4d, dtype=np.float32)
    if ph.ndim == 3:
        ph = ph[..., None]
    te = np.asarray(te_s, dtype=np.float64).ravel()
    n_echo = ph.shape[-1]
    if te.size != n_echo:
        raise ValueError(f"unwrap_echoes got {n_echo} echoes but {te.size} echo times; pass one TE (s) per echo.")
    mag = None
    if mag4d is not None:
        mag = np.asarray(mag4d, dtype=np.float32)
        if mag.ndim == 3:
            mag = mag[..., None]
    m = np.ones(ph.shape[:3], bool) if mask is None else np.asarray(mask, dtype=bool)
    out = np.zeros(ph.shape, np.float32)

    if method == "laplacian":
        for e in range(n_echo):
            uw = unwrap_laplacian(ph[..., e], voxel_size, m)
            if m.any():
                uw[m] -= uw[m].mean(dtype=np.float64)
            out[..., e] = uw
        return out
    if method not in ("romeo", "quality"):
        raise ValueError(f"Unknown unwrapping method {method!r}; use 'romeo' or 'laplacian'.")
    if not m.any():
        return out

    if n_echo == 1:
        out[..., 0] = unwrap_quality(ph[..., 0], None if mag is None else mag[..., 0], m)
        return out
    box = bounding_box(m, 2)
    out[box] = _romeo_multi_echo(
        ph[box], None if mag is None else mag[box], te, m[box], voxel_size,
        int(template), offset_correction, temporal_threshold,
    )
    return out


def _romeo_multi_echo(ph, mag, te, m, voxel_size, t, offset_correction, temporal_threshold):
    """Body of :func:`unwrap_echoes` for ``method="romeo"`` and E >= 2 (arrays already cropped)."""
    n_echo = ph.shape[-1]
    if offset_correction:
        off = estimate_phase_offset(ph, mag, te, m, voxel_size)
    else:
        off = np.zeros(m.shape, np.float64)
    c = np.empty(ph.shape, np.float32)  # offset-corrected wrapped phases
    for e in range(n_echo):
        c[..., e] = _wrap(ph[..., e] - off)
    t2 = t + 1 if t + 1 < n_echo else t - 1
    magt = None if mag is None else mag[..., t]
    uw_t = unwrap_quality(c[..., t], magt, m, phase2=c[..., t2], te_ratio=te[t] / te[t2], correct_global=False)
    uw_t = uw_t.astype(np.float64)

    # global 2*pi*k of the template: median rule, checked by echo consistency
    inside = m
    k0 = -np.round(np.median(uw_t[inside]) / TWO_PI) if inside.any() else 0.0
    others = [e for e in range(n_echo) if e != t]
    sub = np.flatnonzero(inside.ravel())
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
    uw_t = np.where(m, uw_t + TWO_PI * best_k, 0.0)

    done = {t: uw_t}
    wts = None if mag is None else mag.astype(np.float64) ** 2
    for e in sorted(others, key=lambda e: abs(te[e] - te[t])):
        if len(done) == 1:
            pred = uw_t * (te[e] / te[t])  # ROMEO's TE-ratio rule (offset removed above)
        else:
            # weighted straight line with intercept through the echoes done so far: immune
            # to what is left of the phase offset after the smooth correction
            sw = np.zeros(m.shape, np.float64)
            st = np.zeros(m.shape, np.float64)
            sp = np.zeros(m.shape, np.float64)
            stt = np.zeros(m.shape, np.float64)
            stp = np.zeros(m.shape, np.float64)
            for j, u in done.items():
                wj = np.ones(m.shape) if wts is None else wts[..., j] + 1e-30
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
            pred = icpt + slope * te[e]
        ce = c[..., e].astype(np.float64)
        uw_e = ce + TWO_PI * np.rint((pred - ce) / TWO_PI)
        tq = 1.0 - np.abs(pred - uw_e) / np.pi
        good = (tq >= temporal_threshold) & m
        if np.any(m & ~good):
            uw_e = _reunwrap(c[..., e], uw_e, good, None if mag is None else mag[..., e], m)
        done[e] = np.where(m, uw_e, 0.0)
    out = np.zeros(ph.shape, np.float32)
    for e in range(n_echo):
        out[..., e] = np.where(m, done[e] + off, 0.0)
    return out
