"""The unit dipole kernel and the forward model chi -> field, with zero padding.

Convention:

* ``D(k) = 1/3 - (k . b)^2 / |k|^2`` with ``k_i = fftfreq(N_i, d=voxel_size_i)``
  (cycles/mm, DC at index 0) and ``b`` the unit B0 vector in array axes.
  Anisotropic voxels enter only through ``voxel_size``.
* ``D(0) = 0``: the forward field has zero mean over the padded grid, and the
  mean of chi cannot be recovered by any inversion.
* ``forward_field`` zero-pads by ``pad_factor`` (default 1.5, rounded up to an
  FFT-friendly size) so the circular convolution acts like a linear one, then crops.
* chi in ppm gives the field in ppm (relative to B0).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import scipy.fft as sfft

Vec3 = Sequence[float]


def fft_workers() -> int:
    """Threads for scipy.fft (all visible cores)."""
    import os

    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def padded_shape(shape: Sequence[int], pad_factor: float = 1.5) -> tuple[int, ...]:
    """Grid of at least ``pad_factor * shape`` per axis with small prime factors."""
    return tuple(int(sfft.next_fast_len(int(np.ceil(n * pad_factor)), real=True)) for n in shape)


def pad_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Zero-pad ``arr`` at the end of each axis to ``shape`` (no-op if equal)."""
    if tuple(arr.shape) == tuple(shape):
        return arr
    out = np.zeros(shape, dtype=arr.dtype)
    out[tuple(slice(0, n) for n in arr.shape)] = arr
    return out


def crop_to(arr: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`pad_to`: keep the first ``shape`` samples of each axis."""
    return arr[tuple(slice(0, n) for n in shape)]


def kspace_grid(shape: Sequence[int], voxel_size: Vec3 = (1.0, 1.0, 1.0), rfft: bool = False):
    """Spatial-frequency coordinates (cycles/mm) as three broadcastable arrays.

    With ``rfft=True`` the last axis holds ``rfftfreq`` (half spectrum) to match
    ``scipy.fft.rfftn``.
    """
    ks = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == len(shape) - 1:
            k = sfft.rfftfreq(n, d=d)
        else:
            k = sfft.fftfreq(n, d=d)
        sh = [1] * len(shape)
        sh[ax] = k.size
        ks.append(k.reshape(sh).astype(np.float64))
    return ks


def dipole_kernel(
    shape: Sequence[int],
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    rfft: bool = False,
    dtype=np.float32,
) -> np.ndarray:
    """Unit dipole kernel ``D(k) = 1/3 - (k.b)^2/|k|^2`` on an FFT grid, ``D(0) = 0``.

    Parameters
    ----------
    shape : grid size (voxels), usually the padded shape.
    voxel_size : voxel edge lengths in mm.
    b0_dir : B0 direction in array axes (normalised here).
    rfft : return the half spectrum matching ``scipy.fft.rfftn``.

    Returns a real array (unit-free), range [-2/3, 1/3].
    """
    b = np.asarray(b0_dir, dtype=np.float64)
    b = b / np.linalg.norm(b)
    kx, ky, kz = kspace_grid(shape, voxel_size, rfft=rfft)
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.astype(dtype)


def convolve_kernel(vol: np.ndarray, kernel_rfft: np.ndarray, shape_padded: Sequence[int]) -> np.ndarray:
    """Apply a real, symmetric k-space kernel (half spectrum) to a real volume.

    ``vol`` is zero-padded to ``shape_padded`` (which must match the kernel),
    transformed with ``rfftn``, multiplied, transformed back and cropped.
    """
    w = fft_workers()
    pv = pad_to(np.asarray(vol, dtype=np.float32), shape_padded)
    spec = sfft.rfftn(pv, workers=w)
    spec *= kernel_rfft
    out = sfft.irfftn(spec, s=shape_padded, workers=w)
    return np.ascontiguousarray(crop_to(out, vol.shape), dtype=np.float32)


def forward_field(
    chi_ppm: np.ndarray,
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    pad_factor: float = 1.5,
) -> np.ndarray:
    """Field perturbation in ppm produced by the susceptibility ``chi_ppm`` (ppm).

    ``field = F^-1[ D(k) F[chi] ]`` on a zero-padded grid (``pad_factor`` >= 1),
    cropped back to ``chi_ppm.shape``.  float32 out.
    """
    shp = padded_shape(chi_ppm.shape, pad_factor) if pad_factor > 1 else tuple(chi_ppm.shape)
    d = dipole_kernel(shp, voxel_size, b0_dir, rfft=True)
    return convolve_kernel(chi_ppm, d, shp)


def sphere_field_analytic(
    shape: Sequence[int],
    voxel_size: Vec3,
    center_mm: Vec3,
    radius_mm: float,
    dchi_ppm: float,
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
) -> np.ndarray:
    """Analytic field (ppm) of a uniform sphere with susceptibility ``dchi_ppm``.

    Outside: ``dchi/3 * (a/r)^3 * (3 cos^2(theta) - 1)``; inside: 0 (Lorentz-sphere
    corrected, which is the ``D(k) = 1/3 - ...`` convention).  Coordinates in mm of
    voxel centres ``index * voxel_size``.  Used as a known answer in tests.
    """
    b = np.asarray(b0_dir, dtype=np.float64)
    b = b / np.linalg.norm(b)
    grids = np.meshgrid(*[np.arange(n) * d - c for n, d, c in zip(shape, voxel_size, center_mm)], indexing="ij")
    r2 = grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2
    r = np.sqrt(r2)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos2 = (grids[0] * b[0] + grids[1] * b[1] + grids[2] * b[2]) ** 2 / r2
        out = dchi_ppm / 3.0 * (radius_mm / r) ** 3 * (3.0 * cos2 - 1.0)
    out[r <= radius_mm] = 0.0
    return out.astype(np.float32)
