"""Scratch study of background-field removal variants on the VALIDATION head (seed 0) only.

``.venv/bin/python benchmarks/bfr_study.py [variants...]`` -- simulates (and caches in
``/tmp/bfr/seed0.npz``) the noiseless total field, true brain mask and true local field of the
validation head (``make_head(seed=0)`` + ``simulate_gre``, 3 T, B0 || z), runs each variant,
scores its local field against the true local field with qsm-ci field metrics
(``_common.score_field``) in the variant's own eroded mask, prints the relative RMS error in
depth bands (mm from the mask edge) and times it.  ``--diagnose`` adds the V-SHARP analysis quoted
in ``run_benchmarks.TUNING_NOTES``: the TSVD low-frequency loss alone (the true local field passed
through the truncated deconvolution filter, "oracle"), and V-SHARP's equations solved to
convergence (CGLS, :func:`vsharp_exact`), which shows that the error left is the part of the local
field the V-SHARP equations do not determine (harmonic in the eroded mask), not the solver.
The numbers are copied into ``run_benchmarks.TUNING_NOTES``; the benchmark heads (seeds 1-4) are
never used here.
"""
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import score_field  # noqa: E402


def variants():
    from qsmprep.qsm import background as bg
    return {
        "vsharp_r0": lambda f, m: bg.vsharp(f, m, refine=0),
        "vsharp_r1": lambda f, m: bg.vsharp(f, m, refine=1),
        "vsharp_r2": lambda f, m: bg.vsharp(f, m, refine=2),
        "vsharp_r3": lambda f, m: bg.vsharp(f, m, refine=3),
        "vsharp_r4": lambda f, m: bg.vsharp(f, m, refine=4),
        "vsharp_r8": lambda f, m: bg.vsharp(f, m, refine=8),
        "vsharp_max25": lambda f, m: bg.vsharp(f, m, radii_mm=range(25, 0, -1)),
        "vsharp_max18": lambda f, m: bg.vsharp(f, m, radii_mm=range(18, 0, -1)),
        "vsharp_max8": lambda f, m: bg.vsharp(f, m, radii_mm=range(8, 0, -1)),
        "vsharp_max6": lambda f, m: bg.vsharp(f, m, radii_mm=range(6, 0, -1)),
        "vsharp_min2": lambda f, m: bg.vsharp(f, m, radii_mm=range(12, 1, -1)),
        "vsharp_thr0.02": lambda f, m: bg.vsharp(f, m, threshold=0.02),
        "vsharp_thr0.1": lambda f, m: bg.vsharp(f, m, threshold=0.1),
        "vsharp_exact": lambda f, m: vsharp_exact(f, m, n_iter=12),
        "ismv2": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=1e-3),
        "ismv2_t1e-4": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=1e-4),
        "ismv3": lambda f, m: bg.ismv(f, m, radius_mm=3.0),
        "ismv1_t1e-4": lambda f, m: bg.ismv(f, m, radius_mm=1.0, tol=1e-4),
        "ismv2_t1e-5": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=1e-5),
    }


CACHE = Path("/tmp/bfr/seed0.npz")


def validation_fields(seed: int = 0) -> dict:
    """Noiseless total field, true brain mask and true local field of the validation head (cached)."""
    if CACHE.exists():
        return dict(np.load(CACHE))
    from qsmprep.sim.forward import simulate_gre
    from qsmprep.sim.phantom import make_head

    head = make_head(voxel_size=(1.0, 1.0, 1.0), seed=seed)
    sim = simulate_gre(head, b0_t=3.0, te_s=(0.02,), b0_dir=(0, 0, 1), snr=80.0, seed=100, phase_offset=False)
    out = dict(total=sim["field_ppm"].astype(np.float32), mask=head.brain_mask,
               local=sim["local_field_ppm"].astype(np.float32))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, **out)
    return out


def _vsharp_system(field, mask, radii, threshold=0.05, vs=(1.0, 1.0, 1.0)):
    """V-SHARP's equations on the cropped grid: g (high-passed field, each voxel with its largest
    fitting radius), the radius index per voxel, the 1 - S_r spectra and the TSVD inverse."""
    import scipy.fft as sfft

    from qsmprep.qsm.geometry import bounding_box

    radii = sorted(radii, reverse=True)
    margin = [int(np.ceil(radii[0] / d)) + 2 for d in vs]
    box = bounding_box(mask, margin)
    mc = mask[box]
    shape = tuple(int(sfft.next_fast_len(n + mg, real=True)) for n, mg in zip(mc.shape, margin))
    crop = tuple(slice(0, n) for n in mc.shape)

    def pad(a):
        o = np.zeros(shape, np.float32)
        o[crop] = a
        return o

    f_k = sfft.rfftn(pad(np.where(mc, field[box], 0).astype(np.float32)))
    m_k = sfft.rfftn(pad(mc.astype(np.float32)))
    which = np.full(mc.shape, -1, np.int16)
    g = np.zeros(mc.shape, np.float32)
    kers = []
    for i, r in enumerate(radii):
        oms = (1 - sfft.rfftn(bg.sphere_kernel(shape, vs, r)).real).astype(np.float32)
        kers.append(oms)
        er = (sfft.irfftn(m_k * (1 - oms), s=shape)[crop] > bg.EROSION_LEVEL) & mc
        new = er & (which < 0)
        g[new] = sfft.irfftn(f_k * oms, s=shape)[crop][new]
        which[new] = i
    g[~er] = 0
    inv = np.zeros_like(kers[0])
    keep = np.abs(kers[0]) > threshold
    inv[keep] = 1 / kers[0][keep]
    return dict(box=box, mc=mc, E=er, shape=shape, crop=crop, pad=pad, g=g, which=which, kers=kers, inv=inv)


def vsharp_exact(field, mask, radii=tuple(range(12, 0, -1)), n_iter=12):
    """V-SHARP's equations ``A x = g`` (each voxel high-passed with its own radius, x on the brain mask)
    solved by conjugate gradients on the normal equations from the TSVD solution (classic V-SHARP) -- a
    study tool (slow: ~3.5 s/iteration)."""
    import scipy.fft as sfft

    from qsmprep.qsm.solvers import conjugate_gradient

    m = np.asarray(mask, bool)
    S = _vsharp_system(np.asarray(field, np.float32), m, radii)
    pad, crop, shape, kers, which, E, mc = S["pad"], S["crop"], S["shape"], S["kers"], S["which"], S["E"], S["mc"]

    def A(x):
        xk = sfft.rfftn(pad(np.where(mc, x, 0)))
        out = np.zeros(x.shape, np.float32)
        for i, k in enumerate(kers):
            sel = which == i
            if sel.any():
                out[sel] = sfft.irfftn(xk * k, s=shape)[crop][sel]
        out[~E] = 0
        return out

    def AT(r):
        acc = 0
        for i, k in enumerate(kers):
            sel = (which == i) & E
            if sel.any():
                acc = acc + sfft.rfftn(pad(np.where(sel, r, 0))) * k
        return np.where(mc, sfft.irfftn(acc, s=shape)[crop], 0).astype(np.float32)

    g = S["g"]
    x = np.where(mc, sfft.irfftn(sfft.rfftn(pad(g)) * S["inv"], s=shape)[crop], 0).astype(np.float32)
    # CG on the normal equations A^T A dx = A^T (g - A x0), from the TSVD solution x0
    dx, _ = conjugate_gradient(lambda v: AT(A(v)), AT(g - A(x)), tol=0.0, max_iter=n_iter)
    x += dx
    r = g - A(x)
    vsharp_exact.last_residual = float(np.linalg.norm(r) / np.linalg.norm(g))
    out = np.zeros(m.shape, np.float32)
    out[S["box"]] = np.where(E, x, 0)
    em = np.zeros(m.shape, bool)
    em[S["box"]] = E
    return out, em


def bands(loc, truth, em, dist, edges=((0, 3), (3, 6), (6, 12), (12, 1000))):
    """Relative RMS error (demeaned in ``em``) in depth bands (mm from the mask edge)."""
    out = []
    for lo, hi in edges:
        sel = em & (dist > lo) & (dist <= hi)
        tr = truth[sel] - truth[em].mean()
        er = (loc[sel] - loc[em].mean()) - tr
        out.append(float(np.sqrt((er**2).mean() / (tr**2).mean())) if sel.any() else float("nan"))
    return out


def diagnose(f, m, truth):
    """TSVD low-frequency loss alone: the true local field (in the 1 mm-eroded mask) through the
    truncated deconvolution filter |1 - S_rmax| > 0.05, scored like a method."""
    import scipy.fft as sfft

    from qsmprep.qsm import background as bg

    _, e1 = bg.vsharp(np.zeros_like(f), m, radii_mm=[1.0], refine=0)
    for rmax in (12, 18, 25):
        S = _vsharp_system(f, m, [rmax, 1.0])
        tc = S["pad"](np.where(e1[S["box"]], truth[S["box"]], 0))
        keep = S["inv"] != 0
        tr = sfft.irfftn(sfft.rfftn(tc) * keep, s=S["shape"])[S["crop"]]
        out = np.zeros_like(f)
        out[S["box"]] = tr
        s = score_field(out, truth, e1)
        print(f"oracle TSVD filter only, r_max {rmax} mm: xsim {s['xsim']:.3f} nrmse {s['nrmse']:.1f}", flush=True)


def main():
    from scipy import ndimage

    d = validation_fields(0)
    f, m, truth = d["total"], d["mask"].astype(bool), d["local"]
    dist = ndimage.distance_transform_edt(m)
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--diagnose" in sys.argv:
        diagnose(f, m, truth)
    V = variants()
    for n in args or list(V):
        t = time.perf_counter()
        loc, em = V[n](f, m)
        dt = time.perf_counter() - t
        s = score_field(loc, truth, em)
        b = " ".join(f"{x:.2f}" for x in bands(loc, truth, em, dist))
        extra = ""
        if n.startswith("ismv"):
            extra = f" it {getattr(__import__('qsmprep.qsm.background', fromlist=['ismv']).ismv, 'last_iterations', '')}"
        if n == "vsharp_exact":
            extra = f" residual {vsharp_exact.last_residual:.4f}"
        print(f"{n:14s} {dt:6.1f} s cov {em.sum() / m.sum():.3f} xsim {s['xsim']:.3f} nrmse {s['nrmse']:.1f} "
              f"corr {s['correlation']:.3f} rel err by depth 0-3/3-6/6-12/>12 mm {b}{extra}", flush=True)


if __name__ == "__main__":
    main()
