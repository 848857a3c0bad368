"""NSIDL vs TKD / CG-L2 / NDI on held-out simulated 1 mm heads (qsmprep.sim), true local field.

    nice .venv/bin/python benchmarks/nsidl_benchmark.py [--seeds 7001 7002] [--tune-seed 7100]
        [--out benchmarks/RESULTS_NSIDL.md] [--json benchmarks/nsidl_benchmark.json]

* Heads: ``qsmprep.sim.phantom.make_head(voxel_size=(1,1,1), seed, background=False)``, cropped
  to the brain box; local field = brain mask x (D * (chi x mask)), demeaned (no noise: the
  *true* local field); oblique B0 (tilt per head); weight = M0 exp(-TE R2*) at TE = 20 ms;
  3 T, s = 16.05 rad/ppm.  Seeds differ from NSIDL's validation heads (9001-9004).
* Classical parameters are tuned on a separate head (``--tune-seed``) by demeaned NRMSE:
  TKD threshold, CG-L2 lambda, NDI iteration count (qsmprep.qsm.inversion defaults otherwise).
* Scores: qsm-ci ``score_arrays(kind="chi")`` (NRMSE, HFEN, XSIM, ...) after demeaning both maps
  in the mask (whole-brain referencing; chi from single-orientation QSM has no absolute offset);
  DGM ROI means (12 labels) vs truth -> least-squares slope; calcification streaking and moment
  error from qsm-ci ``calcification_metrics`` (qsmprep.sim label 17 mapped to 16); CPU wall time
  and peak RSS of NSIDL in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "gpu"))
sys.path.insert(0, str(HERE.parent))

TILTS = {7001: (10.0, -7.0), 7002: (-15.0, 4.0), 7003: (0.0, 12.0), 7100: (8.0, 8.0)}


VOXEL = (1.0, 1.0, 1.0)

#: NSIDL rows -> data-fit preset (``qsmprep.dl.inference.DATA_FIT``): the app's default and the
#: preset for clean local fields (``qsmprep invert --nsidl-data-fit strong``), which these are.
FIT = {"nsidl": "robust", "nsidl-strong": "strong"}
METHODS = ("tkd", "cgl2", "ndi", *FIT)


def head(seed):
    from make_val_heads import b0_tilted, local_head

    tx, ty = TILTS.get(seed, (6.0, -6.0))
    t = time.time()
    h = local_head(seed, VOXEL, b0_tilted(tx, ty))
    h["make_s"] = time.time() - t
    return h


def demean(x, m):
    return np.where(m, x - x[m].mean(), 0.0).astype(np.float32)


def nrmse(rec, truth, m):
    r, t = demean(rec, m)[m], demean(truth, m)[m]
    return float(100 * np.linalg.norm(r - t) / np.linalg.norm(t))


def score(rec, h):
    from qsm_ci.qsm_eval import calcification_metrics, linear_fit, score_arrays

    from qsmprep.sim.phantom import DGM_INDICES

    m = h["mask"] > 0
    r, t = demean(rec, m), demean(h["chi"], m)
    met, _ = score_arrays(r, t, m.astype(np.uint8), kind="chi")
    lab = h["labels"]
    tm = np.array([t[lab == i].mean() for i in DGM_INDICES if (lab == i).any()])
    rm = np.array([r[lab == i].mean() for i in DGM_INDICES if (lab == i).any()])
    slope, icpt = linear_fit(tm, rm)
    seg = np.where(lab == 17, 16, 0)
    calc_dev, calc_streak = calcification_metrics(r, t, seg)
    return {"nrmse": met["nrmse"], "hfen": met["hfen"], "xsim": met["xsim"], "nrmse_detrend": met["nrmse_detrend"],
            "correlation": met["correlation"], "roi_slope": float(slope), "roi_intercept": float(icpt),
            "calc_streak": calc_streak, "calc_moment_dev": calc_dev}


def run_method(name, h, params):
    from qsmprep.qsm import inversion

    f, m, w, vs, b0, s = h["field_true"], h["mask"] > 0, h["weight"], tuple(h["voxel_size"]), h["b0_dir"], float(h["s"])
    t = time.time()
    if name == "tkd":
        chi = inversion.tkd(f, m, vs, b0, threshold=params["threshold"])
    elif name == "cgl2":
        chi = inversion.cgl2(f, m, vs, b0, weight=w, lam=params["lam"])
    elif name == "ndi":
        chi = inversion.ndi(f, m, vs, b0, weight=w, rad_per_ppm=s, n_iter=params["n_iter"])
    elif name in FIT:
        from qsmprep.dl.inference import invert_nsidl

        chi = invert_nsidl(f, m, vs, b0, w, b0_t=3.0, te_s=0.02, device="cpu", data_fit=FIT[name])
    return chi, time.time() - t


def tune(h, log):
    from qsmprep.qsm import inversion

    f, m, w, vs, b0, s = h["field_true"], h["mask"] > 0, h["weight"], tuple(h["voxel_size"]), h["b0_dir"], float(h["s"])
    best = {}
    res = {t: nrmse(inversion.tkd(f, m, vs, b0, threshold=t), h["chi"], m) for t in (0.07, 0.1, 0.15, 0.2, 0.25)}
    best["tkd"] = {"threshold": min(res, key=res.get)}
    log(f"tune TKD threshold -> NRMSE {res}")
    res = {lam: nrmse(inversion.cgl2(f, m, vs, b0, weight=w, lam=lam), h["chi"], m) for lam in (0.001, 0.005, 0.02)}
    best["cgl2"] = {"lam": min(res, key=res.get)}
    log(f"tune CG-L2 lambda -> NRMSE {res}")
    res = {}
    marks = {25, 50, 100}

    def cb(it, cur):
        if it + 1 in marks:
            res[it + 1] = nrmse(cur(), h["chi"], m)

    inversion.ndi(f, m, vs, b0, weight=w, rad_per_ppm=s, n_iter=max(marks), callback=cb)
    best["ndi"] = {"n_iter": min(res, key=res.get)}
    log(f"tune NDI iterations -> NRMSE {res}")
    return best


def cpu_time_nsidl(h, tmp, data_fit="robust"):
    """Wall time and peak RSS of NSIDL (preset ``data_fit``) on this head in a fresh 2-thread process."""
    p = Path(tmp)
    np.savez(p, field=h["field_true"], mask=h["mask"], weight=h["weight"], vs=h["voxel_size"], b0=h["b0_dir"])
    code = (
        "import numpy as np, time, torch, json, resource; torch.set_num_threads(2);"
        "from qsmprep.dl.inference import invert_nsidl;"
        f"z=np.load({str(p)!r}); t=time.time();"
        f"invert_nsidl(z['field'], z['mask']>0, tuple(z['vs']), z['b0'], z['weight'], device='cpu', data_fit={data_fit!r});"
        "print(json.dumps({'wall_s': time.time()-t, 'peak_rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=str(HERE.parent), env={**os.environ, "PYTHONPATH": str(HERE.parent)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[7001, 7002])
    ap.add_argument("--tune-seed", type=int, default=7100)
    ap.add_argument("--out", default=str(HERE / "RESULTS_NSIDL.md"))
    ap.add_argument("--json", default=str(HERE / "nsidl_benchmark.json"))
    ap.add_argument("--gpu-timing", default=None, help="timing.json from the device run (benchmarks/gpu)")
    ap.add_argument("--params", help='skip tuning: JSON like {"tkd": {"threshold": 0.07}, "cgl2": {"lam": 0.005}, "ndi": {"n_iter": 50}}')
    ap.add_argument("--voxel", type=float, default=1.0, help="isotropic voxel size in mm (1 for the benchmark; larger for a smoke run)")
    a = ap.parse_args()
    global VOXEL
    VOXEL = (a.voxel,) * 3
    lines = []

    def log(msg):
        print(msg, flush=True)
        lines.append(msg)

    from qsmprep.dl.weights import weights_info

    t0 = time.time()
    if a.params:
        params = json.loads(a.params)
    else:
        th = head(a.tune_seed)
        log(f"tuning head {a.tune_seed}: {th['chi'].shape}, made in {th['make_s']:.0f} s")
        params = tune(th, log)
        del th
    log(f"tuned: {params}")
    results = {"params": params, "heads": {}, "weights": weights_info()}
    timing = None
    for seed in a.seeds:
        h = head(seed)
        log(f"head {seed}: {h['chi'].shape}, {int(h['mask'].sum())} mask voxels")
        results["heads"][seed] = {}
        for name in METHODS:
            chi, dt = run_method(name, h, params.get(name, {}))
            sc = score(chi, h)
            sc["seconds"] = dt
            results["heads"][seed][name] = sc
            log(f"  {name:6s} NRMSE {sc['nrmse']:.1f} HFEN {sc['hfen']:.1f} XSIM {sc['xsim']:.3f} slope {sc['roi_slope']:.3f} "
                f"calc-streak {sc['calc_streak']:.3f} ({dt:.0f} s)")
        if timing is None:
            timing = {}
            for name, fit in FIT.items():
                timing[name] = cpu_time_nsidl(h, "/tmp/nsidl_bench_head.npz", fit)
                timing[name]["crop_shape"] = list(h["chi"].shape)
                log(f"NSIDL {fit} CPU (2 threads, fresh process): {timing[name]}")
    results["cpu_timing"] = timing
    if a.gpu_timing and Path(a.gpu_timing).is_file():
        results["gpu_timing"] = json.loads(Path(a.gpu_timing).read_text())
    results["total_s"] = time.time() - t0
    Path(a.json).write_text(json.dumps(results, indent=2, default=float))
    write_md(results, a, Path(a.out))


def write_md(r, a, out: Path):
    meths = METHODS
    keys = (("nrmse", "NRMSE %", "{:.1f}"), ("hfen", "HFEN %", "{:.1f}"), ("xsim", "XSIM", "{:.3f}"),
            ("roi_slope", "DGM ROI slope", "{:.3f}"), ("calc_streak", "calc. streak", "{:.3f}"),
            ("calc_moment_dev", "calc. moment err", "{:.2f}"), ("seconds", "CPU s", "{:.0f}"))
    L = ["# NSIDL benchmark (held-out simulated 1 mm heads, true local field)", "",
         "Command: `nice .venv/bin/python benchmarks/nsidl_benchmark.py --seeds "
         + " ".join(map(str, a.seeds)) + f" --tune-seed {a.tune_seed}"
         + (f" --gpu-timing {a.gpu_timing}" if a.gpu_timing else "")
         + (f" --params '{a.params}'" if a.params else "") + "`", "",
         f"Weights: `{r['weights']['name']}` sha256 `{r['weights']['sha256']}`.  "
         f"Classical parameters tuned on head {a.tune_seed}: `{json.dumps(r['params'])}`.", "",
         "Both maps demeaned in the brain mask before scoring (qsm-ci `score_arrays`, kind chi). "
         "CPU = this 2-core machine, shared with other jobs (times are indicative).", ""]
    for seed, res in r["heads"].items():
        L += [f"## Head {seed}", "", "| method | " + " | ".join(k[1] for k in keys) + " |",
              "|---|" + "---|" * len(keys)]
        for mth in meths:
            sc = res[mth]
            L.append(f"| {mth} | " + " | ".join(fmt.format(sc[k]) if sc.get(k) is not None else "n/a" for k, _, fmt in keys) + " |")
        L.append("")
    L += ["## Mean over heads", "", "| method | " + " | ".join(k[1] for k in keys[:-1]) + " |", "|---|" + "---|" * (len(keys) - 1)]
    for mth in meths:
        vals = []
        for k, _, fmt in keys[:-1]:
            v = [res[mth][k] for res in r["heads"].values() if res[mth].get(k) is not None]
            vals.append(fmt.format(float(np.nanmean(v))) if v else "n/a")
        L.append(f"| {mth} | " + " | ".join(vals) + " |")
    L.append("")
    for name, t in (r.get("cpu_timing") or {}).items():
        L.append(f"{name} CPU inference (data fit `{FIT[name]}`, fresh process, 2 threads, crop {t.get('crop_shape')}): "
                 f"{t['wall_s']:.1f} s wall, peak RSS {t['peak_rss_gb']:.2f} GB.")
    if r.get("gpu_timing"):
        g = r["gpu_timing"]
        presets = g.get("presets") or {"model default": g}  # older timing files: one setting, top-level keys
        for fit, t in presets.items():
            L.append(f"GPU, data fit `{fit}` ({g.get('gpu')}, torch {g.get('torch')}, grid {g.get('grid')}, weights "
                     f"{str(g.get('weights_sha256', ''))[:8]}): fp32 {t['fp32']['median_s']:.3f} s "
                     f"(peak {t['fp32']['peak_gpu_mem_gib']:.2f} GiB), bf16-CNN {t['bf16_cnn']['median_s']:.3f} s; "
                     f"CPU/GPU max |diff| {t.get('cpu_gpu_max_abs_ppm', float('nan')):.1e} ppm.")
    out.write_text("\n".join(L) + "\n")


if __name__ == "__main__":
    main()
