"""Susceptibility referencing.

Single-orientation QSM recovers chi only up to a constant (``D(0) = 0``).  These functions
subtract a constant so that a chosen region has zero mean, and return the offset removed so
it can be recorded in the sidecar (``ReferenceRegion``, ``ReferenceOffset``).

* :func:`reference_mean` -- whole-brain mean inside the mask = 0 (default; what RC-2 metrics do).
* :func:`reference_csf` -- mean over a CSF mask (e.g. eroded lateral ventricles) = 0
  (clinical convention).
"""

from __future__ import annotations

import numpy as np


def _offset_in(chi: np.ndarray, region: np.ndarray, name: str, what: str) -> float:
    x = np.asarray(chi)
    r = np.asarray(region) > 0
    if x.shape != r.shape:
        raise ValueError(f"{name}: chi shape {x.shape} differs from the {what} shape {r.shape}.")
    vals = x[r]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        raise ValueError(f"{name}: the {what} is empty (or all non-finite); pass a region with voxels inside the brain.")
    return float(np.mean(vals, dtype=np.float64))


def reference_mean(chi: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Make the mean of chi inside ``mask`` zero.

    Parameters
    ----------
    chi : susceptibility in ppm (3-D).  mask : brain mask (bool or 0/1).

    Returns ``(chi_ref, offset)``: ``chi_ref = (chi - offset) * mask`` (float32, ppm; zero
    outside the mask) and the removed offset in ppm (the former mean inside the mask).
    """
    offset = _offset_in(chi, mask, "reference_mean", "mask")
    m = np.asarray(mask) > 0
    out = np.where(m, np.asarray(chi, dtype=np.float64) - offset, 0.0).astype(np.float32)
    return out, offset


def reference_csf(chi: np.ndarray, csf_mask: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Make the mean of chi inside the CSF mask zero.

    Parameters
    ----------
    chi : susceptibility in ppm (3-D).
    csf_mask : CSF reference region (bool or 0/1), e.g. the eroded lateral ventricles.
    mask : optional brain mask; if given the output is zero outside it, otherwise chi's
        support (non-zero voxels) is kept as it is.

    Returns ``(chi_ref, offset)``: chi minus the CSF mean (float32, ppm) and that offset (ppm).
    """
    offset = _offset_in(chi, csf_mask, "reference_csf", "CSF mask")
    x = np.asarray(chi, dtype=np.float64)
    support = (np.asarray(mask) > 0) if mask is not None else (x != 0)
    out = np.where(support, x - offset, 0.0).astype(np.float32)
    return out, offset
