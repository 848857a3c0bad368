"""Known-answer tests for qsmprep.qsm.unwrap and its algorithm modules (Laplacian and quality-guided unwrapping)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from qsmprep.qsm import unwrap as U
from qsmprep.qsm.unwrap_common import wrap
from qsmprep.qsm.unwrap_romeo import reunwrap

N = 48


def _grid(n=N):
    c = np.arange(n) - n / 2 + 0.5
    return np.meshgrid(c, c, c, indexing="ij")


def _ellipsoid(n=N, radii=(21, 18, 19)):
    x, y, z = _grid(n)
    return (x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2 < 1


def _true_phase(n=N):
    """Smooth phase (rad) with many wraps: a 30 rad Gaussian bump, ramps and a dipole-like lobe."""
    x, y, z = _grid(n)
    r2 = x**2 + y**2 + z**2
    return (
        30.0 * np.exp(-r2 / (2 * 9.0**2))
        + 0.35 * x
        - 0.2 * z
        + 8.0 * np.exp(-((x - 8) ** 2 + (y + 6) ** 2 + (z - 4) ** 2) / (2 * 4.0**2))
        - 3.0
    )


def _frac_up_to_global_2pik(uw, true, mask):
    d = (uw - true)[mask]
    k = np.round((d - np.median(d)) / (2 * np.pi))
    resid = d - 2 * np.pi * np.round(np.median(d) / (2 * np.pi))
    return float(np.mean(k == 0)), float(np.median(resid))


def test_wrapped_laplacian_equals_true_laplacian():
    true = _true_phase()
    mask = _ellipsoid()
    lap_w = U.discrete_laplacian(wrap(true), (1, 1, 1), mask, wrapped=True)
    lap_t = U.discrete_laplacian(true, (1, 1, 1), mask)
    assert np.allclose(lap_w, lap_t, atol=1e-9)
    # analytic check: Laplacian of x^2 + 2 y^2 is 2 + 4 = 6 (anisotropic voxels, units mm)
    x, y, z = _grid(16)
    vs = (1.0, 2.0, 0.5)
    f = (x * vs[0]) ** 2 + 2 * (y * vs[1]) ** 2
    inner = np.zeros(f.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    lap = U.discrete_laplacian(f, vs)
    assert np.allclose(lap[inner], 6.0)


@pytest.mark.parametrize("vs", [(1.0, 1.0, 1.0), (1.0, 1.0, 2.0)])
def test_laplacian_unwrap_exact_laplacian(vs):
    """The result's Laplacian equals the true phase's at every interior mask voxel."""
    true = _true_phase()
    mask = _ellipsoid()
    uw = U.unwrap_laplacian(wrap(true).astype(np.float32), vs, mask)
    assert uw.dtype == np.float32 and np.all(uw[~mask] == 0)
    interior = ndimage.binary_erosion(mask)
    l_uw = U.discrete_laplacian(uw, vs, mask)
    l_tr = U.discrete_laplacian(true, vs, mask)
    assert np.max(np.abs(l_uw - l_tr)[interior]) < 1e-4
    # so result - truth is harmonic there (e.g. the linear ramps may be lost: that is expected)
    assert np.max(np.abs(U.discrete_laplacian(uw - true, vs, mask))[interior]) < 1e-4


def test_laplacian_unwrap_whole_volume_no_mask():
    x, y, z = _grid(32)
    true = 0.6 * x + 0.3 * y + 10 * np.exp(-(x**2 + y**2 + z**2) / 50.0)
    uw = U.unwrap_laplacian(wrap(true), (1, 1, 1))
    inner = np.zeros(true.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    assert np.max(np.abs(U.discrete_laplacian(uw) - U.discrete_laplacian(true))[inner]) < 1e-4


def test_poisson_dirichlet_solver_known_answer():
    """sin modes are eigenfunctions: solve L x = lambda sin(..) exactly."""
    n = (12, 10, 9)
    vs = (1.0, 0.5, 2.0)
    i = [np.arange(1, k + 1) for k in n]
    g = np.meshgrid(*i, indexing="ij")
    modes = (2, 3, 1)
    x = np.ones(n)
    lam = 0.0
    for ax in range(3):
        x = x * np.sin(np.pi * modes[ax] * g[ax] / (n[ax] + 1))
        lam += 2 * (np.cos(np.pi * modes[ax] / (n[ax] + 1)) - 1) / vs[ax] ** 2
    sol = U.solve_poisson_dirichlet(lam * x, vs)
    assert np.allclose(sol, x, atol=1e-10)


def test_quality_unwrap_noise_free_exact():
    true = _true_phase()
    mask = _ellipsoid()
    uw = U.unwrap_quality(wrap(true).astype(np.float32), None, mask)
    frac, _ = _frac_up_to_global_2pik(uw, true, mask)
    assert frac == 1.0
    # congruent with the input and zero outside the mask
    k = (uw - wrap(true))[mask] / (2 * np.pi)
    assert np.allclose(k, np.round(k), atol=1e-4)
    assert np.all(uw[~mask] == 0)


def test_quality_unwrap_noisy_with_magnitude_and_islands():
    rng = np.random.default_rng(0)
    true = _true_phase()
    mask = _ellipsoid()
    # a separate island: its own component, aligned to the main one by the median rule
    x, y, z = _grid()
    island = ((x - 20) ** 2 + (y - 20) ** 2 + (z - 20) ** 2) < 9
    mask2 = mask | island
    mag = np.where(mask2, 1.0, 0.05) * (1 + 0.3 * x / N)
    # a dark low-SNR blob (vein-like) inside
    dark = ((x + 6) ** 2 + (y - 5) ** 2 + z**2) < 16
    mag[dark] = 0.15
    noisy = wrap(true + rng.normal(0, 0.25, true.shape) / (4 * mag))
    uw = U.unwrap_quality(noisy.astype(np.float32), mag.astype(np.float32), mask2)
    frac, _ = _frac_up_to_global_2pik(uw, true, mask2 & ~dark)
    assert frac >= 0.995


def test_quality_unwrap_global_correction():
    """Median in [-pi, pi) after global correction."""
    true = _true_phase() + 40.0
    mask = _ellipsoid()
    uw = U.unwrap_quality(wrap(true).astype(np.float32), None, mask)
    assert -np.pi <= np.median(uw[mask]) < np.pi


def _multi_echo(te, offset=True, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    x, y, z = _grid()
    mask = _ellipsoid()
    field_hz = 70 * np.exp(-(x**2 + y**2 + z**2) / (2 * 8.0**2)) + 3.0 * x + 1.5 * y + 15.0
    phi0 = (-1.5 * np.pi * ((x / 24) ** 2 + (y / 24) ** 2 + (z / 24) ** 2) + 0.7) if offset else 0 * x
    te = np.asarray(te)
    true = phi0[..., None] + 2 * np.pi * field_hz[..., None] * te
    mag = (np.where(mask, 1.0, 0.02)[..., None] * np.exp(-30.0 * te)).astype(np.float32)
    wr = wrap(true + rng.normal(0, noise, true.shape) / np.maximum(mag, 0.02)).astype(np.float32)
    return wr, mag, true, mask, field_hz


@pytest.mark.parametrize(
    "te",
    [[0.004, 0.008, 0.012, 0.016, 0.020], [0.005, 0.012, 0.019, 0.026], [0.006, 0.015]],
)
def test_unwrap_echoes_romeo_with_phase_offset(te):
    wr, mag, true, mask, _ = _multi_echo(te)
    uw = U.unwrap_echoes(wr, mag, te, mask, "romeo")
    assert uw.shape == wr.shape and uw.dtype == np.float32
    for e in range(len(te)):
        frac, _ = _frac_up_to_global_2pik(uw[..., e], true[..., e], mask)
        assert frac >= 0.995, (e, frac)
        k = (uw[..., e] - wr[..., e])[mask] / (2 * np.pi)
        assert np.allclose(k, np.round(k), atol=1e-3)  # congruent
    # echoes mutually consistent: phase difference between echoes is the true one (no 2pi jumps)
    d = (uw[..., -1] - uw[..., 0] - (true[..., -1] - true[..., 0]))[mask]
    assert np.mean(np.abs(d - np.median(d)) < np.pi) > 0.995


def test_unwrap_echoes_global_k_from_te_ratio():
    """Non-integer TE ratio: the template's 2*pi*k is fixed by echo consistency, not the median."""
    te = [0.004, 0.010, 0.016]
    # a large uniform field puts the median of echo 1 far outside [-pi, pi)
    wr, mag, true, mask, field = _multi_echo(te, offset=False, noise=0.0)
    big = 2 * np.pi * 200.0 * np.asarray(te)  # +200 Hz everywhere: 5.03 rad at 4 ms
    true2 = true + big
    wr2 = wrap(true2).astype(np.float32)
    uw = U.unwrap_echoes(wr2, mag, te, mask, "romeo", offset_correction=False)
    d = (uw[..., 0] - true2[..., 0])[mask]
    # per-echo consistent global offsets: uw_e - true_e = 2*pi*k*TE_e/TE_1 with an integer
    # k such that all are multiples of 2*pi -> here k must be a multiple of 2
    k = np.median(d) / (2 * np.pi)
    assert abs(k - round(k)) < 1e-3
    for e in range(3):
        de = (uw[..., e] - true2[..., e])[mask]
        assert np.allclose(de, de[0], atol=1e-3)
        assert abs(de[0] / (2 * np.pi) - round(de[0] / (2 * np.pi))) < 1e-3


def test_unwrap_echoes_laplacian():
    te = [0.004, 0.008, 0.012]
    wr, mag, true, mask, _ = _multi_echo(te, noise=0.0)
    uw = U.unwrap_echoes(wr, mag, te, mask, "laplacian")
    interior = ndimage.binary_erosion(mask)
    for e in range(3):
        l1 = U.discrete_laplacian(uw[..., e], (1, 1, 1), mask)
        l0 = U.discrete_laplacian(true[..., e], (1, 1, 1), mask)
        assert np.max(np.abs(l1 - l0)[interior]) < 1e-3
        assert abs(uw[..., e][mask].mean()) < 1e-4  # per-echo constant removed


def test_unwrap_echoes_single_echo_and_errors():
    te = [0.005]
    wr, mag, true, mask, _ = _multi_echo(te, offset=False, noise=0.0)
    uw = U.unwrap_echoes(wr[..., 0], mag[..., 0], te, mask)
    assert uw.shape == mask.shape + (1,)
    frac, _ = _frac_up_to_global_2pik(uw[..., 0], true[..., 0], mask)
    assert frac == 1.0
    with pytest.raises(ValueError, match="echo times"):
        U.unwrap_echoes(wr, mag, [0.004, 0.008], mask)
    with pytest.raises(ValueError, match="method"):
        U.unwrap_echoes(wr, mag, te, mask, method="magic")


def test_edge_qualities_range_and_mask():
    true = _true_phase()
    mask = _ellipsoid()
    q = U.edge_qualities(wrap(true), np.ones(true.shape), mask, phase2=wrap(2 * true), te_ratio=0.5)
    for ax, qa in enumerate(q):
        assert qa.shape[ax] == N - 1
        assert qa.min() >= 0 and qa.max() <= 1
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        both = mask[tuple(lo)] & mask[tuple(hi)]
        assert np.all(qa[~both] == 0) and np.all(qa[both] > 0)
    # a perfectly coherent second echo (phase2 = 2 * phase, ratio 1/2) gives a high coherence term
    assert np.median(q[0][q[0] > 0]) > 0.5


# ----------------------------------------------------------------------------- simulated head
def test_unwrap_echoes_simulated_head_3mm():
    """Quality-guided unwrapping matches the true phase (offset + 2*pi*f*TE) up to one
    global 2*pi*k in >= 99.5 % of brain voxels, for every echo."""
    from tests.test_masking import simulated_head_3mm

    s = simulated_head_3mm()
    te = np.asarray(s["te_s"])
    mask = s["brain_mask"]
    true = s["phase_offset_rad"][..., None] + 2 * np.pi * s["field_hz"][..., None] * te
    uw = U.unwrap_echoes(s["phase"], s["mag"], te, mask, "romeo", s["voxel_size"])
    for e in range(te.size):
        frac, _ = _frac_up_to_global_2pik(uw[..., e], true[..., e], mask)
        assert frac >= 0.995, (e, frac)
    # single-echo spatial unwrapping of the first echo on its own
    uw1 = U.unwrap_quality(s["phase"][..., 0], s["mag"][..., 0], mask)
    frac, _ = _frac_up_to_global_2pik(uw1, true[..., 0], mask)
    assert frac >= 0.995


@pytest.mark.parametrize("te", [[0.004, 0.008, 0.012], [0.004, 0.010, 0.016]])
def test_estimate_phase_offset_smooth_and_unwrapped(te):
    """phi0 with several wraps is recovered up to one global 2*pi*k, also at the mask edge
    (integer and non-integer TE_1/dTE; the smooth offset is unwrapped on a coarse grid)."""
    wr, mag, true, mask, _ = _multi_echo(te, noise=0.02)
    x, y, z = _grid()
    phi0 = -1.5 * np.pi * ((x / 24) ** 2 + (y / 24) ** 2 + (z / 24) ** 2) + 0.7
    off = U.estimate_phase_offset(wr, mag, te, mask, (1.0, 1.0, 1.0), sigma_mm=2.0)
    d = (off - phi0)[mask]
    d = d - 2 * np.pi * np.round(np.median(d) / (2 * np.pi))
    # smoothing bias ~ sigma^2/2 * Laplacian(phi0) = 2 * 0.049 rad inside; at the edge the
    # one-sided average shifts along this steep bowl's gradient (0.34 rad/mm) by ~0.5 rad
    assert np.all(np.abs(d) < 0.6)
    assert np.median(np.abs(d)) < 0.1
    assert np.all(off[~mask] == 0)


def test_reunwrap_fixes_wrong_temporal_guesses():
    """Voxels marked uncertain (here: guessed 2*pi off) are re-unwrapped from the good ones,
    and good voxels keep their values."""
    true = _true_phase()
    mask = _ellipsoid()
    wr = wrap(true).astype(np.float32)
    x, y, z = _grid()
    blob = ((x - 5) ** 2 + (y + 3) ** 2 + (z - 2) ** 2) < 36
    guess = true.copy()
    guess[blob] += 2 * np.pi * np.where(x[blob] > 5, 1, -2)  # wrong turns inside the blob
    good = mask & ~blob
    out = reunwrap(wr, guess, good, None, mask)
    assert np.allclose(out[mask], true[mask], atol=1e-4)
