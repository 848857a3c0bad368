"""Where a signal void's moment goes: spread over the void, or placed in its core (issue #13: lesions; validation heads).

The chain fits each void's chi from the field around it, which fixes the source's moment but not its extent,
and the void is larger than the source (blooming).  ``qsmprep.dl.restore.place_void_cores`` redistributes each
void's excess chi in proportion to ``depth ** power``, its moment kept.  This study runs the app's chain with the
cores switched off and scores its chi as it is and with the cores placed at each ``--powers`` value, on the 1 mm
validation heads (``honest_heads``) and the robustness matrix's validation rows (2 mm, heads 10 and 11).  The
rule the app uses (``restore.void_core_power``: power 1 where the phase per ppm at the reference echo time is
>= 24 rad/ppm) was chosen from these rows.

    .venv/bin/python benchmarks/void_core_study.py --heads val-sim-7T-SE-obl val-sim-3T-SE-obl val-sim-7T-ME-obl \
        --rows "SE 7T offset, qsm-forward" "SE 7T offset" "SE 3T offset, qsm-forward" "SE 3T offset" \
        "ME 3T, qsm-forward" "ME 7T many wraps" "ME 3T SNR 30" "ME 3T slab 64 mm" --log benchmarks/void_core_study.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def _variants(chi, mask, voxel_size, powers):
    from qsmprep.dl.restore import place_void_cores

    yield None, chi
    for p in powers:
        yield p, place_void_cores(chi, mask, voxel_size, power=p)


def _emit(row: dict, log: str | None) -> None:
    print(json.dumps(row), flush=True)
    if log:
        with open(log, "a") as fh:
            fh.write(json.dumps(row) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--heads", nargs="*", default=[], help="1 mm validation heads (honest_heads)")
    ap.add_argument("--rows", nargs="*", default=[], help="robustness rows (2 mm) on --seeds")
    ap.add_argument("--seeds", type=int, nargs="+", default=[10, 11])
    ap.add_argument("--powers", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    ap.add_argument("--log", default=None)
    a = ap.parse_args(argv)

    import chain_benchmark as cb
    import honest_heads as hh
    import robustness as rb

    from qsmprep.dl import restore
    from qsmprep.qsm.geometry import voxel_sizes

    if any(h in hh.CASES and hh.CASES[h].role != "validation" for h in a.heads) or set(a.seeds) & set(rb.TEST_SEEDS):
        raise SystemExit("void_core_study chooses settings: validation heads only.")
    restore.VOID_CORE_MIN_RAD_PER_PPM = float("inf")  # the app's chain without the cores; the variants add them
    keep = ("xsim", "nrmse", "hfen", "roi_slope", "slope", "calc_moment_rel", "haem_dnrmse", "haem_mean_ratio")
    for name in a.heads:
        case = hh.load_case(name, 1.0)
        chain = cb.chain_for(case)
        chi = cb.invert_app("nsidl", case, chain)
        out = chain["eroded"] | restore.support_mask(chain["mask"])
        for p, x in _variants(chi, chain["mask"], case["voxel_size"], a.powers):
            sc = cb.score(cb._ref(x, out), case)
            _emit({"head": name, "voxel_mm": 1.0, "power": p, **{k: round(float(sc[k]), 4) for k in keep if k in sc}},
                  a.log)
    cache = Path(tempfile.gettempdir()) / "qsmprep-robustness"
    for seed in a.seeds:
        for row in a.rows:
            d = rb.data_for(rb.case_for(row, seed), cache)
            vs = voxel_sizes(d["affine"])
            ch = rb.app_chain_field(d["phase"], d["mag"], d["te_s"], vs, d["b0_t"], b0_dir=d["b0_dir"])
            chi = rb.app_inversion("nsidl", ch, vs, d["b0_dir"], d["b0_t"], d["te_s"])
            for p, x in _variants(chi, ch["mask"], vs, a.powers):
                sc = {**rb.score(x, d), **cb.lesion_stats(x, d["chi"], d["labels"], d["brain"], {})}
                _emit({"row": row, "seed": seed, "power": p,
                       **{k: round(float(sc[k]), 4) for k in keep if k in sc and np.isfinite(sc[k])}}, a.log)


if __name__ == "__main__":
    main()
