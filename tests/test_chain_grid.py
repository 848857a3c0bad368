"""The chain's network on thick slices (qsmprep.dl.restore.net_splits / on_split_grid): beyond the slice aspect the
network was trained on, it runs on a grid with the slices cut in two and its chi is averaged back."""

import numpy as np
import pytest

from qsmprep.qsm.dipole import forward_field


def test_net_splits_cut_only_slices_beyond_the_training_aspect():
    from qsmprep.dl.restore import NET_SPLIT, NET_SPLIT_ASPECT, net_splits

    assert (NET_SPLIT, NET_SPLIT_ASPECT) == (2, 2.5)
    assert net_splits((1, 1, 1)) == (1, 1, 1)
    assert net_splits((2, 2, 2)) == (1, 1, 1)
    assert net_splits((1, 1, 2)) == (1, 1, 1)
    assert net_splits((1, 1, 2.5)) == (1, 1, 1)  # the training's largest aspect: the data's grid
    assert net_splits((1, 1, 3)) == (1, 1, 2)
    assert net_splits((0.6, 0.6, 2)) == (1, 1, 2)
    assert net_splits((3, 1, 1.2)) == (2, 1, 1)
    assert net_splits((1, 1, 3), k=3) == (1, 1, 3)


def test_on_split_grid_gives_a_ramp_back_and_passes_the_fine_grid():
    from qsmprep.dl.restore import on_split_grid

    n = (6, 7, 10)
    ramp = np.broadcast_to((0.01 * np.arange(n[2]) - 0.02)[None, None, :], n).astype(np.float32)
    mask = np.zeros(n, bool)
    mask[1:5, 1:6, 2:9] = True
    weight = np.where(mask, 2.0, 0).astype(np.float32)
    seen = {}

    def fn(f, m, vs, w):  # an "inversion" that returns its field inside its mask
        seen.update(shape=f.shape, mask_shape=m.shape, vs=tuple(vs), w=None if w is None else w.shape,
                    wmax=None if w is None else float(w.max()))
        return np.where(m, f, 0)

    out = on_split_grid(fn, (1, 1, 2), ramp, mask, (1.0, 1.0, 3.0), weight)
    assert seen == {"shape": (6, 7, 20), "mask_shape": (6, 7, 20), "vs": (1.0, 1.0, 1.5), "w": (6, 7, 20),
                    "wmax": 2.0}
    assert out.dtype == np.float32 and out.shape == n
    assert np.all(out[~mask] == 0)
    # linear interpolation then the mean of each pair: the ramp itself (every masked slice is inside the grid)
    np.testing.assert_allclose(out[mask], ramp[mask], atol=1e-7)
    # no cut: the function on the given arrays, untouched
    same = on_split_grid(lambda f, m, vs, w: f * 3, (1, 1, 1), ramp, mask, (1.0, 1.0, 3.0))
    np.testing.assert_array_equal(same, ramp * 3)


def _thick_phantom():
    """A 1 x 1 x 3 mm head-like ellipsoid with a 0.1 ppm nucleus and an air source outside, B0 along the slices."""
    g = np.meshgrid(*[np.arange(k) - k / 2 + 0.5 for k in (40, 40, 14)], indexing="ij")
    z = 3.0 * g[2]  # mm
    brain = g[0] ** 2 + g[1] ** 2 + (1.1 * z) ** 2 < 17.0 ** 2
    chi = np.zeros(brain.shape, np.float32)
    nucleus = (g[0] + 5) ** 2 + (g[1] - 3) ** 2 + z ** 2 < 6.0 ** 2
    chi[nucleus] = 0.1
    air = np.zeros(brain.shape, np.float32)
    air[:3] = 9.4
    return brain, nucleus, chi, air


def test_chain_network_runs_on_the_split_grid_and_finds_the_nucleus(monkeypatch):
    """On 1 x 1 x 3 mm voxels the chain's network sees 1 x 1 x 1.5 mm and twice the slices, the sidecar says so, and
    chi of a 0.1 ppm nucleus comes back within 25 % (its field simulated on a grid three times finer along the slices
    and averaged down, not with the inversion's own kernel)."""
    import qsmprep.dl.inference as inference
    from qsmprep.methods import invert
    from qsmprep.qsm.background import ismv
    from qsmprep.qsm.geometry import merge_axis, split_axis

    brain, nucleus, chi, air = _thick_phantom()
    vs = (1.0, 1.0, 3.0)
    fine = np.where(split_axis(brain, 2, 3, linear=False), split_axis(chi, 2, 3, linear=False), 0)
    total = merge_axis(forward_field(fine + split_axis(air, 2, 3, linear=False), (1.0, 1.0, 1.0), (0, 0, 1)), 2, 3)
    loc, eroded = ismv(np.where(brain, total, 0), brain, vs)
    calls = []
    real = inference.invert_nsidl

    def spy(field, mask, voxel_size, *a, **k):
        calls.append((field.shape, tuple(float(v) for v in voxel_size)))
        return real(field, mask, voxel_size, *a, **k)

    monkeypatch.setattr(inference, "invert_nsidl", spy)
    out, rec = invert("nsidl", loc, eroded, vs, (0, 0, 1), weight=brain.astype(np.float32), b0_t=3.0, te_s=0.02,
                      device="cpu", total_ppm=np.where(brain, total, 0), brain_mask=brain)
    assert calls == [((40, 40, 28), (1.0, 1.0, 1.5))]
    assert rec["DataFit"]["NetworkGridParts"] == [1, 1, 2]
    ref = out - out[brain & ~nucleus].mean()
    assert ref[nucleus].mean() == pytest.approx(0.1, rel=0.25)
