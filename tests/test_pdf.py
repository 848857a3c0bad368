"""Known answer for PDF background removal (``qsmprep.qsm.pdf``)."""

import numpy as np

from qsmprep.qsm.dipole import forward_field
from qsmprep.qsm.pdf import pdf


def test_pdf_removes_the_field_of_outside_sources():
    n = 48
    g = np.meshgrid(*[np.arange(n) - n / 2 + 0.5] * 3, indexing="ij")
    mask = g[0] ** 2 + g[1] ** 2 + g[2] ** 2 < 15**2
    inside = np.zeros(mask.shape, np.float32)
    inside[(g[0] - 3) ** 2 + g[1] ** 2 + g[2] ** 2 < 16] = 0.1
    outside = np.zeros(mask.shape, np.float32)
    outside[(g[0] + 19) ** 2 + g[1] ** 2 + (g[2] - 6) ** 2 < 9] = 9.4  # an air pocket beside the brain
    total = forward_field(inside + outside, (1, 1, 1), (0, 0, 1))
    local = forward_field(inside, (1, 1, 1), (0, 0, 1))
    ref = np.where(mask, local - local[mask].mean(), 0)
    out, m = pdf(total, mask, (1, 1, 1), (0, 0, 1), tol=1e-4, max_iter=200)
    assert (m == mask).all()
    bg = np.where(mask, total - total[mask].mean(), 0) - ref
    err = out - ref
    assert np.sqrt((err[mask] ** 2).mean()) < 0.1 * np.sqrt((bg[mask] ** 2).mean())  # 90 % of the background gone
    assert np.corrcoef(out[mask], ref[mask])[0, 1] > 0.9
