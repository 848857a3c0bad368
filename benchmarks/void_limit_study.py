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
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import robustness as rb  # noqa: E402
from _common import brain_mask_with  # noqa: E402
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
    rb.variant_rows(args.seeds, args.rows, args.cache, args.out, "min_signal", args.limits,
                    lambda limit: (masking, "brain_mask", brain_mask_with(limit)),
                    extra=lambda app: {"mask_voxels": int(app["chain"]["mask"].sum())})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
