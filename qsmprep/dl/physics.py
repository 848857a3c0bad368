"""Torch versions of the dipole physics used by NSIDL (always float32).

Same convention as :mod:`qsmprep.qsm.dipole`:
``D(k) = 1/3 - (k.b)^2/|k|^2`` on ``k_i = fftfreq(N_i, d=voxel_size_i)`` (cycles/mm),
``D(0) = 0``, b the unit B0 vector in array axes.  Convolutions are linear (not
circular): volumes are zero-padded to a padded grid (``qsmprep.qsm.dipole.padded_shape``)
through ``rfftn(..., s=padded)`` and cropped back.

Shapes: a volume is ``(..., X, Y, Z)``; a half-spectrum kernel is ``(..., X', Y', Z'//2+1)``
on the padded grid and broadcasts against the leading (batch/channel) axes, so every
sample of a batch can have its own B0 direction and voxel size.

Units: chi in ppm, field in ppm, phase in rad, ``s`` in rad/ppm
(``qsmprep.qsm.constants.rad_per_ppm``), weights unit-free in [0, 1].
"""

from __future__ import annotations

from typing import Sequence

import torch

Vec3 = Sequence[float]


def dipole_kernel_t(
    shape: Sequence[int],
    voxel_size: Vec3 = (1.0, 1.0, 1.0),
    b0_dir: Vec3 = (0.0, 0.0, 1.0),
    rfft: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Unit dipole kernel on an FFT grid of ``shape`` voxels (float32, unit-free).

    ``voxel_size`` in mm, ``b0_dir`` in array axes (normalised here).  ``rfft=True``
    returns the half spectrum matching ``torch.fft.rfftn`` (last axis ``N//2+1``).
    Identical (to float32 rounding) to ``qsmprep.qsm.dipole.dipole_kernel``.
    """
    b = torch.as_tensor([float(v) for v in b0_dir], dtype=torch.float64)
    b = b / torch.linalg.norm(b)
    ks = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        if rfft and ax == len(shape) - 1:
            k = torch.fft.rfftfreq(int(n), d=float(d), dtype=torch.float64, device=device)
        else:
            k = torch.fft.fftfreq(int(n), d=float(d), dtype=torch.float64, device=device)
        sh = [1, 1, 1]
        sh[ax] = k.numel()
        ks.append(k.reshape(sh))
    kx, ky, kz = ks
    k2 = kx**2 + ky**2 + kz**2
    kb = kx * float(b[0]) + ky * float(b[1]) + kz * float(b[2])
    k2 = torch.where(k2 == 0, torch.ones_like(k2), k2)
    d = 1.0 / 3.0 - kb**2 / k2
    d[0, 0, 0] = 0.0
    return d.to(torch.float32)


def convolve(x: torch.Tensor, kernel: torch.Tensor, padded: Sequence[int]) -> torch.Tensor:
    """Linear convolution of real ``x (..., X, Y, Z)`` with a real k-space ``kernel``.

    ``kernel`` is the half spectrum on the ``padded`` grid (>= x's shape); ``x`` is
    zero-padded implicitly (``rfftn(s=padded)``), multiplied, inverted and cropped.
    Computed in float32 whatever the autocast state.
    """
    shp = x.shape[-3:]
    with torch.autocast(device_type=x.device.type, enabled=False):
        spec = torch.fft.rfftn(x.float(), s=tuple(padded), dim=(-3, -2, -1))
        out = torch.fft.irfftn(spec * kernel, s=tuple(padded), dim=(-3, -2, -1))
    return out[..., : shp[0], : shp[1], : shp[2]]


def forward_field_t(chi: torch.Tensor, kernel: torch.Tensor, padded: Sequence[int]) -> torch.Tensor:
    """Field (ppm) of ``chi`` (ppm): ``D * chi`` with zero padding."""
    return convolve(chi, kernel, padded)


def ndi_cost(chi, phi, w2, kernel, padded, s) -> torch.Tensor:
    """Nonlinear data term ``F = sum w^2 (1 - cos(s*D chi - phi))`` per sample.

    ``= 1/2 ||W (exp(i s D chi) - exp(i phi))||^2``; ``phi`` in rad, ``w2`` = W^2,
    ``s`` in rad/ppm (scalar or broadcastable tensor).  Sums over the last three axes.
    """
    r = s * convolve(chi, kernel, padded) - phi
    return (w2 * (1.0 - torch.cos(r))).sum(dim=(-3, -2, -1))


def ndi_gradient(chi, phi, w2, kernel, padded, s) -> torch.Tensor:
    """Gradient of :func:`ndi_cost` w.r.t. chi: ``s * D[ W^2 sin(s D chi - phi) ]`` (rad/ppm).

    D is real and symmetric in k-space, so D^T = D.  Four FFTs.
    """
    r = s * convolve(chi, kernel, padded) - phi
    return s * convolve(w2 * torch.sin(r), kernel, padded)


def tkd_t(field: torch.Tensor, kernel: torch.Tensor, padded: Sequence[int], threshold: float = 0.2) -> torch.Tensor:
    """Truncated k-space division: ``chi = F^-1[F f * D+]``, ``D+ = 1/D`` if ``|D| > t`` else ``sign(D)/t``.

    ``field`` in ppm -> chi in ppm (not masked; D(0)=0 maps to 0).
    """
    sign = torch.where(kernel >= 0, torch.ones_like(kernel), -torch.ones_like(kernel))
    inv = torch.where(kernel.abs() > threshold, 1.0 / torch.where(kernel == 0, torch.ones_like(kernel), kernel), sign / threshold)
    inv = torch.where(kernel == 0, torch.zeros_like(inv), inv)
    return convolve(field, inv, padded)


def kspace_consistency_t(chi: torch.Tensor, field: torch.Tensor, kernel: torch.Tensor, padded: Sequence[int],
                         threshold: float = 0.1, width: float = 0.1) -> torch.Tensor:
    """Put the data back where the dipole kernel is well conditioned (k-space data consistency).

    ``X(k) = a(k) F(field)(k) / D(k) + (1 - a(k)) F(chi)(k)`` with the ramp
    ``a = clip((|D| - threshold) / width, 0, 1)``: where ``|D| >= threshold + width`` the
    susceptibility is the one the measured field determines (noise amplified at most
    ``1 / threshold``); inside the cone ``|D| <= threshold`` (and at k = 0, D(0) = 0) it is
    ``chi`` (the network's estimate); the ramp avoids ringing at the switch.  ``chi`` and
    ``field`` in ppm, (..., X, Y, Z), zero-padded to ``padded``; ``kernel`` the half spectrum.
    Returns chi in ppm, cropped back, not masked.
    """
    shp = chi.shape[-3:]
    dims = (-3, -2, -1)
    with torch.autocast(device_type=chi.device.type, enabled=False):
        a = ((kernel.abs() - float(threshold)) / float(width)).clamp(0.0, 1.0)
        inv = torch.where(a > 0, 1.0 / torch.where(a > 0, kernel, torch.ones_like(kernel)), torch.zeros_like(kernel))
        spec = torch.fft.rfftn(chi.float(), s=tuple(padded), dim=dims) * (1.0 - a)
        spec = spec + torch.fft.rfftn(field.float(), s=tuple(padded), dim=dims) * (a * inv)
        out = torch.fft.irfftn(spec, s=tuple(padded), dim=dims)
    return out[..., : shp[0], : shp[1], : shp[2]]


def extrapolate_field_t(chi: torch.Tensor, field: torch.Tensor, mask: torch.Tensor, kernel: torch.Tensor,
                        padded: Sequence[int], weight: torch.Tensor | None = None):
    """Fit ``chi``'s offset to the field and extend the field beyond the mask, for :func:`kspace_consistency_t`.

    The measured local field is known only inside the mask ``M`` (zero outside, and its own mean
    is arbitrary), but ``F(field) / D`` treats the zero outside as data: on a clean field that
    truncation costs more than the network's error (validation head 0: the true chi inside the cone
    with the truncated field scores XSIM 0.947, NRMSE 14.6 %).  Two physical facts fix it:

    * a uniform susceptibility ``c`` inside ``M`` has the field ``c (D * M)``, which is not
      constant inside a non-spherical ``M``, so the field determines ``c`` (the network's mean is
      otherwise free, D(0) = 0);
    * outside ``M`` the field of the sources inside is ``D * (chi M)``.

    So ``c`` and a constant ``b`` are fitted by weighted least squares inside ``M``,
    ``field - D * (chi M) ~ c (D * M) + b`` (weights ``weight^2``, default the mask), and the field
    on the whole padded grid becomes ``field - b`` inside ``M`` and ``D * ((chi + c) M)`` outside.
    The fit is skipped (``c = 0``, ``b`` the weighted mean) when ``D * M`` is numerically constant
    inside ``M`` (a one-voxel mask; an exact sphere would be one, a voxelised one is not).

    ``chi``, ``field`` in ppm and ``mask``, ``weight`` (..., X, Y, Z); ``kernel`` the half spectrum
    on ``padded``.  Returns ``(chi + c M, field_ext, c, b)``: ``field_ext`` (ppm) on the padded grid,
    ``c`` (ppm) and ``b`` (ppm) of shape ``(...)``, one per volume.  Computed in float32, the fit in
    float64.
    """
    shp = chi.shape[-3:]
    dims = (-3, -2, -1)
    with torch.autocast(device_type=chi.device.type, enabled=False):
        m = mask.float().expand_as(chi)
        both = torch.stack([(chi.float() * m), m], 0)
        fn, fm = torch.fft.irfftn(torch.fft.rfftn(both, s=tuple(padded), dim=dims) * kernel, s=tuple(padded), dim=dims)
        crop = (..., slice(0, shp[0]), slice(0, shp[1]), slice(0, shp[2]))
        w = (m if weight is None else weight.float() ** 2 * m).double()
        g = fm[crop].double()
        r = (field.float() - fn[crop]).double()
        sw, sg, sgg = w.sum(dims), (w * g).sum(dims), (w * g * g).sum(dims)
        sr, sgr = (w * r).sum(dims), (w * g * r).sum(dims)
        det = sgg * sw - sg * sg
        ok = det > 1e-9 * (sgg * sw).clamp_min(1e-300)
        safe = torch.where(ok, det, torch.ones_like(det))
        c = torch.where(ok, (sw * sgr - sg * sr) / safe, torch.zeros_like(det))
        b = torch.where(ok, (sgg * sr - sg * sgr) / safe, sr / sw.clamp_min(1e-300))
        c32, b32 = c.float()[..., None, None, None], b.float()[..., None, None, None]
        model = fn + c32 * fm
        ext = _put_crop(model, torch.where(m > 0, field.float() - b32, model[crop]))
    return chi.float() + c32 * m, ext, c.float(), b.float()


def _put_crop(full: torch.Tensor, inner: torch.Tensor) -> torch.Tensor:
    """``full`` with its leading corner ``inner.shape[-3:]`` replaced by ``inner`` (a new tensor)."""
    out = full.clone()
    s = inner.shape[-3:]
    out[..., : s[0], : s[1], : s[2]] = inner
    return out


def fast_padded_shape(shape: Sequence[int], pad_factor: float = 1.5) -> tuple[int, ...]:
    """Padded FFT grid; same rule as ``qsmprep.qsm.dipole.padded_shape``."""
    from qsmprep.qsm.dipole import padded_shape

    return padded_shape(shape, pad_factor)
