"""How strongly the chain should apply the network's correction (issue #13, validation heads only).

NSIDL's unrolled step is ``chi_k+1 = M (z_k + 0.1 ppm * U(z_k, W, M, k))``; the U-Net ``U`` was trained to bring
its *own* output closer to the truth, while in the app's chain that output is only the start of the final
SMV-consistent TV fit, which pulls part of every start back towards TV's answer (RESULTS.md, "How much any start
can gain": the fit's result moves with its start, and NSIDL's start is 0.08-0.09 XSIM short of the best one).  This
study scales the U-Net's output by ``beta`` at inference (``beta`` = 1: the app; 0: the ablation), i.e. the
learned correction applied more or less strongly, and runs the app's whole chain (``chain_benchmark.m_app
("nsidl")``, the final fit, the void refit and the cores included) on the six 1 mm validation heads.

Rule, written before any row ran: a ``beta`` other than 1 is adopted only if its mean XSIM over the six heads is
above that of ``beta = 1`` in the same run and its mean NRMSE is not above it; among such values, the one with
the highest mean XSIM.  Test heads are scored once, after the choice.

    .venv/bin/python benchmarks/residual_scale_study.py --betas 1 1.5 2 --log benchmarks/residual_scale_study.jsonl

``--post``: instead, one more U-Net step *after* the chain (the app's chi, final fit, void refit and cores
included): ``chi + beta 0.1 ppm U(chi, W, S, k)`` on chi's support ``S`` (``W`` the network's normalised data
weight), for each iteration input ``k`` in 0, 1/3, 2/3, 1 and ``beta`` in 1, 0.5; scored beside the app's chi::

    .venv/bin/python benchmarks/residual_scale_study.py --post --cases val-sim-3T-ME-z val-qf-3T-ME-obl --log benchmarks/residual_scale_study.jsonl
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402


def scaled_network(beta: float):
    """Within this block, NSIDL's U-Net output is multiplied by ``beta`` (its last, linear convolution scaled)."""
    def scale(model, info):
        import torch

        m = copy.deepcopy(model)
        with torch.no_grad():
            m.prox.out.weight.mul_(beta)
            m.prox.out.bias.mul_(beta)
        return m, info

    return cb._wrapped_loader(scale)


def post_steps(case: dict, chain: dict, log: str) -> None:
    """The app's chi, then one U-Net step after it (see ``--post``); one row per variant."""
    import numpy as np
    import torch

    from qsmprep.dl import inference as inf
    from qsmprep.dl.model import SIGMA_PPM
    from qsmprep.dl.weights import default_weights_path
    from qsmprep.methods import chi_mask, reference_echo_time

    t0 = time.time()
    model, _ = inf._cached_model(str(default_weights_path("chain")), "cpu")
    chi = cb.invert_app("nsidl", case, chain)
    sup = chi_mask("nsidl", chain["eroded"], chain["mask"], magnitude=chain.get("magnitude"),
                   voxel_size=case["voxel_size"], b0_t=case["b0_t"], te_s=reference_echo_time(case["te_s"])) > 0
    w = inf.normalise_weight(chain["weight"], chain["mask"] > 0)
    name = case["spec"].name
    cb.log_study_row(log, cb.score(cb._ref(chi, sup), case), t0, case=name, post="app")
    with torch.no_grad():
        z = torch.from_numpy(chi[None, None]).float()
        wt, mt = torch.from_numpy(w[None, None]).float(), torch.from_numpy(sup[None, None].astype(np.float32))
        for k in (0.0, 1 / 3, 2 / 3, 1.0):
            r = model.prox(torch.cat([z / SIGMA_PPM, wt, mt, torch.full_like(z, k)], 1))
            for beta in (1.0, 0.5):
                c = ((z + beta * SIGMA_PPM * r) * mt)[0, 0].numpy()
                cb.log_study_row(log, cb.score(cb._ref(c, sup), case), t0, case=name, post=f"k={k:.2f}", beta=beta)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--betas", nargs="+", type=float, default=[1.0, 1.5, 2.0])
    ap.add_argument("--cases", nargs="+", default=[c.name for c in cb.hh.cases("validation")])
    ap.add_argument("--cache", default=None)
    ap.add_argument("--log", required=True)
    ap.add_argument("--post", action="store_true", help="one U-Net step after the chain instead (see above)")
    a = ap.parse_args(argv)
    for n in a.cases:
        case = cb.hh.CASES[n].role == "validation" and cb.hh.load_case(n, 1.0, a.cache)
        if not case:
            raise SystemExit(f"{n} is not a validation head; this study runs on validation heads only.")
        chain = cb.chain_for(case)
        if a.post:
            post_steps(case, chain, a.log)
            continue
        for beta in a.betas:
            t0 = time.time()
            with scaled_network(beta):
                chi = cb.m_app("nsidl")(case, chain)
            cb.log_study_row(a.log, cb.score(chi, case), t0, case=n, beta=beta)


if __name__ == "__main__":
    main()
