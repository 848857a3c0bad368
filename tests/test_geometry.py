"""Mask bounding boxes and an axis split and merged (qsmprep.qsm.geometry)."""

import numpy as np
import pytest

from qsmprep.qsm.geometry import bounding_box


def test_bounding_box_margins_clip_and_empty():
    m = np.zeros((10, 12, 14), bool)
    m[2:5, 3, 6:13] = True
    assert bounding_box(m) == (slice(2, 5), slice(3, 4), slice(6, 13))
    assert bounding_box(m, 2) == (slice(0, 7), slice(1, 6), slice(4, 14))  # clipped at 0 and 14
    assert bounding_box(m, (0, 1, 3)) == (slice(2, 5), slice(2, 5), slice(3, 14))
    assert m[bounding_box(m)].sum() == m.sum()
    assert bounding_box(np.zeros((4, 5, 6))) == (slice(0, 0),) * 3


def test_split_axis_repeat_merges_back_and_linear_keeps_a_ramp():
    from qsmprep.qsm.geometry import merge_axis, split_axis

    rng = np.random.default_rng(0)
    vol = rng.random((4, 5, 6)).astype(np.float32)
    for ax in range(3):
        for k in (2, 3):
            fine = split_axis(vol, ax, k, linear=False)
            assert fine.shape[ax] == vol.shape[ax] * k and fine.dtype == np.float32
            np.testing.assert_allclose(merge_axis(fine, ax, k), vol, rtol=0, atol=1e-6)
    # a linear ramp along the axis: interpolated, the fine voxels' centres lie on the ramp (away from the ends),
    # and merged back it is the ramp again
    ramp = (2.0 * np.arange(10) + 1.0)[None, :, None] * np.ones((2, 1, 3))
    for k in (2, 3):
        fine = split_axis(ramp, 1, k)
        centres = (np.arange(10 * k) + 0.5) / k - 0.5
        inner = (centres >= 0) & (centres <= 9)
        np.testing.assert_allclose(fine[0, inner, 0], 2.0 * centres[inner] + 1.0, atol=1e-12)
        np.testing.assert_allclose(merge_axis(fine, 1, k)[0, 1:-1, 0], ramp[0, 1:-1, 0], atol=1e-12)
    np.testing.assert_array_equal(split_axis(vol, 2, 1), vol)
    with pytest.raises(ValueError, match="not a multiple of 4"):
        merge_axis(vol, 2, 4)
    with pytest.raises(ValueError, match="positive integer"):
        split_axis(vol, 0, 0)
