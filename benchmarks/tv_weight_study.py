"""TV weight of NSIDL's chain final fit (issue #13 / #14): a fixed weight against the noise rule.

The chain's last step (``qsmprep.qsm.smvfit.smv_tv`` in ``qsmprep.dl.restore.invert_nsidl_chain``)
balances the total-field data term against TV.  Its weight was fixed (3e-5, taken from the TV anchor's
1 mm tuning); the noise of the local field differs 5x between the benchmark families (1 mm at SNR
100: 0.0005 ppm; 2 mm at SNR 30 or qsm-forward's heads: 0.002-0.0026 ppm), and so does the best weight.
The rule (``restore.final_tv_lambda``): ``lam = 0.05 x sigma``, sigma = the local field's noise
(``qsmprep.qsm.noise.field_noise``), within [1e-5, 3e-4], and at most 3e-5 on thick slices (voxel
aspect >= 2.5, chosen here on the 1 x 1 x 3 mm rows).

Validation heads only: the robustness matrix's rows at 2 mm on heads 10 and 11 (``robustness.py``'s
app chain, node for node) and the four 1 mm validation heads of the honest benchmark
(``chain_benchmark.py``'s chain).  ``--fixed F ...`` replaces the final fit's weight by ``F x 3e-5``
(the former fixed weight); without it the app's rule runs.  One JSON line per run (``--log``).

    .venv/bin/python benchmarks/tv_weight_study.py --fixed 0.5 0.7 1 1.5 2 3 4 --log benchmarks/tv_weight_study.jsonl
    .venv/bin/python benchmarks/tv_weight_study.py --log benchmarks/tv_weight_study.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

FORMER_FIXED = 3e-5
ROWS_2MM = ["ME 3T SNR 30", "ME 3T", "ME 3T 1x1x3 mm", "ME 3T 1x1x2 mm", "SE 3T offset 1x1x2 mm", "SE 3T offset",
            "SE 7T offset", "ME 7T many wraps", "ME 3T oblique 30 deg", "ME 3T slab 64 mm", "ME 3T unequal spacing",
            "ME 3T, qsm-forward", "SE 3T offset, qsm-forward", "SE 7T offset, qsm-forward"]
HEADS_1MM = ["val-sim-3T-ME-z", "val-sim-7T-ME-obl", "val-sim-3T-SE-obl", "val-qf-3T-ME-obl"]


class _FixedWeight:
    """Within the block, the chain's final fit uses ``lam = fac x 3e-5``."""

    def __init__(self, fac):
        self.fac = fac

    def __enter__(self):
        import qsmprep.qsm.smvfit as S

        self.orig = S.smv_tv
        if self.fac is not None:
            fac, orig = self.fac, self.orig

            def fixed(*a, **k):
                k["lam"] = fac * FORMER_FIXED
                return orig(*a, **k)

            S.smv_tv = fixed

    def __exit__(self, *exc):
        import qsmprep.qsm.smvfit as S

        S.smv_tv = self.orig


def render(path) -> str:
    """XSIM per case (mean over the seeds) for each weight; the best fixed weight in bold."""
    from collections import defaultdict

    last = {}
    for line in open(path):
        if line.strip():
            r = json.loads(line)
            last[(r["set"], r["case"], r["seed"], r["weight"])] = r  # a rerun replaces its earlier line
    recs = list(last.values())
    xs, noise = defaultdict(list), defaultdict(list)
    for r in recs:
        xs[(r["set"], r["case"], r["weight"])].append(r["xsim"])
        noise[(r["set"], r["case"])].append(r["noise_ppm"])
    fixed = sorted({r["weight"] for r in recs if r["weight"] != "rule"}, key=lambda w: float(w.split()[1]))
    cols = [w.split()[1] for w in fixed]
    lines = ["| set | case | noise (ppm) | " + " | ".join(f"{c} x 3e-5" for c in cols) + " | rule (lam) |",
             "|---|---|---|" + "---|" * (len(cols) + 1)]
    cases = sorted({(r["set"], r["case"]) for r in recs}, key=lambda k: (k[0] != "honest-1mm", k[1]))
    for st, case in cases:
        vals = {w: sum(v) / len(v) for (s2, c2, w), v in xs.items() if s2 == st and c2 == case}
        best = max((vals[w] for w in fixed if w in vals), default=None)
        cells = []
        for w in fixed:
            v = vals.get(w)
            cells.append("" if v is None else (f"**{v:.3f}**" if v == best else f"{v:.3f}"))
        lam = [r["lam"] for r in recs if r["set"] == st and r["case"] == case and r["weight"] == "rule"]
        rule = vals.get("rule")
        rc = "" if rule is None else f"{rule:.3f} ({sum(lam) / len(lam):.1e})"
        n = noise[(st, case)]
        lines.append(f"| {st} | {case} | {sum(n) / len(n):.5f} | " + " | ".join(cells) + f" | {rc} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixed", nargs="*", type=float, default=None, help="factors of 3e-5 (default: the rule)")
    ap.add_argument("--set", choices=["2mm", "1mm", "both"], default="both")
    ap.add_argument("--seeds", nargs="*", type=int, default=[10, 11])
    ap.add_argument("--rows", nargs="*", default=ROWS_2MM)
    ap.add_argument("--heads", nargs="*", default=HEADS_1MM)
    ap.add_argument("--log", default=None)
    ap.add_argument("--render", default=None, help="print the Markdown table of this log and exit")
    a = ap.parse_args(argv)
    if a.render:
        print(render(a.render))
        return
    from qsmprep.dl.restore import final_tv_lambda

    facs = a.fixed if a.fixed else [None]

    def emit(rec):
        print(json.dumps(rec), flush=True)
        if a.log:
            with open(a.log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")

    if a.set in ("2mm", "both"):
        import robustness as R

        cache = Path(R.tempfile.gettempdir()) / "qsmprep-robustness"
        for row in a.rows:
            for seed in a.seeds:
                d = R.data_for(R.case_for(row, seed), cache)
                for fac in facs:
                    with _FixedWeight(fac):
                        app = R.run_app(R.stored_inputs(d, "canonical"), d, qc=False)
                    ch = app["chain"]
                    lam, sigma = final_tv_lambda(ch["local_ppm"], ch["eroded"], d["voxel_size"])
                    s = R.score(app["chi"], d)
                    emit({"set": "robustness-2mm", "case": row, "seed": seed,
                          "weight": "rule" if fac is None else f"fixed {fac:g} x 3e-5",
                          "lam": lam if fac is None else fac * FORMER_FIXED, "noise_ppm": round(sigma, 6),
                          "xsim": round(s["xsim"], 4), "slope": round(s["slope"], 4)})
    if a.set in ("1mm", "both"):
        import chain_benchmark as cb
        import honest_heads as hh

        for name in a.heads:
            case = hh.load_case(name, 1.0)
            chain = cb.chain_for(case)
            lam_rule, sigma = final_tv_lambda(chain["local_ppm"], chain["eroded"], case["voxel_size"])
            for fac in facs:
                with _FixedWeight(fac):
                    chi = cb.METHODS["nsidl"](case, chain)
                r = cb.score(chi, case)
                emit({"set": "honest-1mm", "case": name, "seed": None,
                      "weight": "rule" if fac is None else f"fixed {fac:g} x 3e-5",
                      "lam": lam_rule if fac is None else fac * FORMER_FIXED, "noise_ppm": round(sigma, 6),
                      **{k: round(float(r[k]), 4) for k in ("xsim", "nrmse", "hfen", "roi_slope") if k in r}})


if __name__ == "__main__":
    main()
