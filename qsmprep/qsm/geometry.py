"""Image geometry: voxel sizes and the B0 direction in array axes from a NIfTI affine; mask bounding boxes; an
axis's voxels split and merged (:func:`split_axis`, :func:`merge_axis`)."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def voxel_sizes(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel edge lengths in mm: the norms of the affine's first three columns."""
    a = np.asarray(affine, dtype=float)[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(a, axis=0))


def b0_direction_from_affine(affine: np.ndarray) -> np.ndarray:
    """Unit vector of the main field B0 in array axes (i, j, k).

    NIfTI world coordinates are scanner coordinates (RAS+), and B0 points along
    the scanner's z axis.  With ``R = affine[:3, :3]`` mapping array steps to mm,
    the array-axis direction ``b`` with ``R @ b`` parallel to world z is
    ``b = R^-1 z``, expressed per *mm* so anisotropic voxels are handled:
    we normalise the columns of ``R`` first (direction cosines), so
    ``b = C^-1 @ [0, 0, 1]`` with ``C = R @ diag(1/voxel_size)``.
    The sign is irrelevant for QSM (the dipole kernel is quadratic in ``b``).

    Returns a float64 unit 3-vector.
    """
    a = np.asarray(affine, dtype=float)[:3, :3]
    vs = np.linalg.norm(a, axis=0)
    if np.any(vs == 0):
        raise ValueError("The affine has a zero-length axis; cannot derive the B0 direction.")
    cosines = a / vs
    b = np.linalg.solve(cosines, np.array([0.0, 0.0, 1.0]))
    b = b / np.linalg.norm(b)
    # Canonical sign: the largest component positive (purely cosmetic).
    if b[np.argmax(np.abs(b))] < 0:
        b = -b
    return b


def obliquity_deg(b0_dir: np.ndarray) -> float:
    """Angle in degrees between B0 and the array's third axis."""
    b = np.asarray(b0_dir, dtype=float)
    b = b / np.linalg.norm(b)
    return float(np.degrees(np.arccos(min(1.0, abs(b[2])))))


def bounding_box(mask: np.ndarray, margin: int | Sequence[int] = 0) -> tuple[slice, ...]:
    """Bounding box of the non-zero voxels of ``mask`` grown by ``margin`` voxels (one number or one
    per axis), clipped to the array, as a tuple of slices; an empty mask gives empty slices."""
    m = np.asarray(mask)
    margins = [int(margin)] * m.ndim if np.isscalar(margin) else [int(v) for v in margin]
    sl = []
    for ax in range(m.ndim):
        hit = np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != ax)))
        if hit.size == 0:
            return tuple(slice(0, 0) for _ in m.shape)
        sl.append(slice(max(0, int(hit[0]) - margins[ax]), min(m.shape[ax], int(hit[-1]) + 1 + margins[ax])))
    return tuple(sl)


def split_axis(vol: np.ndarray, axis: int, k: int, linear: bool = True) -> np.ndarray:
    """``vol`` on the grid whose voxels along ``axis`` are cut into ``k`` equal parts (the other axes kept).

    ``linear``: linear interpolation between the centres of the original voxels (constant beyond the first and
    last centre); else each voxel repeated ``k`` times (masks).  :func:`merge_axis` of the result gives ``vol``
    back (to rounding) when repeated, and to within the curvature of ``vol`` when interpolated (exact for a linear ramp
    away from the ends)."""
    v = np.asarray(vol)
    k = int(k)
    if k < 1:
        raise ValueError(f"k must be a positive integer, got {k}.")
    if k == 1:
        return v.copy()
    if not linear:
        return np.repeat(v, k, axis=axis)
    n = v.shape[axis]
    # the centre of fine voxel j in coarse voxel units (coarse centres at 0..n-1)
    c = np.clip((np.arange(n * k) + 0.5) / k - 0.5, 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(int), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    t = (c - i0).astype(np.float32 if v.dtype == np.float32 else np.float64)
    shape = [1] * v.ndim
    shape[axis] = n * k
    t = t.reshape(shape)
    return (np.take(v, i0, axis=axis) * (1 - t) + np.take(v, i1, axis=axis) * t).astype(v.dtype, copy=False)


def merge_axis(vol: np.ndarray, axis: int, k: int) -> np.ndarray:
    """The mean of every ``k`` consecutive voxels along ``axis`` (the inverse grid change of :func:`split_axis`);
    that axis's length must be a multiple of ``k``."""
    v = np.asarray(vol)
    k = int(k)
    if v.shape[axis] % k:
        raise ValueError(f"axis {axis} has {v.shape[axis]} voxels, not a multiple of {k}.")
    shape = list(v.shape)
    shape[axis:axis + 1] = [v.shape[axis] // k, k]
    return v.reshape(shape).mean(axis=axis + 1).astype(v.dtype, copy=False)


#: NIfTI ``xform_code`` values: 0 unknown, 1 scanner-based anatomical, 2 aligned to another
#: anatomical image, 3 Talairach, 4 MNI152, 5 another template.
XFORM_SCANNER, XFORM_ALIGNED = 1, 2
_XFORM_NAMES = {0: "unknown", 1: "scanner", 2: "aligned", 3: "Talairach", 4: "MNI152", 5: "template"}


def scanner_affine(sform, sform_code: int, qform, qform_code: int) -> tuple[np.ndarray, str]:
    """The voxel-to-world transform whose world z is the scanner's (B0): ``(affine, "sform" | "qform")``.

    B0 lies along the world z axis only in scanner coordinates.  Preference: a scanner sform
    (code 1), then a scanner qform, then an "aligned" sform, then an aligned qform (code 2: aligned
    to another image of the session, e.g. by a rigid registration; still the best there is).  A
    transform to a template or atlas space (codes 3-5) is never used: after resampling to a template
    the image axes no longer say where B0 was.  ``ValueError`` (its message says what the header
    has) when neither transform is usable, e.g. both codes 0: qsmprep does not assume that B0 is
    along the third axis.

    >>> a = np.diag([1.0, 1.0, 2.0, 1.0])
    >>> scanner_affine(np.eye(4), 4, a, 1)[1]
    'qform'
    >>> scanner_affine(a, 1, np.eye(4), 1)[1]
    'sform'
    """
    for code, aff, name in ((sform_code, sform, "sform"), (qform_code, qform, "qform")):
        if code == XFORM_SCANNER and aff is not None:
            return np.asarray(aff, dtype=float), name
    for code, aff, name in ((sform_code, sform, "sform"), (qform_code, qform, "qform")):
        if code == XFORM_ALIGNED and aff is not None:
            return np.asarray(aff, dtype=float), name
    why = (f"sform_code {sform_code} ({_XFORM_NAMES.get(sform_code, 'invalid')}) and qform_code {qform_code} "
           f"({_XFORM_NAMES.get(qform_code, 'invalid')})")
    if sform_code == 0 and qform_code == 0:
        why = "neither a qform nor an sform code set (both 0)"
    raise ValueError(why)


def header_b0_geometry(header) -> tuple[tuple[float, float, float], np.ndarray, str]:
    """``(voxel_size_mm, b0_dir, source)`` from a NIfTI header (anything with ``get_sform`` /
    ``get_qform(coded=True)``), B0 from :func:`scanner_affine`; ``ValueError`` as there."""
    sform, scode = header.get_sform(coded=True)
    qform, qcode = header.get_qform(coded=True)
    aff, source = scanner_affine(sform, int(scode or 0), qform, int(qcode or 0))
    return voxel_sizes(aff), b0_direction_from_affine(aff), source
