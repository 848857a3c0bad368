"""Known answers for the benchmark head generators (``benchmarks/honest_heads.py``)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import honest_heads as hh  # noqa: E402


@pytest.mark.parametrize("factor,shape", [(2, (8, 10, 6)), (3, (9, 7, 5))])
def test_fine_grid_kernel_equals_brute_force(factor, shape):
    """Replicating chi onto a finer grid, convolving there and averaging down == the aliased kernel.

    (An odd factor on an even grid puts weight on the fine grid's Nyquist bin, where an oblique
    dipole kernel is not real-symmetric and the brute force itself is ambiguous; the benchmark uses 2.)"""
    import scipy.fft as sfft

    from qsmprep.qsm.dipole import dipole_kernel

    rng = np.random.default_rng(0)
    vs, b = (1.0, 1.2, 0.9), np.array([0.2, 0.3, 0.93])
    chi = rng.standard_normal(shape).astype(np.float64)
    up = chi
    for ax in range(3):
        up = np.repeat(up, factor, axis=ax)
    vf = tuple(v / factor for v in vs)
    dk = dipole_kernel(up.shape, vf, b)
    field_f = np.real(np.fft.ifftn(np.fft.fftn(up) * dk))
    down = field_f.reshape(shape[0], factor, shape[1], factor, shape[2], factor).mean((1, 3, 5))
    ker = hh.fine_grid_kernel(shape, vs, b, factor)
    fast = sfft.irfftn(sfft.rfftn(chi) * ker, s=shape)
    assert np.abs(fast - down).max() < 1e-5 * np.abs(down).max()
    # and it is not the scored grid's own kernel (no inverse crime)
    same = np.real(np.fft.ifftn(np.fft.fftn(chi) * dipole_kernel(shape, vs, b)))
    assert np.abs(same - down).max() > 0.05 * np.abs(down).max()


def test_qsmforward_field_matches_the_package():
    from qsm_forward.qsm_forward import generate_field

    rng = np.random.default_rng(1)
    chi = rng.standard_normal((12, 12, 10)).astype(np.float32)
    mask = np.zeros(chi.shape, bool)
    mask[3:9, 3:9, 2:8] = True
    b = np.array([0.0, 0.3, 0.954])
    b /= np.linalg.norm(b)
    ref = generate_field(chi.astype(np.float64), mask, voxel_size=[1, 1, 1.5], B0_dir=b)
    ours = hh.qsmforward_field(chi, (1, 1, 1.5), b, mask, pad_factor=2.0)
    assert np.abs(ours - ref).max() < 1e-4 * np.abs(ref).max()


def test_qsmforward_shim_and_offset_match_the_package():
    from qsm_forward.qsm_forward import generate_phase_offset, generate_shimmed_field

    rng = np.random.default_rng(2)
    shape = (14, 12, 10)
    mask = np.zeros(shape, bool)
    mask[2:12, 2:10, 2:8] = True
    field = rng.standard_normal(shape).astype(np.float64)
    _, resid, _ = generate_shimmed_field(field, mask, order=2)
    ours = hh.qsmforward_shim(field.astype(np.float32), mask, subsample=1)
    assert np.abs(ours - resid).max() < 1e-4
    m0 = rng.uniform(0.5, 1.0, shape)
    ref = generate_phase_offset(m0, mask, shape)
    assert np.abs(hh.qsmforward_phase_offset(m0, mask) - ref).max() < 1e-5


def test_crop_kspace_matches_the_package():
    from qsm_forward.qsm_forward import crop_kspace

    rng = np.random.default_rng(3)
    vol = (rng.standard_normal((16, 12, 10)) + 1j * rng.standard_normal((16, 12, 10))).astype(np.complex128)
    ref = crop_kspace(vol, (8, 6, 5))
    ours = hh.crop_kspace_c64(vol, (8, 6, 5))
    assert np.abs(ours - ref).max() < 1e-5 * np.abs(ref).max()
