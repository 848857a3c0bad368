"""Phase unwrapping: FFT/DST Laplacian and quality-guided spanning-tree growth (ROMEO-like).

Units: phase in rad, echo times in s, voxel sizes in mm.  4-D arrays have the
echoes on the LAST axis.

This module is the public front; the algorithms live in
:mod:`qsmprep.qsm.unwrap_laplacian` (discrete Laplacian, DST Poisson solver,
:func:`unwrap_laplacian`), :mod:`qsmprep.qsm.unwrap_romeo` (edge qualities, spanning-tree
growth, :func:`unwrap_quality`) and :mod:`qsmprep.qsm.unwrap_multiecho` (ROMEO's multi-echo
path: :func:`estimate_phase_offset`, template echo, temporal unwrapping).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .geometry import bounding_box
from .unwrap_laplacian import discrete_laplacian, solve_poisson_dirichlet, unwrap_laplacian
from .unwrap_multiecho import estimate_phase_offset, romeo_multi_echo
from .unwrap_romeo import edge_qualities, unwrap_quality

__all__ = [
    "unwrap_echoes",
    "unwrap_laplacian",
    "unwrap_quality",
    "estimate_phase_offset",
    "edge_qualities",
    "discrete_laplacian",
    "solve_poisson_dirichlet",
]


def _echo_arrays(phase4d, mag4d, te_s):
    """(phase float32 4-D, magnitude float32 4-D or None, TE float64 1-D); a 3-D volume is one echo."""
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
    return ph, mag, te


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
        to 0, as per-echo constants would bias the echo fit, so ``fit_field`` gives the field
        up to a constant and a harmonic part, which background-field removal takes out).
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
    ph, mag, te = _echo_arrays(phase4d, mag4d, te_s)
    n_echo = ph.shape[-1]
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
    out[box] = romeo_multi_echo(
        ph[box], None if mag is None else mag[box], te, m[box], voxel_size,
        int(template), offset_correction, temporal_threshold,
    )
    return out
