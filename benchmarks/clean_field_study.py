"""Clean-field study (issue #13, validation heads only): is the tuned TV anchor converged, and does
the network's chi help as a TV start?

On the true (fine-grid) local field with the true brain mask of each validation head, 1 mm:
NSIDL ``strong`` and its ablation (U-Net output zeroed), each followed by weighted-linear TV
(``qsmprep.qsm.tv.tv_admm``, 60 ADMM iterations started from that chi, with and without a
quadratic pull to it), against TV from zero at 60 and 150 iterations.  One JSON line per run.

Usage::

    .venv/bin/python benchmarks/clean_field_study.py val-sim-3T-ME-z,val-qf-3T-ME-obl benchmarks/clean_field_study.jsonl

``--final-tv`` (session 20): the grid that chose the ``strong`` preset's final TV fit
(``qsmprep.dl.inference.DATA_FIT["strong"]["final_tv"]``): ``strong`` without that fit (both modes run
``strong`` so, :func:`strong_without_final_tv`, as it was when they first ran), then
``tv_admm`` started from its chi at each (TV weight, iterations) of :data:`FINAL_TV_GRID`, on the six 1 mm
validation heads::

    .venv/bin/python benchmarks/clean_field_study.py --final-tv all benchmarks/clean_field_final_tv.jsonl

``--edges`` (session 25): ``strong``'s final TV fit with the chain's edge map from its start (:func:`edges_study`),
against the app's uniform TV, from the network's start and from the ablation's::

    .venv/bin/python benchmarks/clean_field_study.py --edges val-sim-3T-ME-z,val-sim-3T-SE-obl,val-qf-3T-ME-obl,val-qf-7T-ME-obl benchmarks/clean_field_edges.jsonl
"""

import contextlib
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import chain_benchmark as cb  # noqa: E402

from qsmprep.methods import invert, reference_echo_time  # noqa: E402
from qsmprep.qsm.tv import tv_admm  # noqa: E402


@contextlib.contextmanager
def strong_without_final_tv():
    """Within this block ``strong`` stops after the network (as before session 20 gave it a final TV fit)."""
    from qsmprep.dl import inference

    kept = inference.DATA_FIT["strong"]["final_tv"]
    inference.DATA_FIT["strong"]["final_tv"] = None
    try:
        yield
    finally:
        inference.DATA_FIT["strong"]["final_tv"] = kept


def _clean_case(n):
    """(case, mask, inversion args, ``strong``'s keywords) of validation head ``n`` fed its true local field."""
    case = cb.validation_case(n)
    m, f = case["brain_mask"], case["local_field_ppm"]
    w = np.sqrt((case["mag"] ** 2).sum(-1))
    kw = dict(weight=w, b0_t=case["b0_t"], te_s=reference_echo_time(case["te_s"]), device="cpu",
              nsidl_data_fit="strong")
    return case, m, (f, m, case["voxel_size"], case["b0_dir"]), kw


def main(names, out):
    for n in names:
        case, m, args, kw = _clean_case(n)
        w = kw["weight"]

        def rec(tag, chi, t0):
            r = cb.score(cb._ref(chi, m), case)
            d = dict(case=n, tag=tag, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"], slope=r["roi_slope"],
                     s=time.time() - t0)
            print(json.dumps(d), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(d) + "\n")

        for off in (False, True):
            t0 = time.time()
            with strong_without_final_tv(), cb.network_off() if off else contextlib.nullcontext():
                chi0, _ = invert("nsidl", *args, **kw)
            sfx = "-off" if off else ""
            rec("strong" + sfx, chi0, t0)
            for lam in (1e-5, 3e-5):
                for pw in (0.0, 0.02):
                    t0 = time.time()
                    rec(f"strong{sfx}+tv lam={lam} pw={pw}",
                        tv_admm(*args, weight=w, lam=lam, chi_prior=chi0, prior_weight=pw), t0)
        for lam in (1e-5, 3e-5):
            t0 = time.time()
            rec(f"tv lam={lam}", tv_admm(*args, weight=w, lam=lam), t0)
        t0 = time.time()
        rec("tv lam=1e-05 it150", tv_admm(*args, weight=w, lam=1e-5, n_iter=150), t0)


#: (TV weight, ADMM iterations) of ``--final-tv``.
FINAL_TV_GRID = ((5e-6, 60), (1e-5, 60), (2e-5, 60), (1e-5, 120))


def final_tv_grid(names, out):
    """``strong`` without a final fit, then TV from its chi at each :data:`FINAL_TV_GRID` point (one JSON line each)."""
    for n in names:
        case, m, args, kw = _clean_case(n)
        w = kw["weight"]
        t0 = time.time()
        with strong_without_final_tv():
            chi0, meta = invert("nsidl", *args, **kw)
        rows = [("strong", chi0, time.time() - t0, meta["WeightsName"])]
        for lam, it in FINAL_TV_GRID:
            t0 = time.time()
            rows.append((f"strong+tv lam={lam:g} it={it}", tv_admm(*args, weight=w, lam=lam, n_iter=it, chi_prior=chi0),
                         time.time() - t0, meta["WeightsName"]))
        for tag, chi, dt, wname in rows:
            r = cb.score(cb._ref(chi, m), case)
            d = dict(case=n, tag=tag, weights=wname, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"],
                     slope=r["roi_slope"], s=round(dt, 1))
            print(json.dumps(d), flush=True)
            with open(out, "a") as fh:
                fh.write(json.dumps(d) + "\n")


def edge_configs() -> dict:
    """The edge maps of ``--edges`` (session 25), by label: none (the app's uniform TV) and the chain's (fraction,
    factor, band), read from ``restore.FINAL_EDGE_TV`` and ``restore.FINAL_EDGE_TV_BAND`` (0.3, 0.5, 0.1 when it ran)."""
    from qsmprep.dl.restore import FINAL_EDGE_TV, FINAL_EDGE_TV_BAND

    fraction, factor = FINAL_EDGE_TV
    return {"uniform": None, f"edges={fraction:g}/{factor:g}": (fraction, factor, FINAL_EDGE_TV_BAND)}


def edges_study(names, out):
    """``strong`` without its final fit and its ablation (U-Net output zeroed), then ``strong``'s final TV fit
    (:data:`qsmprep.dl.inference.DATA_FIT` ``["strong"]["final_tv"]``) from each, with uniform TV (the app) and with
    the chain's edge map from the start (:func:`edge_configs`, ``tv_admm(tv_weight=)``); one JSON line each."""
    from qsmprep.dl.inference import DATA_FIT
    from qsmprep.dl.restore import edge_tv_weight

    lam, it = DATA_FIT["strong"]["final_tv"]
    for n in names:
        case, m, args, kw = _clean_case(n)
        w = kw["weight"]
        for off in (False, True):
            t0 = time.time()
            with strong_without_final_tv(), cb.network_off() if off else contextlib.nullcontext():
                chi0, _ = invert("nsidl", *args, **kw)
            t_net = time.time() - t0
            for cfg, e in edge_configs().items():
                t0 = time.time()
                tw = None if e is None else edge_tv_weight(chi0, m, case["voxel_size"], e[0], e[1], band=e[2])
                chi = tv_admm(*args, weight=w, lam=lam, n_iter=it, chi_prior=chi0, tv_weight=tw)
                r = cb.score(cb._ref(chi, m), case)
                d = dict(case=n, start="ablation" if off else "network", config=cfg, xsim=r["xsim"], nrmse=r["nrmse"],
                         hfen=r["hfen"], slope=r["roi_slope"], calc=r.get("calc_moment_rel"), haem=r.get("haem_dnrmse"),
                         net_s=round(t_net, 1), s=round(time.time() - t0, 1))
                print(json.dumps(d), flush=True)
                with open(out, "a") as fh:
                    fh.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    if sys.argv[1] == "--edges":
        edges_study(sys.argv[2].split(","), sys.argv[3])
    elif sys.argv[1] == "--final-tv":
        names = ([c.name for c in cb.hh.cases("validation")] if sys.argv[2] == "all" else sys.argv[2].split(","))
        final_tv_grid(names, sys.argv[3])
    else:
        main(sys.argv[1].split(","), sys.argv[2])
