"""Known-answer tests for qsmprep.qsm.echoes (phase scaling, RSS magnitude, field fit)."""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.qsm import echoes as E


# ----------------------------------------------------------------------------- scaling
def test_radians_pass_through():
    ph = np.linspace(-np.pi, np.pi, 101).reshape(101, 1, 1)
    out = E.scale_phase_to_radians(ph)
    assert out.dtype == np.float32
    assert np.allclose(out, ph, atol=1e-6)


@pytest.mark.parametrize(
    "codes, rad_per_code",
    [
        (np.arange(-4096, 4096), np.pi / 4096),  # Siemens signed 12 bit
        (np.arange(0, 4096), 2 * np.pi / 4096),  # unsigned 12 bit
        (np.arange(-3142, 3143), 1e-3),  # Philips / GE milliradians (span 6285 codes): 2000 pi codes per turn
        (np.arange(0, 256), 2 * np.pi / 256),  # unsigned 8 bit
        (np.arange(-32768, 32768, 7), np.pi / 32768),  # 16 bit
        (np.arange(-31416, 31417, 5), 1e-4),  # 1e-4 rad codes
        (np.arange(-1800, 1801), np.pi / 1800),  # tenths of degrees
    ],
)
def test_integer_scanner_units(codes, rad_per_code):
    x = codes.astype(np.float32).reshape(-1, 1, 1)
    out = E.scale_phase_to_radians(x)
    want = E.wrap_to_pi(codes * rad_per_code)
    d = E.wrap_to_pi(out.ravel() - want)
    assert np.max(np.abs(d)) < 1e-4
    assert out.min() >= -np.float32(np.pi) and out.max() <= np.float32(np.pi)


def test_integer_units_not_reaching_extremes():
    """12-bit data that does not use the full code range still maps with 4096 codes per pi."""
    rng = np.random.default_rng(0)
    codes = rng.integers(-4050, 4060, size=(20, 20, 20))
    out = E.scale_phase_to_radians(codes.astype(np.int16))
    assert np.allclose(E.wrap_to_pi(out - codes * np.pi / 4096), 0, atol=1e-4)


def test_signed_and_unsigned_agree_modulo_2pi():
    codes = np.arange(-4096, 4096)
    a = E.scale_phase_to_radians(codes.reshape(-1, 1, 1))
    b = E.scale_phase_to_radians((codes % 8192).reshape(-1, 1, 1))  # 13-bit unsigned
    assert np.allclose(E.wrap_to_pi(a - b), 0, atol=1e-4)


def test_bad_phase_units_raise():
    with pytest.raises(ValueError, match="radians"):
        E.scale_phase_to_radians(np.array([0.5, 7.3, -12.1]))  # unwrapped or degrees-like floats
    with pytest.raises(ValueError, match="radians"):
        E.scale_phase_to_radians(np.array([-5.0, 0.0, 5.0]))  # integer but range < 20*pi
    with pytest.raises(ValueError, match="radians"):  # unwrapped phase stored as integer milliradians
        E.scale_phase_to_radians(np.arange(-21990, 21991, 10).astype(np.int16))
    with pytest.raises(ValueError, match="radians"):  # a 0..295 magnitude stored as phase: no scanner's turn
        E.scale_phase_to_radians(np.arange(0, 296).astype(np.int16))
    with pytest.raises(ValueError, match="radians"):  # phase over pi, normalised to [-1, 1]
        E.scale_phase_to_radians(np.linspace(-1.0, 1.0, 101))


def test_scanner_turn_known_answers():
    assert E.scanner_turn(4096) == 4096 and E.scanner_turn(8192) == 8192 and E.scanner_turn(256) == 256
    assert E.scanner_turn(4001) == 4096  # 12-bit codes that do not reach the extremes
    assert E.scanner_turn(6285) == pytest.approx(2000 * np.pi)  # milliradians
    assert E.scanner_turn(360) == 360  # whole degrees 0..359
    assert E.scanner_turn(43981) is None  # unwrapped milliradians -21990..21990
    assert E.scanner_turn(296) is None and E.scanner_turn(3800) is None and E.scanner_turn(4200) is None
    assert E.scanner_turn(62833) == pytest.approx(20000 * np.pi)  # 1e-4 rad codes: not 0.96 of 16 bits
    assert E.scanner_turn(3601) == 3600  # tenths of degrees
    assert E.partial_scanner_turn(2500) and not E.partial_scanner_turn(100)
    assert E.classify_phase_range(0, 4095, True) == "scanner"  # a full 12-bit turn wins over half of 13 bits
    assert E.classify_phase_range(0, 2499, True) == "partial_turn"  # a masked background: the turn cannot be told


# ----------------------------------------------------------------------------- magnitude
def test_combine_magnitude_rss():
    m = np.zeros((2, 2, 2, 3), np.float32)
    m[..., 0], m[..., 1], m[..., 2] = 1.0, 2.0, 2.0
    out = E.combine_magnitude(m)
    assert out.shape == (2, 2, 2) and np.allclose(out, 3.0)
    assert np.allclose(E.combine_magnitude(-m[..., 1]), 2.0)


def test_hz_to_ppm():
    assert np.isclose(E.hz_to_ppm(np.array([127.7324]), 3.0)[0], 1.0, atol=1e-4)
    assert np.isclose(E.hz_to_ppm(np.array([298.04]), 7.0)[0], 1.0, atol=1e-4)


# ----------------------------------------------------------------------------- field fit
def _linear_phase(te, n=24, noise=0.0, seed=0, r2s=30.0):
    rng = np.random.default_rng(seed)
    c = np.arange(n) - n / 2
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    field = 10.0 * x / n + 25.0 * np.sin(y / 4.0) + 5.0  # Hz
    phi0 = 0.8 * np.cos(z / 5.0) - 0.3  # rad
    te = np.asarray(te)
    mag = np.exp(-r2s * te) * np.ones(x.shape + (te.size,))
    true = phi0[..., None] + 2 * np.pi * field[..., None] * te
    ph = true + rng.normal(0, 1, true.shape) * noise / mag
    mask = np.ones(x.shape, bool)
    mask[:2] = False
    return ph, mag, field, phi0, mask


def test_fit_field_exact_without_noise():
    te = [0.004, 0.009, 0.014, 0.019]
    ph, mag, field, phi0, mask = _linear_phase(te)
    fit = E.fit_field(ph, mag, te, mask, offset="voxel")
    assert np.allclose(fit.field_hz[mask], field[mask], atol=1e-3)
    assert np.allclose(fit.offset_rad[mask], phi0[mask], atol=1e-4)
    assert np.all(fit.field_hz[~mask] == 0) and np.all(fit.weight[~mask] == 0)
    for a in fit:
        assert a.dtype == np.float32 and a.shape == mask.shape


def test_fit_field_noise_and_standard_error():
    """With noise the error std matches the reported noise_hz (standard error)."""
    te = np.array([0.004, 0.010, 0.016, 0.022, 0.028])
    sigma = 0.02
    ph, mag, field, phi0, mask = _linear_phase(te, n=32, noise=sigma)
    fit = E.fit_field(ph, mag, te, mask, offset="voxel")
    err = (fit.field_hz - field)[mask]
    # analytic standard error of a weighted (w = m^2) straight-line slope
    w = np.exp(-2 * 30.0 * te)
    tb = np.sum(w * te) / np.sum(w)
    se = sigma / (2 * np.pi * np.sqrt(np.sum(w * (te - tb) ** 2)))
    assert abs(np.std(err) / se - 1) < 0.05
    assert abs(np.median(fit.noise_hz[mask]) / se - 1) < 0.1
    assert abs(np.mean(err)) < 3 * se / np.sqrt(err.size) + 1e-6
    assert 0 <= fit.weight.min() and fit.weight.max() <= 1
    # uniform magnitude -> uniform noise -> weight ~1 everywhere in the mask
    assert np.median(fit.weight[mask]) > 0.99


def test_fit_field_weight_follows_magnitude():
    te = [0.005, 0.010, 0.015]
    ph, mag, field, phi0, mask = _linear_phase(te, noise=0.01)
    mag = mag.copy()
    mag[:, :12] *= 0.25  # half the volume at a quarter of the signal -> 4x the noise
    fit = E.fit_field(ph, mag, te, mask)
    lo = np.median(fit.weight[:, :12][mask[:, :12]])
    hi = np.median(fit.weight[:, 12:][mask[:, 12:]])
    assert np.isclose(lo / hi, 0.25, rtol=1e-3)
    n_lo = np.median(fit.noise_hz[:, :12][mask[:, :12]])
    n_hi = np.median(fit.noise_hz[:, 12:][mask[:, 12:]])
    assert np.isclose(n_lo / n_hi, 4.0, rtol=1e-3)


def test_fit_field_demean_echoes_for_laplacian_constants():
    """Per-echo constants (Laplacian unwrapping) bias a weighted fit unless demeaned."""
    te = [0.004, 0.008, 0.012, 0.016]
    ph, mag, field, phi0, mask = _linear_phase(te)
    # voxel-dependent relative echo weights (R2* from 5 to 80 1/s along x)
    r2s = np.linspace(5.0, 80.0, mag.shape[0])[:, None, None, None]
    mag = np.exp(-r2s * np.asarray(te)) * np.ones(mag.shape)
    consts = np.array([1.3, -2.0, 0.4, 2.9])
    ph_c = ph + consts
    bad = E.fit_field(ph_c, mag, te, mask, offset="voxel")
    good = E.fit_field(ph_c, mag, te, mask, demean_echoes=True, offset="voxel")
    eg = (good.field_hz - field)[mask]
    eb = (bad.field_hz - field)[mask]
    assert np.std(eg) < 1e-3  # only a global constant remains
    assert np.std(eb) > 10 * np.std(eg)


def test_fit_field_single_echo():
    te = [0.02]
    ph, mag, field, phi0, mask = _linear_phase(te)
    ph = ph - phi0[..., None]  # single echo: offset assumed 0
    fit = E.fit_field(ph[..., 0], mag[..., 0], te, mask)
    assert np.allclose(fit.field_hz[mask], field[mask], atol=1e-3)
    assert np.all(fit.offset_rad == 0)


def test_fit_field_two_echoes_noise_from_background():
    te = np.array([0.005, 0.012])
    n = 32
    rng = np.random.default_rng(1)
    sigma = 0.03
    c = np.arange(n) - n / 2
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    mask = (x**2 + y**2 + z**2) < 10**2
    field = np.full(mask.shape, 12.0)
    s = mask[..., None] * np.exp(1j * 2 * np.pi * field[..., None] * te)
    r = np.sqrt(x**2 + y**2 + z**2)
    scalp = (r > 13) & (r < 15.5)  # bright tissue outside the mask must not bias sigma
    s = s + (scalp * 0.8)[..., None]
    s = s + sigma * (rng.normal(size=s.shape) + 1j * rng.normal(size=s.shape))
    fit = E.fit_field(np.angle(s), np.abs(s), te, mask, offset="voxel")
    err = (fit.field_hz - field)[mask]
    se_true = sigma / (2 * np.pi * np.sqrt(0.5 * (te[1] - te[0]) ** 2))
    assert abs(np.std(err) / se_true - 1) < 0.15
    assert abs(np.median(fit.noise_hz[mask]) / se_true - 1) < 0.15
    # the default (smoothed offset, through the origin): 2.6x less noise with these two echoes
    fit = E.fit_field(np.angle(s), np.abs(s), te, mask)
    err = (fit.field_hz - field)[mask]
    se_true = sigma / (2 * np.pi * np.sqrt(np.sum(te**2)))
    assert abs(np.std(err) / se_true - 1) < 0.15
    assert abs(np.median(fit.noise_hz[mask]) / se_true - 1) < 0.15


def _bowl_phase(te, n=32, noise=0.0, seed=0, r2s=30.0, bipolar=0.0):
    """A 3 T-like head: field 5-35 Hz, qsm-forward-like quadratic offset bowl (pi across), a sphere mask."""
    rng = np.random.default_rng(seed)
    c = np.arange(n) - (n - 1) / 2
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    mask = (x**2 + y**2 + (1.2 * z) ** 2) < (0.45 * n) ** 2
    field = 10.0 * x / n + 8.0 * np.sin(y / 3.0) * np.cos(z / 4.0) + 20.0  # Hz
    phi0 = -np.pi * (x**2 + y**2 + z**2) / (0.45 * n) ** 2 + 0.4  # rad
    te = np.asarray(te)
    mag = np.exp(-r2s * te) * np.ones(x.shape + (te.size,))
    even = (np.arange(te.size) % 2 == 1).astype(float)  # echoes 2, 4, ...
    d = bipolar * (0.5 + x / n)  # constant + read-direction ramp (rad)
    true = phi0[..., None] + 2 * np.pi * field[..., None] * te + (even - 0.5) * d[..., None]
    ph = true + rng.normal(0, 1, true.shape) * noise / mag
    return ph, mag, field, phi0, mask


def test_fit_field_through_origin_known_answer():
    """Smooth (polynomial) offset: fitted, removed, the field fitted through the origin -- exact."""
    te = np.array([0.004, 0.010, 0.016, 0.022, 0.028])
    ph, mag, field, phi0, mask = _bowl_phase(te)
    fit = E.fit_field(ph, mag, te, mask)
    assert np.abs(fit.field_hz - field)[mask].max() < 1e-3
    assert np.abs(fit.offset_rad - phi0)[mask].max() < 1e-4


def test_fit_field_through_origin_halves_the_noise():
    """The offset costs no per-voxel degree of freedom: the field noise falls to the through-origin
    standard error sigma / (2 pi sqrt(sum w TE^2)), 2.1x below the straight line's for these echoes."""
    te = np.array([0.004, 0.010, 0.016, 0.022, 0.028])
    sigma = 0.02
    ph, mag, field, phi0, mask = _bowl_phase(te, noise=sigma, r2s=0.0)
    line = E.fit_field(ph, mag, te, mask, offset="voxel")
    origin = E.fit_field(ph, mag, te, mask)
    e_line = np.std((line.field_hz - field)[mask])
    e_orig = np.std((origin.field_hz - field)[mask])
    se_line = sigma / (2 * np.pi * np.sqrt(np.sum((te - te.mean()) ** 2)))
    se_orig = sigma / (2 * np.pi * np.sqrt(np.sum(te**2)))
    assert abs(e_line / se_line - 1) < 0.05
    assert abs(e_orig / se_orig - 1) < 0.1
    assert abs(np.median(origin.noise_hz[mask]) / se_orig - 1) < 0.1
    assert e_line / e_orig > 1.9


def test_fit_field_bipolar_even_odd_offset():
    """Bipolar readouts (even echoes shifted by delta(x) against odd ones) do not break the fit."""
    te = np.array([0.004, 0.008, 0.012, 0.016])
    ph, mag, field, phi0, mask = _bowl_phase(te, bipolar=0.8)
    fit = E.fit_field(ph, mag, te, mask)
    assert np.abs(fit.field_hz - field)[mask].max() < 1e-3
    # without the bipolar term the even/odd offset biases the field (tens of Hz here)
    mono = E.fit_field(ph, mag, te, mask, bipolar=False)
    assert np.abs(mono.field_hz - field)[mask].max() > 1.0


def test_fit_field_errors():
    with pytest.raises(ValueError, match="echo times"):
        E.fit_field(np.zeros((4, 4, 4, 3)), None, [0.01, 0.02])
    with pytest.raises(ValueError, match="seconds"):
        E.fit_field(np.zeros((4, 4, 4, 2)), None, [5.0, -10.0])


# ----------------------------------------------------------------------------- simulated head
def test_field_from_simulated_head_3mm():
    """unwrap_echoes + fit_field recover the simulated total field (Hz) up to a global constant."""
    from qsmprep.qsm.unwrap import unwrap_echoes
    from tests.test_masking import simulated_head_3mm

    s = simulated_head_3mm()
    mask = s["brain_mask"]
    te = np.asarray(s["te_s"])
    uw = unwrap_echoes(s["phase"], s["mag"], te, mask, "romeo", s["voxel_size"])
    fit = E.fit_field(uw, s["mag"], te, mask)
    err = (fit.field_hz - s["field_hz"])[mask]
    err = err - np.median(err)
    # the global constant is a multiple of 1/TE_1 (a 2*pi*k of the template echo)
    assert abs(np.median((fit.field_hz - s["field_hz"])[mask]) * te[0] % 1.0 - 0.5) > 0.49
    assert np.percentile(np.abs(err), 99) < 5 * np.median(fit.noise_hz[mask]) + 0.5
    assert np.median(np.abs(err)) < 2 * np.median(fit.noise_hz[mask])
    # reported noise agrees with the actual error (within a factor 1.5)
    ratio = np.std(err[np.abs(err) < 10]) / np.median(fit.noise_hz[mask])
    assert 0.67 < ratio < 1.5
