"""Options of the chain's final fit, from the network's start and from the ablation's (issue #13).

Captures the final fit's inputs on validation heads (``final_fit_start_study.capture_fit``) for the network's
start (the app), the ablation's start (network output zeroed) and optionally a candidate's, and reruns the fit
with each ``--configs`` entry: comma-separated overrides ``lamx=<factor of the app's TV weight>``,
``iter=<ADMM iterations>``, ``pw=<prior weight>``, ``band=<d_max>/<k_min>``, ``tvfree=voids`` (no TV in the
signal voids and across their edges), ``edges=<fraction>/<factor>`` (TV weight times ``factor`` on the ``fraction``
of chi's support where the start's gradient is largest: ``restore.edge_tv_weight``), ``wedges=...`` (the same from
the data weight, i.e. the magnitude: MEDI's gradient mask), ``vedges=...`` (``edges`` but uniform TV on the voids and
within a voxel of them: ``restore.final_edge_tv_weight``, the app's map), ``loww=<t>`` (the app's map, and uniform TV
also where the data weight is below ``t`` times its median in the brain mask: session 24, not adopted), ``vring=<n>``
(the app's map with the uniform zone grown to ``n`` voxels around the voids; the app: 1; session 24), ``tvc=<beta>``
(TV about ``beta`` times the start's gradient, ``smv_tv``'s ``tv_center``, with the app's edge map; session 25)
(``app`` = the app's fit).  Scored over the true brain mask
(``chain_benchmark.score``); without the void refit that follows the fit in the app, as in
``final_fit_start_study.py``, unless ``--void-refit``.

**A prior inside the dipole cone.**  Let the network decide what the data cannot.

The chain's final SMV-consistent TV fit (``qsmprep.qsm.smvfit.smv_tv``) starts from the network's chi but
has no prior term, so inside the magic-angle cone, where the dipole kernel and hence the data say little,
its result is TV's, not the network's (``final_fit_start_study.py``: the truth's cone in the start changes
the fit's result by -0.005 XSIM).  ``smv_tv`` already takes ``prior_weight`` and ``prior_band = (d_max, k_min)``:
a quadratic pull towards the start acting only where ``|D(k)| < d_max`` and ``|k| > k_min`` (cycles/mm).  This
study tries it (``pw``, ``band``); ``--truth-cone`` adds the upper bound (the start's cone replaced by the
truth's, pulled towards with the same band).

    .venv/bin/python benchmarks/final_fit_options_study.py --cases val-sim-3T-ME-z --truth-cone \
        --configs app pw=0.1,band=0.1/0.02 pw=1,band=0.1/0.02 --log benchmarks/final_fit_options_study.jsonl
    .venv/bin/python benchmarks/final_fit_options_study.py --cases val-sim-3T-ME-z val-qf-3T-ME-obl \
        val-sim-7T-ME-obl val-sim-3T-SE-obl val-qf-7T-ME-obl --configs app lamx=1.5 lamx=2 \
        --log benchmarks/final_fit_options_study.jsonl

**Edge-weighted TV guided by the start (session 21; ``restore.edge_tv_weight``, ``restore.FINAL_EDGE_TV``).**  MEDI
lowers TV where the magnitude has edges; here the edges come from the fit's start, the network's chi.  Grid on the
six 1 mm validation heads (network start, with the void refit): ``edges`` 0.2/0.3, 0.3/0.3, 0.3/0.5, 0.4/0.5, and
(added after the first ``edges`` rows showed the haemorrhage harmed on the two 7 T heads) ``vedges`` 0.3/0.5,
0.4/0.5.  Rule, written before any ``vedges`` row ran: adopt the grid point with the highest mean XSIM among those
whose mean XSIM is above the app's, whose mean NRMSE is not above the app's, and whose haemorrhage dNRMSE is at most
10 % above the app's on every head; if none qualifies, the fit keeps uniform TV::

    .venv/bin/python benchmarks/final_fit_options_study.py --starts network --void-refit --cases <the six> \
        --configs app edges=0.2/0.3 edges=0.3/0.3 edges=0.3/0.5 edges=0.4/0.5 vedges=0.3/0.5 vedges=0.4/0.5 \
        --log benchmarks/final_fit_options_study.jsonl
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
import chain_benchmark as cb  # noqa: E402
import final_fit_start_study as ffs  # noqa: E402
import honest_heads as hh  # noqa: E402


def overrides(cfg: str, kwargs: dict) -> dict:
    """``smv_tv`` keyword arguments of ``cfg`` ("app" or "lamx=1.5,iter=300,pw=0.1,band=0.1/0.02") over the
    app's ``kwargs``."""
    out = dict(kwargs)
    if cfg == "app":
        return out
    for item in cfg.split(","):
        key, val = item.split("=")
        if key == "lamx":
            out["lam"] = float(kwargs["lam"]) * float(val)
        elif key == "iter":
            out["n_iter"] = int(val)
        elif key == "pw":
            out["prior_weight"] = float(val)
        elif key == "tvfree":
            if val != "voids":
                raise ValueError(f"config {cfg!r}: tvfree takes 'voids'")
            out["tv_free"] = "voids"
        elif key in ("edges", "wedges", "vedges"):
            out["tv_edges"] = (key, *(float(v) for v in val.split("/")))  # fraction/factor[/band]
        elif key == "vring":  # the app's edge map with the uniform zone grown to val voxels around the voids
            out["tv_edges"] = ("vring", int(val))
        elif key == "loww":  # the app's edge map, uniform TV also where the data weight < val x its median
            out["tv_edges"] = ("loww", float(val))
        elif key == "tvc":  # TV about beta x the start's gradient (smv_tv's tv_center; session 25)
            out["tv_center_beta"] = float(val)
        elif key == "band":
            d_max, k_min = (float(v) for v in val.split("/"))
            out["prior_band"] = (d_max, k_min)
        else:
            raise ValueError(f"config {cfg!r}: unknown option {key!r}")
    return out


def void_refit(chi: np.ndarray, args: tuple, kwargs: dict) -> np.ndarray:
    """The app's void refit after the final fit (``restore.invert_nsidl_chain``, ``final_refit_voids``)."""
    from qsmprep.dl import restore
    from qsmprep.qsm.background import ismv

    tot, m, vs, b0 = args[:4]
    sup = np.asarray(kwargs["support"]) > 0
    voids = sup & ~m
    if not voids.any():
        return chi
    local, e = ismv(restore.inpaint_nearest(tot, m), sup, vs)
    return restore.fit_voids(chi, local, e & ~voids, voids, vs, b0, weight=kwargs["weight"],
                             n_iter=restore.FINAL_VOID_ITER)


def run(name: str, configs: list[str], weights: str | None, truth_cone: bool, log: str | None,
        starts: tuple[str, ...] = ("network", "ablation"), refit: bool = False) -> None:
    from qsmprep.dl.restore import edge_tv_weight, final_edge_tv_weight, support_mask
    from qsmprep.qsm.smvfit import smv_tv

    case = hh.load_case(name, 1.0)
    chain = cb.chain_for(case)
    fits = {}
    if "network" in starts or truth_cone:
        fits["network"] = ffs.capture_fit(case, chain)
    if "ablation" in starts:
        with cb.network_off():
            fits["ablation"] = ffs.capture_fit(case, chain)
    if weights:
        fits["candidate"] = ffs.capture_fit(case, chain, weights)
    sup = support_mask(chain["mask"])
    out = chain["eroded"] | sup
    a = next(iter(fits.values()))["args"]  # the same total field, mask, voxel size and B0 for every start
    vs, b0 = case["voxel_size"], case["b0_dir"]
    todo = [(s, fits[s]["kwargs"]["chi_prior"]) for s in starts if s in fits]
    if "candidate" in fits:
        todo.append(("candidate", fits["candidate"]["kwargs"]["chi_prior"]))
    if truth_cone:
        truth = np.where(sup, case["chi"], 0).astype(np.float32)
        net = np.asarray(fits["network"]["kwargs"]["chi_prior"], np.float32)
        todo.append(("truth cone + network rest", np.where(sup, ffs.split(truth, net, vs, b0, "cone", 0), 0)))
    for label, s0 in todo:
        k = fits.get(label, fits.get("network"))["kwargs"]
        for cfg in configs:
            kw = overrides(cfg, {**k, "chi_prior": np.asarray(s0, np.float32)})
            if label.startswith("truth cone") and not kw.get("prior_weight"):
                continue
            if isinstance(kw.get("tv_free"), str):  # "voids"; the captured fit may carry its own map
                kw["tv_free"] = (np.asarray(kw["support"]) > 0) & ~(np.asarray(a[1]) > 0)
            t0 = time.time()
            edges = kw.pop("tv_edges", None)
            if edges is not None and edges[0] == "vedges":  # the app's map (restore.FINAL_EDGE_TV)
                kw["tv_weight"] = final_edge_tv_weight(kw["chi_prior"], kw["support"], a[1], vs, *edges[1:])
            elif edges is not None and edges[0] in ("vring", "loww"):  # the app's map, with a change
                from qsmprep.dl.restore import FINAL_EDGE_TV, FINAL_EDGE_TV_BAND

                ring = edges[1] if edges[0] == "vring" else 1  # vring: a wider uniform zone about the voids
                kw["tv_weight"] = final_edge_tv_weight(kw["chi_prior"], kw["support"], a[1], vs, *FINAL_EDGE_TV,
                                                       band=FINAL_EDGE_TV_BAND, ring=ring)
                if edges[0] == "loww":  # uniform also where the data are weak
                    m = np.asarray(a[1]) > 0
                    w = np.asarray(kw["weight"], np.float32)
                    low = m & (w < edges[1] * float(np.median(w[m])))
                    kw["tv_weight"][low] = 1.0
                    print(f"  loww={edges[1]}: {int(low.sum())} voxels kept uniform "
                          f"({low.sum() / max(int(m.sum()), 1):.1%} of the mask)", flush=True)
            elif edges is not None:  # edges everywhere, from the start ("edges") or the data weight ("wedges")
                guide = kw["weight"] if edges[0] == "wedges" else kw["chi_prior"]
                kw["tv_weight"] = edge_tv_weight(np.asarray(guide, np.float32), kw["support"], vs, *edges[1:])
            beta = kw.pop("tv_center_beta", None)
            if beta:
                kw["tv_center"] = np.where(np.asarray(kw["support"]) > 0, beta * kw["chi_prior"], 0).astype(np.float32)
            chi = smv_tv(*a, **kw)
            if refit:
                chi = void_refit(chi, a, kw)
            sc = cb.score(cb._ref(chi, out), case)
            row = {"case": name, "start": label, "config": cfg, "lam": float(kw["lam"]), "n_iter": int(kw["n_iter"]),
                   "prior_weight": kw.get("prior_weight", 0.0), "prior_band": kw.get("prior_band"),
                   "time_s": round(time.time() - t0, 1),
                   "void_refit": refit,
                   **{m: sc[m] for m in ("xsim", "nrmse", "hfen", "calc_moment_rel", "haem_dnrmse", "haem_mean_ratio",
                                         "roi_slope") if m in sc},
                   "weights": weights if label == "candidate" else None}
            print(f"{name:20s} {label:28s} {cfg:22s} XSIM {row['xsim']:.3f} NRMSE {row['nrmse']:5.1f} "
                  f"HFEN {row['hfen']:5.1f} calc {row.get('calc_moment_rel', np.nan):.2f} haem {row.get('haem_dnrmse', np.nan):.1f} "
                  f"({row['time_s']:.0f} s)", flush=True)
            if log:
                with open(log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["val-sim-3T-ME-z"])
    ap.add_argument("--configs", nargs="+", default=["app"])
    ap.add_argument("--starts", nargs="+", default=["network", "ablation"], choices=["network", "ablation"])
    ap.add_argument("--weights", default=None, help="candidate NSIDL weights (adds the candidate's start)")
    ap.add_argument("--truth-cone", action="store_true", help="add the upper bound: the truth's cone as prior")
    ap.add_argument("--void-refit", action="store_true", help="run the app's void refit after the fit (as the app)")
    ap.add_argument("--log", default=None)
    a = ap.parse_args(argv)
    for n in a.cases:
        run(n, a.configs, a.weights, a.truth_cone, a.log, tuple(a.starts), a.void_refit)


if __name__ == "__main__":
    main()
