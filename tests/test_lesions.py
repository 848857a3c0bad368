"""Lesions in the chain NSIDL (issue #13): a signal void kept in the map with zero weight, through the
app's inversion dispatch (``qsmprep.methods.invert``)."""

import numpy as np
import pytest

from qsmprep.qsm.dipole import forward_field


def _phantom(n=40):
    g = np.meshgrid(*[np.arange(n) - n / 2 + 0.5] * 3, indexing="ij")
    brain = g[0] ** 2 + g[1] ** 2 + (1.1 * g[2]) ** 2 < (0.42 * n) ** 2
    chi = np.zeros(brain.shape, np.float32)
    chi[(g[0] + 5) ** 2 + (g[1] - 3) ** 2 + g[2] ** 2 < 16] = 0.1  # a nucleus
    calc = (g[0] - 5) ** 2 + (g[1] + 4) ** 2 + (g[2] - 2) ** 2 < 5.5  # a calcification: a void in the data
    chi[calc] = -0.6
    air = np.zeros(brain.shape, np.float32)
    air[:3] = 9.4  # background source outside the brain
    return brain, calc, chi, air


@pytest.mark.parametrize("b0", [(0, 0, 1), (0, 0.34, 0.94)])
def test_chain_fit_keeps_a_void_and_gets_its_moment(b0):
    from qsmprep.dl.restore import support_mask
    from qsmprep.methods import invert

    brain, calc, chi, air = _phantom()
    vs = (1.0, 1.0, 1.0)
    total = forward_field(np.where(brain, chi, 0) + air, vs, b0)
    local = forward_field(np.where(brain, chi, 0), vs, b0)
    mask = brain & ~calc  # the chain's brain mask: the void is a hole
    weight = mask.astype(np.float32)
    from qsmprep.qsm.background import ismv

    loc, eroded = ismv(np.where(mask, total, 0), mask, vs)
    out, rec = invert("nsidl", loc, eroded, vs, b0, weight=weight, b0_t=3.0, te_s=0.02, device="cpu",
                      total_ppm=np.where(mask, total, 0), brain_mask=mask)
    assert rec["DataFit"]["Preset"] == "chain"
    sup = support_mask(mask)
    assert (sup == brain).all()
    assert np.all(out[~sup] == 0) and np.any(out[calc] != 0)  # the void is in the map
    ref = out - out[brain & ~calc].mean()
    moment = ref[calc].sum()
    assert abs(moment / chi[calc].sum() - 1) < 0.25
    # the nucleus comes back positive, the calcification negative
    assert ref[chi > 0.05].mean() > 0.05 and ref[calc].mean() < -0.3
    del local


def test_auto_data_fit_without_total_field_is_robust():
    from qsmprep.methods import invert

    brain, calc, chi, _ = _phantom(32)
    local = forward_field(np.where(brain, chi, 0), (1, 1, 1), (0, 0, 1))
    _, rec = invert("nsidl", np.where(brain, local, 0), brain, (1, 1, 1), (0, 0, 1), b0_t=3.0, te_s=0.02, device="cpu")
    assert rec["DataFit"]["Preset"] == "robust"
    with pytest.raises(ValueError, match="total field"):
        invert("nsidl", np.where(brain, local, 0), brain, (1, 1, 1), (0, 0, 1), b0_t=3.0, te_s=0.02, device="cpu",
               nsidl_data_fit="chain")
