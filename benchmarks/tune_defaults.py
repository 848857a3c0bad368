"""Tune the classical inversion defaults on ONE validation head (seed 0, 3 T, B0 || z, 4 echoes).

Run once: ``.venv/bin/python benchmarks/tune_defaults.py``.  The local field is the realistic
chain's (simulated noisy GRE -> quality-guided unwrapping -> weighted field fit -> V-SHARP, with
the true brain mask) so the early-stopping defaults include the effect of noise.  Prints xSIM /
NRMSE for TKD thresholds, CG-L2 lambda x iterations and NDI iterations.  The benchmark heads
(seeds 1-4) are never used for tuning.

Note: ``background.remove_background`` defaults to iSMV (``method="ismv"``); the tuning table in
``run_benchmarks.TUNING_NOTES`` was made with V-SHARP (``refine=1``) local fields and has not been
rerun with iSMV (delete ``/tmp/qsmprep_tune_seed0.npz`` before rerunning).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import qsmci_seg, score_chi, score_field  # noqa: E402

CACHE = Path("/tmp/qsmprep_tune_seed0.npz")


def validation_local_field():
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.unwrap import unwrap_echoes
    from qsmprep.sim.forward import simulate_gre
    from qsmprep.sim.phantom import make_head

    if CACHE.exists():
        return dict(np.load(CACHE))
    head = make_head(seed=0)
    sim = simulate_gre(head, b0_t=3.0, b0_dir=(0, 0, 1), snr=80.0, seed=100)
    mask = head.brain_mask
    t = time.perf_counter()
    loc_true, em_true = remove_background(sim["field_ppm"], mask, head.voxel_size)
    print(f"vsharp (true total field) {time.perf_counter() - t:.1f} s; field metrics vs true local:",
          score_field(loc_true, sim["local_field_ppm"], em_true))
    t = time.perf_counter()
    uw = unwrap_echoes(sim["phase"], sim["mag"], sim["te_s"], mask, method="romeo", voxel_size=head.voxel_size)
    print(f"unwrap romeo {time.perf_counter() - t:.1f} s")
    fit = fit_field(uw, sim["mag"], sim["te_s"], mask)
    loc, em = remove_background(fit.field_hz / hz_per_ppm(3.0), mask, head.voxel_size)
    print("chain local field metrics:", score_field(loc, sim["local_field_ppm"], em))
    out = dict(chi=head.chi * mask, labels=head.labels, mask=mask, local=loc, em=em, weight=fit.weight,
               local_true=sim["local_field_ppm"], mag=sim["mag"].mean(-1))
    np.savez_compressed(CACHE, **out)
    return out


def main(argv=None):
    import argparse

    from qsmprep.qsm.inversion import cgl2, ndi, tkd

    ap = argparse.ArgumentParser(description="tune inversion defaults on the validation head")
    ap.add_argument("--only", choices=["tkd", "cgl2", "ndi"], nargs="*", default=["tkd", "cgl2", "ndi"])
    ap.add_argument("--lams", type=float, nargs="*", default=[0.0, 0.005, 0.02, 0.05])
    ap.add_argument("--ndi-weights", nargs="*", default=["fit", "mask", "mag"])
    ap.add_argument("--ndi-iters", type=int, nargs="*", default=[25, 50, 100, 150, 200, 300])
    ap.add_argument("--ndi-step", type=float, default=4.0)
    args = ap.parse_args(argv)

    d = validation_local_field()
    chi, em, loc, w = d["chi"], d["em"].astype(bool), d["local"], d["weight"]
    seg = qsmci_seg(d["labels"])
    vs, b0 = (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)

    def show(tag, x):
        m = score_chi(x, chi, em, seg)
        print(f"{tag:40s} xsim {m['xsim']:.3f} nrmse {m['nrmse']:.1f} dnrmse {m['nrmse_detrend']:.1f} "
              f"hfen {m['hfen']:.1f} dgm_nrmse {m['nrmse_dgm']:.1f} slope_err {m['dgm_linearity']:.3f}", flush=True)

    if "tkd" in args.only:
        for th in (0.1, 0.15, 0.2, 0.25):
            show(f"tkd thr={th}", tkd(loc, em, vs, b0, threshold=th))
    checks = {10, 20, 30, 50, 80}
    for lam in (args.lams if "cgl2" in args.only else []):
        for wname, ww in (("mask", None), ("fit", w)):
            cgl2(loc, em, vs, b0, weight=ww, lam=lam, max_iter=max(checks), tol=1e-6,
                  callback=lambda it, cur: show(f"cgl2 lam={lam} w={wname} it={it + 1}", cur()) if it + 1 in checks else None)
    checks = set(args.ndi_iters)
    weights = {"mask": None, "fit": w, "mag": d["mag"]}
    for wname in (args.ndi_weights if "ndi" in args.only else []):
        ndi(loc, em, vs, b0, weight=weights[wname], n_iter=max(checks), step=args.ndi_step,
            callback=lambda it, cur: show(f"ndi step={args.ndi_step} w={wname} it={it + 1}", cur())
            if it + 1 in checks else None)


if __name__ == "__main__":
    main()
