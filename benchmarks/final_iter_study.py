"""Final-fit iterations study (issue #13, validation heads only): the whole chain with NSIDL and with
its ablation (U-Net output zeroed), the final SMV-TV fit at 60 (the default) and 200 ADMM iterations.
One JSON line per run.

Usage::

    .venv/bin/python benchmarks/final_iter_study.py val-sim-3T-ME-z,val-qf-3T-ME-obl benchmarks/final_iter_study.jsonl
"""

import functools
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


def main(names, out, iters=(60, 200)):
    orig = restore.invert_nsidl_chain
    try:
        for n in names:
            if hh.CASES[n].role != "validation":
                raise SystemExit(f"{n} is a {hh.CASES[n].role} head; this study runs on validation heads only.")
            case = hh.load_case(n, 1.0)
            chain = cb.chain_for(case)
            for it in iters:
                restore.invert_nsidl_chain = functools.partial(orig, final_iter=it)
                for meth in ("nsidl", "nsidl-off"):
                    t0 = time.time()
                    r = cb.score(cb.METHODS[meth](case, chain), case)
                    d = dict(case=n, method=meth, final_iter=it, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"],
                             slope=r["roi_slope"], s=round(time.time() - t0, 1))
                    print(json.dumps(d), flush=True)
                    with open(out, "a") as fh:
                        fh.write(json.dumps(d) + "\n")
    finally:
        restore.invert_nsidl_chain = orig


if __name__ == "__main__":
    main(sys.argv[1].split(","), sys.argv[2])
