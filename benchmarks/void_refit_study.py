"""The chain's void refit after the final fit (issue #13, session 11; validation heads only): the app's chain
and NSIDL (``chain_benchmark.METHODS["nsidl"]``) with ``restore.FINAL_REFIT_VOIDS`` off and on, scored as the
chain benchmark scores (XSIM, NRMSE, HFEN, ROI slope, calcification moment error, haemorrhage dNRMSE).
One JSON line per run.

Usage::

    .venv/bin/python benchmarks/void_refit_study.py val-sim-3T-ME-z,val-sim-7T-ME-obl,val-sim-3T-SE-obl,val-qf-3T-ME-obl benchmarks/void_refit_study.jsonl
"""

import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402
import honest_heads as hh  # noqa: E402

from qsmprep.dl import restore  # noqa: E402


def main(names: str, out: str) -> None:
    default = restore.FINAL_REFIT_VOIDS
    for name in names.split(","):
        if hh.CASES[name].role != "validation":
            raise SystemExit(f"{name} is a {hh.CASES[name].role} head; this study runs on validation heads only.")
        case = hh.load_case(name, 1.0)
        ch = cb.chain_for(case)
        for on in (False, True):
            restore.FINAL_REFIT_VOIDS = on
            t = time.time()
            try:
                r = cb.score(cb.METHODS["nsidl"](case, ch), case)
            finally:
                restore.FINAL_REFIT_VOIDS = default
            d = dict(case=name, refit_voids=on, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"], slope=r["roi_slope"],
                     calc=r.get("calc_moment_rel"), haem=r.get("haem_dnrmse"), s=round(time.time() - t, 1))
            print(json.dumps(d), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
