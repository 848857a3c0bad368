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


def scale_phase_to_radians(phase: np.ndarray) -> np.ndarray:
    """Return the phase in radians (float32), converting integer scanner units.

    * Already radians (all finite values within +-pi*1.01): returned as float32,
      unchanged.
    * Integer-valued data whose range is much larger than 2*pi (e.g. Siemens
      -4096..4095 or 0..4095, Philips milliradians -3142..3142): one full turn is
      taken as the observed span ``max - min + 1`` codes, rounded to a power of two
      when it is within 2 % of one (12-bit data need not reach the extremes), and
      the values are mapped with ``wrap(value * 2*pi / span)`` to [-pi, pi].
      No offset is subtracted, so apply this to all echoes of a run at once (the
      4-D array) to keep them consistent; signed and unsigned codes give the same
      radians modulo 2*pi.
    * Anything else (non-integer values beyond +-pi*1.01, e.g. unwrapped phase or
      degrees) raises ``ValueError``.

    NaN/inf are set to 0.
    """
    x = np.asarray(phase)
    if x.size == 0:
        return x.astype(np.float32)
    if np.issubdtype(x.dtype, np.integer):
        lo, hi = float(x.min()), float(x.max())
        integer_like = True
    else:
        x = x.astype(np.float32, copy=True)
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = 0.0
        lo, hi = float(x.min()), float(x.max())
        if lo >= -np.pi * 1.01 and hi <= np.pi * 1.01:
            return x
        sample = x.ravel()[:: max(1, x.size // 200_000)].astype(np.float64)
        integer_like = bool(np.all(np.abs(sample - np.round(sample)) < 1e-3))
    span = hi - lo + 1.0
    if not integer_like or span < 20.0 * np.pi:
        raise ValueError(
            f"Phase values range from {lo:.4g} to {hi:.4g}: neither radians within [-pi, pi] "
            "nor integer scanner units; convert the phase image to radians (or to the "
            "scanner's integer phase units) before running qsmprep."
        )
    p2 = 2.0 ** np.round(np.log2(span))
    if abs(span - p2) / p2 < 0.02:
        span = p2
    out = x.astype(np.float32) * np.float32(TWO_PI / span)
    out -= np.float32(TWO_PI) * np.rint(out * np.float32(1.0 / TWO_PI))
    np.clip(out, -np.float32(np.pi), np.float32(np.pi), out=out)
    return out


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


def fit_field(
    phase_uw4d: np.ndarray,
    mag4d: np.ndarray | None,
    te_s: Sequence[float],
    mask: np.ndarray | None = None,
    *,
    demean_echoes: bool = False,
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

    Returns
    -------
    FieldFit(field_hz, offset_rad, noise_hz, weight), float32, zero outside the mask.

    * E >= 2: straight-line fit with intercept (the echo-independent phase offset
      ``phi0`` -> ``offset_rad``), slope -> ``field_hz = slope / (2*pi)``.
      ``noise_hz = sigma / (2*pi*sqrt(sum_j m_j^2 (TE_j - TEbar_w)^2))`` with
      ``sigma`` the complex-noise std in magnitude units: pooled over the mask from
      the weighted residuals (robust median estimate) when E >= 3, or from the
      Rayleigh air background of the first echo outside the mask when E <= 2.
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
    offset = np.zeros(shape3, np.float32)
    noise = np.zeros(shape3, np.float32)

    if n_echo == 1:
        f = p[:, 0] / (TWO_PI * te[0])
        sigma = _noise_sigma_from_background(mag[..., 0], m3) if have_mag else 1.0
        with np.errstate(divide="ignore"):
            nz = np.where(m[:, 0] > 0, sigma / (TWO_PI * te[0] * np.where(m[:, 0] > 0, m[:, 0], 1.0)), np.inf)
        field[m3] = f
        noise[m3] = nz
    else:
        sw = w.sum(axis=1)
        sw_safe = np.where(sw > 0, sw, 1.0)
        te_bar = (w * te).sum(axis=1) / sw_safe
        p_bar = (w * p).sum(axis=1) / sw_safe
        dte = te[None, :] - te_bar[:, None]
        sxx = (w * dte**2).sum(axis=1)
        sxx_safe = np.where(sxx > 0, sxx, np.inf)
        slope = (w * dte * (p - p_bar[:, None])).sum(axis=1) / sxx_safe
        icpt = p_bar - slope * te_bar
        if n_echo >= 3:
            resid = p - (icpt[:, None] + slope[:, None] * te[None, :])
            chi2 = (w * resid**2).sum(axis=1) / (n_echo - 2)
            good = sw > 0
            # robust pooled sigma^2: median of sigma^2 * chi2_k / k, divided by the
            # median of chi2_k / k (k = E - 2 degrees of freedom).
            from scipy.stats import chi2 as _chi2

            k = n_echo - 2
            med = float(np.median(chi2[good])) if np.any(good) else 1.0
            sigma2 = med / (float(_chi2.ppf(0.5, k)) / k)
            sigma = np.sqrt(max(sigma2, 1e-30))
        else:
            sigma = _noise_sigma_from_background(mag[..., 0], m3) if have_mag else 1.0
        nz = sigma / (TWO_PI * np.sqrt(sxx_safe))
        field[m3] = slope / TWO_PI
        offset[m3] = icpt
        noise[m3] = nz
    with np.errstate(divide="ignore"):
        inv = np.where(noise > 0, 1.0 / np.maximum(noise, 1e-30), 0.0).astype(np.float32)
    weight = _normalise_weight(inv, m3)
    bad = ~np.isfinite(noise)
    if np.any(bad):  # zero magnitude: report the largest finite noise instead of inf
        fin = noise[m3 & ~bad]
        noise[bad] = float(fin.max()) if fin.size else 0.0
    return FieldFit(field, offset, noise, weight)
