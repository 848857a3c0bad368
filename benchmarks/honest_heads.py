"""Benchmark heads without the inverse crime, from two generators, split into validation and test sets.

Issue #13 asks for heads whose fields are *not* made with the inversion's own discrete kernel on
the scored grid.  Two generators, both simulating the field on a grid ``FACTOR`` (= 2) times finer
than the scored grid and bringing it back down:

* ``sim`` -- qsmprep's own phantom (``qsmprep.sim.phantom.make_head`` on the scored grid) with chi
  replicated onto the 2x finer grid (nearest neighbour: each scored voxel becomes 2x2x2 equal
  sub-voxels, so the scored truth is exactly the sub-voxel average), the field computed there with
  the fine grid's dipole kernel and averaged back down.  That is done in k-space on the scored grid
  with the equivalent *aliased* kernel (:func:`fine_grid_kernel`, checked against the brute-force
  fine-grid computation in ``tests/test_honest_heads.py``), so it costs no more than an ordinary
  forward field.  Signals as ``qsmprep.sim.forward.simulate_gre`` (shim, phase offset, dephasing,
  complex noise), from that field.
* ``qsmforward`` -- qsm-forward's own pipeline, with anatomy deformed differently from every
  ``qsmprep.sim`` head: the phantom's labels (``make_head`` with a larger B-spline deformation,
  ``deform_mm`` = 3.5) are resampled onto the 2x finer grid through a second, smooth low-order warp
  of another kind (:func:`_extra_warp`: sums of long-wavelength sinusoids, up to ~4 mm), and
  given qsm-forward's tissue model there: chi = chi+ + chi- per tissue from
  ``qsm_forward.CHISEP_TISSUE_PARAMS`` with its R1 / R2* texture coefficients (its air, bone, blood
  values; calcification and haemorrhage, which its table lacks, keep qsmprep's values), its dipole
  kernel (D(0) = 1/3, padding with the corner value), its 2nd-order shim
  (``generate_shimmed_field``'s model), its quadratic phase offset (``generate_phase_offset``), its
  signal equation (``generate_signal``: gamma-bar 42.58 MHz/T) on the fine grid, its k-space crop to
  the scored grid (``crop_kspace``) and its noise rule (``add_noise``: sigma = peak |signal| /
  peak SNR).  The fine-grid arithmetic is done here in float32 with the same formulas (qsm-forward's
  own functions work in float64 with 2x padding: ~7 GB per array on a 0.5 mm head); the formulas
  are checked against the package's functions on small grids in ``tests/test_honest_heads.py``.
  The truth is the fine chi averaged down 2x2x2 (the voxel mean susceptibility).

Head sets (:data:`CASES`): every setting (presets, thresholds, checkpoints, classical parameters)
is chosen on the ``validation`` heads only; the ``test`` heads are scored once, with the chosen
settings (``benchmarks/RESULTS.md`` says which head chose what).  Seeds of the validation heads
(100-199) and test heads (200-399) differ from the training heads of NSIDL (on-the-fly synthetic
phantoms, ``qsmprep.dl.synthetic``) and from every older benchmark head (0-9, 7001-7100, 9001-9004).

Use :func:`load_case` (cached as ``.npz`` under ``--cache``, default ``.honest_heads/``).
Command line: ``python benchmarks/honest_heads.py --list`` / ``--make NAME [--voxel 2]``.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

#: Fine-grid factor of the field simulation (per axis).
FACTOR = 2
DEFAULT_CACHE = ROOT / ".honest_heads"


def _tilt(deg: float, axis: str = "x") -> tuple[float, float, float]:
    a = math.radians(deg)
    return (0.0, math.sin(a), math.cos(a)) if axis == "x" else (math.sin(a), 0.0, math.cos(a))


@dataclass(frozen=True)
class CaseSpec:
    """One benchmark head.  ``role`` is ``validation`` or ``test``; ``voxel_mm`` the scored grid."""

    name: str
    generator: str  # "sim" | "qsmforward"
    seed: int
    role: str
    b0_t: float
    te_s: tuple[float, ...]
    b0_dir: tuple[float, float, float]
    snr: float  # sim: mean first-echo brain magnitude / sigma; qsmforward: qsm-forward's peak SNR
    phase_offset: bool | str = "auto"
    bipolar_rad: float = 0.0  # even echoes get this extra phase (constant + read-direction ramp)
    note: str = ""


ME3 = (0.004, 0.010, 0.016, 0.022, 0.028)
ME7 = (0.004, 0.008, 0.012, 0.016)

#: The heads.  Validation: choose settings.  Test: report.
CASES: dict[str, CaseSpec] = {c.name: c for c in [
    # --- validation (settings are chosen on these only)
    CaseSpec("val-sim-3T-ME-z", "sim", 100, "validation", 3.0, ME3, (0.0, 0.0, 1.0), 100.0,
             note="5 echoes, B0 along z"),
    CaseSpec("val-sim-7T-ME-obl", "sim", 101, "validation", 7.0, ME7, _tilt(18.0, "x"), 60.0,
             note="4 echoes, B0 tilted 18 deg"),
    CaseSpec("val-sim-3T-SE-obl", "sim", 102, "validation", 3.0, (0.020,), _tilt(12.0, "y"), 60.0,
             phase_offset="harmonic", note="single echo, harmonic phase offset"),
    CaseSpec("val-qf-3T-ME-obl", "qsmforward", 150, "validation", 3.0, ME3, _tilt(15.0, "y"), 120.0,
             note="qsm-forward pipeline, 5 echoes"),
    CaseSpec("val-qf-7T-ME-obl", "qsmforward", 151, "validation", 7.0, ME7, _tilt(10.0, "x"), 100.0,
             note="qsm-forward pipeline, 4 echoes at 7 T, B0 tilted 10 deg (added in session 12 to decide "
                  "the void refit at 7 T)"),
    CaseSpec("val-sim-7T-SE-obl", "sim", 103, "validation", 7.0, (0.015,), _tilt(10.0, "x"), 60.0,
             phase_offset="harmonic", note="single echo at 7 T, B0 tilted 10 deg, harmonic phase offset (added in "
                                             "session 14 to decide the voids' core placement at 7 T)"),
    # --- test (scored once, with the settings the validation heads chose)
    CaseSpec("sim-3T-ME-z", "sim", 201, "test", 3.0, ME3, (0.0, 0.0, 1.0), 100.0,
             note="5 echoes, B0 along z"),
    CaseSpec("sim-7T-ME-obl", "sim", 202, "test", 7.0, ME7, _tilt(20.0, "x"), 60.0,
             note="4 echoes, B0 tilted 20 deg"),
    CaseSpec("sim-3T-SE-obl", "sim", 203, "test", 3.0, (0.020,), _tilt(15.0, "y"), 60.0,
             phase_offset="harmonic", note="single echo, B0 tilted 15 deg, harmonic phase offset"),
    CaseSpec("sim-7T-SE-z", "sim", 204, "test", 7.0, (0.015,), (0.0, 0.0, 1.0), 60.0,
             phase_offset="harmonic", note="single echo, B0 along z, harmonic phase offset"),
    CaseSpec("qf-3T-ME-obl", "qsmforward", 301, "test", 3.0, ME3, _tilt(20.0, "y"), 120.0,
             note="qsm-forward pipeline, 5 echoes, B0 tilted 20 deg"),
    CaseSpec("qf-7T-ME-z", "qsmforward", 302, "test", 7.0, ME7, (0.0, 0.0, 1.0), 100.0,
             note="qsm-forward pipeline, 4 echoes, B0 along z"),
    CaseSpec("qf-7T-ME-obl-bipolar", "qsmforward", 303, "test", 7.0, ME7, _tilt(15.0, "x"), 100.0,
             bipolar_rad=0.6, note="qsm-forward pipeline, 4 echoes, bipolar readout (even-echo phase offset)"),
]}


def cases(role: str | None = None) -> list[CaseSpec]:
    """The specs with this ``role`` (None: all), in :data:`CASES` order."""
    return [c for c in CASES.values() if role is None or c.role == role]


# ------------------------------------------------------------------------------------------
# fine-grid fields
# ------------------------------------------------------------------------------------------


def _dipole(kx, ky, kz, b, d0: float = 0.0):
    k2 = kx * kx + ky * ky + kz * kz
    kb = kx * b[0] + ky * b[1] + kz * b[2]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = 1.0 / 3.0 - kb * kb / np.where(k2 == 0, 1.0, k2)
    return np.where(k2 == 0, d0, d)


def fine_grid_kernel(shape: Sequence[int], voxel_size: Sequence[float], b0_dir: Sequence[float],
                     factor: int = FACTOR) -> np.ndarray:
    """Half-spectrum (rfft) kernel on the grid ``shape`` that equals: replicate chi onto a grid
    ``factor`` times finer (each voxel -> factor^3 equal sub-voxels), convolve with the fine grid's
    dipole kernel (D(0) = 0), average the field back down over each voxel's sub-voxels.

    For the fine frequencies ``q = k + j / dx`` (j = 0..factor-1 per axis, wrapped into the fine
    band) that alias onto the coarse frequency ``k``, the replication and the averaging each
    multiply by the Dirichlet kernel ``b(q) = sin(pi q dx) / (factor sin(pi q dx / factor))``
    (symmetric sub-voxel offsets: real), so ``K(k) = sum_j b(q_j)^2 D_fine(q_j)`` (product of the
    per-axis ``b`` over the three axes).  float32, unit-free; ``K(0) = 0``.
    """
    b = np.asarray(b0_dir, np.float64)
    b = b / np.linalg.norm(b)
    f = int(factor)
    axes_k = []
    for ax, (n, dx) in enumerate(zip(shape, voxel_size)):
        k = np.fft.rfftfreq(n, d=dx) if ax == 2 else np.fft.fftfreq(n, d=dx)
        axes_k.append(k)
    out = None
    for js in itertools.product(range(f), repeat=3):
        qs, ws = [], []
        for ax in range(3):
            dx = float(voxel_size[ax])
            band = f / dx  # fine band width (cycles/mm)
            q = axes_k[ax] + js[ax] / dx
            q = (q + band / 2) % band - band / 2
            with np.errstate(invalid="ignore", divide="ignore"):
                den = f * np.sin(np.pi * q * dx / f)
                bq = np.where(np.abs(den) < 1e-12, 1.0, np.sin(np.pi * q * dx) / np.where(np.abs(den) < 1e-12, 1.0, den))
            sh = [1, 1, 1]
            sh[ax] = q.size
            qs.append(q.reshape(sh))
            ws.append((bq * bq).reshape(sh))
        term = ws[0] * ws[1] * ws[2] * _dipole(qs[0], qs[1], qs[2], b)
        out = term if out is None else out + term
    return out.astype(np.float32)


def fine_forward_field(chi: np.ndarray, voxel_size: Sequence[float], b0_dir: Sequence[float],
                       factor: int = FACTOR, pad_factor: float = 1.5) -> np.ndarray:
    """Field (ppm) of ``chi`` (ppm) simulated on a ``factor``-times finer grid and averaged down
    (:func:`fine_grid_kernel`), zero-padded by ``pad_factor`` (linear convolution).  float32."""
    import scipy.fft as sfft

    from qsmprep.qsm.dipole import padded_shape

    shp = padded_shape(chi.shape, pad_factor)
    ker = fine_grid_kernel(shp, voxel_size, b0_dir, factor)
    x = np.zeros(shp, np.float32)
    x[tuple(slice(0, n) for n in chi.shape)] = chi
    out = sfft.irfftn(sfft.rfftn(x, workers=2) * ker, s=shp, workers=2)
    return np.ascontiguousarray(out[tuple(slice(0, n) for n in chi.shape)], dtype=np.float32)


# --- qsm-forward's formulas, float32 / rfft (checked against the package in the tests) ---------


def qsmforward_kernel(shape: Sequence[int], voxel_size: Sequence[float], b0_dir: Sequence[float]) -> np.ndarray:
    """``qsm_forward._generate_3d_dipole_kernel`` on the rfft half spectrum of ``shape``.

    Its conventions: ``D(0) = 1/3`` (k^2 = eps there), the frequencies of axis 0 scaled by
    ``voxel_size[1]`` and of axis 1 by ``voxel_size[0]`` (the package swaps them; the same for
    in-plane isotropic voxels), ``b0_dir`` in array axes.
    """
    b = np.asarray(b0_dir, np.float64)
    vs = (float(voxel_size[1]), float(voxel_size[0]), float(voxel_size[2]))
    ks = []
    for ax, n in enumerate(shape):
        k = np.fft.rfftfreq(n, d=vs[ax]) if ax == 2 else np.fft.fftfreq(n, d=vs[ax])
        if ax == 2 and n % 2 == 0:
            k[-1] = -k[-1]  # the full FFT's Nyquist bin is the negative frequency
        sh = [1, 1, 1]
        sh[ax] = k.size
        ks.append(k.reshape(sh))
    # Nyquist planes: the package's full FFT + real part acts as the mean of the kernel at k and at
    # the wrapped -k, which differ there for an oblique B0 (the Nyquist component changes sign)
    flipped = [np.where(np.isclose(np.abs(k), 0.5 / v) & (n % 2 == 0), -k, k) for k, n, v in zip(ks, shape, vs)]
    d = 0.5 * (_dipole(ks[0], ks[1], ks[2], b, d0=1.0 / 3.0) + _dipole(*flipped, b, d0=1.0 / 3.0))
    return d.astype(np.float32)


def qsmforward_field(chi: np.ndarray, voxel_size, b0_dir, mask: np.ndarray | None = None,
                     pad_factor: float = 2.0) -> np.ndarray:
    """``qsm_forward.generate_field``: chi padded with its corner value to ``pad_factor`` x the
    grid, convolved with :func:`qsmforward_kernel`, cropped, demeaned in ``mask``.  float32 ppm."""
    import scipy.fft as sfft

    shp = tuple(int(round(n * pad_factor)) for n in chi.shape)
    if pad_factor != 2.0:
        shp = tuple(int(sfft.next_fast_len(n, real=True)) for n in shp)
    x = np.full(shp, np.float32(chi[-1, -1, -1]), np.float32)
    x[tuple(slice(0, n) for n in chi.shape)] = chi
    spec = sfft.rfftn(x, workers=2)
    del x
    spec *= qsmforward_kernel(shp, voxel_size, b0_dir)
    out = sfft.irfftn(spec, s=shp, workers=2)[tuple(slice(0, n) for n in chi.shape)]
    del spec
    out = np.ascontiguousarray(out, dtype=np.float32)
    if mask is not None:
        out -= np.float32(out[mask != 0].mean())
    return out


def _qf_shim_model(idx: Sequence[np.ndarray], dim) -> list:
    """The 9 columns of ``qsm_forward._create_model(order=2)`` for coordinates ``idx`` (broadcastable)."""
    x = idx[0] - dim[0] / 2
    y = idx[1] - dim[1] / 2
    z = idx[2] - dim[2] / 2
    return [np.ones_like(x + y + z), x, y, z, x * x - y * y, x * y, 2 * z * z - y * y - x * x, y * z, z * x]


def qsmforward_shim(field_ppm: np.ndarray, mask: np.ndarray, subsample: int = 2) -> np.ndarray:
    """``generate_shimmed_field(field, mask, order=2)``'s residual: the field minus its least-squares
    fit by qsm-forward's 2nd-order model, fitted on every ``subsample``-th mask voxel per axis
    (the package fits on all of them, which needs 9 float64 columns per voxel).  float32 ppm."""
    dim = field_ppm.shape
    sub = tuple(slice(0, None, subsample) for _ in range(3))
    m = np.asarray(mask, bool)[sub]
    pts = np.nonzero(m)
    idx = [p.astype(np.float64) * subsample for p in pts]
    a = np.stack(_qf_shim_model(idx, dim), 1)
    coef, *_ = np.linalg.lstsq(a, field_ppm[sub][m].astype(np.float64), rcond=None)
    g = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in dim], indexing="ij", sparse=True)
    cols = _qf_shim_model(g, dim)
    out = field_ppm.astype(np.float32).copy()
    for c, col in zip(coef, cols):
        out -= np.float32(c) * np.asarray(col, np.float32)
    return out


def qsmforward_phase_offset(m0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``qsm_forward.generate_phase_offset(M0, mask, M0.shape)`` (rad), written with broadcasting."""
    from qsm_forward.qsm_forward import _center_of_mass

    c, w = _center_of_mass(m0)
    dims = m0.shape
    g = [np.arange(1, n + 1, dtype=np.float64) - c[a] for a, n in enumerate(dims)]
    temp = ((g[0] / w[0]) ** 2)[:, None, None] + ((g[1] / w[1]) ** 2)[None, :, None] + ((g[2] / w[2]) ** 2)[None, None, :]
    vals = temp[np.asarray(mask) != 0]
    return (-temp / (vals.max() - vals.min()) * np.pi).astype(np.float32)


def crop_kspace_c64(vol: np.ndarray, dims: Sequence[int]) -> np.ndarray:
    """``qsm_forward.crop_kspace`` for a complex volume (centred k-space crop, energy scaling), complex64."""
    import scipy.fft as sfft

    k = sfft.fftshift(sfft.fftn(vol.astype(np.complex64), workers=2))
    sl = []
    for n, d in zip(vol.shape, dims):
        # qsm_forward.crop_imagespace: centre index n//2 kept at d//2
        lo = n // 2 - d // 2
        sl.append(slice(lo, lo + d))
    k = k[tuple(sl)]
    out = sfft.ifftn(sfft.ifftshift(k), workers=2)
    return (out * np.float32(np.prod(dims) / np.prod(vol.shape))).astype(np.complex64)


# ------------------------------------------------------------------------------------------
# generators
# ------------------------------------------------------------------------------------------


def _bipolar(phase: np.ndarray, mask: np.ndarray, amp_rad: float, rng) -> np.ndarray:
    """Add a bipolar-readout error to the even echoes (1-based 2, 4, ...): a constant plus a
    ramp along the read axis (axis 0), ``amp_rad`` at the brain's edges; wrapped again."""
    if amp_rad == 0 or phase.shape[-1] < 2:
        return phase
    n0 = phase.shape[0]
    idx = np.argwhere(mask)
    c0, half = idx[:, 0].mean(), max(1.0, (idx[:, 0].max() - idx[:, 0].min()) / 2)
    ramp = ((np.arange(n0) - c0) / half).astype(np.float32)[:, None, None]
    extra = np.float32(amp_rad) * (np.float32(rng.uniform(0.3, 0.7)) + ramp)
    out = phase.copy()
    for e in range(1, phase.shape[-1], 2):
        out[..., e] = np.angle(np.exp(1j * (phase[..., e] + extra))).astype(np.float32)
    return out


def make_sim(spec: CaseSpec, voxel_mm: float) -> dict:
    """A ``sim`` head (see the module docstring).  Returns the case dict (:func:`load_case`)."""
    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.sim import forward as fw
    from qsmprep.sim.phantom import make_head

    vs = (float(voxel_mm),) * 3
    head = make_head(voxel_size=vs, seed=spec.seed)
    b = np.asarray(spec.b0_dir, float)
    b /= np.linalg.norm(b)
    mask = head.brain_mask
    field = fine_forward_field(head.chi, vs, b)
    field = fw.shim_field(field, mask, vs)
    local = fine_forward_field(np.where(mask, head.chi, 0).astype(np.float32), vs, b)
    local = np.where(mask, local - local[mask].mean(), 0).astype(np.float32)
    te = tuple(spec.te_s)
    rng = np.random.default_rng(spec.seed + 1000)
    po = spec.phase_offset
    if po == "auto":
        po = True if len(te) > 1 else "harmonic"
    phi0 = fw.smooth_phase_offset(head.m0, mask, rng, bowl=po is True) if po else np.zeros(head.shape, np.float32)
    r2s = head.r2star * np.float32(spec.b0_t / 3.0)
    field_hz = (field * hz_per_ppm(spec.b0_t)).astype(np.float32)
    mag = np.empty(head.shape + (len(te),), np.float32)
    phase = np.empty_like(mag)
    sigma = 0.0
    for e, t in enumerate(te):
        sig = fw.spgr_signal(field, spec.b0_t, t, 0.035, 15.0, phi0, head.m0, head.r1, r2s)
        sig *= fw.dephasing_factor(field_hz, vs, t)
        if e == 0:
            sigma = float(np.abs(sig[mask]).mean()) / float(spec.snr)
        noise = rng.standard_normal(sig.shape, dtype=np.float32) + 1j * rng.standard_normal(sig.shape, dtype=np.float32)
        sig = sig + (sigma * noise).astype(np.complex64)
        mag[..., e] = np.abs(sig)
        phase[..., e] = np.angle(sig)
    phase = _bipolar(phase, mask, spec.bipolar_rad, rng)
    return dict(mag=mag, phase=phase, chi=head.chi * mask, labels=head.labels, brain_mask=mask,
                local_field_ppm=local, field_ppm=field, voxel_size=vs, b0_dir=b, b0_t=spec.b0_t, te_s=te,
                phase_offset_rad=phi0)


# qsmprep label -> qsm-forward CHISEP_TISSUE_PARAMS label (None: keep qsmprep's value)
_QF_LABEL = {1: 1, 2: 1, 3: 3, 4: 3, 5: 2, 6: 2, 7: 7, 8: 7, 9: 6, 10: 6, 11: 4, 12: 4, 13: 10, 14: 9, 15: 8,
             16: 11, 17: None, 18: None, 20: 10, 21: 15, 22: 13, 23: 14, 0: 14, 24: 11}


def _extra_warp(shape, spacing_mm: float, rng, amp_mm: float = 4.0) -> list[np.ndarray]:
    """A smooth displacement (mm) of another kind than make_head's B-spline: per component a sum of
    4 separable products of sinusoids of wavelength 80-200 mm with random phases, scaled to at most
    ``amp_mm``.  ``spacing_mm`` = the grid's voxel size.  Three float32 arrays of ``shape``."""
    comps = []
    for _ in range(3):
        total = np.zeros(shape, np.float32)
        for _ in range(4):
            parts = []
            for n in shape:
                lam = rng.uniform(80.0, 200.0)
                x = np.arange(n, dtype=np.float32) * spacing_mm
                parts.append(np.cos(2 * np.pi * x / lam + rng.uniform(0, 2 * np.pi)).astype(np.float32))
            total += parts[0][:, None, None] * parts[1][None, :, None] * parts[2][None, None, :]
        total *= np.float32(amp_mm / max(1e-6, float(np.abs(total).max())))
        comps.append(total)
    return comps


def make_qsmforward(spec: CaseSpec, voxel_mm: float, factor: int = FACTOR) -> dict:
    """A ``qsmforward`` head (see the module docstring).  Returns the case dict (:func:`load_case`)."""
    import scipy.ndimage as ndi
    from qsm_forward.qsm_forward import CHISEP_TISSUE_PARAMS

    from qsmprep.sim.phantom import LABELS, TISSUE_M0_R1_R2S, make_head, structure_of

    vs = (float(voxel_mm),) * 3
    head = make_head(voxel_size=vs, seed=spec.seed, deform_mm=3.5)
    rng = np.random.default_rng(spec.seed + 2000)
    nf = tuple(n * factor for n in head.shape)
    vf = tuple(v / factor for v in vs)
    # fine voxel centres in coarse index units, moved by the extra warp (mm -> coarse voxels)
    warp = _extra_warp(nf, vf[0], rng)
    off = (np.arange(factor) - (factor - 1) / 2) / factor
    ci = [(np.arange(n) // factor + np.tile(off, n // factor)).astype(np.float32) for n in nf]
    g1, g2 = np.meshgrid(ci[1], ci[2], indexing="ij")
    labels_f = np.empty(nf, np.int16)
    for a0 in range(nf[0]):  # slab by slab (memory)
        coords = np.stack([ci[0][a0] + warp[0][a0] / np.float32(vs[0]), g1 + warp[1][a0] / np.float32(vs[1]),
                           g2 + warp[2][a0] / np.float32(vs[2])])
        labels_f[a0] = ndi.map_coordinates(head.labels, coords, order=0, mode="nearest")
    del warp
    brain_f = (labels_f >= 1) & (labels_f <= 18)
    # tissue model: qsm-forward's chi+/chi- with R1/R2* texture; M0/R1/R2* from qsmprep's table
    nlab = max(LABELS) + 1
    lut = {k: np.zeros(nlab, np.float32) for k in ("m0", "r1", "r2s", "chi", "c_r1", "c_r2s")}
    for i, name in LABELS.items():
        m0, r1, r2s = TISSUE_M0_R1_R2S[structure_of(name)]
        lut["m0"][i], lut["r1"][i], lut["r2s"][i] = m0, r1, r2s
        q = _QF_LABEL.get(i)
        if q is None:
            lut["chi"][i] = head.chi_values[name]
        else:
            cp, cn, r1p, r2p, r1n, r2n = CHISEP_TISSUE_PARAMS[q]
            lut["chi"][i], lut["c_r1"][i], lut["c_r2s"][i] = cp + cn, r1p + r1n, r2p + r2n
    tex1 = ndi.gaussian_filter(rng.standard_normal(head.shape).astype(np.float32), 2.5)
    tex2 = ndi.gaussian_filter(rng.standard_normal(head.shape).astype(np.float32), 2.0)
    tex1 /= tex1.std()
    tex2 /= tex2.std()
    up = lambda a: np.repeat(np.repeat(np.repeat(a, factor, 0), factor, 1), factor, 2)  # noqa: E731
    r1 = lut["r1"][labels_f] * (1 + 0.06 * up(tex1))
    r2s = lut["r2s"][labels_f] * (1 + 0.08 * up(tex2))
    chi = lut["chi"][labels_f]
    for i in range(nlab):  # texture: coefficient x (map - tissue mean)
        if lut["c_r1"][i] == 0 and lut["c_r2s"][i] == 0:
            continue
        sel = labels_f == i
        if sel.any():
            chi[sel] += lut["c_r1"][i] * (r1[sel] - r1[sel].mean()) + lut["c_r2s"][i] * (r2s[sel] - r2s[sel].mean())
    m0 = lut["m0"][labels_f]
    b = np.asarray(spec.b0_dir, float)
    b /= np.linalg.norm(b)
    field = qsmforward_field(chi, vf, b, brain_f, pad_factor=1.5)
    local = qsmforward_field(np.where(brain_f, chi, 0).astype(np.float32), vf, b, brain_f, pad_factor=1.5)
    local = np.where(brain_f, local, 0).astype(np.float32)
    field = qsmforward_shim(field, brain_f)
    phi0 = qsmforward_phase_offset(m0, brain_f) if spec.phase_offset else np.zeros(nf, np.float32)
    r2s_b = r2s * np.float32(spec.b0_t / 3.0)  # qsmprep's R2* table is for 3 T
    tr, flip = 0.035, 15.0
    e1 = np.exp(-tr * r1)
    steady = (m0 * np.sin(np.deg2rad(flip)) * (1 - e1) / (1 - np.cos(np.deg2rad(flip)) * e1)).astype(np.float32)
    del e1, r1
    te = tuple(spec.te_s)
    sigs = []
    for t in te:  # qsm_forward.generate_signal (gamma-bar 42.58 MHz/T) on the fine grid, then crop_kspace
        ph = (2 * np.pi * 42.58e6 * spec.b0_t * t * 1e-6) * field + phi0
        sig = (steady * np.exp(-t * r2s_b)).astype(np.float32) * np.exp(1j * ph.astype(np.float32))
        sigs.append(crop_kspace_c64(sig.astype(np.complex64), head.shape))
        del sig, ph
    peak = max(float(np.abs(s).max()) for s in sigs)
    sigma = peak / float(spec.snr)
    nrng = np.random.default_rng(spec.seed + 3000)
    mag = np.empty(head.shape + (len(te),), np.float32)
    phase = np.empty_like(mag)
    down = lambda a: a.reshape(head.shape[0], factor, head.shape[1], factor, head.shape[2], factor).mean((1, 3, 5))  # noqa: E731
    mask = down(brain_f.astype(np.float32)) >= 0.5
    for e, s in enumerate(sigs):
        s = s + (sigma * (nrng.standard_normal(s.shape) + 1j * nrng.standard_normal(s.shape))).astype(np.complex64)
        mag[..., e] = np.abs(s)
        phase[..., e] = np.angle(s)
    phase = _bipolar(phase, mask, spec.bipolar_rad, nrng)
    # truth: the voxel mean of the brain's own susceptibility (the sources of the local field); the
    # signal of an edge voxel still holds whatever else is in it
    chi_c = down(np.where(brain_f, chi, 0)).astype(np.float32)
    # labels on the scored grid: the sub-voxel label of the most sub-voxels (mode)
    lab_blocks = labels_f.reshape(head.shape[0], factor, head.shape[1], factor, head.shape[2], factor)
    lab_blocks = lab_blocks.transpose(0, 2, 4, 1, 3, 5).reshape(head.shape + (factor ** 3,))
    counts = np.stack([(lab_blocks == i).sum(-1) for i in range(nlab)], -1)
    labels = counts.argmax(-1).astype(np.int16)
    del lab_blocks, counts
    local_c = down(local).astype(np.float32)
    local_c = np.where(mask, local_c - local_c[mask].mean(), 0).astype(np.float32)
    snr_brain = float(mag[..., 0][mask].mean()) / sigma
    return dict(mag=mag, phase=phase, chi=np.where(mask, chi_c, 0).astype(np.float32), labels=labels,
                brain_mask=mask, local_field_ppm=local_c, field_ppm=down(field).astype(np.float32), voxel_size=vs,
                b0_dir=b, b0_t=spec.b0_t, te_s=te, snr_brain=snr_brain)


def load_case(name: str, voxel_mm: float = 2.0, cache: str | os.PathLike | None = None) -> dict:
    """The case ``name`` on a ``voxel_mm`` grid: ``mag``, ``phase`` (X, Y, Z, E; rad), ``chi`` (truth, ppm,
    zero outside the brain), ``labels`` (``qsmprep.sim.phantom.LABELS``), ``brain_mask``,
    ``local_field_ppm`` (true local field, fine-grid simulated), ``field_ppm``, ``voxel_size``,
    ``b0_dir`` (array axes), ``b0_t``, ``te_s``, plus ``spec``.  Cached as ``.npz``."""
    spec = CASES[name]
    cdir = Path(cache) if cache else DEFAULT_CACHE
    cdir.mkdir(parents=True, exist_ok=True)
    path = cdir / f"{name}_{voxel_mm:g}mm.npz"
    if path.exists():
        z = np.load(path)
        d = {k: z[k] for k in z.files}
        d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
        d["te_s"] = tuple(float(v) for v in d["te_s"])
        d["b0_t"] = float(d["b0_t"])
    else:
        t0 = time.time()
        d = make_sim(spec, voxel_mm) if spec.generator == "sim" else make_qsmforward(spec, voxel_mm)
        d.pop("phase_offset_rad", None)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{k: np.asarray(v) for k, v in d.items()})
        os.replace(tmp, path)
        print(f"[honest_heads] made {name} at {voxel_mm:g} mm in {time.time() - t0:.0f} s -> {path}", flush=True)
    d["spec"] = spec
    return d


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--make", nargs="*", default=[])
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--cache", default=None)
    a = ap.parse_args(argv)
    if a.list:
        for c in CASES.values():
            print(c.role, c.name, asdict(c))
    for n in (a.make if a.make != ["all"] else list(CASES)):
        load_case(n, a.voxel, a.cache)


if __name__ == "__main__":
    main()
