"""Phase sign (vendor handedness): which way round the scanner's phase is, checked on the brain itself.

qsmprep's convention: a positive field shift gives a positive phase (``phase = 2 pi f TE``), so
paramagnetic tissue (veins, iron-rich nuclei) comes out with positive chi.  Scanners differ
(left- vs right-handed frames, conjugated reconstruction): with the opposite convention every step
still runs and gives chi with the wrong sign, a map that looks normal.  Veins and iron-rich deep
gray matter are paramagnetic in every brain, so the sign can be checked on the data: the chain's
local field is inverted quickly (TKD, linear, so negating the field negates chi exactly) and two
independent signs of paramagnetism are read from that chi:

* ``tail_skewness``: the quantile skewness ``(q_hi + q_lo - 2 median) / (q_hi - q_lo)`` of chi in
  the mask at :data:`TAIL_QUANTILE` (0.5 %): veins, iron-rich nuclei and haemorrhage make the
  upper tail much longer than the lower one (calcifications are rare and small).
* ``dark_contrast``: the median chi of the darkest :data:`DARK_FRACTION` (2 %) of voxels, relative
  to their 4 mm neighbourhood in the magnitude (short T2*: veins, iron), minus the median chi, over
  the chi interquartile range.

Both are positive with qsmprep's sign and negative with the opposite one (they change sign with
chi).  ``auto`` (:func:`decide`) takes the sign both agree on (``|tail_skewness|`` >=
:data:`MIN_SKEWNESS` or ``|dark_contrast|`` >= :data:`STRONG_DARK`), or the sign of one that is
strong (:data:`STRONG_SKEWNESS`, :data:`STRONG_DARK`) while the other is weak; otherwise (both weak,
or both strong and opposite) it keeps +1 and says the sign could not be checked.  Validation heads
(seeds 10-12, 2 mm; ``benchmarks/robustness.py --study sign`` and the matrix's validation rows):
``qsmprep.sim`` heads ``tail_skewness`` 0.21-0.37, ``dark_contrast`` 0.26-2.06; qsm-forward-pipeline
heads (its tissue model has weaker veins) 0.07-0.09 / 0.53-0.62, and -0.04 / 0.35 for its single
echo at 7 T; a 64 mm slab 0.29 / -0.04: each measure alone fails somewhere, the rule decides every
one of them right.

The sign is applied to the total and local fields after background removal (every step before it
is sign-symmetric: the phase-coherence mask, unwrapping, the echo fit and background removal are
odd in the phase), so a phase stored with the opposite sign gives the same chi.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

#: Quantile of :func:`tail_skewness` (each tail).
TAIL_QUANTILE = 0.005
#: Share of the mask's voxels :func:`dark_contrast` calls dark (lowest magnitude relative to the
#: neighbourhood).
DARK_FRACTION = 0.02
#: Width (mm, Gaussian sigma) of the neighbourhood :func:`dark_contrast` compares the magnitude with.
DARK_SIGMA_MM = 4.0
#: ``auto``: the two measures agreeing decide when ``|tail_skewness|`` reaches this (or the dark
#: contrast is strong); one measure alone decides when it reaches its ``STRONG_`` level while the other
#: stays below it (validation: module docstring).
MIN_SKEWNESS = 0.05
STRONG_SKEWNESS = 0.15
STRONG_DARK = 0.20
#: Accepted values of the ``phase_sign`` setting.
CHOICES = ("auto", "1", "-1")


def tail_skewness(chi: np.ndarray, mask: np.ndarray, quantile: float = TAIL_QUANTILE) -> float:
    """Quantile skewness of ``chi`` in ``mask``: ``(q_hi + q_lo - 2 median) / (q_hi - q_lo)``, in [-1, 1].

    ``q_lo``/``q_hi`` are the ``quantile`` and ``1 - quantile`` quantiles.  0 for a symmetric
    distribution, positive when the upper tail is the longer one.  NaN for an empty mask.
    """
    v = np.asarray(chi)[np.asarray(mask, bool)]
    v = v[np.isfinite(v)]
    if v.size < 10:
        return float("nan")
    lo, med, hi = np.quantile(v.astype(np.float64), [quantile, 0.5, 1.0 - quantile])
    if hi <= lo:
        return 0.0
    return float((hi + lo - 2.0 * med) / (hi - lo))


def dark_contrast(chi: np.ndarray, magnitude: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float] = (1, 1, 1),
                  fraction: float = DARK_FRACTION, sigma_mm: float = DARK_SIGMA_MM) -> float:
    """Median chi of the locally darkest voxels minus the median chi, over the chi interquartile range.

    ``magnitude`` 3-D (or 4-D with echoes last: root-sum-of-squares); "locally dark" = magnitude over
    its Gaussian (``sigma_mm``) mean within ``mask``, lowest ``fraction`` of the mask.  Unit-free;
    NaN when the mask is too small.
    """
    from scipy.ndimage import gaussian_filter

    m = np.asarray(mask, bool)
    mag = np.asarray(magnitude, np.float32)
    if mag.ndim == 4:
        mag = np.sqrt(np.einsum("...e,...e->...", mag, mag))
    c = np.asarray(chi, np.float32)
    if m.sum() < 100:
        return float("nan")
    sig = [float(sigma_mm) / float(v) for v in voxel_size]
    w = m.astype(np.float32)
    local_mean = gaussian_filter(mag * w, sig) / np.maximum(gaussian_filter(w, sig), 1e-6)
    ratio = mag / np.maximum(local_mean, 1e-12)
    r = ratio[m]
    dark = m & (ratio <= np.quantile(r, fraction))
    v = c[m].astype(np.float64)
    q1, med, q3 = np.quantile(v, [0.25, 0.5, 0.75])
    iqr = q3 - q1
    if iqr <= 0 or not dark.any():
        return 0.0
    return float((np.median(c[dark]) - med) / iqr)


def paramagnetic_evidence(chi: np.ndarray, magnitude: np.ndarray, mask: np.ndarray,
                          voxel_size: Sequence[float] = (1, 1, 1)) -> dict:
    """``{"tail_skewness": ..., "dark_contrast": ...}`` of a chi map (both > 0 when veins and iron are paramagnetic)."""
    return {"tail_skewness": round(tail_skewness(chi, mask), 6),
            "dark_contrast": round(dark_contrast(chi, magnitude, mask, voxel_size), 6)}


def decide(tail: float, dark: float) -> int:
    """The sign the two measures show (+1 or -1), or 0 when they do not tell (module docstring).

    >>> decide(0.3, 0.4), decide(-0.3, -0.4), decide(0.29, -0.04), decide(-0.035, 0.35), decide(0.3, -0.4), decide(0.01, 0.05)
    (1, -1, 1, 1, 0, 0)
    """
    s = float(tail) if np.isfinite(tail) else 0.0
    d = float(dark) if np.isfinite(dark) else 0.0
    if np.sign(s) == np.sign(d) and s != 0 and (abs(s) >= MIN_SKEWNESS or abs(d) >= STRONG_DARK):
        return int(np.sign(s))
    if abs(s) >= STRONG_SKEWNESS and abs(d) < STRONG_DARK:
        return int(np.sign(s))
    if abs(d) >= STRONG_DARK and abs(s) < STRONG_SKEWNESS:
        return int(np.sign(d))
    return 0


def choose_phase_sign(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    magnitude: np.ndarray,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    requested: str | int = "auto",
) -> tuple[int, dict]:
    """The phase sign to apply to the fields: ``requested`` (1 or -1), or for ``"auto"`` the sign
    that makes the chain's chi paramagnetic where brains are (module docstring).

    Parameters
    ----------
    local_ppm : local field (ppm) as computed with the input's own sign.
    mask : where it is valid.  magnitude : 3-D or 4-D magnitude on the same grid.
    voxel_size : mm.  b0_dir : unit B0 vector in array axes.
    requested : ``"auto"``, ``"1"``/``1`` or ``"-1"``/``-1``.

    Returns ``(sign, record)``: ``sign`` is +1 or -1; ``record`` holds ``requested``, ``sign``,
    ``decided_by`` (``"user"``, ``"auto"`` or ``"default"`` when auto could not decide),
    ``tail_skewness`` and ``dark_contrast`` of the TKD chi with the CHOSEN sign, ``consistent``
    (both measures positive with the chosen sign) and ``message`` (one sentence for the log).
    """
    from qsmprep.qsm.inversion import tkd

    req = str(requested).strip()
    if req not in CHOICES:
        raise ValueError(f"phase_sign must be one of {', '.join(CHOICES)}, got {requested!r}.")
    m = np.asarray(mask, bool)
    chi = tkd(np.asarray(local_ppm, np.float32), m, voxel_size, b0_dir)
    ev = paramagnetic_evidence(chi, magnitude, m, voxel_size)
    s, d = ev["tail_skewness"], ev["dark_contrast"]
    if req in ("1", "-1"):
        sign, by = int(req), "user"
    else:
        auto = decide(s, d)
        sign, by = (auto, "auto") if auto else (1, "default")
    signed = {k: round(sign * v, 6) for k, v in ev.items()}
    consistent = bool(signed["tail_skewness"] > 0 and signed["dark_contrast"] > 0)
    if by == "auto":
        message = (f"Phase sign: auto chose {sign:+d} (" + ("as stored" if sign > 0 else "the stored phase negated")
                   + f"): veins and iron-rich tissue come out paramagnetic (tail skewness {signed['tail_skewness']:.2f}, "
                   f"dark-voxel contrast {signed['dark_contrast']:.2f}).")
    elif by == "default":
        message = (f"Phase sign: auto could not tell the sign (tail skewness {s:.2f}, dark-voxel contrast {d:.2f} "
                   "are too small or disagree), so the phase is used as stored; check that veins are bright "
                   "(positive) in the chi map or set --phase-sign.")
    else:
        message = (f"Phase sign: {sign:+d} as requested; tail skewness {signed['tail_skewness']:.2f}, dark-voxel "
                   f"contrast {signed['dark_contrast']:.2f}" + ("." if consistent else
                   " (the map does NOT look paramagnetic where brains are: check --phase-sign)."))
    record = {"requested": req, "sign": sign, "decided_by": by, **signed, "consistent": consistent,
              "message": message}
    return sign, record
