"""Small helpers shared by the unwrapping modules (:mod:`qsmprep.qsm.unwrap`).

Phase in rad; arrays of any dimension.
"""

from __future__ import annotations

import numpy as np

TWO_PI = 2.0 * np.pi


def wrap(x):
    """Wrap to [-pi, pi] (``x - 2*pi*rint(x/2*pi)``; keeps float32 as float32)."""
    x = np.asarray(x)
    if x.dtype == np.float32:
        return x - np.float32(TWO_PI) * np.rint(x * np.float32(1.0 / TWO_PI))
    return x - TWO_PI * np.rint(x / TWO_PI)


def axis_slices(ndim: int, axis: int):
    """(lo, hi) index tuples that pair every voxel ``i`` with ``i + 1`` along ``axis``."""
    lo = [slice(None)] * ndim
    hi = [slice(None)] * ndim
    lo[axis] = slice(0, -1)
    hi[axis] = slice(1, None)
    return tuple(lo), tuple(hi)
