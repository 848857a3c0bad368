"""The brain mask's phase-coherence limit through the whole chain on a 1 mm validation head (issue #14,
session 11): ``masking.brain_mask(coherence_threshold=...)`` for each limit given, then the app's chain and
NSIDL (``chain_benchmark.METHODS["nsidl"]``), scored as the chain benchmark scores.  One JSON line per run.

Usage::

    .venv/bin/python benchmarks/mask_coherence_1mm.py val-sim-3T-SE-obl 0.5,0.15,0 benchmarks/mask_coherence_1mm.jsonl
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
from _common import app_chain_field  # noqa: E402


def main(names: str, limits: str, out: str) -> None:
    for name in names.split(","):
        if hh.CASES[name].role != "validation":
            raise SystemExit(f"{name} is a {hh.CASES[name].role} head; this study runs on validation heads only.")
        case = hh.load_case(name, 1.0)
        for c in [float(x) for x in limits.split(",")]:
            t = time.time()
            ch = app_chain_field(case["phase"], case["mag"], case["te_s"], case["voxel_size"], case["b0_t"],
                                 b0_dir=case["b0_dir"], mask_kwargs={"coherence_threshold": c})
            r = cb.score(cb.METHODS["nsidl"](case, ch), case)
            d = dict(case=name, coherence_threshold=c, **{k: r[k] for k in ("xsim", "nrmse", "hfen", "roi_slope")},
                     calc=r.get("calc_moment_rel"), haem=r.get("haem_dnrmse"), s=round(time.time() - t, 1))
            print(json.dumps(d), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:4])
