"""On-the-fly synthetic training data for NSIDL (torch; CPU or GPU).

Two phantom families (random shapes alone do not generalise to whole heads, so brain-like volumes
dominate; MODEL_CARD.md):

* **brain-like** heads drawn in normalised brain coordinates ``p = x_mm / a`` (a = the
  brain's semi-axes in mm): a deformed ellipsoidal brain, a folded cortical ribbon with
  sulcal CSF, ventricles, seven bilateral deep-gray nuclei (caudate, putamen, pallidum,
  thalamus, substantia nigra, red nucleus, dentate) with randomised iron, smooth texture,
  veins (intersections of two random level sets = tubes), and with some probability
  calcifications, haemorrhages and MS-like lesions;
* **random shapes** (DeepQSM style): rotated ellipsoids / cuboids with random chi inside a
  brain-shaped mask.

Then the acquisition: random B0 direction, voxel size (with slice anisotropy), phase scale
``s`` (rad/ppm), a magnitude weight (M0 exp(-TE R2*) x coil profile), the field
``f = Me (D * (chi Mb))`` demeaned in ``Me``, where ``Mb`` is the whole brain and ``Me``
the brain eroded by 0-4 mm (what V-SHARP leaves; sources in the removed rim are a real
model error), residual polynomial background, a rim error band and phase noise
``sigma/(W s)``.  Units: chi and field in ppm, voxel size in mm, s in rad/ppm.

Everything is drawn from one ``torch.Generator`` per batch so a (seed, step) pair
reproduces a batch exactly on the same device type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field as dc_field

import torch

from qsmprep.dl import physics

# Deep-gray nuclei: centre and semi-axes in normalised brain coordinates, chi range in ppm (scaled per
# volume by a random iron level, then with the whole map by ``SynthConfig.chi_scale``).
DGM = {
    #            centre (LR, AP, SI)     semi-axes              chi range
    "caudate": ((0.17, 0.20, 0.14), (0.06, 0.15, 0.08), (0.02, 0.12)),
    "putamen": ((0.32, 0.05, 0.00), (0.07, 0.18, 0.12), (0.01, 0.15)),
    "pallidum": ((0.24, 0.00, -0.02), (0.04, 0.08, 0.07), (0.08, 0.30)),
    "thalamus": ((0.12, -0.16, 0.04), (0.09, 0.14, 0.10), (-0.02, 0.06)),
    "nigra": ((0.10, -0.13, -0.26), (0.04, 0.08, 0.035), (0.05, 0.30)),
    "red_nucleus": ((0.06, -0.12, -0.19), (0.03, 0.035, 0.035), (0.04, 0.22)),
    "dentate": ((0.20, -0.55, -0.45), (0.05, 0.07, 0.045), (0.04, 0.22)),
}


@dataclass
class SynthConfig:
    """Knobs of the generator (defaults = the shipped training recipe)."""

    p_shapes: float = 0.2           # fraction of random-shape volumes
    max_voxels: int = 2_200_000     # voxel budget per volume (crop the brain beyond it)
    voxel_inplane: tuple = (0.8, 1.6)  # mm, log-uniform
    p_aniso: float = 0.3            # probability of thicker slices
    aniso_ratio: tuple = (1.2, 2.5)
    brain_semi_mm: tuple = (68.0, 86.0, 64.0)  # LR, AP, SI semi-axes (x U(0.85, 1.1))
    s_range: tuple = (5.0, 40.0)    # rad/ppm, log-uniform
    snr_range: tuple = (20.0, 150.0)
    chi_scale: tuple = (0.6, 1.6)   # global scaling of chi
    p_uniform_weight: float = 0.15  # weight = mask (no magnitude)
    p_erode: float = 0.7
    erode_mm: tuple = (1.0, 4.0)
    bg_poly_ppm: float = 0.01
    p_rim: float = 0.3
    rim_ppm: tuple = (0.005, 0.03)
    p_calc: float = 0.35
    p_hem: float = 0.3
    p_lesion: float = 0.25
    shapes: dict = dc_field(default_factory=dict)


def _u(g, lo, hi, device="cpu"):
    return float(lo + (hi - lo) * torch.rand((), generator=g))


def _logu(g, lo, hi):
    return float(math.exp(_u(g, math.log(lo), math.log(hi))))


def _rand_rotation(g, max_deg: float = 180.0) -> torch.Tensor:
    """Random rotation (float32 3x3), angles about each axis up to ``max_deg``."""
    ang = (torch.rand(3, generator=g) * 2 - 1) * math.radians(max_deg)
    cx, cy, cz = torch.cos(ang)
    sx, sy, sz = torch.sin(ang)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return (rz @ ry @ rx).float()


def random_b0_dir(g) -> tuple[float, float, float]:
    """B0 in array axes: z tilted by U(0, 35 deg) (80 %) or uniform on the sphere (20 %)."""
    if torch.rand((), generator=g) < 0.8:
        th = math.radians(_u(g, 0, 35))
        ph = _u(g, 0, 2 * math.pi)
        v = (math.sin(th) * math.cos(ph), math.sin(th) * math.sin(ph), math.cos(th))
    else:
        v = torch.randn(3, generator=g)
        v = (v / v.norm()).tolist()
    return tuple(float(x) for x in v)


def smooth_field(shape, voxel_size, corr_mm: float, g, device) -> torch.Tensor:
    """Gaussian random field with unit std and Gaussian correlation length ``corr_mm`` (mm)."""
    noise = torch.randn(tuple(shape), generator=g, device=device)
    spec = torch.fft.rfftn(noise)
    ks = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        k = torch.fft.rfftfreq(n, d=d, device=device) if ax == 2 else torch.fft.fftfreq(n, d=d, device=device)
        sh = [1, 1, 1]
        sh[ax] = k.numel()
        ks.append(k.reshape(sh))
    k2 = ks[0] ** 2 + ks[1] ** 2 + ks[2] ** 2
    filt = torch.exp(-2 * math.pi**2 * corr_mm**2 * k2)
    out = torch.fft.irfftn(spec * filt, s=tuple(shape))
    out = out - out.mean()
    sd = float(out.std())
    if not math.isfinite(sd) or sd < 1e-6:  # correlation length >> grid: no variation left
        return torch.zeros_like(out)
    return out / sd


def _grid_mm(shape, voxel_size, offset_vox, device):
    """Voxel-centre coordinates in mm (brain centre at 0), each (X,1,1)/(1,Y,1)/(1,1,Z)."""
    cs = []
    for ax, (n, d, o) in enumerate(zip(shape, voxel_size, offset_vox)):
        c = (torch.arange(n, device=device, dtype=torch.float32) - n / 2 + o) * d
        sh = [1, 1, 1]
        sh[ax] = n
        cs.append(c.reshape(sh))
    return cs


def _ellipsoid(p, centre, semi, rot=None):
    """Normalised radius of an ellipsoid at coordinates p = (px, py, pz) (broadcastable)."""
    q = [p[i] - centre[i] for i in range(3)]
    if rot is not None:
        q = [rot[0, 0] * q[0] + rot[1, 0] * q[1] + rot[2, 0] * q[2],
             rot[0, 1] * q[0] + rot[1, 1] * q[1] + rot[2, 1] * q[2],
             rot[0, 2] * q[0] + rot[1, 2] * q[1] + rot[2, 2] * q[2]]
    return torch.sqrt((q[0] / semi[0]) ** 2 + (q[1] / semi[1]) ** 2 + (q[2] / semi[2]) ** 2)


def sample_geometry(g, cfg: SynthConfig):
    """Voxel size (mm), grid shape (multiple of 4), brain semi-axes (mm), crop offset (voxels)."""
    din = _logu(g, *cfg.voxel_inplane)
    dz = din * (_u(g, *cfg.aniso_ratio) if torch.rand((), generator=g) < cfg.p_aniso else _u(g, 0.9, 1.1))
    vs = (din, din, dz)
    sc = _u(g, 0.85, 1.1)
    semi = tuple(a * sc * _u(g, 0.95, 1.05) for a in cfg.brain_semi_mm)
    shape = [int(math.ceil((2 * a / d + 6) / 4) * 4) for a, d in zip(semi, vs)]
    # crop to the voxel budget, largest axis first
    while shape[0] * shape[1] * shape[2] > cfg.max_voxels:
        i = max(range(3), key=lambda j: shape[j])
        shape[i] -= 4
    full = [int(math.ceil((2 * a / d + 6) / 4) * 4) for a, d in zip(semi, vs)]
    offset = [(_u(g, -0.5, 0.5) * (f - n)) for f, n in zip(full, shape)]
    return vs, tuple(shape), semi, offset


def brain_phantom(shape, voxel_size, semi_mm, offset_vox, g, gd, device, cfg: SynthConfig, shapes_mode=False):
    """One phantom: returns dict chi (ppm), brain (bool), r2s (1/s), m0 (a.u.), rnorm.

    ``g`` (a CPU generator) draws the scalars, ``gd`` (on ``device``) the random volumes.

    ``rnorm`` is the brain's normalised radius (< 1 inside), used for erosion.
    """
    xs = _grid_mm(shape, voxel_size, offset_vox, device)
    p = [xs[i] / semi_mm[i] for i in range(3)]
    amean = sum(semi_mm) / 3
    # brain outline: ellipsoid + low-frequency deformation, flattened base
    r = torch.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2)
    r = r + 0.05 * smooth_field(shape, voxel_size, 25.0, gd, device)
    r = r + 0.25 * torch.relu(-p[2] - 0.55)  # flatter base
    brain = r < 1.0
    z = torch.zeros(shape, device=device)
    vol = (z.clone(), z.clone(), z.clone())  # chi, m0, r2s
    ctx = (shape, voxel_size, g, gd, device)

    if shapes_mode:
        chi, m0, r2s = _random_shapes(vol, p, amean, ctx)
        return {"chi": chi * brain, "brain": brain, "r2s": r2s, "m0": m0, "rnorm": r}
    vol, wm, csf_chi = _cortex(vol, brain, r, amean, ctx)
    vol = _ventricles_and_nuclei(vol, brain, p, csf_chi, ctx)
    chi, m0, r2s = vol
    # texture
    chi = chi + _u(g, 0.005, 0.02) * smooth_field(shape, voxel_size, _u(g, 2.0, 8.0), gd, device)
    chi, r2s = _veins(chi, r2s, brain, r, ctx)
    chi, m0, r2s = _lesions((chi, m0, r2s), brain, wm, p, amean, cfg, ctx)
    chi = torch.where(brain, chi, torch.zeros_like(chi))
    return {"chi": chi, "brain": brain, "r2s": r2s, "m0": m0, "rnorm": r}


def _random_shapes(vol, p, amean, ctx):
    """DeepQSM-style volume: 20-60 rotated ellipsoids / cuboids with random chi (and R2*) on a
    uniform background, plus a smooth texture.  ``vol`` = (chi, m0, r2s); returns the same."""
    shape, voxel_size, g, gd, device = ctx
    chi, m0, r2s = vol
    n = int(_u(g, 20, 60))
    chi += _u(g, -0.02, 0.02)
    r2s += 20.0
    m0 += 0.8
    for i in range(n):
        size_vox = _logu(g, 2, 40)
        semi = [size_vox * _u(g, 0.3, 1.0) * min(voxel_size) / 2 / amean for _ in range(3)]
        c = [_u(g, -0.8, 0.8) for _ in range(3)]
        rot = _rand_rotation(g).to(device)
        val = float(torch.randn((), generator=g)) * _u(g, 0.05, 0.15)
        if torch.rand((), generator=g) < 0.5:
            inside = _ellipsoid(p, c, semi, rot) < 1
        else:  # cuboid: max-norm in the rotated frame
            q = [p[j] - c[j] for j in range(3)]
            q = [sum(rot[k, j] * q[k] for k in range(3)) / semi[j] for j in range(3)]
            inside = (q[0].abs() < 1) & (q[1].abs() < 1) & (q[2].abs() < 1)
        chi = torch.where(inside, chi + val, chi)
        r2s = torch.where(inside, r2s + 100 * abs(val), r2s)
    chi = chi + _u(g, 0.0, 0.02) * smooth_field(shape, voxel_size, _u(g, 2, 8), gd, device)
    return chi, m0, r2s


def _cortex(vol, brain, r, amean, ctx):
    """White matter, a cortical ribbon of 2-4 mm plus folds reaching up to ~15 % of the radius,
    and sulcal CSF.  Returns ((chi, m0, r2s), white-matter mask, the CSF chi)."""
    shape, voxel_size, g, gd, device = ctx
    chi, m0, r2s = vol
    t0 = _u(g, 2.0, 4.0) / amean
    fold = smooth_field(shape, voxel_size, _u(g, 5.0, 9.0), gd, device)
    depth = t0 + _u(g, 0.08, 0.16) * torch.sigmoid(2.0 * fold)
    gm = brain & (r > 1 - depth)
    wm = brain & ~gm
    sulc = gm & (smooth_field(shape, voxel_size, _u(g, 3.0, 6.0), gd, device).abs() < _u(g, 0.1, 0.3))
    chi_wm = _u(g, -0.08, 0.0)
    chi_gm = _u(g, -0.01, 0.05)
    chi = torch.where(wm, chi + chi_wm + _u(g, 0.0, 0.02) * smooth_field(shape, voxel_size, _u(g, 8, 20), gd, device), chi)
    chi = torch.where(gm, chi + chi_gm, chi)
    m0 = torch.where(wm, m0 + 0.65, m0)
    m0 = torch.where(gm, m0 + 0.8, m0)
    r2s = torch.where(wm, r2s + _u(g, 18, 25), r2s)
    r2s = torch.where(gm, r2s + _u(g, 12, 18), r2s)
    csf_chi = _u(g, -0.01, 0.02)
    chi = torch.where(sulc, torch.full_like(chi, csf_chi), chi)
    m0 = torch.where(sulc, torch.ones_like(m0), m0)
    r2s = torch.where(sulc, torch.full_like(r2s, 4.0), r2s)
    return (chi, m0, r2s), wm, csf_chi


def _ventricles_and_nuclei(vol, brain, p, csf_chi, ctx):
    """Two lateral ventricles (CSF) and the bilateral deep-gray nuclei of :data:`DGM` with a shared
    random iron level.  ``vol`` = (chi, m0, r2s); returns the same."""
    shape, voxel_size, g, gd, device = ctx
    chi, m0, r2s = vol
    vsc = _u(g, 0.6, 1.6)
    for side in (-1, 1):
        c = (side * _u(g, 0.09, 0.15), _u(g, -0.05, 0.1), _u(g, 0.05, 0.18))
        sm = (0.06 * vsc, 0.30 * _u(g, 0.85, 1.15), 0.10 * vsc)
        ven = brain & (_ellipsoid(p, c, sm, _rand_rotation(g, 12).to(device)) < 1)
        chi = torch.where(ven, torch.full_like(chi, csf_chi), chi)
        m0 = torch.where(ven, torch.ones_like(m0), m0)
        r2s = torch.where(ven, torch.full_like(r2s, 4.0), r2s)
    iron = _u(g, 0.5, 1.5)
    for name, (c0, s0, (lo, hi)) in DGM.items():
        val = iron * _u(g, lo, hi)
        for side in (-1, 1):
            c = (side * c0[0] + _u(g, -0.03, 0.03), c0[1] + _u(g, -0.03, 0.03), c0[2] + _u(g, -0.03, 0.03))
            sm = tuple(v * _u(g, 0.8, 1.25) for v in s0)
            nuc = brain & (_ellipsoid(p, c, sm, _rand_rotation(g, 20).to(device)) < 1)
            chi = torch.where(nuc, torch.full_like(chi, val * _u(g, 0.9, 1.1)), chi)
            m0 = torch.where(nuc, torch.full_like(m0, 0.75), m0)
            r2s = torch.where(nuc, torch.full_like(r2s, 15.0 + 150.0 * max(val, 0.0)), r2s)
    return chi, m0, r2s


def _veins(chi, r2s, brain, r, ctx):
    """1-3 veins: intersections of two thin level-set sheets (tubes), mostly superficial."""
    shape, voxel_size, g, gd, device = ctx
    nv = int(_u(g, 1, 4))
    for _ in range(nv):
        corr = _u(g, 10, 25)
        eps = _u(g, 0.04, 0.10)
        tube = (smooth_field(shape, voxel_size, corr, gd, device).abs() < eps) & \
               (smooth_field(shape, voxel_size, corr, gd, device).abs() < eps)
        sup = (r > _u(g, 0.6, 0.85)) | bool(torch.rand((), generator=g) < 0.3)
        tube = tube & brain & sup
        val = _u(g, 0.15, 0.6)
        chi = torch.where(tube, chi + val, chi)
        r2s = torch.where(tube, torch.full_like(r2s, _u(g, 40, 100)), r2s)
    return chi, r2s


def _lesions(vol, brain, wm, p, amean, cfg: SynthConfig, ctx):
    """With the probabilities of ``cfg``: calcifications, haemorrhages (rough blobs) and MS-like
    white-matter lesions (some with paramagnetic rims).  ``vol`` = (chi, m0, r2s); returns the same."""
    shape, voxel_size, g, gd, device = ctx
    chi, m0, r2s = vol
    if torch.rand((), generator=g) < cfg.p_calc:
        for _ in range(int(_u(g, 1, 4))):
            c = [_u(g, -0.6, 0.6) for _ in range(3)]
            rad = _u(g, 1.0, 4.0) / amean
            cal = brain & (_ellipsoid(p, c, (rad, rad, rad)) < 1)
            chi = torch.where(cal, torch.full_like(chi, _u(g, -1.2, -0.1)), chi)
            r2s = torch.where(cal, torch.full_like(r2s, _u(g, 60, 150)), r2s)
            m0 = torch.where(cal, m0 * 0.3, m0)
    if torch.rand((), generator=g) < cfg.p_hem:
        for _ in range(int(_u(g, 1, 3))):
            c = [_u(g, -0.6, 0.6) for _ in range(3)]
            rad = _u(g, 3.0, 12.0) / amean
            rough = 0.25 * smooth_field(shape, voxel_size, _u(g, 2, 5), gd, device)
            hem = brain & (_ellipsoid(p, c, (rad, rad * _u(g, 0.7, 1.3), rad * _u(g, 0.7, 1.3))) + rough < 1)
            chi = torch.where(hem, torch.full_like(chi, _u(g, 0.3, 1.5)), chi)
            r2s = torch.where(hem, torch.full_like(r2s, _u(g, 60, 150)), r2s)
    if torch.rand((), generator=g) < cfg.p_lesion:
        for _ in range(int(_u(g, 3, 10))):
            c = [_u(g, -0.5, 0.5) for _ in range(3)]
            rad = _u(g, 1.5, 6.0) / amean
            e = _ellipsoid(p, c, (rad, rad * _u(g, 0.6, 1.5), rad * _u(g, 0.6, 1.5)))
            les = wm & (e < 1)
            chi = torch.where(les, chi + _u(g, 0.01, 0.06), chi)
            if torch.rand((), generator=g) < 0.3:
                rim = wm & (e >= 1) & (e < 1.25)
                chi = torch.where(rim, chi + _u(g, 0.03, 0.08), chi)
    return chi, m0, r2s


def _poly_background(shape, g, device, amp):
    """Random 0-2nd order polynomial over normalised coordinates, max |.| ~ amp (ppm)."""
    cs = [torch.linspace(-1, 1, n, device=device).reshape([n if i == a else 1 for i in range(3)])
          for a, n in enumerate(shape)]
    terms = [torch.ones(1, 1, 1, device=device), cs[0], cs[1], cs[2], cs[0] * cs[1], cs[0] * cs[2],
             cs[1] * cs[2], cs[0] ** 2, cs[1] ** 2, cs[2] ** 2]
    out = torch.zeros(shape, device=device)
    for t in terms:
        out = out + float(torch.randn((), generator=g)) * t
    return amp * out / out.abs().max().clamp_min(1e-9)


def make_sample(seed: int, device="cpu", cfg: SynthConfig | None = None, geometry=None) -> dict:
    """One synthetic volume.  Returns tensors (X,Y,Z) on ``device`` and acquisition scalars.

    Keys: chi (ppm, truth, zero outside ``mask``), field (ppm, what the network sees),
    mask (eroded brain, float 0/1), weight ([0,1]), s (rad/ppm), voxel_size (mm),
    b0_dir (array axes), kind ("brain" or "shapes").
    """
    cfg = cfg or SynthConfig()
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    gd = torch.Generator(device=device)
    gd.manual_seed(int(seed) + 7919)
    vs, shape, semi, offset = geometry if geometry is not None else sample_geometry(g, cfg)
    shapes_mode = bool(torch.rand((), generator=g) < cfg.p_shapes)
    ph = brain_phantom(shape, vs, semi, offset, g, gd, device, cfg, shapes_mode=shapes_mode)
    chi_b = ph["chi"] * _u(g, *cfg.chi_scale)
    brain = ph["brain"]
    b0 = random_b0_dir(g)
    padded = physics.fast_padded_shape(shape, 1.5)
    kern = physics.dipole_kernel_t(padded, vs, b0, device=device)
    f_full = physics.convolve(chi_b, kern, padded)
    # eroded mask (what V-SHARP leaves)
    if torch.rand((), generator=g) < cfg.p_erode:
        e = _u(g, *cfg.erode_mm) / (sum(semi) / 3)
        mask = brain & (ph["rnorm"] < 1 - e)
    else:
        mask = brain
    mf = mask.float()
    n_in = mf.sum().clamp_min(1)
    f = f_full * mf
    f = (f - (f * mf).sum() / n_in) * mf
    # residual background + rim errors
    f = f + _poly_background(shape, g, device, _u(g, 0, cfg.bg_poly_ppm)) * mf
    if torch.rand((), generator=g) < cfg.p_rim:
        band = (ph["rnorm"] > 1 - _u(g, 2, 6) / (sum(semi) / 3)).float()
        f = f + _u(g, *cfg.rim_ppm) * smooth_field(shape, vs, _u(g, 3, 10), gd, device) * band * mf
    # magnitude weight
    te = _u(g, 0.01, 0.03)
    coil = torch.exp((0.3 * smooth_field(shape, vs, 60.0, gd, device)).clamp(-1.5, 1.5))
    mag = ph["m0"] * torch.exp(-te * ph["r2s"]) * coil * mf
    vals = mag[mask]
    p99 = torch.quantile(vals[:: max(1, vals.numel() // 200000)], 0.99) if vals.numel() else torch.tensor(1.0)
    w_mag = (mag / p99.clamp_min(1e-9)).clamp(0, 1) * mf
    uniform = bool(torch.rand((), generator=g) < cfg.p_uniform_weight)
    weight = mf.clone() if uniform else w_mag
    # phase noise: sigma / (|S| s) ppm, |S| relative to the 99th percentile
    s = _logu(g, *cfg.s_range)
    snr = _u(g, *cfg.snr_range)
    noise = torch.randn(shape, generator=gd, device=device) / (snr * w_mag.clamp_min(0.05)) / s
    f = (f + noise * mf) * mf
    chi = chi_b * mf
    return {"chi": chi, "field": f, "mask": mf, "weight": weight, "s": s, "voxel_size": vs,
            "b0_dir": b0, "kind": "shapes" if shapes_mode else "brain", "padded": padded, "kernel": kern}


def make_batch(seed: int, batch_size: int, device="cpu", cfg: SynthConfig | None = None) -> dict:
    """``batch_size`` samples sharing one grid (shape/voxel size); B0 and everything else per sample.

    Returns (B,1,X,Y,Z) tensors chi/field/mask/weight, ``s`` (B,), ``kernel`` (B,1,...)
    and ``padded`` (the FFT grid).
    """
    cfg = cfg or SynthConfig()
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed) * 1_000_003 + 17)
    geom = sample_geometry(g, cfg)
    samples = [make_sample(int(seed) * 1_000_003 + 101 * (i + 1), device, cfg, geometry=geom) for i in range(batch_size)]
    out = {k: torch.stack([smp[k] for smp in samples])[:, None] for k in ("chi", "field", "mask", "weight")}
    out["kernel"] = torch.stack([smp["kernel"] for smp in samples])[:, None]
    out["s"] = torch.tensor([smp["s"] for smp in samples], dtype=torch.float32, device=device)
    out["padded"] = samples[0]["padded"]
    out["voxel_size"] = geom[0]
    out["kinds"] = [smp["kind"] for smp in samples]
    return out
