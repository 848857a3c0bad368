"""The chain's void refit after the final fit (issue #13; validation heads only), scored as the chain benchmark
scores (XSIM, NRMSE, HFEN, ROI slope, calcification moment error, haemorrhage dNRMSE).  One JSON line per run.

Session 11 compared the refit off and on (``--mode onoff``: two full NSIDL runs per head, ``restore.FINAL_REFIT_VOIDS``
off / on, the refit solved out with ``restore.VOID_ITER`` iterations as it was then).  Session 12 added ``val-qf-7T-ME-obl`` (qsm-forward at 7 T) and compares the refit's CG iterations
(``--mode iters``, ``restore.FINAL_VOID_ITER``): one NSIDL run per head with the refit on records what its final
``fit_voids`` call gets (chi of the final TV fit, the local field, the masks), then the refit is redone on that with
each iteration count (0 = no refit); everything before the refit is the same in every row.

Usage::

    .venv/bin/python benchmarks/void_refit_study.py val-sim-3T-ME-z,val-sim-7T-ME-obl,val-sim-3T-SE-obl,val-qf-3T-ME-obl,val-qf-7T-ME-obl benchmarks/void_refit_study.jsonl --mode iters
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402

from qsmprep.dl import restore  # noqa: E402

ITERS = (0, 1, 2, 3, 5, 7, 10, 30)


def onoff(name: str, out: str) -> None:
    case = cb.validation_case(name)
    ch = cb.chain_for(case)
    default = restore.FINAL_REFIT_VOIDS, restore.FINAL_VOID_ITER
    for on in (False, True):
        restore.FINAL_REFIT_VOIDS, restore.FINAL_VOID_ITER = on, restore.VOID_ITER
        t0 = time.time()
        try:
            r = cb.score(cb.METHODS["nsidl"](case, ch), case)
        finally:
            restore.FINAL_REFIT_VOIDS, restore.FINAL_VOID_ITER = default
        cb.log_study_row(out, r, t0, case=name, refit_voids=on)


def iters(name: str, out: str) -> None:
    case = cb.validation_case(name)
    ch = cb.chain_for(case)
    calls = []
    orig = restore.fit_voids

    def record(*a, **k):
        calls.append((a, k))
        return orig(*a, **k)

    restore.fit_voids = record
    try:
        cb.METHODS["nsidl"](case, ch)  # the refit's inputs: the last fit_voids call
    finally:
        restore.fit_voids = orig
    (chi, local, data, voids, vs, b0), kw = calls[-1][0][:6], calls[-1][1]
    sup = restore.support_mask(ch["mask"])
    for n in ITERS:
        t0 = time.time()
        fit = chi if n == 0 else restore.fit_voids(chi, local, data, voids, vs, b0, weight=kw.get("weight"), n_iter=n)
        # as cb.m_app returns it: zero outside the support, referenced over the eroded mask and the support
        r = cb.score(cb._ref(np.where(sup, fit, 0).astype(np.float32), ch["eroded"] | sup), case)
        cb.log_study_row(out, r, t0, case=name, void_iter=n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names")
    ap.add_argument("out")
    ap.add_argument("--mode", choices=("onoff", "iters"), default="iters")
    a = ap.parse_args(argv)
    for name in a.names.split(","):
        (iters if a.mode == "iters" else onoff)(name, a.out)


if __name__ == "__main__":
    main()
