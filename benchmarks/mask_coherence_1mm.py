"""The brain mask's phase-coherence limit through the whole chain on a 1 mm validation head (issue #14,
session 11): ``masking.brain_mask(coherence_threshold=...)`` for each limit given, then the app's chain and
NSIDL (``chain_benchmark.METHODS["nsidl"]``), scored as the chain benchmark scores.  One JSON line per run.

Usage::

    .venv/bin/python benchmarks/mask_coherence_1mm.py val-sim-3T-SE-obl 0.5,0.15,0 benchmarks/mask_coherence_1mm.jsonl
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402
from _common import app_chain_field  # noqa: E402


def main(names: str, limits: str, out: str) -> None:
    for name in names.split(","):
        case = cb.validation_case(name)
        for c in [float(x) for x in limits.split(",")]:
            t0 = time.time()
            ch = app_chain_field(case["phase"], case["mag"], case["te_s"], case["voxel_size"], case["b0_t"],
                                 b0_dir=case["b0_dir"], mask_kwargs={"coherence_threshold": c})
            cb.log_study_row(out, cb.score(cb.METHODS["nsidl"](case, ch), case), t0, case=name, coherence_threshold=c)


if __name__ == "__main__":
    main(*sys.argv[1:4])
