"""Final-fit over-relaxation study (issue #13, speed): the whole chain with NSIDL, its final SMV-TV fit's
ADMM plain (``relax`` 1) or over-relaxed (``smv_tv(relax=...)``), scored at several iteration counts.
Settings are chosen on validation heads only (``chain_benchmark.validation_case`` stops at a test head).

One ADMM run per (head, relax) goes to the largest count and keeps chi at the smaller ones
(``smv_tv``'s ``callback``); the rest of the chain (network, void fits, void cores, referencing) runs
once per count, as the app runs it.  One JSON line per (head, method, relax, count).

Usage (session 17)::

    .venv/bin/python benchmarks/final_relax_study.py --relax 1.0 --iters 140 200 \\
        --out benchmarks/final_relax_study.jsonl
    .venv/bin/python benchmarks/final_relax_study.py --relax 1.7 --iters 100 130 160 \\
        --out benchmarks/final_relax_study.jsonl
"""

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402
import honest_heads as hh  # noqa: E402

from qsmprep.dl import restore  # noqa: E402
from qsmprep.qsm import smvfit  # noqa: E402


def main(names, out, relax=1.0, iters=(200,), methods=("nsidl",)):
    orig_fit, orig_iters = smvfit.smv_tv, restore.final_iterations
    try:
        for n in names:
            case = cb.validation_case(n)
            chain = cb.chain_for(case)
            for meth in methods:
                kept: dict[int, object] = {}

                def fit(*a, n_iter=200, **k):
                    if not kept:  # first call of this (head, method): run to the largest count, keep the others
                        last = orig_fit(*a, n_iter=max(iters), relax=relax,
                                        callback=lambda it, cur: kept.__setitem__(it, cur()) if it in iters else None,
                                        **{kk: v for kk, v in k.items() if kk != "relax"})
                        kept[max(iters)] = last
                    return kept[n_iter]

                smvfit.smv_tv = fit
                for it in sorted(iters, reverse=True):
                    restore.final_iterations = lambda voxel_size, it=it: it  # what methods.invert passes
                    t0 = time.time()
                    r = cb.score(cb.METHODS[meth](case, chain), case)
                    cb.log_study_row(out, r, t0, case=n, method=meth, relax=relax, final_iter=it)
    finally:
        smvfit.smv_tv, restore.final_iterations = orig_fit, orig_iters


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heads", nargs="+", help="validation head names (default: every validation head)")
    ap.add_argument("--relax", type=float, default=1.0)
    ap.add_argument("--iters", type=int, nargs="+", default=[200])
    ap.add_argument("--methods", nargs="+", default=["nsidl"], choices=["nsidl", "nsidl-off"])
    ap.add_argument("--out", type=Path, required=True, help="JSON lines (appended)")
    a = ap.parse_args()
    main(a.heads or [c.name for c in hh.cases("validation")], a.out, a.relax, tuple(a.iters), tuple(a.methods))
