"""Noise level of a field map, estimated from the map itself.

A robust, Laplacian-residual estimate in the spirit of Immerkaer (1996, "Fast noise variance
estimation"): the residual of each voxel against the mean of its six face neighbours cancels smooth
fields (exactly for linear ones; a quadratic leaves a constant, removed with the median), keeps white
noise with variance ``sigma**2 * (1 + 1/6)``, and the median absolute deviation ignores the few voxels
at tissue edges.  Plain numpy/scipy, no I/O.
"""

from __future__ import annotations

import numpy as np

#: MAD -> standard deviation for a normal distribution.
MAD_TO_SD = 1.4826


def field_noise(field: np.ndarray, mask: np.ndarray) -> float:
    """Standard deviation of white noise in ``field`` (same units, e.g. ppm) inside ``mask``.

    ``field``: 3-D map (e.g. a local field in ppm).  ``mask``: 3-D bool; only voxels whose six
    face neighbours are also in the mask are used.  Returns NaN when fewer than 100 such voxels
    exist.  Voxel-size independent: it measures the noise per voxel of the grid it is given.
    """
    from scipy import ndimage

    f = np.asarray(field, np.float64)
    m = np.asarray(mask) > 0
    if f.shape != m.shape or f.ndim != 3:
        raise ValueError(f"field_noise: field {f.shape} and mask {m.shape} must be the same 3-D shape.")
    inner = ndimage.binary_erosion(m)  # 6-connected: every face neighbour inside the mask
    if inner.sum() < 100:
        return float("nan")
    g = np.pad(np.where(m, f, 0.0), 1, mode="edge")
    c = g[1:-1, 1:-1, 1:-1]
    nb = (g[:-2, 1:-1, 1:-1] + g[2:, 1:-1, 1:-1] + g[1:-1, :-2, 1:-1] + g[1:-1, 2:, 1:-1]
          + g[1:-1, 1:-1, :-2] + g[1:-1, 1:-1, 2:])
    resid = (c - nb / 6.0)[inner]
    mad = float(np.median(np.abs(resid - np.median(resid))))
    return MAD_TO_SD * mad / float(np.sqrt(1.0 + 1.0 / 6.0))
