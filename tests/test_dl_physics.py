"""Known-answer tests for the torch dipole physics (qsmprep.dl.physics)."""

import numpy as np
import pytest

import torch

from qsmprep.dl import physics
from qsmprep.qsm import dipole


@pytest.mark.parametrize("vs,b0", [((1, 1, 1), (0, 0, 1)), ((0.8, 1.1, 2.0), (0.3, -0.2, 0.93))])
@pytest.mark.parametrize("rfft", [True, False])
def test_kernel_matches_numpy(vs, b0, rfft):
    shp = (20, 18, 22)
    kt = physics.dipole_kernel_t(shp, vs, b0, rfft=rfft).numpy()
    kn = dipole.dipole_kernel(shp, vs, b0, rfft=rfft)
    assert kt.shape == kn.shape
    np.testing.assert_allclose(kt, kn, atol=1e-6)
    assert kt[0, 0, 0] == 0.0


def test_forward_field_matches_numpy_and_analytic_sphere():
    shp, vs, b0 = (48, 48, 48), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)
    c = np.array(shp) / 2.0
    g = np.meshgrid(*[np.arange(n) - cc for n, cc in zip(shp, c)], indexing="ij")
    chi = ((g[0] ** 2 + g[1] ** 2 + g[2] ** 2) <= 5.0 ** 2).astype(np.float32) * 0.2
    padded = dipole.padded_shape(shp, 1.5)
    kt = physics.dipole_kernel_t(padded, vs, b0)
    ft = physics.forward_field_t(torch.from_numpy(chi), kt, padded).numpy()
    fn = dipole.forward_field(chi, vs, b0, pad_factor=1.5)
    np.testing.assert_allclose(ft, fn, atol=2e-6)
    # far from the sphere the field is the analytic dipole field (Lorentz-corrected)
    ana = dipole.sphere_field_analytic(shp, vs, c, 5.0, 0.2, b0)
    r = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
    shell = (r > 9) & (r < 14)
    # discrete sphere volume differs slightly from 4/3 pi r^3: compare after scaling by volume
    ana *= chi.sum() / 0.2 / (4 / 3 * np.pi * 125)
    assert np.corrcoef(ft[shell], ana[shell])[0, 1] > 0.99
    np.testing.assert_allclose(ft[shell], ana[shell], atol=0.15 * np.abs(ana[shell]).max())


def _setup(seed=0, shp=(16, 14, 12)):
    gen = torch.Generator().manual_seed(seed)
    chi = 0.1 * torch.randn(shp, generator=gen, dtype=torch.float64)
    phi = torch.randn(shp, generator=gen, dtype=torch.float64)
    w2 = torch.rand(shp, generator=gen, dtype=torch.float64)
    padded = dipole.padded_shape(shp, 1.5)
    kern = physics.dipole_kernel_t(padded, (1.0, 0.9, 1.3), (0.2, 0.1, 0.97)).double()
    return chi, phi, w2, kern, padded


def test_ndi_gradient_matches_autograd():
    chi, phi, w2, kern, padded = _setup()
    s = 7.3
    x = chi.clone().requires_grad_(True)
    physics.ndi_cost(x, phi, w2, kern, padded, s).backward()
    # convolve() computes in float32 internally; compare at float32 precision
    g = physics.ndi_gradient(chi, phi, w2, kern, padded, s)
    np.testing.assert_allclose(g.numpy(), x.grad.numpy(), rtol=1e-4, atol=1e-4 * float(x.grad.abs().max()))


def test_ndi_gradient_matches_finite_differences():
    chi, phi, w2, kern, padded = _setup(1)
    s = 3.0
    g = physics.ndi_gradient(chi, phi, w2, kern, padded, s).double()
    v = torch.randn(chi.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    h = 1e-3
    fp = float(physics.ndi_cost(chi + h * v, phi, w2, kern, padded, s))
    fm = float(physics.ndi_cost(chi - h * v, phi, w2, kern, padded, s))
    num = (fp - fm) / (2 * h)
    ana = float((g * v).sum())
    assert abs(num - ana) <= 2e-3 * abs(ana) + 1e-3


def test_ndi_cost_is_half_complex_residual():
    chi, phi, w2, kern, padded = _setup(2)
    s = 5.0
    dchi = physics.convolve(chi, kern, padded).double()
    ref = 0.5 * (w2 * (torch.exp(1j * s * dchi) - torch.exp(1j * phi)).abs() ** 2).sum()
    assert float(physics.ndi_cost(chi, phi, w2, kern, padded, s)) == pytest.approx(float(ref), rel=1e-5)


def test_tkd_recovers_band_limited_chi():
    # chi whose spectrum avoids the cone |D| <= t is recovered exactly by TKD (no padding, circular)
    shp = (32, 32, 32)
    k = physics.dipole_kernel_t(shp, (1, 1, 1), (0, 0, 1), rfft=True)
    gen = torch.Generator().manual_seed(3)
    spec = torch.fft.rfftn(torch.randn(shp, generator=gen))
    spec = spec * (k.abs() > 0.25)
    chi = torch.fft.irfftn(spec, s=shp)
    f = torch.fft.irfftn(torch.fft.rfftn(chi) * k, s=shp)
    rec = physics.tkd_t(f, k, shp, threshold=0.2)
    np.testing.assert_allclose(rec.numpy(), chi.numpy(), atol=1e-4)


def test_kspace_consistency_known_answers():
    """Where |D| is above the ramp the output is the field's chi; in the cone it is the estimate's."""
    from qsmprep.dl import physics

    g = torch.Generator().manual_seed(3)
    shape = (15, 17, 13)  # odd: no Nyquist planes (where an oblique kernel is not Hermitian-consistent)
    chi = torch.randn((1, 1) + shape, generator=g)
    kern = physics.dipole_kernel_t(shape, (1.0, 1.2, 1.5), (0.2, 0.1, 0.97))[None, None]
    field = physics.convolve(chi, kern, shape)  # padded == shape: an exact circular model
    # estimate = the truth -> unchanged (the data agree with it everywhere)
    out = physics.kspace_consistency_t(chi, field, kern, shape, 0.1, 0.1)
    assert torch.allclose(out, chi, atol=1e-4)
    # estimate = 0 -> exactly the truth band-passed by the ramp a(k)
    out0 = physics.kspace_consistency_t(torch.zeros_like(chi), field, kern, shape, 0.1, 0.1)
    a = ((kern.abs() - 0.1) / 0.1).clamp(0, 1)
    ref = torch.fft.irfftn(torch.fft.rfftn(chi, s=shape, dim=(-3, -2, -1)) * a, s=shape, dim=(-3, -2, -1))
    assert torch.allclose(out0, ref, atol=1e-4)
    assert 0.3 < float(out0.norm() / chi.norm()) < 0.99  # a real band: neither nothing nor everything
    # the estimate is kept inside the cone and at k = 0
    est = torch.randn((1, 1) + shape, generator=g)
    o = physics.kspace_consistency_t(est, field, kern, shape, 0.1, 0.1)
    so, se = (torch.fft.rfftn(x, s=shape, dim=(-3, -2, -1)) for x in (o, est))
    cone = kern.abs() <= 0.1
    assert torch.allclose(so[cone.expand_as(so)], se[cone.expand_as(se)], atol=1e-3)


def _ellipsoid_case(offset=0.03, seed=5, b0=(0.0, 0.0, 1.0)):
    """A non-spherical brain (an ellipsoid, semi-axes 9/12/7 voxels, with a smaller one bulging out
    of it) with random chi inside, its true local field (forward field of chi M inside M, demeaned
    there: the benchmark's definition), the field on the whole padded grid and the dipole kernel.
    B0 along z by default: an oblique kernel is not Hermitian on an even grid's Nyquist planes, so
    only then is the round trip field -> chi exact."""
    shape, vs = (26, 32, 22), (1.0, 1.0, 1.0)
    g = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) - (n - 1) / 2 for n in shape], indexing="ij")
    mask = ((z / 9.0) ** 2 + (y / 12.0) ** 2 + (x / 7.0) ** 2 <= 1) | (((z - 6) / 5.0) ** 2 + ((y + 6) / 6.0) ** 2 + (x / 5.0) ** 2 <= 1)
    mask = mask.astype(np.float32)
    chi = (g.normal(0, 0.05, shape) * mask).astype(np.float32)
    padded = physics.fast_padded_shape(shape, 1.5)
    kern = physics.dipole_kernel_t(padded, vs, b0)[None, None]
    t = lambda a: torch.as_tensor(a)[None, None]
    full = torch.fft.irfftn(torch.fft.rfftn(t(chi), s=padded, dim=(-3, -2, -1)) * kern, s=padded, dim=(-3, -2, -1))
    inner = full[..., : shape[0], : shape[1], : shape[2]]
    mean = float((inner * t(mask)).sum() / t(mask).sum())
    field = (inner - mean) * t(mask)
    return t(chi), field, t(mask), kern, padded, full, mean, offset


def test_extrapolate_field_recovers_the_offset_and_the_outside_field():
    """Known answer: an estimate off by a uniform c inside a non-spherical mask gets c back from the
    field, the field outside the mask becomes the sources' field, and the k-space step then returns
    the truth; with the zero-filled field it does not."""
    chi, field, mask, kern, padded, full, mean, c0 = _ellipsoid_case()
    est = chi - c0 * mask
    chi_c, ext, c, b = physics.extrapolate_field_t(est, field, mask, kern, padded)
    assert c.shape == (1, 1) and float(c) == pytest.approx(c0, abs=1e-4)
    assert float(b) == pytest.approx(-mean, abs=1e-5)
    assert ext.shape[-3:] == tuple(padded)
    assert torch.allclose(chi_c, chi, atol=1e-5)
    assert float((ext - full).abs().max()) < 1e-5 * float(full.abs().max()) + 1e-7
    out = physics.kspace_consistency_t(chi_c, ext, kern, padded, 0.05, 0.1) * mask
    assert float((out - chi).norm() / chi.norm()) < 1e-3
    zero = physics.kspace_consistency_t(chi, field, kern, padded, 0.05, 0.1) * mask  # even from the truth
    assert float((zero - chi).norm() / chi.norm()) > 0.02
    # a magnitude weight changes the fit's weighting, not the noise-free answer; so does an oblique B0
    w = (0.2 + torch.rand(mask.shape, generator=torch.Generator().manual_seed(1))) * mask
    _, _, cw, _ = physics.extrapolate_field_t(est, field, mask, kern, padded, w)
    assert float(cw) == pytest.approx(c0, abs=1e-4)
    chi, field, mask, kern, padded, full, mean, c0 = _ellipsoid_case(b0=(0.2, -0.1, 0.97))
    _, _, co, bo = physics.extrapolate_field_t(chi - c0 * mask, field, mask, kern, padded)
    assert float(co) == pytest.approx(c0, abs=1e-4) and float(bo) == pytest.approx(-mean, abs=1e-5)


def test_extrapolate_field_batches_and_leaves_an_undetermined_offset_alone():
    """Each volume of a batch gets its own fit; where the mask cannot determine c (one voxel: the
    field of a uniform chi there is a single number, the same as the free constant) c stays 0."""
    chi, fld, mask, kern, padded, _, _, c0 = _ellipsoid_case()
    two = torch.cat([chi - c0 * mask, chi - 2 * c0 * mask])
    _, _, cc, _ = physics.extrapolate_field_t(two, torch.cat([fld, fld]), torch.cat([mask, mask]), kern, padded)
    assert cc.flatten().tolist() == pytest.approx([c0, 2 * c0], abs=1e-4)
    one = torch.zeros_like(mask)
    one[..., 10, 12, 9] = 1
    est = 0.1 * one
    chi_c, ext, c, b = physics.extrapolate_field_t(est, 0.02 * one, one, kern, padded)
    assert float(c) == 0.0 and torch.isfinite(ext).all() and torch.equal(chi_c, est)
    assert float(ext[..., 10, 12, 9]) == pytest.approx(0.02 - float(b), abs=1e-7)
