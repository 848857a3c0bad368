"""Signal voids at the brain's surface in chi's support (``qsmprep.dl.restore.chi_support``), 1 mm validation heads.

A cortical vein is dark at a long echo at 7 T; the brain mask's outline leaves it out, and unlike a void the
mask encloses it is no hole, so chi's support (the mask with its holes filled) did not take it back.
``qsmprep.qsm.masking.surface_voids`` finds such voxels (within a depth of the support, magnitude in [0.1, 0.3)
of the brain's median: darker than the signal-void level of the mask, brighter than skull or air).  This study
runs the app's chain (``chain_benchmark.m_app("nsidl")``) on validation heads with the surface voids off, on
(2 mm deep, the chosen; stage ``"chain"``: the background removal over the support, the network's input and the
final fit), in every step (``"all"``: the voids' fits and cores too), in the final fit only (``"final"``), and
3 mm and 4 mm deep, and with no TV inside them in the final fit (``"on, no TV in them"``, the chosen since), and
splits the squared error (referenced chi against the truth, true brain mask) into the
surface voids (2 mm deep), the brain within 3 voxels of them and the rest.

    .venv/bin/python benchmarks/surface_void_study.py --cases val-sim-7T-SE-obl --log benchmarks/surface_void_study.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402

#: name -> (``restore.SURFACE_VOIDS``, ``restore.SURFACE_STAGE``, ``masking.SURFACE_VOID_DEPTH_MM``,
#: ``restore.SURFACE_TV_FREE``)
VARIANTS = {"off": (False, "chain", 2.0, False), "on": (True, "chain", 2.0, False),
            "on, all steps": (True, "all", 2.0, False), "on, final fit only": (True, "final", 2.0, False),
            "on, 3 mm deep": (True, "chain", 3.0, False), "on, 4 mm deep": (True, "chain", 4.0, False),
            "on, no TV in them": (True, "chain", 2.0, True)}


def main(argv=None) -> int:
    from scipy import ndimage

    from qsmprep.dl import restore
    from qsmprep.qsm import masking

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["val-sim-7T-SE-obl"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--log", default=str(HERE / "surface_void_study.jsonl"))
    args = ap.parse_args(argv)
    default = restore.SURFACE_VOIDS, restore.SURFACE_STAGE, masking.SURFACE_VOID_DEPTH_MM, restore.SURFACE_TV_FREE

    def put(v):
        restore.SURFACE_VOIDS, restore.SURFACE_STAGE, masking.SURFACE_VOID_DEPTH_MM, restore.SURFACE_TV_FREE = v
    for name in args.cases:
        case = cb.validation_case(name, 1.0)
        chain = cb.chain_for(case)
        brain = case["brain_mask"] > 0
        truth = np.where(brain, case["chi"] - case["chi"][brain].mean(), 0)
        for v in args.variants:
            put(VARIANTS[v])
            t0 = time.time()
            try:
                # the split's regions: the surface voids 2 mm deep (the deeper variants' own beyond them count as
                # "near" or "rest")
                masking.SURFACE_VOID_DEPTH_MM = 2.0
                sv = masking.surface_voids(chain["magnitude"], chain["mask"], case["voxel_size"])
                put(VARIANTS[v])
                chi = cb.m_app("nsidl")(case, chain)
            finally:
                put(default)
            near = ndimage.binary_dilation(sv, iterations=3) & brain & ~sv
            r = cb.score(chi, case)
            c = np.where(brain, chi - chi[brain].mean(), 0)
            e2 = (c - truth) ** 2
            split = {"err2_surface": round(float(e2[sv & brain].sum()), 2), "err2_near": round(float(e2[near].sum()), 2),
                     "err2_rest": round(float(e2[brain & ~sv & ~near].sum()), 2),
                     "surface_voxels": int(sv.sum()), "surface_in_brain": int((sv & brain).sum()),
                     "surface_chi_mean": round(float(c[sv & brain].mean()), 4) if (sv & brain).any() else None,
                     "surface_true_mean": round(float(truth[sv & brain].mean()), 4) if (sv & brain).any() else None}
            cb.log_study_row(args.log, r, t0, case=name, variant=v, **split)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
