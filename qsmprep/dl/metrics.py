"""Torch metrics and loss terms of NSIDL training and validation (chi in ppm, shapes (B,1,X,Y,Z)).

* :func:`xsim_t` -- qsm-ci's XSIM, differentiable (loss and validation);
* :func:`nrmse_demeaned` -- demeaned NRMSE in % (validation);
* :func:`loss_terms` -- the training loss (demeaned L1 + gradient L1 + deep supervision + XSIM).
"""

from __future__ import annotations

# qsm-ci's XSIM constants (L = 1 ppm, K1 = 0.01, K2 = 0.001) and window (5x5x5, truncated at the edges)
XSIM_C1, XSIM_C2, XSIM_WIN = 1e-4, 1e-6, 5


def demeaned(x, mask):
    """x minus its mean inside mask (per sample), zero outside.  Shapes (B,1,X,Y,Z)."""
    n = mask.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1)
    return (x - (x * mask).sum(dim=(1, 2, 3, 4), keepdim=True) / n) * mask


def xsim_map(a, b):
    """Per-voxel XSIM of ``a`` against ``b`` (qsm-ci ``xsim``: 5x5x5 windows truncated at the
    volume edge, c1 = 1e-4 ppm^2, c2 = 1e-6 ppm^2).  Maps in ppm, shapes (B,1,X,Y,Z).
    Returns (value, den): average ``value`` where the mask is set and ``den > 0``."""
    import torch.nn.functional as F

    def win(x):
        return F.avg_pool3d(x, XSIM_WIN, stride=1, padding=XSIM_WIN // 2, count_include_pad=False)

    mu_a, mu_b = win(a), win(b)
    var_a = win(a * a) - mu_a * mu_a
    var_b = win(b * b) - mu_b * mu_b
    cov = win(a * b) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + XSIM_C1) * (2.0 * cov + XSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + XSIM_C1) * (var_a + var_b + XSIM_C2)
    return num / den.clamp_min(1e-20), den


def xsim_t(pred, truth, mask):
    """Mean XSIM per sample (B,) of ``pred`` against ``truth`` (ppm), both demeaned in ``mask`` and
    zeroed outside it first (as ``qsm_ci.qsm_eval.score_arrays`` scores chi after referencing)."""
    v, den = xsim_map(demeaned(pred, mask), demeaned(truth, mask))
    sel = (mask > 0) & (den > 0)
    return (v * sel).sum(dim=(1, 2, 3, 4)) / sel.sum(dim=(1, 2, 3, 4)).clamp_min(1)


def loss_terms(preds, chi, mask, grad_weight=0.5, deep_weight=0.1, xsim_weight=0.0):
    """L1 of the demeaned error in the mask (in units of 0.1 ppm) + gradient L1 + deep supervision
    + ``xsim_weight`` x (1 - XSIM) of the last iterate (the challenge metric made a loss: it rewards
    fine structure that an L1 loss alone lets the network smooth away)."""
    import torch

    from qsmprep.dl.model import SIGMA_PPM

    n = mask.sum().clamp_min(1)
    t = demeaned(chi, mask)

    def l1(p):
        return (demeaned(p, mask) - t).abs().sum() / n / SIGMA_PPM

    def gl1(p):
        e = demeaned(p, mask) - t
        tot = 0.0
        for ax in (2, 3, 4):
            d = torch.diff(e, dim=ax).abs()
            m = torch.minimum(mask.narrow(ax, 0, mask.shape[ax] - 1), mask.narrow(ax, 1, mask.shape[ax] - 1))
            tot = tot + (d * m).sum()
        return tot / n / SIGMA_PPM

    main = l1(preds[-1])
    g = gl1(preds[-1])
    deep = sum(l1(p) for p in preds[:-1]) / max(1, len(preds) - 1) if len(preds) > 1 else torch.zeros(())
    total = main + grad_weight * g + deep_weight * deep
    parts = {"l1": float(main.detach()), "grad": float(g.detach()), "deep": float(deep.detach()) if torch.is_tensor(deep) else float(deep)}
    if xsim_weight:
        xs = xsim_t(preds[-1], chi, mask.float()).mean()
        total = total + xsim_weight * (1.0 - xs)
        parts["xsim"] = float(xs.detach())
    return total, parts


def nrmse_demeaned(pred, truth, mask) -> float:
    """NRMSE in %: 100 ||p' - t'|| / ||t'|| with both demeaned in the mask (qsm-ci's NRMSE after referencing)."""
    p = demeaned(pred, mask)
    t = demeaned(truth, mask)
    return float(100 * (p - t).norm() / t.norm().clamp_min(1e-12))
