"""How much can *any* start of the chain's final fit gain?  The oracle start (issue #13: the ablation gap).

In the default chain the network's chi is only the start of the final SMV-consistent TV fit
(``qsmprep.qsm.smvfit.smv_tv``), which keeps of its start only what its iterations do not settle.  The
network's gain over its ablation (network output off) is therefore bounded by how much the fit's result can
depend on its start.  This study measures that bound on validation data: it captures the fit's inputs in the
app's chain (``robustness.run_app``, node for node), then optimises the start itself against the truth
through the fit (``qsmprep.dl.finalfit.FinalFit``: the same ADMM iterations, differentiable in their start),
by Adam on the start's voxels, minimising the squared error of the referenced result over the true brain mask
(both sides demeaned there).  No network can give the fit a better start than this oracle, for this loss.

Scored (``robustness.score``: qsm-ci XSIM / NRMSE over the true brain mask, ROI slope) after the fit and the
app's referencing (``reference_mean`` in chi's mask), without the void refit and cores that follow the fit in
the app (the rows here have few voids):  the app's start (NSIDL), the ablation's start (network output off),
zero, the true chi, and the oracle after each ``--every`` Adam steps.

    .venv/bin/python benchmarks/oracle_start_study.py --rows "ME 3T" --seeds 10 --steps 30 \
        --log benchmarks/oracle_start_study.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import robustness as rb  # noqa: E402


def capture(d: dict, off: bool = False) -> dict:
    """Run the app on ``d`` (canonical inputs) and record the final fit's arguments and result."""
    import contextlib

    import chain_benchmark as cb
    from _common import final_fit_recorded

    with final_fit_recorded(then="run") as got, (cb.network_off() if off else contextlib.nullcontext()):
        out = rb.run_app(rb.stored_inputs(d, "canonical"), d, qc=False)
    got["app_chi"] = out["chi"]
    return got


def run(row: str, seed: int, steps: int, every: int, lr: float, cache: Path, log: str | None) -> None:
    import torch

    from qsmprep.dl import finalfit
    from qsmprep.dl.finalfit import FinalFit
    from qsmprep.qsm.smvfit import smv_tv_problem

    torch.set_num_threads(max(1, torch.get_num_threads()))
    d = rb.data_for(rb.case_for(row, seed), cache)
    t0 = time.perf_counter()
    app = capture(d)
    off = capture(d, off=True)
    a, k = app["args"], dict(app["kwargs"])
    start_net = np.asarray(k.pop("chi_prior"), np.float32)
    n_iter, relax = int(k.pop("n_iter")), float(k.pop("relax"))
    for key in ("device", "callback"):
        k.pop(key, None)
    pb = smv_tv_problem(*a, **k)
    fit = FinalFit(pb, n_iter=n_iter, relax=relax, checkpoint_every=10)
    brain = torch.from_numpy(d["brain"].astype(np.float32))
    truth = torch.from_numpy(np.asarray(d["chi"], np.float32))
    # chi's mask in the app (where reference_mean averages): the support the fit returns on
    sup = torch.from_numpy(pb.support).float()

    def referenced(chi):
        return finalfit.referenced(chi, sup)

    def loss_of(chi):
        return finalfit.chain_loss(chi, truth, brain, sup)

    def scored(label, start=None, chi=None, **extra):
        with torch.no_grad():
            if chi is None:
                chi = fit(torch.as_tensor(start))
            chi = referenced(chi)
            s = rb.score(chi.numpy(), d)
            s["loss"] = float(loss_of(chi))
        rec = {"row": row, "seed": seed, "start": label, **{kk: round(v, 4) for kk, v in s.items()}, **extra,
               "n_iter": n_iter, "relax": relax, "elapsed_s": round(time.perf_counter() - t0, 1)}
        print(json.dumps(rec), flush=True)
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
        return rec

    print(f"[oracle] {row} head {seed}: fit grid {pb.shape}, {n_iter} iterations (relax {relax})", flush=True)
    scored("app (whole chain, for reference)", chi=torch.from_numpy(app["app_chi"]))
    scored("app start (NSIDL)", start_net)
    start_off = np.asarray(off["kwargs"]["chi_prior"], np.float32)
    scored("ablation start (network off)", start_off)
    scored("zero", np.zeros_like(start_net))
    scored("true chi", np.where(np.asarray(sup.numpy()) > 0, np.asarray(d["chi"], np.float32), 0))
    x = torch.from_numpy(start_net.copy()).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = loss_of(fit(x))
        loss.backward()
        opt.step()
        if step % every == 0 or step == steps:
            scored("oracle from the app start", x.detach().clone(), step=step, lr=lr)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="*", default=["ME 3T"])
    ap.add_argument("--seeds", nargs="*", type=int, default=[10])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--lr", type=float, default=2e-3, help="Adam step (ppm)")
    ap.add_argument("--cache", default="/tmp/qsmprep-robustness")
    ap.add_argument("--log", default=None)
    a = ap.parse_args(argv)
    for seed in a.seeds:
        if seed not in rb.VALIDATION_SEEDS:
            raise SystemExit(f"head {seed} is not a validation head ({rb.VALIDATION_SEEDS}): this study tunes nothing, "
                             "but it looks only at validation data.")
        for row in a.rows:
            run(row, seed, a.steps, a.every, a.lr, Path(a.cache), a.log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
