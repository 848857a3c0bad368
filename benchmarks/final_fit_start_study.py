"""What the chain's final fit keeps of its start (issue #13: why a network closer to the truth can make the chain worse).

The default chain (``qsmprep.dl.restore.invert_nsidl_chain``) runs the network on the local field and
starts the SMV-consistent TV fit of the total field (``qsmprep.qsm.smvfit.smv_tv``, 200 ADMM iterations
at 1 mm, no prior term) from its chi.  This study captures that fit's inputs on validation heads and
runs the same fit from other starts: the shipped network's chi (the app), a candidate's (``--weights``),
zero, the true chi, and mixes of the truth and the network's chi split by frequency (a Gaussian
low-pass of ``--sigma-mm``) or by the dipole cone (``|D| < 0.1``).  Each start is scored before and
after the fit over the true brain mask (qsm-ci's metrics, ``chain_benchmark.score``; no void refit).

    .venv/bin/python benchmarks/final_fit_start_study.py --cases val-sim-3T-ME-z val-qf-7T-ME-obl \
        --weights runs/ft1_s60.pt --log benchmarks/final_fit_start_study.jsonl
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
import honest_heads as hh  # noqa: E402


def capture_fit(case: dict, chain: dict, weights_path: str | None = None) -> dict:
    """The final fit's arguments in the app's chain (the start is ``chi_prior``)."""
    from _common import final_fit_recorded

    with final_fit_recorded(then="start") as got:
        cb.invert_app("nsidl", case, chain, weights_path=weights_path)
    return got


def split(a: np.ndarray, b: np.ndarray, voxel_size, b0_dir, how: str, sigma_mm: float) -> np.ndarray:
    """``a``'s part ``how`` ("low": Gaussian low-pass of sigma_mm; "cone": |D| < 0.1) plus ``b``'s rest."""
    import scipy.fft as sfft
    from scipy.ndimage import gaussian_filter

    from qsmprep.qsm.dipole import dipole_kernel

    if how == "low":
        sig = [sigma_mm / v for v in voxel_size]
        return (gaussian_filter(a, sig) + b - gaussian_filter(b, sig)).astype(np.float32)
    d = dipole_kernel(a.shape, voxel_size, b0_dir, rfft=True)
    cone = (np.abs(d) < 0.1).astype(np.float32)
    ak, bk = sfft.rfftn(a), sfft.rfftn(b)
    return sfft.irfftn(cone * ak + (1 - cone) * bk, s=a.shape).astype(np.float32)


def fit_offset(chi0: np.ndarray, region: np.ndarray, fit: dict) -> float:
    """The constant ``c`` that, added to ``chi0`` on ``region``, best fits the final fit's data term
    (least squares of ``sum_r || W P_r (delta - s_r) * (D (chi0 + c 1_region) - f) ||^2``, its weights as
    :func:`qsmprep.qsm.smvfit.smv_tv` sets them)."""
    import scipy.fft as sfft

    from qsmprep.qsm.dipole import dipole_kernel
    from qsmprep.qsm.smvfit import _smv_grid, _sphere_spectrum

    (tot, m, vs, b0), k = fit["args"][:4], fit["kwargs"]
    grid = _smv_grid(m, k["support"], tuple(vs), k["radii_mm"], "fit_offset")
    parts, shape, pad = grid.parts, grid.shape, grid.pad
    w = np.where(m, np.abs(np.nan_to_num(np.asarray(k["weight"], np.float32))), 0)
    w = np.clip(w / max(float(np.percentile(w[m], 99)), 1e-30), 0, 1).astype(np.float32)
    d = dipole_kernel(shape, vs, b0, rfft=True)
    fk = sfft.rfftn(pad(np.where(m, tot, 0).astype(np.float32)))
    xk, ok = sfft.rfftn(pad(chi0)), sfft.rfftn(pad(region.astype(np.float32)))
    num = den = 0.0
    for r, p in parts:
        oms = 1.0 - _sphere_spectrum(shape, vs, r)
        pw = pad(p.astype(np.float32)) * pad(w)
        res = pw * sfft.irfftn(oms * (d * xk - fk), s=shape)
        a = pw * sfft.irfftn(oms * d * ok, s=shape)
        num += float((a * res).sum())
        den += float((a * a).sum())
    return -num / den


#: the starts (``--starts``); "interior" = where the start is non-zero (the network's region)
STARTS = ("network (app)", "zero", "truth", "truth low + network high", "network low + truth high",
          "truth cone + network rest", "network cone + truth rest", "candidate",
          "truth demeaned in S", "truth, shell median 0", "network, S shifted -0.01", "network, S shifted +0.01",
          "candidate, interior shifted to the network's mean", "network + fitted offset",
          "candidate + fitted offset", "truth + fitted offset", "network, rim inpainted",
          "network, median 0 on its own 3-voxel rim")


def run(name: str, weights: str | None, sigma_mm: float, log: str | None, which=STARTS) -> None:
    from scipy.ndimage import binary_erosion

    from qsmprep.dl.restore import support_mask
    from qsmprep.qsm.smvfit import smv_tv

    case = hh.load_case(name, 1.0)
    chain = cb.chain_for(case)
    base = capture_fit(case, chain)
    a, k = base["args"], base["kwargs"]
    sup = support_mask(chain["mask"])
    out = chain["eroded"] | sup
    truth = np.where(sup, case["chi"], 0).astype(np.float32)
    net = np.asarray(k["chi_prior"], np.float32)
    cand = None
    if weights and any(w.startswith("candidate") for w in which):
        cand = np.asarray(capture_fit(case, chain, weights)["kwargs"]["chi_prior"], np.float32)
    vs, b0 = case["voxel_size"], case["b0_dir"]
    shell = sup & ~binary_erosion(sup, iterations=3)
    in_s = lambda x: np.where(sup, x, 0).astype(np.float32)

    def start(label):
        if label == "network (app)":
            return net
        if label == "zero":
            return np.zeros_like(net)
        if label == "truth":
            return truth
        if label == "candidate":
            return cand
        if label.startswith("truth low"):
            return in_s(split(truth, net, vs, b0, "low", sigma_mm))
        if label.startswith("network low"):
            return in_s(split(net, truth, vs, b0, "low", sigma_mm))
        if label.startswith("truth cone"):
            return in_s(split(truth, net, vs, b0, "cone", sigma_mm))
        if label.startswith("network cone"):
            return in_s(split(net, truth, vs, b0, "cone", sigma_mm))
        if label == "truth demeaned in S":
            return in_s(truth - truth[sup].mean())
        if label == "truth, shell median 0":
            return in_s(truth - np.median(truth[shell]))
        if label.startswith("network, S shifted"):
            return in_s(net + float(label.rsplit(" ", 1)[1]))
        if label.startswith("candidate, interior shifted"):
            nz = cand != 0
            return np.where(nz, cand + (net[sup].mean() - cand[sup].mean()) * sup.sum() / nz.sum(), cand).astype(np.float32)
        if label == "network, rim inpainted":
            from qsmprep.dl.restore import inpaint_nearest

            return in_s(inpaint_nearest(net, net != 0))
        if label == "network, median 0 on its own 3-voxel rim":
            nz = net != 0
            rim = nz & ~binary_erosion(nz, iterations=3)
            return np.where(nz, net - np.median(net[rim]), net).astype(np.float32)
        if label.endswith("+ fitted offset"):
            s0 = {"network": net, "candidate": cand, "truth": truth}[label.split(" ")[0]]
            reg = s0 != 0
            return np.where(reg, s0 + fit_offset(s0, reg, base), s0).astype(np.float32)
        raise ValueError(label)

    for label in which:
        if label.startswith("candidate") and cand is None:
            continue
        s0 = start(label)
        t0 = time.time()
        chi = smv_tv(*a, **{**k, "chi_prior": s0.astype(np.float32)})
        row = {"case": name, "start": label, "sigma_mm": sigma_mm, "time_s": round(time.time() - t0, 1),
               "start_mean_in_S": float(s0[sup].mean())}
        for tag, x in (("start", s0), ("fit", chi)):
            sc = cb.score(cb._ref(x, out), case)
            row.update({f"{tag}_{m}": sc[m] for m in ("xsim", "nrmse", "hfen")})
        print(f"{name:20s} {label:50s} mean {row['start_mean_in_S']:+.4f} start XSIM {row['start_xsim']:.3f} "
              f"NRMSE {row['start_nrmse']:5.1f} -> fit XSIM {row['fit_xsim']:.3f} NRMSE {row['fit_nrmse']:5.1f} "
              f"HFEN {row['fit_hfen']:5.1f}", flush=True)
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps(row) + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["val-sim-3T-ME-z", "val-qf-7T-ME-obl"])
    ap.add_argument("--weights", default=None)
    ap.add_argument("--sigma-mm", type=float, default=3.0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--starts", nargs="*", default=list(STARTS), choices=list(STARTS))
    a = ap.parse_args(argv)
    for n in a.cases:
        run(n, a.weights, a.sigma_mm, a.log, a.starts)


if __name__ == "__main__":
    main()
