"""Synthetic NSIDL training data: determinism, units, physics consistency."""

import numpy as np
import pytest

import torch

from qsmprep.dl import physics, synthetic

SMALL = synthetic.SynthConfig(max_voxels=15_000)


def test_same_seed_same_sample_and_different_seed_differs():
    a = synthetic.make_sample(3, cfg=SMALL)
    b = synthetic.make_sample(3, cfg=SMALL)
    c = synthetic.make_sample(4, cfg=SMALL)
    for k in ("chi", "field", "mask", "weight"):
        assert torch.equal(a[k], b[k])
    assert a["s"] == b["s"] and a["b0_dir"] == b["b0_dir"]
    assert a["chi"].shape != c["chi"].shape or not torch.equal(a["chi"], c["chi"])


def test_sample_ranges_and_masking():
    for seed in range(3):
        smp = synthetic.make_sample(seed, cfg=SMALL)
        m = smp["mask"] > 0
        assert smp["chi"].numel() <= SMALL.max_voxels
        assert m.float().mean() > 0.2
        assert torch.all(smp["chi"][~m] == 0) and torch.all(smp["field"][~m] == 0)
        assert 0.0 <= float(smp["weight"].min()) and float(smp["weight"].max()) <= 1.0
        assert SMALL.s_range[0] <= smp["s"] <= SMALL.s_range[1]
        assert abs(np.linalg.norm(smp["b0_dir"]) - 1) < 1e-6
        assert float(smp["chi"].abs().max()) < 5.0  # ppm: tissue, veins, lesions
        assert abs(float(smp["field"][m].mean())) < 0.02  # demeaned (+ small background)


def test_noise_free_field_is_the_dipole_field_of_chi():
    cfg = synthetic.SynthConfig(max_voxels=15_000, p_erode=0.0, bg_poly_ppm=0.0, p_rim=0.0,
                                snr_range=(1e9, 1e9 + 1))
    smp = synthetic.make_sample(11, cfg=cfg)
    m = smp["mask"]
    f = physics.convolve(smp["chi"], smp["kernel"], smp["padded"]) * m
    f = (f - f[m > 0].mean()) * m
    np.testing.assert_allclose(smp["field"].numpy(), f.numpy(), atol=1e-5)


def test_smooth_field_unit_std_and_correlation():
    g = torch.Generator().manual_seed(0)
    a = synthetic.smooth_field((48, 48, 48), (1, 1, 1), 2.0, g, "cpu")
    b = synthetic.smooth_field((48, 48, 48), (1, 1, 1), 6.0, g, "cpu")
    assert float(a.std()) == pytest.approx(1.0, abs=1e-4)
    lag = lambda x: float(torch.corrcoef(torch.stack([x[:-3].flatten(), x[3:].flatten()]))[0, 1])
    assert lag(b) > lag(a) > 0.1  # longer correlation length -> stronger correlation at 3 mm


def test_batch_shapes():
    b = synthetic.make_batch(0, 2, cfg=SMALL)
    assert b["chi"].shape[:2] == (2, 1) and b["kernel"].shape[:2] == (2, 1)
    assert b["s"].shape == (2,)
    assert b["kernel"].shape[-1] == b["padded"][-1] // 2 + 1
