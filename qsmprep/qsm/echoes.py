"""Phase scaling, magnitude combination and the multi-echo field fit.

Units: phase in rad, echo times in s, field in Hz (``fit_field``) or ppm
(``hz_to_ppm``), B0 in T.  4-D arrays have the echoes on the LAST axis.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from .constants import hz_per_ppm

TWO_PI = 2.0 * np.pi


class FieldFit(NamedTuple):
    """Result of :func:`fit_field` (all float32, 3-D, zero outside the mask).

    field_hz : fitted frequency offset in Hz (slope of phase vs TE over 2*pi).
    offset_rad : fitted phase at TE = 0 (intercept) in rad; 0 for a single echo.
    noise_hz : standard error of ``field_hz`` in Hz, per voxel.
    weight : normalised data weight in [0, 1] (inverse noise / its 99th percentile
        in the mask), for the dipole inversion.
    """

    field_hz: np.ndarray
    offset_rad: np.ndarray
    noise_hz: np.ndarray
    weight: np.ndarray


def wrap_to_pi(x: np.ndarray) -> np.ndarray:
    """Wrap angles (rad) into [-pi, pi)."""
    return (np.asarray(x) + np.pi) % TWO_PI - np.pi


#: Phase units :func:`scale_phase_to_radians` converts (``"auto"`` detects them).
PHASE_UNITS = ("rad", "deg", "scanner")
#: Phase in rad when every value lies within +-pi + 1 %.
PHASE_RAD_LIMIT = float(np.pi * 1.01)
#: Limit of a wrapped phase in degrees, +-180 + 1 %.
PHASE_DEG_LIMIT = 180.0 * 1.01
#: Codes per turn of integer scanner phase: 8- to 16-bit codes, whole and tenths of degrees, milli- and 1e-4 radians.
SCANNER_TURNS = tuple(2.0 ** b for b in range(8, 17)) + (360.0, 3600.0, 2000.0 * np.pi, 20000.0 * np.pi)
#: A run's integer phase spans one of :data:`SCANNER_TURNS` within this range of it: a wrapped phase (with
#: the noise of the background) covers nearly the whole turn, and no more than it.
SCANNER_TURN_RANGE = (0.95, 1.02)


def scanner_turn(span: float) -> float | None:
    """The codes per turn of integer phase spanning ``span`` codes (``max - min + 1``): the one of
    :data:`SCANNER_TURNS` nearest to it, if the span lies within :data:`SCANNER_TURN_RANGE` of it; else None (no
    scanner's turn: e.g. unwrapped phase stored as integers, or a magnitude image)."""
    turn = min(SCANNER_TURNS, key=lambda t: abs(np.log(span / t)))
    lo, hi = SCANNER_TURN_RANGE
    return turn if lo * turn <= span <= hi * turn else None


def partial_scanner_turn(span: float) -> bool:
    """True when integer phase spanning ``span`` codes covers a half to :data:`SCANNER_TURN_RANGE`'s lower end of some
    scanner turn (a background masked to zero, a short echo with little phase, or unwrapped phase), so that the
    codes per turn cannot be told."""
    return any(0.5 * turn <= span < SCANNER_TURN_RANGE[0] * turn for turn in SCANNER_TURNS)


#: A phase within +-1 reaching both ends (at least this close) is phase over pi, not radians.
PHASE_OVER_PI_REACH = 0.99


def classify_phase_range(lo: float, hi: float, integer_valued: bool) -> str:
    """Units of a wrapped phase from its range (all echoes of a run): ``"rad"``, ``"scanner"``, ``"deg"`` or ``"unknown"``.

    A wrapped phase covers (nearly) a whole turn, so its range tells its units, in this order:

    * ``"over_pi"``: every value within +-1 (to 1e-4) and reaching beyond +-:data:`PHASE_OVER_PI_REACH` at
      both ends: phase divided by pi (normalised to [-1, 1]), not radians, which would use only a third of
      the turn (refused by :mod:`qsmprep.bids` with the fix).
    * ``"rad"``: every value within +-:data:`PHASE_RAD_LIMIT` (pi + 1 %), or within
      [-0.01 pi, 2 pi + 1 %] (radians stored in [0, 2 pi): wrapping makes them the same phase).
    * ``"scanner"``: integer-valued, spanning (``hi - lo + 1``) one of :data:`SCANNER_TURNS`
      (:func:`scanner_turn`), and either beyond +-:data:`PHASE_DEG_LIMIT` (12-bit codes -4096..4095 or
      0..4095, Philips -3142..3142, unsigned 8-bit 0..255) or spanning 256 codes within 2 % (signed 8-bit
      -128..127).  Whole degrees 0..359 are a 360-code turn, converted exactly as degrees would be.
    * ``"deg"``: within +-:data:`PHASE_DEG_LIMIT` (181.8) and reaching beyond +-160, floats or
      whole degrees; or non-integer values within [-3.6, 363.6] reaching beyond 320 (0..360 degrees).
    * ``"partial_turn"``: integer codes beyond +-181.8 spanning a half to 95 % of a scanner turn
      (:func:`partial_scanner_turn`: a background masked to zero, or a short echo with little phase), which
      cannot tell the turn.
    * ``"unknown"``: anything else (unwrapped or rescaled phase, values just beyond the limits,
      integer data spanning no scanner's turn, such as unwrapped phase or a magnitude image stored as integers).
    """
    m = max(abs(lo), abs(hi))
    if m <= 1.0 + 1e-4 and lo <= -PHASE_OVER_PI_REACH and hi >= PHASE_OVER_PI_REACH:
        return "over_pi"
    if m <= PHASE_RAD_LIMIT:
        return "rad"
    if lo >= -0.01 * np.pi and hi <= 2 * PHASE_RAD_LIMIT:
        return "rad"
    span = hi - lo + 1.0
    if (integer_valued and scanner_turn(span) is not None
            and (m > PHASE_DEG_LIMIT or abs(span - 256.0) <= 0.02 * 256.0)):
        return "scanner"
    if integer_valued and m > PHASE_DEG_LIMIT and partial_scanner_turn(span):
        return "partial_turn"
    if 160.0 < m <= PHASE_DEG_LIMIT:
        return "deg"
    if not integer_valued and lo >= -0.01 * 360.0 and 320.0 < hi <= 2 * PHASE_DEG_LIMIT:
        return "deg"
    return "unknown"


def _integer_like(x: np.ndarray) -> bool:
    if np.issubdtype(x.dtype, np.integer):
        return True
    sample = x.ravel()[:: max(1, x.size // 200_000)].astype(np.float64)
    return bool(np.all(np.abs(sample - np.round(sample)) < 1e-3))


def scale_phase_to_radians(phase: np.ndarray, units: str = "auto") -> np.ndarray:
    """Return the phase in radians (float32), wrapped to [-pi, pi], from ``units``.

    ``units`` (one of :data:`PHASE_UNITS`, or ``"auto"``: :func:`classify_phase_range` of the
    values, the rule :mod:`qsmprep.bids` also applies before anything runs):

    * ``"rad"``: values within +-pi*1.01 are returned unchanged (float32); others are wrapped
      (e.g. radians stored in [0, 2 pi)).
    * ``"deg"``: ``wrap(value * pi / 180)``.
    * ``"scanner"``: integer scanner units (e.g. Siemens -4096..4095 or 0..4095, Philips
      milliradians -3142..3142): one full turn is the scanner turn (:func:`scanner_turn`) that the
      observed span ``max - min + 1`` codes matches (12-bit data need not reach the extremes), and the
      values are mapped with ``wrap(value * 2*pi / turn)`` to [-pi, pi].
      No offset is subtracted, so apply this to all echoes of a run at once (the 4-D array) to
      keep them consistent; signed and unsigned codes give the same radians modulo 2*pi.
      Integer data spanning no scanner turn (e.g. fewer than 243 codes) are refused.

    ``"auto"`` raises ``ValueError`` for a range it cannot tell (``"unknown"``, e.g. unwrapped
    phase, ``"over_pi"`` or ``"partial_turn"``).  NaN/inf are set to 0.
    """
    if units not in ("auto",) + PHASE_UNITS:
        raise ValueError(f"phase units must be 'auto' or one of {PHASE_UNITS}, got {units!r}.")
    x = np.asarray(phase)
    if x.size == 0:
        return x.astype(np.float32)
    if not np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.float32, copy=True)
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = 0.0
    lo, hi = float(x.min()), float(x.max())
    integer_like = _integer_like(x)
    if units == "auto":
        units = classify_phase_range(lo, hi, integer_like)
        if units in ("unknown", "over_pi", "partial_turn"):
            why = {"over_pi": "phase divided by pi (multiply it by pi)",
                   "partial_turn": "integer codes that cover only part of a scanner's turn (a masked background?)",
                   }.get(units, "neither radians within [-pi, pi] nor integer scanner units nor degrees")
            raise ValueError(
                f"Phase values range from {lo:.4g} to {hi:.4g}: {why}; convert the phase image to radians (or to the "
                "scanner's integer phase units) before running qsmprep."
            )
    if units == "rad":
        if lo >= -PHASE_RAD_LIMIT and hi <= PHASE_RAD_LIMIT:
            return x.astype(np.float32, copy=False)
        scale = np.float32(1.0)
    elif units == "deg":
        scale = np.float32(np.pi / 180.0)
    else:
        span = scanner_turn(hi - lo + 1.0) if integer_like else None
        if span is None:
            raise ValueError(
                f"Phase values range from {lo:.4g} to {hi:.4g}: not integer scanner units spanning a turn; "
                "convert the phase image to radians (or to the scanner's integer phase units) before running qsmprep."
            )
        scale = np.float32(TWO_PI / span)
    out = x.astype(np.float32) * scale
    out -= np.float32(TWO_PI) * np.rint(out * np.float32(1.0 / TWO_PI))
    np.clip(out, -np.float32(np.pi), np.float32(np.pi), out=out)
    return out


def complex_to_magnitude_phase(real: np.ndarray, imag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and phase (rad, in (-pi, pi]) of complex data stored as real and imaginary parts (e.g. GE).

    Any common scale of the two parts scales the magnitude only.  float32 out.
    """
    re = np.asarray(real, dtype=np.float32)
    im = np.asarray(imag, dtype=np.float32)
    if re.shape != im.shape:
        raise ValueError(f"The real ({re.shape}) and imaginary ({im.shape}) parts differ in shape.")
    return np.hypot(re, im).astype(np.float32), np.arctan2(im, re).astype(np.float32)


#: How a run stores its complex signal: magnitude and phase, or real and imaginary parts (GE).
PARTS = ("mag-phase", "real-imag")


def magnitude_phase(first: np.ndarray, second: np.ndarray, parts: str = "mag-phase",
                    units: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """The run's magnitude and wrapped phase (rad), float32, from its two stored parts.

    ``parts``: ``"mag-phase"`` (``first`` magnitude, ``second`` phase in ``units``, see
    :func:`scale_phase_to_radians`) or ``"real-imag"`` (:func:`complex_to_magnitude_phase`;
    ``units`` unused).  Pass all echoes at once (4-D, echoes last) so that scanner units are
    scaled consistently.
    """
    if parts == "real-imag":
        return complex_to_magnitude_phase(first, second)
    if parts != "mag-phase":
        raise ValueError(f"parts must be one of {PARTS}, got {parts!r}.")
    return np.asarray(first, dtype=np.float32), scale_phase_to_radians(second, units)


def combine_magnitude(mag4d: np.ndarray) -> np.ndarray:
    """Root-sum-of-squares over echoes (last axis), float32 (magnitude units).

    A 3-D input is returned as ``abs(input)`` in float32.
    """
    m = np.asarray(mag4d, dtype=np.float32)
    if m.ndim == 3:
        return np.abs(m)
    return np.sqrt(np.einsum("...e,...e->...", m, m, dtype=np.float32))


def hz_to_ppm(field_hz: np.ndarray, b0_t: float) -> np.ndarray:
    """Convert a field map from Hz to ppm of B0: ``field_hz / (gamma_bar * B0 * 1e-6)``.

    ``b0_t`` in tesla (127.73 Hz/ppm at 3 T).  float32 out.
    """
    return (np.asarray(field_hz, dtype=np.float64) / hz_per_ppm(b0_t)).astype(np.float32)


def _noise_sigma_from_background(mag: np.ndarray, mask: np.ndarray) -> float:
    """Complex noise std (magnitude units) from the Rayleigh-distributed air background.

    Outside the mask (dilated by 3 voxels) the magnitude is air noise plus scalp/skull
    tissue.  Rayleigh median rule ``sigma = median / sqrt(2 ln 2)``, iterated on the values
    below ``3.5 sigma`` (99.8 % of Rayleigh noise) so bright tissue drops out.  Falls back to
    1 % of the 99th percentile of the in-mask magnitude when there is no usable background.
    """
    from scipy import ndimage

    bg = ~ndimage.binary_dilation(mask, iterations=3)
    vals = np.asarray(mag)[bg]
    vals = vals[vals > 0].astype(np.float64)
    if vals.size > 100:
        k = np.sqrt(2.0 * np.log(2.0))
        sigma = float(np.median(vals)) / k
        for _ in range(20):
            sel = vals[vals < 3.5 * sigma]
            if sel.size < 100:
                break
            new = float(np.median(sel)) / k
            if abs(new - sigma) <= 1e-4 * sigma:
                sigma = new
                break
            sigma = new
        return sigma
    inside = np.asarray(mag)[mask]
    return float(0.01 * np.percentile(inside, 99)) if inside.size else 1.0


def _normalise_weight(inv_noise: np.ndarray, mask: np.ndarray) -> np.ndarray:
    w = np.zeros(mask.shape, dtype=np.float32)
    vals = inv_noise[mask]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        return w
    p99 = float(np.percentile(vals, 99))
    if p99 <= 0:
        return w
    w[mask] = np.clip(np.nan_to_num(inv_noise[mask] / p99), 0.0, 1.0)
    return w


#: Gaussian sigma (mm) of the smoothing of the fitted echo-independent phase offset (and of the
#: bipolar even/odd-echo offset) before the field is fitted through the origin (:func:`fit_field`).
OFFSET_SMOOTH_MM = 2.0


#: Degree of the polynomial fitted to the offset before the residual is smoothed (:func:`smooth_offset`).
OFFSET_POLY_DEGREE = 4


def smooth_offset(vol: np.ndarray, wgt: np.ndarray, mask: np.ndarray, voxel_size=(1.0, 1.0, 1.0),
                  sigma_mm: float = OFFSET_SMOOTH_MM, degree: int = OFFSET_POLY_DEGREE) -> np.ndarray:
    """Smooth version (float64, 0 outside ``mask``) of a per-voxel map of a smooth quantity (rad).

    A weighted least-squares polynomial of total degree ``degree`` over the mask (exact for
    polynomial offsets, no bias at the mask's edge), plus the normalised Gaussian smoothing
    ``G*(w r) / G*(w)`` (``sigma_mm``) of what the polynomial leaves, ``r``.  ``wgt`` >= 0 are the
    per-voxel weights (inverse variances up to a factor).  A plain normalised Gaussian would be
    biased at the edge by the offset's gradient times the kernel's centroid shift (about 0.1 rad
    for qsm-forward's bowl at 1 mm).
    """
    import itertools

    from scipy import ndimage

    from .geometry import bounding_box

    m = np.asarray(mask, bool)
    out = np.zeros(m.shape, np.float64)
    if not m.any():
        return out
    idx = np.nonzero(m)
    cen = [float(i.mean()) for i in idx]
    scl = [max(1.0, float(i.std())) for i in idx]
    xs = [(i - c) / s for i, c, s in zip(idx, cen, scl)]
    terms = [t for d in range(int(degree) + 1) for t in itertools.combinations_with_replacement(range(3), d)]
    sub = slice(None, None, max(1, int(round((idx[0].size / 200_000.0) ** 0.5))))

    def col(t, x):
        c = np.ones_like(x[0])
        for a in t:
            c = c * x[a]
        return c

    xs_s = [x[sub] for x in xs]
    w_s = np.asarray(wgt, np.float64)[m][sub]
    v_s = np.asarray(vol, np.float64)[m][sub]
    a = np.stack([col(t, xs_s) for t in terms], 1)
    sw = np.sqrt(np.maximum(w_s, 0))
    coef, *_ = np.linalg.lstsq(a * sw[:, None], v_s * sw, rcond=None)
    poly = np.zeros(idx[0].size)
    for c, t in zip(coef, terms):
        poly += c * col(t, xs)
    out[m] = poly
    resid = np.zeros(m.shape, np.float64)
    resid[m] = np.asarray(vol, np.float64)[m] - poly
    box = bounding_box(m, [int(np.ceil(3 * sigma_mm / float(v))) for v in voxel_size])
    mb = m[box]
    wb = np.where(mb, np.asarray(wgt, np.float64)[box], 0.0)
    sig = [sigma_mm / float(v) for v in voxel_size]
    num = ndimage.gaussian_filter(wb * resid[box], sig, mode="constant")
    den = ndimage.gaussian_filter(wb, sig, mode="constant")
    out[box] += np.where(mb, num / np.where(den > 0, den, 1.0), 0.0)
    return np.where(m, out, 0.0)


def fit_field(
    phase_uw4d: np.ndarray,
    mag4d: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    demean_echoes: bool = False,
    offset: str = "smooth",
    bipolar: bool = True,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
) -> FieldFit:
    """Weighted least-squares fit of unwrapped phase vs echo time: ``phi_j = phi0 + 2*pi*f*TE_j``.

    Parameters
    ----------
    phase_uw4d : unwrapped phase in rad, shape (X, Y, Z, E) (or 3-D for one echo).
    mag4d : magnitude, same shape (any units), or None for equal weights.
        Per-echo weights are ``w_j = mag_j**2`` (inverse phase-noise variance).
    te_s : echo times in seconds, length E.
    mask : bool 3-D; the fit is reported inside it (default: everything).
    demean_echoes : subtract each echo's (unweighted) mean inside the mask first.
        Use this after Laplacian unwrapping, where every echo carries its own
        arbitrary constant (ALGORITHMS.md 2.3 pitfall); the field is then known only
        up to a global constant (removed later by background-field removal).
    offset : ``"smooth"`` (default, E >= 2): the echo-independent offset ``phi0`` (the receive
        phase) is smooth, so it is fitted per voxel, smoothed (:func:`smooth_offset`: a degree-4
        polynomial plus a normalised Gaussian of sigma :data:`OFFSET_SMOOTH_MM` on the rest;
        weights ``sum_j w_j``), removed, and the field is fitted
        *through the origin*: ``f = sum_j w_j TE_j p_j / (2 pi sum_j w_j TE_j^2)``.  The offset
        then costs no degree of freedom per voxel: the field's standard error falls from
        ``sigma / (2 pi sqrt(sum w (TE - TEbar)^2))`` to ``sigma / (2 pi sqrt(sum w TE^2))``
        (for TE = 4, 10, ..., 28 ms a factor 2.1; measured on the validation heads in
        ``benchmarks/RESULTS.md``).  What the smoothing misses of the offset goes into the field
        divided by ``2 pi sum w TE^2 / sum w TE``; it is smooth, and background removal takes out
        its harmonic part.  ``"voxel"``: the straight line with a per-voxel intercept (the earlier
        fit; exact for any offset, twice the noise).
    bipolar : with ``offset="smooth"`` and E >= 3, also fit an even/odd-echo offset
        ``+-delta/2`` (bipolar readouts: odd echoes ``phi0 - delta/2``, even ``phi0 + delta/2``),
        smoothed like ``phi0`` and removed before the slope; with monopolar data the fitted
        ``delta`` is noise and its smoothed map is close to 0.
    voxel_size : mm, for the offset smoothing.

    Returns
    -------
    FieldFit(field_hz, offset_rad, noise_hz, weight), float32, zero outside the mask.

    * E >= 2: ``field_hz = slope / (2*pi)``, ``offset_rad`` the (smoothed) offset ``phi0``;
      ``noise_hz`` the slope's standard error (above) with ``sigma`` the complex-noise std in
      magnitude units, pooled over the mask from the weighted residuals (robust median
      estimate) when E exceeds the number of per-voxel parameters by >= 1 (``"smooth"``: 1;
      ``"voxel"``: 2), else from the Rayleigh air background of the first echo outside the mask.
    * E == 1: ``field_hz = phi / (2*pi*TE)``; the phase offset is assumed to be 0
      (not estimable from one echo); ``noise_hz = sigma / (2*pi*TE*m)``.
    * ``weight = (1/noise_hz) / p99(1/noise_hz in mask)``, clipped to [0, 1].
    """
    ph = np.asarray(phase_uw4d)
    if ph.ndim == 3:
        ph = ph[..., None]
    te = np.asarray(te_s, dtype=np.float64).ravel()
    n_echo = ph.shape[-1]
    if te.size != n_echo:
        raise ValueError(
            f"fit_field got {n_echo} phase echoes but {te.size} echo times; "
            "pass one EchoTime (s) per echo."
        )
    if np.any(te <= 0):
        raise ValueError("Echo times must be positive and in seconds (e.g. 0.004 for 4 ms).")
    if offset not in ("smooth", "voxel"):
        raise ValueError(f"fit_field offset must be 'smooth' or 'voxel', got {offset!r}.")
    shape3 = ph.shape[:3]
    m3 = np.ones(shape3, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if mag4d is None:
        mag = np.ones(ph.shape, dtype=np.float32)
        have_mag = False
    else:
        mag = np.asarray(mag4d)
        if mag.ndim == 3:
            mag = mag[..., None]
        if mag.shape != ph.shape:
            raise ValueError(f"Magnitude shape {mag.shape} differs from phase shape {ph.shape}.")
        have_mag = True

    p = ph[m3].astype(np.float64)  # (N, E)
    m = mag[m3].astype(np.float64)
    if demean_echoes and p.shape[0]:
        p = p - p.mean(axis=0, keepdims=True)
    w = m**2
    field = np.zeros(shape3, np.float32)
    offset_map = np.zeros(shape3, np.float32)
    noise = np.zeros(shape3, np.float32)

    if n_echo == 1:
        f = p[:, 0] / (TWO_PI * te[0])
        sigma = _noise_sigma_from_background(mag[..., 0], m3) if have_mag else 1.0
        with np.errstate(divide="ignore"):
            nz = np.where(m[:, 0] > 0, sigma / (TWO_PI * te[0] * np.where(m[:, 0] > 0, m[:, 0], 1.0)), np.inf)
        field[m3] = f
        noise[m3] = nz
    else:
        if offset == "smooth":
            slope, icpt, resid_dof, sxx = _fit_through_smoothed_offset(p, w, te, m3, voxel_size, bipolar)
        else:
            slope, icpt, resid_dof, sxx = _fit_line(p, w, te)
        sw = w.sum(axis=1)
        k = n_echo - resid_dof
        if k >= 1:
            resid = p - (icpt[0][:, None] + slope[:, None] * te[None, :] + icpt[1])
            chi2 = (w * resid**2).sum(axis=1) / k
            good = sw > 0
            # robust pooled sigma^2: median of sigma^2 * chi2_k / k, divided by the
            # median of chi2_k / k (k degrees of freedom).
            from scipy.stats import chi2 as _chi2

            med = float(np.median(chi2[good])) if np.any(good) else 1.0
            sigma2 = med / (float(_chi2.ppf(0.5, k)) / k)
            sigma = np.sqrt(max(sigma2, 1e-30))
        else:
            sigma = _noise_sigma_from_background(mag[..., 0], m3) if have_mag else 1.0
        nz = sigma / (TWO_PI * np.sqrt(sxx))
        field[m3] = slope / TWO_PI
        offset_map[m3] = icpt[0]
        noise[m3] = nz
    with np.errstate(divide="ignore"):
        inv = np.where(noise > 0, 1.0 / np.maximum(noise, 1e-30), 0.0).astype(np.float32)
    weight = _normalise_weight(inv, m3)
    bad = ~np.isfinite(noise)
    if np.any(bad):  # zero magnitude: report the largest finite noise instead of inf
        fin = noise[m3 & ~bad]
        noise[bad] = float(fin.max()) if fin.size else 0.0
    return FieldFit(field, offset_map, noise, weight)


def _fit_line(p: np.ndarray, w: np.ndarray, te: np.ndarray):
    """Per-voxel weighted straight line with intercept: ``(slope, (icpt, 0), 2, sxx)``."""
    sw = w.sum(axis=1)
    sw_safe = np.where(sw > 0, sw, 1.0)
    te_bar = (w * te).sum(axis=1) / sw_safe
    p_bar = (w * p).sum(axis=1) / sw_safe
    dte = te[None, :] - te_bar[:, None]
    sxx = (w * dte**2).sum(axis=1)
    sxx_safe = np.where(sxx > 0, sxx, np.inf)
    slope = (w * dte * (p - p_bar[:, None])).sum(axis=1) / sxx_safe
    return slope, (p_bar - slope * te_bar, 0.0), 2, sxx_safe


def _fit_through_smoothed_offset(p, w, te, m3, voxel_size, bipolar: bool):
    """Per-voxel fit of the offset (and the bipolar even/odd offset), smoothed, then the slope
    through the origin.  Returns ``(slope, (phi0, bipolar term (N, E)), 1, sum w TE^2)``."""
    n_echo = te.size
    use_bip = bool(bipolar) and n_echo >= 3
    cols = [np.ones(n_echo), te] + ([0.5 * (-1.0) ** np.arange(1, n_echo + 1)] if use_bip else [])
    a = np.stack(cols, 1)  # (E, P): odd echoes (1st, 3rd, ...) -delta/2, even +delta/2
    # weighted normal equations per voxel: (A^T W A) x = A^T W p
    ata = np.einsum("ne,ep,eq->npq", w, a, a)
    atp = np.einsum("ne,ep,ne->np", w, a, p)
    ok = np.linalg.det(ata) > 1e-12 * np.maximum(np.einsum("npp->n", ata), 1e-30) ** a.shape[1]
    ata[~ok] = np.eye(a.shape[1])
    x = np.linalg.solve(ata, atp[..., None])[..., 0]
    x[~ok] = 0.0
    sw = w.sum(axis=1)
    vol = np.zeros(m3.shape, np.float64)
    wv = np.zeros(m3.shape, np.float64)
    wv[m3] = sw
    vol[m3] = x[:, 0]
    phi0 = smooth_offset(vol, wv, m3, voxel_size)[m3]
    extra = np.zeros_like(p)
    if use_bip:
        vol[m3] = x[:, 2]
        delta = smooth_offset(vol, wv, m3, voxel_size)[m3]
        extra = delta[:, None] * a[None, :, 2]
    q = p - phi0[:, None] - extra
    sxx = (w * te[None, :] ** 2).sum(axis=1)
    sxx_safe = np.where(sxx > 0, sxx, np.inf)
    slope = (w * te[None, :] * q).sum(axis=1) / sxx_safe
    return slope, (phi0, extra), 1, sxx_safe
