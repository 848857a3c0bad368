"""Known-answer tests for V-SHARP background-field removal (small volumes, <= 64^3)."""

import numpy as np
import pytest

from qsmprep.qsm.background import DEFAULT_METHOD, default_radii_mm, ismv, remove_background, sphere_kernel, vsharp
from qsmprep.qsm.dipole import sphere_field_analytic

N = 64


def _ball(shape, voxel_size, center_mm, radius_mm):
    g = np.meshgrid(*[np.arange(n) * d - c for n, d, c in zip(shape, voxel_size, center_mm)], indexing="ij")
    r = np.sqrt(sum(x**2 for x in g))
    return r, r <= radius_mm


def test_default_radii():
    assert default_radii_mm((1, 1, 1)) == [12.0, 11.0, 10.0, 9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0]
    assert default_radii_mm((0.8, 0.8, 2.0)) == [12.0, 10.0, 8.0, 6.0, 4.0, 2.0]
    assert default_radii_mm((1, 1, 1), max_radius_mm=5)[-1] == 1.0


def test_sphere_kernel_is_normalised_ball():
    k = sphere_kernel((16, 16, 16), (1, 1, 1), 1.0)
    assert abs(k.sum() - 1) < 1e-6
    assert np.count_nonzero(k) == 7  # centre + 6 face neighbours
    k2 = sphere_kernel((16, 16, 16), (1, 1, 2), 2.0)
    # along the 2 mm axis only +-1 voxel fits
    assert k2[0, 0, 1] > 0 and k2[0, 0, 2] == 0 and k2[2, 0, 0] > 0


@pytest.mark.parametrize("method", ["vsharp", "ismv"])
def test_outside_source_removed_inside_source_kept(method):
    vs = (1.0, 1.0, 1.0)
    shape = (N, N, N)
    _, mask = _ball(shape, vs, (32, 32, 32), 22)
    # strong external source (air-like, 1 ppm sphere outside the mask)
    ext = sphere_field_analytic(shape, vs, (32, 32, 60), 3.0, 1.0)
    # weak internal source (iron-like)
    inn = sphere_field_analytic(shape, vs, (30, 34, 30), 3.0, 0.2)
    # plus a harmonic linear gradient (background)
    lin = (0.01 * (np.arange(N) - 32) / 32)[:, None, None] * np.ones(shape, np.float32)
    local, em = remove_background(ext + inn + lin, mask, vs, method=method)
    assert local.dtype == np.float32 and em.dtype == bool
    # eroded by 1 mm (V-SHARP's smallest radius) or 2 mm (iSMV): (21/22)^3 = 0.87, (20/22)^3 = 0.75
    assert em.sum() > (0.83 if method == "vsharp" else 0.72) * mask.sum() and not np.any(em & ~mask)
    assert np.all(local[~em] == 0)
    # the background is 15x larger than the residual error
    assert np.abs(ext[em]).max() > 0.03
    err = local[em] - inn[em]
    rms_inn = np.sqrt(np.mean(inn[em] ** 2))
    assert np.sqrt(np.mean(err**2)) < 0.15 * rms_inn
    assert np.corrcoef(local[em], inn[em])[0, 1] > 0.99


@pytest.mark.parametrize("method", ["vsharp", "ismv"])
def test_external_source_only_gives_near_zero_local_field(method):
    vs = (1.0, 1.0, 1.0)
    shape = (N, N, N)
    _, mask = _ball(shape, vs, (32, 32, 32), 20)
    ext = sphere_field_analytic(shape, vs, (32, 58, 32), 4.0, 9.4)  # air-tissue-like contrast
    local, em = remove_background(ext, mask, vs, method=method)
    assert np.abs(local[em]).max() < 0.01 * np.abs(ext[em]).max()


def test_eroded_mask_is_spherical_not_cross_shaped():
    # the eroded mask for radius r holds voxels whose whole r-sphere is inside the mask,
    # i.e. a ball of radius ~R - r, also along the diagonals
    vs = (1.0, 1.0, 1.0)
    shape = (48, 48, 48)
    r, mask = _ball(shape, vs, (24, 24, 24), 18)
    _, em = vsharp(np.zeros(shape, np.float32), mask, vs, radii_mm=[6.0, 4.0])
    assert np.all(r[em] <= 18 - 4 + 0.5)
    assert np.all(em[r <= 18 - 4 - 1.0])


def test_ismv_is_the_default_and_erodes_by_two_voxels():
    # iSMV's radius defaults to 2 x the largest voxel edge: the eroded mask is the ball of radius R - 2
    assert DEFAULT_METHOD == "ismv"
    vs = (1.0, 1.0, 1.0)
    shape = (48, 48, 48)
    r, mask = _ball(shape, vs, (24, 24, 24), 18)
    inn = sphere_field_analytic(shape, vs, (22, 25, 24), 3.0, 0.2)
    local, em = remove_background(inn, mask, vs)
    local2, em2 = ismv(inn, mask, vs, radius_mm=2.0)
    assert np.array_equal(em, em2) and np.allclose(local, local2)
    assert np.all(r[em] <= 16 + 0.5) and np.all(em[r <= 15.0])
    # a harmonic background (linear + quadratic harmonic) is removed to round-off
    g = np.meshgrid(*[np.arange(n) - 24.0 for n in shape], indexing="ij")
    harm = (0.3 * g[0] + 0.01 * (g[1] ** 2 - g[2] ** 2)).astype(np.float32)
    loc_h, em_h = ismv(harm, mask, vs)
    assert np.abs(loc_h[em_h]).max() < 1e-3 * np.abs(harm[em_h]).max()
    with pytest.raises(ValueError, match="method"):
        remove_background(inn, mask, vs, method="sharp")


def test_anisotropic_voxels_and_errors():
    vs = (1.0, 1.0, 2.0)
    shape = (N, N, 32)
    _, mask = _ball(shape, vs, (32, 32, 32), 24)
    inn = sphere_field_analytic(shape, vs, (30, 30, 30), 4.0, 0.2)
    ext = sphere_field_analytic(shape, vs, (32, 32, 62), 4.0, 1.0)
    local, em = remove_background(inn + ext, mask, vs)
    assert np.corrcoef(local[em], inn[em])[0, 1] > 0.98
    with pytest.raises(ValueError, match="empty"):
        remove_background(inn, np.zeros(shape, bool), vs)
    with pytest.raises(ValueError, match="same shape"):
        remove_background(inn[:-1], mask, vs)
    with pytest.raises(ValueError, match="eroded the whole mask"):
        small = np.zeros(shape, bool)
        small[30:33, 30:33, 15:17] = True
        vsharp(inn, small, vs, radii_mm=[4.0])
    with pytest.raises(ValueError, match="eroded the whole mask"):
        ismv(inn, small, vs, radius_mm=4.0)
