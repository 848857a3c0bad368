"""The differentiable final fit (qsmprep.dl.finalfit): smv_tv's result from any start, and its gradient."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from qsmprep.dl.finalfit import FinalFit  # noqa: E402
from qsmprep.qsm.smvfit import smv_tv, smv_tv_problem  # noqa: E402
from test_smvfit import _spheres_in_ellipsoid  # noqa: E402

VS, B0 = (1.0, 1.0, 1.2), (0.0, 0.1, 0.995)


def _problem(n=32, r=13, **kw):
    x, y, z, mask, chi, field = _spheres_in_ellipsoid(n, r)
    w = (1 + 0.5 * np.cos(x / 3)).astype(np.float32)
    return mask, chi.astype(np.float32), field, w


@pytest.mark.parametrize("relax,tv_free", [(1.0, False), (1.7, False), (1.7, True)])
def test_final_fit_is_smv_tv_from_its_start(relax, tv_free):
    """FinalFit(start) is smv_tv's chi from that start (numpy reference loop), to float32 rounding."""
    mask, chi, field, w = _problem()
    free = np.zeros_like(mask)
    free[15:18, 15:18, 15:18] = True
    start = (0.7 * chi + 0.01).astype(np.float32)
    kw = dict(weight=w, lam=1e-4, support_mu=0.01, tv_free=free if tv_free else None)
    ref = smv_tv(field, mask, VS, B0, chi_prior=start, n_iter=12, relax=relax, **kw)
    fit = FinalFit(smv_tv_problem(field, mask, VS, B0, **kw), n_iter=12, relax=relax)
    got = fit(torch.from_numpy(start)).numpy()
    assert np.abs(ref).max() > 0.01  # the fit moved away from zero
    assert np.abs(got - ref).max() < 2e-6 * max(1.0, np.abs(ref).max() / 0.01)
    # a different start gives a different result (the fit keeps part of its start)
    other = fit(torch.zeros(mask.shape)).numpy()
    assert np.abs(other - got).max() > 1e-3


def test_final_fit_gradient_matches_finite_differences_and_checkpointing():
    """d fit(start) / d start along a direction: autograd = central finite differences (float64), with and without
    activation checkpointing."""
    mask, chi, field, w = _problem(n=20, r=8)
    pb = smv_tv_problem(field, mask, VS, B0, weight=w, lam=1e-4, support_mu=0.01, radii_mm=(4.0, 2.0))
    rng = np.random.default_rng(1)
    start = torch.from_numpy(0.5 * chi + 0.01 * rng.standard_normal(mask.shape)).double()
    direction = torch.from_numpy(rng.standard_normal(mask.shape) * mask)
    target = torch.from_numpy(chi).double()
    grads = []
    for every in (0, 3):
        fit = FinalFit(pb, n_iter=7, relax=1.7, dtype=torch.float64, checkpoint_every=every)
        s = start.clone().requires_grad_(True)
        loss = ((fit(s) - target) ** 2).sum()
        loss.backward()
        grads.append(s.grad.clone())
    assert torch.allclose(grads[0], grads[1], rtol=1e-10, atol=1e-14)
    fit = FinalFit(pb, n_iter=7, relax=1.7, dtype=torch.float64, checkpoint_every=0)
    h = 1e-9  # small enough that no soft threshold's kink is crossed: the fit is piecewise affine in its start

    def loss_at(s):
        return float(((fit(s) - target) ** 2).sum())

    fd = (loss_at(start + h * direction) - loss_at(start - h * direction)) / (2 * h)
    ad = float((grads[0] * direction).sum())
    assert abs(ad) > 1e-6
    assert abs(fd - ad) <= 1e-4 * abs(ad)
