"""The void rule's magnitude limit (``masking.brain_mask(min_signal=...)``, 0.3 of the brain's median) on the
robustness matrix's validation rows (issue #14; validation heads only).

``robustness_diagnosis.py nuclei`` showed that on the qsm-forward 7 T single-echo rows most of the pallidum's
voxels outside the local field's mask are the band that background removal erodes around a few voids of the
magnitude rule (magnitude a little under 0.3 of the median, phase coherent).  This study reruns the rows with lower
limits (each row's data as the matrix; scores as ``robustness.score``)::

    .venv/bin/python benchmarks/void_limit_study.py --seeds 10 11 --out benchmarks/void_limit_study.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import robustness as rb  # noqa: E402
from weight_floor_study import ROWS  # noqa: E402

LIMITS = (0.3, 0.2, 0.15, 0.1)


def main(argv=None) -> int:
    from qsmprep.qsm import masking

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--limits", type=float, nargs="+", default=list(LIMITS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qsmprep-robustness"))
    ap.add_argument("--out", type=Path, default=HERE / "void_limit_study.json")
    args = ap.parse_args(argv)
    results = json.loads(args.out.read_text()) if args.out.exists() else []
    original = masking.brain_mask
    for seed in args.seeds:
        for row in args.rows:
            d = rb.data_for(rb.case_for(row, seed), args.cache)
            for limit in args.limits:
                def patched(*a, _l=limit, **k):
                    return original(*a, **{**k, "min_signal": _l})

                app, wall = rb.run_variant(d, masking, "brain_mask", patched)
                sc = rb.score(app["chi"], d)
                res = {"row": row, "seed": seed, "min_signal": limit, **sc, "mask_voxels": int(app["chain"]["mask"].sum()),
                       "wall_s": round(wall, 1)}
                results = [r for r in results if (r["row"], r["seed"], r["min_signal"]) != (row, seed, limit)] + [res]
                args.out.write_text(json.dumps(results, indent=1))
                print(f"{row:28s} {seed} min_signal {limit:.2f} XSIM {sc['xsim']:.4f} NRMSE {sc['nrmse']:.2f} "
                      f"slope {sc['slope']:.3f} mask {res['mask_voxels']} ({res['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
