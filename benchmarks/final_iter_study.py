"""Final-fit iterations study (issue #13): the whole chain with NSIDL and with its ablation (U-Net
output zeroed), the final SMV-TV fit (``restore.invert_nsidl_chain``'s ``final_iter``) at several
ADMM iteration counts.  The count is chosen on validation heads; ``--role test`` scores a count
already chosen there on the test heads (a preview, nothing is chosen from it).  One JSON line per run.

Usage::

    .venv/bin/python benchmarks/final_iter_study.py --iters 60 200 --heads val-sim-3T-ME-z val-qf-3T-ME-obl \\
        --out benchmarks/final_iter_study.jsonl
    .venv/bin/python benchmarks/final_iter_study.py --iters 60 150 --heads val-sim-7T-ME-obl val-sim-3T-SE-obl \\
        --out benchmarks/final_iter_study.jsonl
    .venv/bin/python benchmarks/final_iter_study.py --role test --iters 150 --out benchmarks/final_iter_test150.jsonl

Session 10 (the ADMM in torch on the CPU, as the app runs it since then; the choice of 200 at 1 mm)::

    .venv/bin/python benchmarks/final_iter_study.py --iters 60 150 200 --heads val-sim-3T-ME-z \\
        --out benchmarks/final_iter_study_torch.jsonl
    .venv/bin/python benchmarks/final_iter_study.py --iters 150 200 \\
        --heads val-qf-3T-ME-obl val-sim-7T-ME-obl val-sim-3T-SE-obl --out benchmarks/final_iter_study_torch.jsonl
"""

import argparse
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


def main(names, out, iters=(60, 200), role="validation"):
    orig = restore.final_iterations
    try:
        for n in names:
            if hh.CASES[n].role != role:
                raise SystemExit(f"{n} is a {hh.CASES[n].role} head, not a {role} head; pass --role {hh.CASES[n].role}.")
            case = hh.load_case(n, 1.0)
            chain = cb.chain_for(case)
            for it in iters:
                # methods.invert passes final_iterations(...) to the chain (since bae9731: a partial on the
                # chain's final_iter is overridden there)
                restore.final_iterations = lambda voxel_size, it=it: it
                for meth in ("nsidl", "nsidl-off"):
                    t0 = time.time()
                    r = cb.score(cb.METHODS[meth](case, chain), case)
                    d = dict(case=n, method=meth, final_iter=it, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"],
                             slope=r["roi_slope"], calc=r.get("calc_moment_rel"), haem=r.get("haem_dnrmse"),
                             s=round(time.time() - t0, 1))
                    print(json.dumps(d), flush=True)
                    with open(out, "a") as fh:
                        fh.write(json.dumps(d) + "\n")
    finally:
        restore.final_iterations = orig


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("validation", "test"), default="validation")
    ap.add_argument("--heads", nargs="+", help="head names (default: every head of --role)")
    ap.add_argument("--iters", type=int, nargs="+", default=[60, 200])
    ap.add_argument("--out", type=Path, required=True, help="JSON lines (appended)")
    a = ap.parse_args()
    main(a.heads or [c.name for c in hh.cases(a.role)], a.out, tuple(a.iters), a.role)
