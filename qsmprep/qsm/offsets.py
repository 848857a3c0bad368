"""Single-echo phase offsets: remove what background-field removal leaves of a smooth receive-phase offset.

With several echoes the echo-independent phase offset ``phi0`` is fitted out
(:func:`qsmprep.qsm.echoes.fit_field`).  With one echo it cannot be told apart from the field: the
"total field" is ``f + phi0 / (2 pi TE)``.  ``phi0`` is smooth (coil combination), but not harmonic
(qsm-forward's default offset is a quadratic bowl spanning about pi over the head, whose Laplacian
is a non-zero constant), so SMV-based background removal (iSMV, V-SHARP) keeps its non-harmonic
part, about as large as the local field itself, and the inversion turns it into a chi map with
deep-gray ROI means at a third of the truth (issue #14).

Maths.  Any polynomial offset of degree ``n`` is a harmonic polynomial plus ``r^2 q(x)`` with
``q`` of degree ``n - 2`` (Fischer decomposition); background removal takes the harmonic part out
(the part it is built to remove), so what reaches the local field is ``B[r^2 q]``, ``B`` being the
background removal itself (linear) on the same mask.  :func:`remove_offset_residual` builds the
basis ``u_i = B[r^2 m_i]`` (``m_i`` the monomials of degree <= n - 2: 1 function for n = 2, 4 for
n = 3, 10 for n = 4), fits ``local ~ sum_i c_i u_i`` by least squares over the eroded mask and
subtracts it.  Fitting ``u_i`` rather than polynomials takes out exactly the residual shape the
removal left (a plain polynomial fit of the local field does not: validation XSIM 0.12-0.28
instead of 0.51).

Order (validation heads, seeds 10-12, 2 mm, 3 T, TE 20 ms, SNR 60, the app's chain with NSIDL; chi
XSIM over the true brain mask, ``benchmarks/robustness.py --study offset``):

============================  ==========  =========  =========  =========  =========
offset                        no removal  n = 2      n = 3      n = 4      auto
============================  ==========  =========  =========  =========  =========
none                          0.50-0.52   0.50-0.51  0.44-0.47  0.45-0.46  0.50-0.51
qsm-forward bowl              0.02-0.05   0.51-0.52  0.45-0.47  0.45-0.46  0.51-0.52
Gaussian bump (sigma 60 mm)   0.05-0.11   0.30-0.31  0.37-0.38  0.44-0.45  0.44-0.45
random smooth (sigma 40 mm)   0.03-0.17   0.10-0.24  0.26-0.34  0.34-0.40  0.34-0.40
============================  ==========  =========  =========  =========  =========

Orders above 2 also take away part of the true local field (0.05 XSIM when the offset is a bowl or
absent), so ``order="auto"`` (the default) removes the n = 2 residual, then checks whether what is
left still looks like a smooth offset: when a plain polynomial of degree 4 explains more than
:data:`AUTO_SHARE` of the remaining local field's energy over the eroded mask (validation: 0.09-0.15
without an offset or with the bowl, 0.43-0.73 with the other two shapes), it fits n = 4 instead.
The check costs one least-squares fit; n = 4 costs nine more background removals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Orders ``order="auto"`` chooses between (see the module docstring).
AUTO_ORDERS = (2, 4)
#: ``order="auto"`` takes the higher order when, after the lower one, a plain polynomial of degree
#: :data:`AUTO_CHECK_DEGREE` explains more than this share of the local field's energy (validation:
#: 0.09-0.15 without a non-quadratic offset, 0.43-0.73 with one).
AUTO_SHARE = 0.30
AUTO_CHECK_DEGREE = 4
#: Orders accepted by :func:`remove_offset_residual` (0 = nothing removed).
ORDERS = (0, 2, 3, 4)


def nonharmonic_basis(shape: Sequence[int], voxel_size: Sequence[float], mask: np.ndarray, order: int) -> list[np.ndarray]:
    """``r^2 * x^i y^j z^k`` for ``i + j + k <= order - 2``: the non-harmonic polynomials of degree <= ``order``.

    Coordinates in units of 100 mm about the centroid of ``mask`` (mm from ``voxel_size``), so
    the functions are O(1) over a head.  Returns float32 arrays of ``shape``, the constant-
    Laplacian ``r^2`` first.  ``order`` < 2 gives an empty list (polynomials of degree <= 1 are harmonic).
    """
    if order < 2:
        return []
    m = np.asarray(mask, bool)
    c = np.argwhere(m).mean(axis=0) if m.any() else (np.asarray(shape, float) - 1) / 2
    axes = [((np.arange(n) - ci) * float(v) / 100.0).astype(np.float32) for n, ci, v in zip(shape, c, voxel_size)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    r2 = x * x + y * y + z * z
    out = []
    deg = int(order) - 2
    for total in range(deg + 1):  # by total degree, so the first functions are the lower orders
        for i in range(total, -1, -1):
            for j in range(total - i, -1, -1):
                k = total - i - j
                out.append(np.broadcast_to(r2 * x**i * y**j * z**k, tuple(shape)).astype(np.float32))
    return out


def n_basis(order: int) -> int:
    """Number of functions of :func:`nonharmonic_basis` for ``order`` (0, 1, 4, 10, ...)."""
    d = int(order) - 2
    return 0 if d < 0 else (d + 1) * (d + 2) * (d + 3) // 6


def remove_offset_residual(
    local_ppm: np.ndarray,
    eroded_mask: np.ndarray,
    brain_mask: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    method: str | None = None,
    order: int | str = "auto",
) -> tuple[np.ndarray, dict]:
    """Remove the part of a smooth non-harmonic offset that background removal left in a local field.

    Parameters
    ----------
    local_ppm : local field (any unit; ppm in the app) from
        :func:`qsmprep.qsm.background.remove_background` with ``brain_mask`` and ``method``.
    eroded_mask : the mask it returned (where the local field is valid).
    brain_mask : the mask it was given.
    voxel_size : mm.
    method : the background-removal method that made ``local_ppm`` (None: the default).
    order : polynomial degree of the offset model, one of :data:`ORDERS` (0: nothing removed), or
        ``"auto"`` (default): :data:`AUTO_ORDERS` with the rule in the module docstring.

    Returns
    -------
    (local, record) : the corrected local field (float32, zero outside ``eroded_mask``) and a dict
    with ``order`` (used), ``explained`` (share of the local field's energy in the eroded mask
    removed), ``explained_by_order`` (per order fitted), ``auto_check_share`` (for ``"auto"``: the
    share a plain degree-4 polynomial explains after n = 2) and ``coefficients`` (of the basis functions).
    """
    from qsmprep.qsm.background import DEFAULT_METHOD, remove_background

    f = np.asarray(local_ppm, dtype=np.float32)
    em = np.asarray(eroded_mask, bool)
    bm = np.asarray(brain_mask, bool)
    if f.shape != em.shape or f.shape != bm.shape:
        raise ValueError(f"remove_offset_residual needs 3-D arrays of one shape, got {f.shape}, {em.shape}, {bm.shape}.")
    auto = isinstance(order, str) and order == "auto"
    if not auto and int(order) not in ORDERS:
        raise ValueError(f"order must be 'auto' or one of {ORDERS}, got {order!r}.")
    top = max(AUTO_ORDERS) if auto else int(order)
    record = {"order": 0, "explained": 0.0, "explained_by_order": {}, "coefficients": []}
    out = np.where(em, f, 0.0).astype(np.float32)
    if top < 2 or em.sum() <= n_basis(top):
        return out, record
    method = method or DEFAULT_METHOD
    y = f[em].astype(np.float64)
    energy = float(y @ y) or 1.0
    basis = nonharmonic_basis(f.shape, voxel_size, bm, top)
    cols: list[np.ndarray] = []

    def fit(k):
        while len(cols) < n_basis(k):
            cols.append(remove_background(basis[len(cols)], bm, voxel_size, method=method)[0][em].astype(np.float64))
        a = np.stack(cols[: n_basis(k)], axis=1)
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        resid = y - a @ coef
        return coef, resid, 1.0 - float(resid @ resid) / energy

    if auto:
        lo, hi = AUTO_ORDERS
        coef, resid, explained = fit(lo)
        record["explained_by_order"][str(lo)] = round(explained, 6)
        share = polynomial_share(resid, em, voxel_size, AUTO_CHECK_DEGREE)
        record["auto_check_share"] = round(share, 6)
        chosen = lo
        if share > AUTO_SHARE:
            coef, resid, explained = fit(hi)
            record["explained_by_order"][str(hi)] = round(explained, 6)
            chosen = hi
    else:
        chosen = top
        coef, resid, explained = fit(top)
        record["explained_by_order"][str(top)] = round(explained, 6)
    out[em] = resid.astype(np.float32)
    record.update(order=int(chosen), explained=round(float(explained), 6), coefficients=[float(c) for c in coef])
    return out, record


def polynomial_share(values: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float], degree: int) -> float:
    """Share of ``sum(values^2)`` that a least-squares polynomial of ``degree`` (all monomials) explains.

    ``values`` are the field values at the voxels of ``mask`` (1-D, in ``np.nonzero`` order) or a
    3-D field (taken inside ``mask``); coordinates in 100 mm about the mask centroid.  In [0, 1].
    """
    m = np.asarray(mask, bool)
    v = np.asarray(values, np.float64)
    y = v[m] if v.ndim == 3 else v
    energy = float(y @ y)
    if energy <= 0 or y.size == 0:
        return 0.0
    idx = np.nonzero(m)
    c = [i.mean() for i in idx]
    coords = [((i - ci) * float(d) / 100.0) for i, ci, d in zip(idx, c, voxel_size)]
    cols = []
    for total in range(int(degree) + 1):
        for i in range(total, -1, -1):
            for j in range(total - i, -1, -1):
                cols.append(coords[0] ** i * coords[1] ** j * coords[2] ** (total - i - j))
    a = np.stack(cols, axis=1)
    if a.shape[0] <= a.shape[1]:
        return 1.0
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    r = y - a @ coef
    return float(np.clip(1.0 - (r @ r) / energy, 0.0, 1.0))


def offset_model(shape: Sequence[int], voxel_size: Sequence[float], brain_mask: np.ndarray, record: dict) -> np.ndarray:
    """The non-harmonic offset model ``sum_i c_i r^2 m_i`` that :func:`remove_offset_residual` fitted (its
    ``record``), on the whole grid, in the local field's unit (float32; zeros for order 0).

    Background removal turns it into exactly what was subtracted from the local field (the removal is
    linear and takes out harmonic fields), so subtracting it from the TOTAL field gives a total field
    consistent with the corrected local field: for steps that use the total field over the brain mask
    (e.g. an SMV-consistent data fit), and for the total field map written for a single-echo run.
    """
    coef = list(record.get("coefficients") or [])
    out = np.zeros(tuple(shape), np.float32)
    if not coef or int(record.get("order", 0)) < 2:
        return out
    for c, b in zip(coef, nonharmonic_basis(shape, voxel_size, brain_mask, int(record["order"]))):
        out += np.float32(c) * b
    return out
