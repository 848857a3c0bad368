"""Study of the chain's mask erosion on the VALIDATION head (seed 0) only.

``.venv/bin/python benchmarks/mask_study.py [--erode 3 2 1 0] [--bfr ismv vsharp] [--inv tkd nsidl]``

Simulates (and caches in ``/tmp/bfr/chain_seed0.npz``) the validation head (``make_head(seed=0)``,
3 T, B0 || z, 4 echoes 4-22 ms, SNR 80, phase offset) and runs the app's chain
(:func:`_common.app_chain_field`: ``masking.brain_mask(mag, vs, phase=phase)`` -> quality-guided
unwrapping -> ``fit_field`` -> ``background.remove_background(method=...)``) with several values of
``brain_mask(erode_radius_mm=...)``, then each inversion through the app's dispatch
(``qsmprep.interfaces.qsm.run_inversion``) and whole-brain mean referencing in the final mask.

Printed per setting: brain-mask Dice with the true brain mask, fraction of the final mask outside
the true brain, coverage of the true brain by the final mask, local-field xSIM in (final & true)
and chi qsm-ci metrics scored over the TRUE brain mask (dropped voxels count as 0, qsm-ci's rule)
and over (final & true).  The benchmark heads (seeds 1-4) are never used here.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import app_chain_field, app_inversion, qsmci_seg, score_chi, score_field  # noqa: E402

CACHE = Path("/tmp/bfr/chain_seed0.npz")


def validation_data() -> dict:
    if CACHE.exists():
        return dict(np.load(CACHE))
    from qsmprep.sim.forward import simulate_gre
    from qsmprep.sim.phantom import make_head

    head = make_head(voxel_size=(1.0, 1.0, 1.0), seed=0)
    sim = simulate_gre(head, b0_t=3.0, b0_dir=(0, 0, 1), snr=80.0, seed=100)
    out = dict(phase=sim["phase"].astype(np.float32), mag=sim["mag"].astype(np.float32),
               te_s=np.asarray(sim["te_s"]), b0_dir=np.asarray(sim["b0_dir"]), brain=head.brain_mask,
               local=sim["local_field_ppm"].astype(np.float32), chi=np.where(head.brain_mask, head.chi, 0).astype(np.float32),
               seg=qsmci_seg(head.labels))
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    np.savez(CACHE, **out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--erode", nargs="*", type=float, default=[3.0, 2.0, 1.0, 0.0])
    p.add_argument("--bfr", nargs="*", default=["ismv", "vsharp"])
    p.add_argument("--inv", nargs="*", default=["tkd"])
    a = p.parse_args(argv)
    d = validation_data()
    brain, vs = d["brain"].astype(bool), (1.0, 1.0, 1.0)
    te = [float(t) for t in d["te_s"]]
    for er in a.erode:
        for bfr in a.bfr:
            t0 = time.perf_counter()
            r = app_chain_field(d["phase"], d["mag"], te, vs, 3.0, bfr=bfr, mask_kwargs={"erode_radius_mm": er})
            dt = time.perf_counter() - t0
            m, em = r["mask"], r["eroded"]
            dice = 2 * (m & brain).sum() / (m.sum() + brain.sum())
            ev = em & brain
            loc = score_field(r["local_ppm"], d["local"], ev)
            line = (f"erode {er:.0f} {bfr:6s} dice {dice:.3f} final-outside {(em & ~brain).sum() / brain.sum():.4f} "
                    f"cov {ev.sum() / brain.sum():.3f} local xsim {loc['xsim']:.3f} nrmse {loc['nrmse']:.1f} ({dt:.0f} s)")
            for inv in a.inv:
                chi = app_inversion(inv, r, vs, tuple(d["b0_dir"]), 3.0, te)
                st = score_chi(chi, d["chi"], brain, d["seg"])
                se = score_chi(chi, d["chi"], ev, d["seg"])
                line += (f" | {inv} true-mask xsim {st['xsim']:.3f} nrmse {st['nrmse']:.1f} hfen {st['hfen']:.1f}"
                         f" ; in final: xsim {se['xsim']:.3f} nrmse {se['nrmse']:.1f}")
            print(line, flush=True)


if __name__ == "__main__":
    main()
