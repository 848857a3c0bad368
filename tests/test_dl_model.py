"""NSIDL model: shapes, identity start, step-size scaling, one training step lowers the loss."""


import numpy as np
import pytest

import torch

from qsmprep.dl import physics
from qsmprep.dl.model import NSIDL, UNet3d, build_model, n_parameters
from qsmprep.qsm.dipole import padded_shape


def _sphere_case(shp=(24, 24, 24), s=10.0):
    g = np.meshgrid(*[np.arange(n) - n / 2 for n in shp], indexing="ij")
    r = np.sqrt(sum(x**2 for x in g))
    mask = (r < 10).astype(np.float32)
    chi = ((r < 4) * 0.2).astype(np.float32) * mask
    padded = padded_shape(shp, 1.5)
    k = physics.dipole_kernel_t(padded, (1, 1, 1), (0, 0, 1))
    f = physics.convolve(torch.from_numpy(chi), k, padded) * torch.from_numpy(mask)
    t = lambda a: torch.as_tensor(a)[None, None]
    return t(chi), t(f), t(mask), t(mask.copy()), k[None, None], padded, s


def test_unet_any_size_and_zero_start():
    net = UNet3d(4, (4, 8, 8))
    x = torch.randn(1, 4, 13, 10, 7)
    y = net(x)
    assert y.shape == (1, 1, 13, 10, 7)
    assert float(y.detach().abs().max()) == 0.0  # zero-initialised output layer


def test_untrained_is_tkd_plus_ndi_steps():
    chi, f, m, w, k, padded, s = _sphere_case()
    model = NSIDL(n_iter=2, widths=(4, 8, 8))
    out = model(f, m, w, s, k, padded)
    # reference: TKD then 2 plain NDI gradient steps with alpha = a/(s^2 max W^2)
    x = physics.tkd_t(f, k, padded, 0.2) * m
    a = model.step_sizes().detach()
    for i in range(2):
        x = (x - a[i] / s**2 * physics.ndi_gradient(x, s * f, m, k, padded, s)) * m
    np.testing.assert_allclose(out.detach().numpy(), x.numpy(), atol=1e-6)
    assert float(a[0]) == pytest.approx(2.0, rel=1e-4)
    assert float(model.step_sizes().detach().max()) < 4.5  # below the stability bound 9/2


def test_step_scaling_makes_result_independent_of_s():
    # for small residuals the NDI step is linear in the field error: alpha ~ 1/s^2 cancels s
    chi, f, m, w, k, padded, _ = _sphere_case()
    model = NSIDL(n_iter=3, widths=(4, 8, 8), init="zero")
    f = f * 0.01  # small field -> sin(x) ~ x
    a = model(f, m, w, 2.0, k, padded)
    b = model(f, m, w, 5.0, k, padded)
    np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), atol=2e-4 * float(a.detach().abs().max()))


def test_ndi_steps_reduce_data_cost():
    chi, f, m, w, k, padded, s = _sphere_case()
    c0 = float(physics.ndi_cost(torch.zeros_like(f), s * f, m, k, padded, s))
    model = NSIDL(n_iter=4, widths=(4, 8, 8), init="zero")
    out = model(f, m, w, s, k, padded)
    c1 = float(physics.ndi_cost(out.detach(), s * f, m, k, padded, s))
    assert c1 < 0.5 * c0


def test_build_model_and_param_count():
    m = build_model({"n_iter": 3, "widths": [16, 32, 64]})
    assert m.n_iter == 3 and m.widths == (16, 32, 64)
    assert 300_000 < n_parameters(m) < 400_000
    with pytest.raises(ValueError, match="init"):
        NSIDL(init="bogus")


def test_one_step_of_training_reduces_loss():
    from qsmprep.dl.metrics import loss_terms

    torch.manual_seed(0)
    chi, f, m, w, k, padded, s = _sphere_case((16, 16, 16))
    model = NSIDL(n_iter=2, widths=(4, 8, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        preds = model(f, m, w, s, k, padded, return_all=True)
        loss, _ = loss_terms(preds, chi, m)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]


def test_cg_linearised_pre_solver():
    """CG on the linearised data term: monotone weighted residual, and it solves a consistent case."""
    from qsmprep.dl import physics
    from qsmprep.dl.model import NSIDL, build_model, cg_linearised

    g = torch.Generator().manual_seed(0)
    shape = (14, 16, 12)
    mask = torch.zeros((1, 1) + shape)
    mask[..., 3:11, 3:13, 3:9] = 1
    chi = torch.randn((1, 1) + shape, generator=g) * mask
    padded = physics.fast_padded_shape(shape, 1.5)
    kern = physics.dipole_kernel_t(padded, (1.0, 1.0, 1.0), (0.1, 0.2, 0.97))[None, None]
    w2 = (0.3 + 0.7 * torch.rand((1, 1) + shape, generator=g)) * mask
    field = physics.convolve(chi, kern, padded)  # field everywhere (consistent)

    def res(x):
        return float((w2 * (physics.convolve(x, kern, padded) - field) ** 2).sum())

    x0 = torch.zeros_like(chi)
    vals = [res(cg_linearised(x0, field, w2, mask, kern, padded, n)) for n in (0, 2, 5, 10, 40)]
    assert all(b <= a * (1 + 1e-5) for a, b in zip(vals, vals[1:])), vals
    assert vals[-1] < 1e-3 * vals[0], vals
    # the model uses it when asked, and the choice survives the config round trip
    m = build_model({"n_iter": 1, "widths": [4, 8, 8], "n_pre": 3, "pre_solver": "cg"})
    assert m.config()["pre_solver"] == "cg" and build_model(m.config()).pre_solver == "cg"
    with pytest.raises(ValueError, match="pre_solver"):
        NSIDL(pre_solver="lbfgs")


def test_four_level_unet_warm_starts_exactly_from_three_levels():
    """A 4-level U-Net loading a 3-level state (strict=False) computes the same prox (its new level's
    decoder is residual and zero-initialised), has more receptive field once trained, and takes any size."""
    from qsmprep.dl.model import UNet3d

    torch.manual_seed(0)
    small = UNet3d(in_ch=4, widths=(4, 8, 8))
    with torch.no_grad():
        small.out.weight.normal_(0, 0.1)
    big = UNet3d(in_ch=4, widths=(4, 8, 8, 16))
    missing, unexpected = big.load_state_dict(small.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.split(".")[0] in ("enc4", "up3", "dec3") for k in missing)
    x = torch.randn(1, 4, 16, 24, 16)
    with torch.no_grad():
        ref = small(x)
        assert (big(x) - ref).abs().max() < 1e-7
        big.dec3[-1].weight.normal_(0, 1.0)  # once the new level is trained, it changes the output
        assert (big(x) - ref).abs().max() > 1e-5  # 100x the warm-start difference bound above
        assert big(torch.randn(1, 4, 13, 10, 11)).shape == (1, 1, 13, 10, 11)
    with pytest.raises(ValueError, match="3 or 4 levels"):
        UNet3d(widths=(4, 8))
    m = build_model({"n_iter": 2, "widths": [4, 8, 8, 16]})
    assert m.config()["widths"] == [4, 8, 8, 16] and len(m.prox.enc4) == 4


def test_cpu_channels_last_gives_the_same_prox():
    """The CPU channels-last layout (a speed choice) changes no number beyond float32 rounding, in the
    forward pass and in the gradients that training uses."""
    from qsmprep.dl.model import UNet3d

    torch.manual_seed(1)
    u = UNet3d(in_ch=4, widths=(4, 8, 8, 16))
    with torch.no_grad():
        u.out.weight.normal_(0, 0.5)
        u.dec3[-1].weight.normal_(0, 0.5)
    x = torch.randn(1, 4, 19, 22, 17)
    outs, grads = [], []
    for cl in (False, True):
        u.cpu_channels_last = cl
        u.zero_grad()
        y = u(x)
        (y ** 2).sum().backward()
        outs.append(y.detach())
        grads.append(u.enc1[0].weight.grad.clone())
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and outs[0].abs().max() > 1e-3
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
