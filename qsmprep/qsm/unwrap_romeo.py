"""Quality-guided spatial phase unwrapping (ROMEO-like): edge qualities and spanning-tree growth.

Units: phase in rad, magnitude in any units.  The public entry point is :func:`unwrap_quality`
(also exported by :mod:`qsmprep.qsm.unwrap`); the multi-echo path is in
:mod:`qsmprep.qsm.unwrap_multiecho`.

Every pair of 6-neighbours inside the mask is an edge with a quality in (0, 1] (phase
coherence, phase-gradient coherence with a second echo, magnitude coherence and magnitude
level, each as ``0.1 + 0.9 * term`` and multiplied, as in ROMEO, Dymerska et al. MRM 2021).
Growing regions in order of edge quality from a seed is Prim's algorithm, so the unwrapping
paths are the maximum-quality spanning tree; we compute it with
``scipy.sparse.csgraph.minimum_spanning_tree`` on ``1 - quality``, root it with one
breadth-first search from a virtual node linked to one seed per connected component, and
integrate the wrapped differences along the tree with pointer jumping (``log2(depth)``
vectorised passes) instead of a Python loop.
"""

from __future__ import annotations

import numpy as np

from .geometry import bounding_box
from .unwrap_common import TWO_PI, axis_slices, wrap


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
        lo, hi = axis_slices(ph.ndim, ax)
        d = wrap(ph[hi] - ph[lo])
        q = 0.1 + 0.9 * (1.0 - np.abs(d) / np.float32(np.pi))
        if ph2 is not None:
            d2 = wrap(ph2[hi] - ph2[lo])
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


def _spanning_tree(qualities: list[np.ndarray], idx: np.ndarray, n: int, fx: np.ndarray | None):
    """Maximum-quality spanning forest of the mask voxels (numbered by ``idx``, -1 outside).

    Edge cost ``1 + 1e-6 - quality`` (edges between two fixed voxels ``fx`` cost 1e-9, so the
    fixed voxels are joined first).  Returns (forest as a COO matrix (n, n), summed quality of
    the edges at each voxel (float64, n)).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import minimum_spanning_tree

    srcs, dsts, costs = [], [], []
    node_q = np.zeros(n, np.float64)
    for ax, q in enumerate(qualities):
        lo, hi = axis_slices(idx.ndim, ax)
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
    return minimum_spanning_tree(graph).tocoo(), node_q


def _root_forest(tree, n: int, node_q: np.ndarray, fx: np.ndarray | None):
    """Root every tree of the forest at one seed: a fixed voxel if it has one, else its
    best-connected voxel (largest ``node_q``).

    Returns (predecessor of each voxel, int64 n, the seeds' own entries arbitrary; seed voxel
    indices, one per component in component order; component label of each voxel).
    """
    from scipy.sparse import coo_matrix, csr_matrix
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    ncomp, lab = connected_components(
        csr_matrix((np.ones(tree.nnz), (tree.row, tree.col)), shape=(n, n)), directed=False
    )
    notfixed = np.zeros(n, bool) if fx is None else ~fx
    order = np.lexsort((-node_q, notfixed, lab))
    first = np.r_[0, np.flatnonzero(np.diff(lab[order])) + 1]
    seeds = order[first]
    # a virtual node n linked to every seed: one breadth-first search roots the whole forest
    rows = np.concatenate([tree.row, np.full(ncomp, n, dtype=tree.row.dtype)])
    cols = np.concatenate([tree.col, seeds.astype(tree.col.dtype)])
    rooted = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(n + 1, n + 1)).tocsr()
    del rows, cols
    _, pred = breadth_first_order(rooted, n, directed=False, return_predecessors=True)
    del rooted
    return pred[:n].astype(np.int64), seeds, lab


def _integrate_turns(ph: np.ndarray, pred: np.ndarray, terminal: np.ndarray):
    """Integrate the wrapped phase differences (rad, float64 ``ph``) along the forest by pointer
    jumping.  ``terminal`` voxels (seeds and fixed voxels) end the paths.

    Returns (turns of each voxel relative to its terminal, int64; the terminal of each voxel).
    """
    ar = np.arange(ph.size, dtype=np.int64)
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
    return acc, p


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

    tree, node_q = _spanning_tree(qualities, idx, n, fx)
    pred, seeds, lab = _root_forest(tree, n, node_q, fx)
    del tree

    terminal = np.zeros(n, bool)
    terminal[seeds] = True
    if fx is not None:
        terminal |= fx
    acc, p = _integrate_turns(ph, pred, terminal)
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


def reunwrap(
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
