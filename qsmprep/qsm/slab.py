"""Partial coverage (a slab): the chi trend along the cut axis, which the field does not measure.

Across a slab a slow trend of chi along the slab's normal makes a nearly harmonic field inside it, and
background removal takes that field away with the background: no inversion sees the trend, and the one a
slab's chi carries is whatever its start and regulariser left (``benchmarks/RESULTS.md``, "The slab's error is a
linear ramp along the cut axis").  What the subject's own images say instead: tissue that decays alike has alike
chi wherever it sits along the axis.  So on a multi-echo slab the linear trend that chi shares across quantile
classes of R2* (a log-linear fit of the echoes' magnitudes, which a receive-coil bias does not change) is taken
for the error and removed; the rest of chi is kept (``benchmarks/RESULTS.md``, "A slab's trend from R2* classes").

Plain numpy.  Units: chi in ppm, R2* in 1/s, echo times in s, voxel sizes in mm.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: A mask reaches a face of the image when its largest cross-section within :data:`SLAB_FACE_MM` of the face is at
#: least this share of its largest cross-section along that axis (a slab reaches two opposite faces; a whole head none):
#: the QC's ``edge_coverage`` rule (:func:`qsmprep.qsm.qc.edge_coverage`), at both faces.
SLAB_FACE_SHARE = 0.25
SLAB_FACE_MM = 8.0
#: The largest trend (ppm from one cut face to the other) the six validation slabs had removed, and the trend above
#: which the step's record warns (about four times that; ``benchmarks/RESULTS.md``, "A slab's trend from R2* classes").
SLAB_TREND_VALIDATED_PPM = 0.007
SLAB_TREND_WARN_PPM = 0.03
#: Quantile classes of R2* within which chi is taken to have no trend along the cut axis.
SLAB_TREND_CLASSES = 16


def cut_axis(mask: np.ndarray, voxel_size: Sequence[float] = (1.0, 1.0, 1.0), share: float = SLAB_FACE_SHARE,
             band_mm: float = SLAB_FACE_MM) -> int | None:
    """The array axis along which ``mask`` (the brain mask) reaches both faces of the image (a slab's normal), or None.

    Within ``band_mm`` of each face the mask's largest cross-section must be at least ``share`` of its largest along
    that axis (so a slab whose outermost slice lost its signal still counts); of several such axes the one whose
    smaller end share is largest.
    """
    from qsmprep.qsm.qc import face_shares

    m = np.asarray(mask) > 0
    best, best_share = None, share
    for ax, ends in enumerate(face_shares(m, voxel_size, band_mm, half=True)):
        if ends is not None and m.shape[ax] >= 2 and min(ends) >= best_share:
            best, best_share = ax, min(ends)
    return best


def r2star_loglinear(magnitude: np.ndarray, te_s: Sequence[float], mask: np.ndarray | None = None) -> np.ndarray:
    """R2* (1/s, float32) from a log-linear least-squares fit of the echoes' magnitudes (echoes on the last axis).

    ``-slope`` of ``log |magnitude|`` against the echo time, unweighted; zero outside ``mask`` and wherever an
    echo's magnitude is not positive.  At least two distinct echo times.  A multiplicative receive bias cancels.
    """
    mag = np.asarray(magnitude, np.float32)
    te = np.asarray([float(t) for t in te_s], np.float64)
    if mag.ndim != 4 or mag.shape[-1] != te.size or te.size < 2 or np.ptp(te) <= 0:
        raise ValueError(f"r2star_loglinear needs a 4-D magnitude with one volume per echo time (>= 2 distinct), "
                         f"got shape {mag.shape} and {te.size} echo time(s).")
    valid = np.all(mag > 0, axis=-1)
    if mask is not None:
        valid &= np.asarray(mask) > 0
    tc = (te - te.mean()).astype(np.float32)
    slope = np.zeros(valid.shape, np.float32)
    for e in range(te.size):  # one echo at a time: the echoes plus three volumes at most
        slope += tc[e] * np.log(np.where(valid, mag[..., e], np.float32(1.0)))
    slope /= np.float32((tc ** 2).sum())
    return np.where(valid, -slope, 0.0).astype(np.float32)


def _position_mm(shape, axis: int, voxel_size: Sequence[float]) -> np.ndarray:
    """Position (mm) along ``axis`` of every voxel of a grid of ``shape`` (a broadcast view, no copy)."""
    line = [1] * len(shape)
    line[axis] = shape[axis]
    return np.broadcast_to((np.arange(shape[axis], dtype=np.float64) * float(voxel_size[axis])).reshape(line), shape)


def slab_trend(chi_ppm: np.ndarray, mask: np.ndarray, r2star: np.ndarray, axis: int, voxel_size: Sequence[float],
               n_classes: int = SLAB_TREND_CLASSES) -> float:
    """The linear trend (ppm per mm) along ``axis`` that chi shares across ``n_classes`` quantile classes of R2*.

    Least squares over ``mask``: ``chi = a_class + b x`` (one intercept per class, one slope ``b``; ``x`` the
    position along ``axis`` in mm).  Returns ``b``.
    """
    m = np.asarray(mask) > 0
    r2 = np.asarray(r2star, np.float64)[m]
    x = _position_mm(m.shape, axis, voxel_size)[m]
    y = np.asarray(chi_ppm, np.float64)[m]
    edges = np.quantile(r2, np.linspace(0, 1, int(n_classes) + 1)[1:-1])
    cls = np.searchsorted(edges, r2, side="right")
    # the slope common to all classes: regress out each class's mean from x and y, then one division
    counts = np.bincount(cls, minlength=int(n_classes)).astype(np.float64)
    counts[counts == 0] = 1.0
    xc = x - (np.bincount(cls, x, minlength=int(n_classes)) / counts)[cls]
    yc = y - (np.bincount(cls, y, minlength=int(n_classes)) / counts)[cls]
    den = float(xc @ xc)
    return float(xc @ yc) / den if den > 0 else 0.0


def remove_slab_trend(chi_ppm: np.ndarray, mask: np.ndarray, r2star: np.ndarray | None, voxel_size: Sequence[float],
                      brain_mask: np.ndarray | None = None,
                      n_classes: int = SLAB_TREND_CLASSES) -> tuple[np.ndarray, dict]:
    """chi without the trend along a slab's cut axis that it shares across R2* classes (:func:`slab_trend`).

    Applied only when ``brain_mask`` (default ``mask``) reaches two opposite faces (:func:`cut_axis`: decided on
    the brain mask, which reaches the faces whatever the inversion's mask, eroded by background removal, does) and
    ``r2star`` is given (multi-echo data); otherwise chi comes back unchanged (the same array).  The trend is fitted
    over chi's ``mask`` and removed about its mean position, so chi's mean in ``mask`` is kept.  Returns
    ``(chi, record)``; the record says whether it was applied and, if so, the axis and the trend removed (ppm per mm,
    and ppm across the slab), with a warning when that is larger than :data:`SLAB_TREND_WARN_PPM`.
    """
    m = np.asarray(mask) > 0
    axis = cut_axis(m if brain_mask is None else brain_mask, voxel_size)
    if axis is None or r2star is None or not m.any():
        return chi_ppm, {"applied": False, "reason": "no cut axis" if axis is None else ("one echo: no R2*" if
                                                                                        r2star is None else "empty mask")}
    b = slab_trend(chi_ppm, m, r2star, axis, voxel_size, n_classes)
    x = _position_mm(m.shape, axis, voxel_size)
    x0 = float(x[m].mean())
    out = np.where(m, np.asarray(chi_ppm, np.float64) - b * (x - x0), 0.0).astype(np.float32)
    across = b * float(np.ptp(x[m]))
    message = (f"Partial coverage (the brain mask reaches both faces of array axis {axis}): chi's trend along that "
               f"axis, which the field does not measure, was estimated from {int(n_classes)} R2* classes and removed "
               f"({across:+.4f} ppm from one cut face to the other).")
    if abs(across) > SLAB_TREND_WARN_PPM:
        message += (f"  That is more than four times the largest trend the validation slabs had removed "
                    f"({SLAB_TREND_VALIDATED_PPM} ppm): check the map along the cut axis, or rerun with --slab-trend off.")
    return out, {"applied": True, "axis": int(axis), "trend_ppm_per_mm": round(b, 8),
                 "trend_ppm_across": round(across, 6), "classes": int(n_classes), "message": message}
