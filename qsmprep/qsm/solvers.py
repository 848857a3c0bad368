"""Linear solvers shared by the numerical core.

:func:`conjugate_gradient` is the one conjugate-gradient loop of qsmprep: background removal
(:func:`qsmprep.qsm.background.ismv`) and the CG-L2 inversion (:func:`qsmprep.qsm.inversion.cgl2`)
both call it.  float32 arrays in and out; the scalars (step lengths) are computed in float64
from float32 dot products and cast back to float32, so a run is reproducible bit for bit.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a.ravel(), b.ravel()))


def conjugate_gradient(
    apply_a: Callable[[np.ndarray], np.ndarray],
    rhs: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    callback: Callable[[int, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, int]:
    """Solve ``A x = rhs`` for a symmetric positive (semi-)definite ``A`` by conjugate gradients.

    Parameters
    ----------
    apply_a : ``x -> A x`` (float32 arrays of ``rhs``'s shape).
    rhs : right-hand side (float32).
    x0 : start (copied; default zeros).
    tol : stop when ``||rhs - A x|| <= tol * ||rhs||`` (relative residual, unit-free).
    max_iter : at most this many updates of ``x``.
    callback : ``callback(iteration, x)`` after every update (``x`` is the live iterate: copy it
        to keep it).

    Returns ``(x, n_updates)``.  ``rhs = 0`` gives ``(x0 or 0, 0)``.
    """
    b = np.asarray(rhs, dtype=np.float32)
    if x0 is None:
        x = np.zeros_like(b)
        r = b.copy()
    else:
        x = np.array(x0, dtype=np.float32, copy=True)
        r = b - apply_a(x)
    bnorm = np.sqrt(_dot(b, b))
    if bnorm == 0:
        return x, 0
    p = r.copy()
    rr = _dot(r, r)
    n = 0
    while n < int(max_iter) and np.sqrt(rr) > tol * bnorm:
        ap = apply_a(p)
        alpha = np.float32(rr / _dot(p, ap))
        x += alpha * p
        r -= alpha * ap
        rr_new = _dot(r, r)
        if callback is not None:
            callback(n, x)
        n += 1
        p *= np.float32(rr_new / rr)
        p += r
        rr = rr_new
    return x, n
