"""The chain's data weight where the signal decays: a floor under the normalised weight (issue #14, validation only).

On the qsm-forward 7 T single-echo rows the deep-gray ROI slope stays under 0.8 (``RESULTS.md``, robustness
matrix): at a 15 ms echo the iron-rich nuclei lose most of their magnitude, so their data weight (inverse phase
noise, the magnitude for one echo) is a fraction of the white matter's, and the final fit's TV, whose weight is
global, shrinks them.  This study reruns matrix rows of the validation heads with the chain's weight changed before
the inversion: ``floor=<f>`` (``max(w, f)`` in the brain mask; the weight is normalised to [0, 1] by its 99th
percentile), ``sqrt`` (``sqrt(w)``: the squared weight of the fit grows linearly with the magnitude) and
``uniform`` (1 in the mask); ``magnitude`` is the app.  Scores as the matrix (``robustness.score``)::

    .venv/bin/python benchmarks/weight_floor_study.py --seeds 10 11 --out benchmarks/weight_floor_study.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import robustness as rb  # noqa: E402

ROWS = ("SE 7T offset, qsm-forward", "SE 3T offset, qsm-forward", "SE 7T offset", "SE 3T offset",
        "SE 3T offset 1x1x2 mm", "ME 3T, qsm-forward", "ME 7T many wraps", "ME 3T", "ME 3T SNR 30")
VARIANTS = ("magnitude", "floor=0.2", "floor=0.35", "floor=0.5", "sqrt", "uniform")


def reweight(w: np.ndarray, mask: np.ndarray, variant: str) -> np.ndarray:
    """The chain's normalised data weight ``w`` (in [0, 1]) under ``variant`` (module docstring)."""
    w = np.asarray(w, np.float32)
    m = np.asarray(mask) > 0
    if variant == "magnitude":
        return w
    if variant == "sqrt":
        return np.where(m, np.sqrt(np.clip(w, 0, None)), 0).astype(np.float32)
    if variant == "uniform":
        return m.astype(np.float32)
    if variant.startswith("floor="):
        return np.where(m, np.maximum(w, float(variant.split("=")[1])), 0).astype(np.float32)
    raise ValueError(variant)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--rows", nargs="+", default=list(ROWS))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--cache", type=Path, default=Path("/tmp/qsmprep-robustness"))
    ap.add_argument("--out", type=Path, default=HERE / "weight_floor_study.json")
    args = ap.parse_args(argv)
    original = rb.app_inversion

    def patch(variant):
        def reweighted(method, ch, *a, **k):
            return original(method, {**ch, "weight": reweight(ch["weight"], ch["mask"], variant)}, *a, **k)
        return rb, "app_inversion", reweighted

    rb.variant_rows(args.seeds, args.rows, args.cache, args.out, "variant", args.variants, patch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
