"""Known-answer tests for the classical dipole inversions (TKD, CG-L2, NDI) on <= 64^3 volumes."""

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from qsmprep.qsm.dipole import forward_field
from qsmprep.qsm.inversion import METHODS, cgl2, ndi, ndi_cost, ndi_gradient, tkd


def _phantom(shape=(64, 64, 64), voxel_size=(1.0, 1.0, 1.0), b0_dir=(0.0, 0.0, 1.0), seed=0):
    """Smooth random chi (std 0.05 ppm) inside a ball of radius 26 mm and its noiseless field."""
    g = np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shape, voxel_size)], indexing="ij")
    mask = sum(x**2 for x in g) <= 26.0**2
    rng = np.random.default_rng(seed)
    sig = [3.0 / d for d in voxel_size]
    chi = gaussian_filter(rng.standard_normal(shape), sig).astype(np.float32)
    chi = (chi / chi[mask].std() * 0.05 * mask).astype(np.float32)
    field = forward_field(chi, voxel_size, b0_dir) * mask
    return chi, field.astype(np.float32), mask


def _scores(x, chi, mask):
    a = x[mask] - x[mask].mean()
    b = chi[mask] - chi[mask].mean()
    return float(np.corrcoef(a, b)[0, 1]), float(np.linalg.norm(a - b) / np.linalg.norm(b))


# (method, min correlation, max demeaned NRMSE) measured with margin at the defaults
EXPECTED = {"tkd": (0.80, 0.60), "cgl2": (0.92, 0.37), "ndi": (0.92, 0.36)}

GEOMETRIES = [
    ((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)),
    ((64, 64, 40), (1.0, 1.0, 1.5), tuple(np.array([0.3, -0.2, 0.93]) / np.linalg.norm([0.3, -0.2, 0.93]))),
]


@pytest.mark.parametrize("name", ["tkd", "cgl2", "ndi"])
@pytest.mark.parametrize("shape,vs,b0", GEOMETRIES)
def test_recovers_smooth_chi(name, shape, vs, b0):
    chi, field, mask = _phantom(shape, vs, b0)
    out = METHODS[name](field, mask, vs, b0)
    assert out.dtype == np.float32 and out.shape == shape
    assert np.all(out[~mask] == 0)
    corr, nrmse = _scores(out, chi, mask)
    cmin, emax = EXPECTED[name]
    assert corr > cmin, (name, corr)
    assert nrmse < emax, (name, nrmse)


def test_wrong_b0_direction_is_worse():
    # guards against a kernel that ignores b0_dir: the oblique field inverted as if B0 || z
    b0 = np.array([0.5, 0.0, 0.866])
    chi, field, mask = _phantom((48, 48, 48), (1, 1, 1), b0)
    right = _scores(cgl2(field, mask, (1, 1, 1), b0), chi, mask)[0]
    wrong = _scores(cgl2(field, mask, (1, 1, 1), (0, 0, 1)), chi, mask)[0]
    assert right > wrong + 0.1


def test_tkd_scales_linearly_and_zero_gives_zero():
    chi, field, mask = _phantom((32, 32, 32))
    a = tkd(field, mask)
    b = tkd(2 * field, mask)
    np.testing.assert_allclose(b, 2 * a, rtol=1e-4, atol=1e-6)
    assert np.all(tkd(np.zeros_like(field), mask) == 0)
    assert np.all(cgl2(np.zeros_like(field), mask) == 0)
    with pytest.raises(ValueError, match="threshold"):
        tkd(field, mask, threshold=0.0)


def test_ndi_gradient_matches_finite_differences():
    rng = np.random.default_rng(3)
    shape, vs, b0 = (20, 22, 18), (1.0, 1.2, 1.5), (0.2, 0.1, 0.97)
    s = 16.0
    chi = (gaussian_filter(rng.standard_normal(shape), 1.5) * 0.2).astype(np.float64)
    phase = rng.uniform(-np.pi, np.pi, shape)  # wrapped, inconsistent phase: nonlinear regime
    w = rng.uniform(0.2, 1.0, shape)
    grad = ndi_gradient(chi, phase, w, vs, b0, s).astype(np.float64)
    direction = gaussian_filter(rng.standard_normal(shape), 1.0)
    direction /= np.linalg.norm(direction)
    h = 1e-3
    fd = (ndi_cost(chi + h * direction, phase, w, vs, b0, s) - ndi_cost(chi - h * direction, phase, w, vs, b0, s)) / (2 * h)
    an = float(np.sum(grad * direction))
    assert abs(fd - an) < 2e-3 * abs(an) + 1e-3


def test_ndi_first_step_is_scaled_masked_gradient():
    # from chi = 0 one NDI step is -alpha * M * grad(0), alpha = step / s^2
    chi, field, mask = _phantom((32, 32, 32))
    s, step = 20.0, 2.0
    one = ndi(field, mask, rad_per_ppm=s, n_iter=1, step=step, pad_factor=3.0)
    grad = ndi_gradient(np.zeros_like(field), s * field, mask.astype(np.float32), (1, 1, 1), (0, 0, 1), s, pad_factor=3.0)
    expect = -step / s**2 * grad * mask
    assert np.corrcoef(one[mask], expect[mask])[0, 1] > 0.999
    np.testing.assert_allclose(one[mask].std(), expect[mask].std(), rtol=0.02)


def test_ndi_step_bound_and_weight_errors():
    chi, field, mask = _phantom((24, 24, 24))
    with pytest.raises(ValueError, match="4.5"):
        ndi(field, mask, step=4.6)
    with pytest.raises(ValueError, match="weight"):
        ndi(field, mask, weight=np.zeros_like(field))
    with pytest.raises(ValueError, match="empty"):
        ndi(field, np.zeros_like(mask))


def test_ndi_handles_wrapped_phase_and_weights():
    # in the small-residual regime the iterations do not depend on the phase scale s: with
    # |s f| < pi everywhere a small and a large s give nearly the same chi; a non-uniform
    # magnitude-like weight still recovers chi
    chi, field, mask = _phantom((40, 40, 40))
    s_small = 5.0
    s_big = 0.9 * np.pi / np.abs(field[mask]).max()
    a = ndi(field, mask, rad_per_ppm=s_small, n_iter=50)
    b = ndi(field, mask, rad_per_ppm=s_big, n_iter=50)
    assert np.corrcoef(a[mask], b[mask])[0, 1] > 0.98
    w = mask * (0.5 + 0.5 * np.random.default_rng(0).uniform(size=mask.shape))
    c = ndi(field, mask, weight=w, n_iter=50)
    assert _scores(c, chi, mask)[0] > 0.85


def test_methods_dict():
    assert set(METHODS) == {"tkd", "cgl2", "ndi"}


def test_app_dispatch_runs_ndi_with_its_tuned_phase_scale():
    """methods.invert (the app's and qsmprep invert's dispatch) gives NDI its tuned scale (4 rad/ppm), not
    rad_per_ppm(B0, TE)."""
    from qsmprep.methods import invert
    from qsmprep.qsm import inversion
    from qsmprep.qsm.dipole import forward_field

    shape = (20, 20, 20)
    chi = np.zeros(shape, np.float32)
    chi[8:12, 8:12, 8:12] = 1.5  # a haemorrhage-like source: the two scales differ
    mask = np.zeros(shape, bool)
    mask[3:17, 3:17, 3:17] = True
    f = forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)) * mask
    got, meta = invert("ndi", f, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), weight=None, b0_t=3.0, te_s=0.02)
    ref = inversion.ndi(f, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    physical = inversion.ndi(f, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0), rad_per_ppm=16.05)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert np.abs(physical - ref).max() > 1e-3  # the scale matters, so the check above can fail
    assert meta["PhaseScaleRadPerPpm"] == inversion.NDI_DEFAULT_RAD_PER_PPM == 4.0


def test_field_noise_recovers_white_noise_on_a_smooth_field():
    """field_noise: sigma of added white noise within 10 %; a smooth field alone reads (almost) no noise."""
    from qsmprep.qsm.inversion import field_noise

    shape = (48, 48, 48)
    g = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    mask = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 0.8
    smooth = (0.01 * np.sin(2 * g[0]) * np.cos(3 * g[1]) + 0.005 * g[2]).astype(np.float32)
    clean = field_noise(smooth * mask, mask)
    assert clean["sigma_ppm"] < 1e-4 and clean["spread_ppm"] > 1e-3
    for sigma in (5e-4, 2e-3):
        noisy = smooth + np.random.default_rng(1).normal(0, sigma, shape).astype(np.float32)
        est = field_noise(noisy * mask, mask)
        assert est["sigma_ppm"] == pytest.approx(sigma, rel=0.1)
        assert est["relative"] == pytest.approx(est["sigma_ppm"] / est["spread_ppm"])
    with pytest.raises(ValueError, match="same shape"):
        field_noise(smooth, mask[:10])


def test_field_noise_is_the_face_neighbour_residual_estimator():
    """The bounding-box/slicing implementation equals the estimator's definition (binary erosion and a
    6-neighbour mean with scipy.ndimage), also for a ragged mask touching the volume edge."""
    from scipy import ndimage

    from qsmprep.qsm.inversion import field_noise

    rng = np.random.default_rng(4)
    f = rng.normal(0, 0.02, (20, 22, 24)).astype(np.float32)
    mask = rng.random(f.shape) > 0.15
    mask[:, :, :3] = False  # an empty slab: the box is smaller than the volume on one side
    k = np.zeros((3, 3, 3), np.float32)
    k[1, 1, 0] = k[1, 1, 2] = k[1, 0, 1] = k[1, 2, 1] = k[0, 1, 1] = k[2, 1, 1] = 1.0 / 6.0
    inner = ndimage.binary_erosion(mask)
    fm = np.where(mask, f, 0.0).astype(np.float32)
    r = (fm - ndimage.convolve(fm, k, mode="constant"))[inner]
    sigma = 1.4826 * np.median(np.abs(r - np.median(r))) / np.sqrt(7.0 / 6.0)
    v = fm[inner]
    spread = 1.4826 * np.median(np.abs(v - np.median(v)))
    got = field_noise(f, mask)
    assert got["sigma_ppm"] == pytest.approx(sigma, rel=1e-5)
    assert got["spread_ppm"] == pytest.approx(spread, rel=1e-5)
    with pytest.raises(ValueError, match="interior"):
        field_noise(f, np.zeros(f.shape, bool))
