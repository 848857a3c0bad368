"""Scratch study of background-field removal variants on the VALIDATION head (seed 0) only.

``.venv/bin/python benchmarks/bfr_study.py [variants...]`` -- simulates (and caches in
``/tmp/bfr/seed0.npz``) the noiseless total field, true brain mask and true local field of the
validation head (``make_head(seed=0)`` + ``simulate_gre``, 3 T, B0 || z), runs each variant,
scores its local field against the true local field with qsm-ci field metrics
(``_common.score_field``) in the variant's own eroded mask, and times it.  The numbers are
copied into ``run_benchmarks.TUNING_NOTES``; the benchmark heads (seeds 1-4) are never used here.
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
        "vsharp_r1": lambda f, m: bg.vsharp(f, m, refine=1),
        "vsharp_r3": lambda f, m: bg.vsharp(f, m, refine=3),
        "ismv2": lambda f, m: bg.ismv(f, m, radius_mm=2.0),
        "ismv2_t1e-4": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=1e-4),
        "ismv3": lambda f, m: bg.ismv(f, m, radius_mm=3.0),
        "ismv1": lambda f, m: bg.ismv(f, m, radius_mm=1.0),
        "ismv1_t1e-4": lambda f, m: bg.ismv(f, m, radius_mm=1.0, tol=1e-4),
        "ismv1_t1e-5": lambda f, m: bg.ismv(f, m, radius_mm=1.0, tol=1e-5),
        "ismv2_t1e-5": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=1e-5),
        "ismv2_t3e-5": lambda f, m: bg.ismv(f, m, radius_mm=2.0, tol=3e-5),
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


def main():
    d = validation_fields(0)
    f, m, truth = d["total"], d["mask"], d["local"]
    V = variants()
    names = sys.argv[1:] or list(V)
    for n in names:
        t = time.perf_counter()
        loc, em = V[n](f, m)
        dt = time.perf_counter() - t
        s = score_field(loc, truth, em)
        extra = getattr(__import__("qsmprep.qsm.background", fromlist=["ismv"]).ismv, "last_iterations", "")
        print(f"{n:14s} {dt:6.1f} s cov {em.sum() / m.sum():.3f} xsim {s['xsim']:.3f} "
              f"nrmse {s['nrmse']:.1f} corr {s['correlation']:.3f} it {extra}", flush=True)


if __name__ == "__main__":
    main()
