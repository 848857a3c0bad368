"""Known-answer tests for chi referencing."""

import numpy as np
import pytest

from qsmprep.qsm.reference import reference_csf, reference_mean


def _data():
    rng = np.random.default_rng(1)
    chi = (rng.standard_normal((16, 16, 16)) * 0.05 + 0.3).astype(np.float32)
    mask = np.zeros(chi.shape, bool)
    mask[2:14, 2:14, 2:14] = True
    chi[~mask] = 0.0
    csf = np.zeros(chi.shape, bool)
    csf[6:9, 6:9, 6:9] = True
    chi[csf] += 0.1
    return chi, mask, csf


def test_reference_mean():
    chi, mask, _ = _data()
    out, off = reference_mean(chi, mask)
    assert out.dtype == np.float32
    assert abs(out[mask].mean()) < 1e-6
    assert abs(off - chi[mask].mean()) < 1e-6
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(out[mask], chi[mask] - off, atol=1e-6)


def test_reference_csf():
    chi, mask, csf = _data()
    out, off = reference_csf(chi, csf, mask)
    assert abs(out[csf].mean()) < 1e-6
    assert abs(off - chi[csf].mean()) < 1e-6
    assert off > 0.35  # the CSF region was offset by +0.1 from a 0.3 background
    np.testing.assert_allclose(out[mask], chi[mask] - off, atol=1e-6)
    assert np.all(out[~mask] == 0)
    # without a brain mask the support of chi is kept
    out2, _ = reference_csf(chi, csf)
    assert np.all(out2[chi == 0] == 0)


def test_reference_errors():
    chi, mask, _ = _data()
    with pytest.raises(ValueError, match="empty"):
        reference_csf(chi, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        reference_mean(chi, mask[:-1])
