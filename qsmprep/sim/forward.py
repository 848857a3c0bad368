"""Forward simulation of (multi-echo) gradient-echo magnitude and phase from a :class:`Head`.

Choices (and why):

* **Field**: ``qsmprep.qsm.dipole.forward_field`` (D(0) = 0, zero padding 1.5x, exact for
  anisotropic voxels and any B0 direction in array axes).  qsm-forward 0.32's own kernel swaps
  the voxel sizes of the first two axes and uses D(0) = 1/3, so it is not used for the field.
* **Signal**: ``qsm_forward.generate_signal`` (spoiled-GRE steady state ``M0 sin(a)(1-E1) /
  (1 - cos(a) E1) exp(-TE R2*) exp(i phase)``).  It uses gamma-bar = 42.58 MHz/T, so the field
  handed to it is rescaled by ``GAMMA_BAR_HZ_PER_T / 42.58e6`` to make the phase exactly
  ``rad_per_ppm(b0_t, te) * field_ppm + phi0``.  If qsm-forward is not installed the same
  formula is evaluated here (tested to agree).
* **Phase offset** phi0 (echo-independent, smooth): qsm-forward's ``generate_phase_offset``
  (a quadratic bowl spanning pi over the brain) plus a per-seed constant and linear ramp.
* **Noise**: complex Gaussian with the *same* sigma in every echo (qsm-forward's ``add_noise``
  rescales the noise to each echo's own peak, which makes late echoes less noisy), drawn from
  ``numpy.random.default_rng(seed)``; ``snr`` = mean first-echo magnitude in the brain / sigma.
* **Background sources on coarse grids**: with ``background="auto"`` (default) the field of
  everything outside the brain is simulated on a 1 mm grid and sampled on the coarse grid
  (:func:`background_field_fine`), because voxel-sharp skull/air edges within a voxel or two
  of the brain give a non-harmonic field inside it on a coarse grid (oblique B0 worst).
* **Oblique B0**: the field is computed with ``b0_dir`` in array axes and the returned affine is
  the head's affine rotated (about the grid centre) so that
  ``qsmprep.qsm.geometry.b0_direction_from_affine(affine)`` gives ``b0_dir`` back (up to sign).
* **R2\\***: the head holds 3 T values; they are scaled by ``b0_t / 3`` (R2* is about
  proportional to B0).  R1 is left as is.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from qsmprep.qsm.constants import GAMMA_BAR_HZ_PER_T, hz_per_ppm, rad_per_ppm
from qsmprep.qsm.dipole import forward_field

_QSMFWD_GAMMA = 42.58e6  # Hz/T, hard-coded in qsm_forward.generate_signal


def _unit(v: Sequence[float]) -> np.ndarray:
    b = np.asarray(v, dtype=np.float64).reshape(3)
    n = np.linalg.norm(b)
    if not np.isfinite(n) or n == 0:
        raise ValueError(f"b0_dir must be a non-zero 3-vector, got {v!r}.")
    return b / n


def rotation_between(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    """Proper rotation matrix R (3x3) with ``R @ a_hat = b_hat`` (Rodrigues; identity if parallel)."""
    a, b = _unit(a), _unit(b)
    v = np.cross(a, b)
    c = float(np.dot(a, b))
    s = float(np.linalg.norm(v))
    if s < 1e-12:
        if c > 0:
            return np.eye(3)
        # antiparallel: rotate by pi about any axis perpendicular to a
        p = np.eye(3)[np.argmin(np.abs(a))]
        k = np.cross(a, p)
        k /= np.linalg.norm(k)
        return 2.0 * np.outer(k, k) - np.eye(3)
    kx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + kx + kx @ kx * ((1.0 - c) / s**2)


def oblique_affine(affine: np.ndarray, b0_dir: Sequence[float], shape: Sequence[int]) -> np.ndarray:
    """Rotate ``affine`` about the grid centre so that B0 (world z) lies along ``b0_dir`` in array axes.

    ``b0_dir`` is in array axes (i, j, k).  The result ``A'`` satisfies
    ``b0_direction_from_affine(A') == +-b0_dir``; voxel sizes are unchanged.
    """
    a0 = np.asarray(affine, dtype=np.float64)
    b = _unit(b0_dir)
    r0 = a0[:3, :3]
    cos0 = r0 / np.linalg.norm(r0, axis=0)
    q = rotation_between(cos0 @ b, (0.0, 0.0, 1.0))
    centre = a0 @ np.r_[(np.asarray(shape, float) - 1) / 2.0, 1.0]
    out = np.eye(4)
    out[:3, :3] = q @ r0
    out[:3, 3] = q @ (a0[:3, 3] - centre[:3]) + centre[:3]
    return out


def spgr_signal(field_ppm, b0_t, te_s, tr_s, flip_deg, phase_offset_rad, m0, r1, r2star) -> np.ndarray:
    """Complex spoiled-GRE signal of one echo (qsm-forward's model, exact gamma-bar).

    ``M0 * sin(a)(1 - E1)/(1 - cos(a) E1) * exp(-TE R2*) * exp(i (rad_per_ppm(B0, TE) field + phi0))``
    with ``E1 = exp(-TR R1)``; field in ppm, TE/TR in s, R1/R2* in 1/s, angles in deg/rad.
    Uses ``qsm_forward.generate_signal`` when qsm-forward is installed.
    """
    try:
        from qsm_forward import qsm_forward as qf
    except ImportError:  # pragma: no cover - exercised only without qsm-forward
        qf = None
    if qf is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            sig = qf.generate_signal(
                field=np.asarray(field_ppm, np.float64) * (GAMMA_BAR_HZ_PER_T / _QSMFWD_GAMMA),
                B0=float(b0_t), TR=float(tr_s), TE=float(te_s), flip_angle=float(flip_deg),
                phase_offset=phase_offset_rad, R1=r1, R2star=r2star, M0=m0,
            )
        return np.asarray(sig, np.complex64)
    return spgr_signal_reference(field_ppm, b0_t, te_s, tr_s, flip_deg, phase_offset_rad, m0, r1, r2star)


def spgr_signal_reference(field_ppm, b0_t, te_s, tr_s, flip_deg, phase_offset_rad, m0, r1, r2star) -> np.ndarray:
    """Same as :func:`spgr_signal`, written out here (no qsm-forward)."""
    a = np.deg2rad(flip_deg)
    e1 = np.exp(-float(tr_s) * np.asarray(r1, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        steady = np.sin(a) * (1 - e1) / (1 - np.cos(a) * e1)
    sig = np.asarray(m0, np.float64) * steady * np.exp(-float(te_s) * np.asarray(r2star, np.float64))
    phase = rad_per_ppm(b0_t, te_s) * np.asarray(field_ppm, np.float64) + phase_offset_rad
    out = sig * np.exp(1j * phase)
    out[~np.isfinite(out)] = 0
    return out.astype(np.complex64)


def smooth_phase_offset(m0: np.ndarray, mask: np.ndarray, rng: np.random.Generator, bowl: bool = True) -> np.ndarray:
    """Smooth echo-independent phase offset phi0 (rad): constant + linear ramp (+ quadratic bowl).

    The bowl is qsm-forward's ``generate_phase_offset`` (spans pi over the brain); it is not
    harmonic, so only multi-echo data (where phi0 is fitted out) should carry it.  Constant and
    ramp are drawn from ``rng`` (ramp up to +-0.6 rad from the centre to each face).
    """
    shape = m0.shape
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij", sparse=True)
    ramp = sum(float(rng.uniform(-0.6, 0.6)) * g for g in grids)
    const = float(rng.uniform(-np.pi, np.pi))
    out = ramp + const
    if bowl:
        try:
            from qsm_forward import qsm_forward as qf

            out = out + np.asarray(qf.generate_phase_offset(m0, mask, shape), np.float64)
        except ImportError:  # pragma: no cover
            full = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
            out = out - np.pi * sum(g**2 for g in full) / 3.0
    return np.broadcast_to(out, shape).astype(np.float32)


def harmonic_basis(shape: Sequence[int], voxel_size: Sequence[float], centre_vox: Sequence[float]) -> np.ndarray:
    """The 9 real solid harmonics of order <= 2 (1, x, y, z, xy, xz, yz, x^2-y^2, 2z^2-x^2-y^2).

    Coordinates in units of 100 mm about ``centre_vox`` (array axes).  Every term has zero
    Laplacian, so a field built from them is what a scanner's (2nd-order) shim adds and what
    background-field removal removes.  Returns float64 (9, X, Y, Z).
    """
    g = np.meshgrid(*[(np.arange(n) - c) * d / 100.0 for n, c, d in zip(shape, centre_vox, voxel_size)], indexing="ij")
    x, y, z = g
    one = np.ones(tuple(shape))
    return np.stack([one, x, y, z, x * y, x * z, y * z, x**2 - y**2, 2 * z**2 - x**2 - y**2])


def shim_field(field_ppm: np.ndarray, mask: np.ndarray, voxel_size: Sequence[float]) -> np.ndarray:
    """Subtract the least-squares fit (inside ``mask``) of the order-<=2 harmonics: an ideal 2nd-order shim.

    ``field_ppm`` in ppm; returns the shimmed field (ppm, float32).  The removed part is harmonic.
    """
    centre = np.argwhere(mask).mean(axis=0)
    basis = harmonic_basis(field_ppm.shape, voxel_size, centre)
    a = basis[:, mask].T
    coef, *_ = np.linalg.lstsq(a, field_ppm[mask].astype(np.float64), rcond=None)
    return (field_ppm - np.tensordot(coef, basis, axes=(0, 0))).astype(np.float32)


def dephasing_factor(field_hz: np.ndarray, voxel_size: Sequence[float], te_s: float) -> np.ndarray:
    """Intra-voxel dephasing attenuation ``prod_a |sinc(G_a * dx_a * TE)|`` (linear field across a voxel).

    ``G_a`` is the field gradient along axis a in Hz per voxel (``numpy.gradient``), ``np.sinc``
    is the normalised sinc.  Darkens voxels next to air/bone as in real data.  float32.
    ``voxel_size`` is not needed (gradients are per voxel); it is kept for a uniform signature.
    """
    out = np.ones(field_hz.shape, np.float32)
    for a in range(3):
        g = np.gradient(field_hz.astype(np.float32), axis=a)
        out *= np.abs(np.sinc(g * float(te_s))).astype(np.float32)
    return out


_BG_CACHE: dict = {}


def background_field_fine(head, b0_dir: Sequence[float], fine_mm: float = 1.0, pad_factor: float = 1.5) -> np.ndarray:
    """Field (ppm) of the sources outside the brain, simulated on a ``fine_mm`` grid, sampled on ``head``'s grid.

    On coarse grids the skull lies within a voxel or two of the brain, and the FFT field of
    such voxel-sharp sources is not harmonic inside the brain (worst with oblique B0), which
    no background removal can undo.  Real data sample a field that is harmonic in the brain,
    so this rebuilds the same head (``head.params``) on a finer grid covering the same field
    of view, computes the field of ``chi`` outside that grid's brain mask there, and samples
    it (trilinear) at the coarse voxel centres.  Results are cached per head and direction.
    """
    import json

    import scipy.ndimage as ndi

    from .phantom import make_head

    if not head.params:
        raise ValueError("background_field_fine needs a Head made by make_head (head.params is empty).")
    b = _unit(b0_dir)
    key = json.dumps([head.params, [round(float(v), 12) for v in b], fine_mm, pad_factor], sort_keys=True, default=str)
    if key in _BG_CACHE:
        return _BG_CACHE[key]
    vs_c = np.asarray(head.voxel_size, float)
    n_c = np.asarray(head.shape)
    centre = np.asarray(head.affine)[:3, 3] + (n_c - 1) / 2.0 * vs_c
    vs_f = np.minimum(vs_c, float(fine_mm))
    n_f = np.ceil(n_c * vs_c / vs_f).astype(int)
    origin_f = centre - (n_f - 1) / 2.0 * vs_f
    params = dict(head.params, voxel_size=tuple(vs_f), shape=tuple(int(n) for n in n_f), origin_mm=tuple(origin_f))
    fine = make_head(**params)
    src = np.where(fine.brain_mask, 0, fine.chi).astype(np.float32)
    del fine
    bg_f = forward_field(src, tuple(vs_f), b, pad_factor=pad_factor)
    del src
    axes = [(np.asarray(head.affine)[a, 3] + vs_c[a] * np.arange(n_c[a]) - origin_f[a]) / vs_f[a] for a in range(3)]
    coords = np.meshgrid(*axes, indexing="ij")
    out = ndi.map_coordinates(bg_f, coords, order=1, mode="nearest").astype(np.float32)
    if len(_BG_CACHE) > 8:
        _BG_CACHE.clear()
    _BG_CACHE[key] = out
    return out


def _total_and_local_field(head, chi, mask, vs, b, background: str, pad_factor: float, shim: bool):
    """(total field ppm, local field ppm (demeaned in the brain, 0 outside), the background method
    used) of :func:`simulate_gre`; ``background="auto"`` resolved to ``"fine"`` or ``"grid"``."""
    if background not in ("auto", "grid", "fine"):
        raise ValueError(f"background must be 'auto', 'grid' or 'fine', got {background!r}.")
    if background == "auto":
        background = "fine" if (max(vs) > 1.25 and getattr(head, "params", None)) else "grid"
    local_raw = forward_field(np.where(mask, chi, 0).astype(np.float32), vs, b, pad_factor=pad_factor)
    if background == "fine":
        field_ppm = local_raw + background_field_fine(head, b, pad_factor=pad_factor)
    else:
        field_ppm = forward_field(chi, vs, b, pad_factor=pad_factor)
    if shim:
        field_ppm = shim_field(field_ppm, mask, vs)
    local = np.where(mask, local_raw - local_raw[mask].mean(), 0).astype(np.float32)
    return field_ppm, local, background


def _phase_offset(head, mask, rng, phase_offset, n_echo: int) -> np.ndarray:
    """phi0 (rad, float32) of :func:`simulate_gre` for its ``phase_offset`` option (``"auto"``:
    the bowl with several echoes, ``"harmonic"`` with one), drawn from ``rng``."""
    if phase_offset == "auto":
        phase_offset = True if n_echo > 1 else "harmonic"
    if phase_offset not in (True, False, "harmonic"):
        raise ValueError(f"phase_offset must be True, False, 'harmonic' or 'auto', got {phase_offset!r}.")
    if phase_offset:
        return smooth_phase_offset(head.m0, mask, rng, bowl=phase_offset is True)
    return np.zeros(np.shape(head.chi), np.float32)


def _echo_signals(head, field_ppm, field_hz, phi0, r2s, mask, vs, b0_t, te, tr_s, flip_deg, snr, dephasing, rng):
    """Magnitude and wrapped phase (float32 (X, Y, Z, E), phase in (-pi, pi]) of every echo, and the
    noise sigma (the same in every echo, set by ``snr`` on the first; 0 = no noise, drawn from ``rng``)."""
    mag = np.empty(field_ppm.shape + (len(te),), np.float32)
    phase = np.empty_like(mag)
    sigma = 0.0
    for e, t in enumerate(te):
        sig = spgr_signal(field_ppm, b0_t, t, tr_s, flip_deg, phi0, head.m0, head.r1, r2s)
        if dephasing:
            sig *= dephasing_factor(field_hz, vs, t)
        if e == 0 and snr is not None and np.isfinite(snr) and snr > 0:
            sigma = float(np.abs(sig[mask]).mean()) / float(snr)
        if sigma > 0:
            noise = rng.standard_normal(sig.shape, dtype=np.float32) + 1j * rng.standard_normal(sig.shape, dtype=np.float32)
            sig = sig + (sigma * noise).astype(np.complex64)
        mag[..., e] = np.abs(sig)
        ph = np.angle(sig).astype(np.float32)
        ph[ph <= -np.pi] += np.float32(2 * np.pi)
        phase[..., e] = ph
    return mag, phase, sigma


def simulate_gre(
    head,
    b0_t: float = 3.0,
    te_s: Sequence[float] = (0.004, 0.010, 0.016, 0.022),
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    snr: float | None = 80.0,
    seed: int = 0,
    tr_s: float = 0.035,
    flip_deg: float = 15.0,
    phase_offset: bool | str = "auto",
    pad_factor: float = 1.5,
    shim: bool = True,
    dephasing: bool = True,
    background: str = "auto",
) -> dict:
    """Simulate multi-echo GRE magnitude and wrapped phase of ``head`` (a :class:`~qsmprep.sim.phantom.Head`).

    Parameters
    ----------
    head : the phantom (chi in ppm, m0, r1, r2star at 3 T, brain_mask, affine).
    b0_t : field strength in T.
    te_s : echo times in s.
    b0_dir : B0 direction in array axes (unit vector after normalisation).
    snr : mean first-echo brain magnitude over the noise sigma; ``None``/``inf`` = no noise.
    seed : seeds the noise and the phase offset.
    tr_s, flip_deg : spoiled-GRE repetition time (s) and flip angle (deg).
    phase_offset : smooth echo-independent phase offset phi0: ``True`` = constant + ramp +
        quadratic bowl (:func:`smooth_phase_offset`), ``"harmonic"`` = constant + ramp only,
        ``False`` = none, ``"auto"`` = ``True`` for several echoes and ``"harmonic"`` for one
        (a single echo cannot separate phi0 from the field; after coil combination the
        remaining offset is close to harmonic, which background removal takes out).
    pad_factor : zero padding for the dipole convolution.
    shim : remove the order-<=2 harmonic part of the total field inside the brain (an ideal
        scanner shim, :func:`shim_field`); harmonic, so the local field is unchanged.
    dephasing : attenuate the magnitude by intra-voxel dephasing (:func:`dephasing_factor`).
    background : how the field of the sources outside the brain is computed: ``"grid"`` on
        the head's own grid; ``"fine"`` on a 1 mm grid covering the same field of view
        (:func:`background_field_fine`; physically right on coarse grids, a few seconds more);
        ``"auto"`` = ``"fine"`` when the voxels are coarser than 1.25 mm and the head came from
        ``make_head``, else ``"grid"``.  The local field is always computed on the head's grid.

    Returns
    -------
    dict with
      ``mag`` float32 (X, Y, Z, E); ``phase`` float32 (X, Y, Z, E), rad, wrapped to (-pi, pi];
      ``field_ppm`` total field (all sources, after the shim) in ppm, float32; ``field_hz`` the same in Hz;
      ``local_field_ppm`` forward field of chi inside the brain mask only, demeaned in the mask,
      0 outside (ppm); ``affine`` (4, 4) with B0 = world z; ``te_s`` tuple; ``b0_t``;
      ``b0_dir`` unit vector (array axes); ``brain_mask`` bool; ``phase_offset_rad`` phi0;
      ``noise_sigma`` (signal units); ``voxel_size`` (mm).
    """
    te = tuple(float(t) for t in np.atleast_1d(te_s))
    if not te or min(te) <= 0:
        raise ValueError(f"te_s must hold positive echo times in seconds, got {te_s!r}.")
    b = _unit(b0_dir)
    vs = tuple(float(v) for v in head.voxel_size)
    mask = np.asarray(head.brain_mask, bool)
    chi = np.asarray(head.chi, np.float32)
    field_ppm, local, background = _total_and_local_field(head, chi, mask, vs, b, background, pad_factor, shim)
    field_hz = (field_ppm * hz_per_ppm(b0_t)).astype(np.float32)

    rng = np.random.default_rng(seed)
    phi0 = _phase_offset(head, mask, rng, phase_offset, len(te))
    r2s = np.asarray(head.r2star, np.float32) * (float(b0_t) / 3.0)
    mag, phase, sigma = _echo_signals(head, field_ppm, field_hz, phi0, r2s, mask, vs, b0_t, te, tr_s, flip_deg,
                                      snr, dephasing, rng)

    affine = oblique_affine(head.affine, b, chi.shape) if abs(abs(b[2]) - 1.0) > 1e-12 else np.asarray(head.affine, float).copy()
    return dict(mag=mag, phase=phase, field_ppm=field_ppm.astype(np.float32), field_hz=field_hz,
                local_field_ppm=local, affine=affine, te_s=te, b0_t=float(b0_t), b0_dir=b, brain_mask=mask,
                phase_offset_rad=phi0, noise_sigma=sigma, voxel_size=vs, background=background)
