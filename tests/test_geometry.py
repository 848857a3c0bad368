"""Mask bounding boxes (qsmprep.qsm.geometry.bounding_box)."""

import numpy as np

from qsmprep.qsm.geometry import bounding_box


def test_bounding_box_margins_clip_and_empty():
    m = np.zeros((10, 12, 14), bool)
    m[2:5, 3, 6:13] = True
    assert bounding_box(m) == (slice(2, 5), slice(3, 4), slice(6, 13))
    assert bounding_box(m, 2) == (slice(0, 7), slice(1, 6), slice(4, 14))  # clipped at 0 and 14
    assert bounding_box(m, (0, 1, 3)) == (slice(2, 5), slice(2, 5), slice(3, 14))
    assert m[bounding_box(m)].sum() == m.sum()
    assert bounding_box(np.zeros((4, 5, 6))) == (slice(0, 0),) * 3
