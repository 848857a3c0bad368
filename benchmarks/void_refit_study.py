"""The chain's void refit after the final fit (issue #13, session 11; validation heads only): the app's chain
and NSIDL (``chain_benchmark.METHODS["nsidl"]``) with ``restore.FINAL_REFIT_VOIDS`` off and on, scored as the
chain benchmark scores (XSIM, NRMSE, HFEN, ROI slope, calcification moment error, haemorrhage dNRMSE).
One JSON line per run.

Usage::

    .venv/bin/python benchmarks/void_refit_study.py val-sim-3T-ME-z,val-sim-7T-ME-obl,val-sim-3T-SE-obl,val-qf-3T-ME-obl benchmarks/void_refit_study.jsonl
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402

from qsmprep.dl import restore  # noqa: E402


def main(names: str, out: str) -> None:
    default = restore.FINAL_REFIT_VOIDS
    for name in names.split(","):
        case = cb.validation_case(name)
        ch = cb.chain_for(case)
        for on in (False, True):
            restore.FINAL_REFIT_VOIDS = on
            t0 = time.time()
            try:
                r = cb.score(cb.METHODS["nsidl"](case, ch), case)
            finally:
                restore.FINAL_REFIT_VOIDS = default
            cb.log_study_row(out, r, t0, case=name, refit_voids=on)


if __name__ == "__main__":
    main(*sys.argv[1:3])
