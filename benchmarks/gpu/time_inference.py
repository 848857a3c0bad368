"""Time NSIDL inference on a 1 mm whole-head grid (208x232x196) and check CPU/GPU agreement.

    python benchmarks/gpu/time_inference.py --weights W.pt --out timing.json [--device cuda]

The head is a synthetic brain-like phantom (qsmprep.dl.synthetic, 1 mm, B0 tilted) on the
208x232x196 grid; ``invert_nsidl`` crops it to the mask bounding box as in production.
Reports the median of 5 timed runs after one warm-up (fp32, and bf16 autocast for the CNN),
peak GPU memory, and max |chi_gpu - chi_cpu| on a smaller head, for each NSIDL data-fit preset
(``--data-fit``, default robust, strong and the app's default chain; the top-level ``fp32`` / ``bf16_cnn`` / ``cpu_gpu_max_abs_ppm`` keys
are those of the first preset, ``presets`` holds all).
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np


def synthetic_head(shape=(208, 232, 196), vs=(1.0, 1.0, 1.0), seed=4242, device="cpu"):
    import torch

    from qsmprep.dl.synthetic import SynthConfig, make_sample

    cfg = SynthConfig(p_shapes=0.0, max_voxels=10**9, p_erode=1.0)
    semi = (68.0, 86.0, 64.0)
    geom = (vs, tuple(shape), semi, [0.0, 0.0, 0.0])
    smp = make_sample(seed, device, cfg, geometry=geom)
    return {k: smp[k].cpu().numpy() if torch.is_tensor(smp[k]) else smp[k] for k in ("chi", "field", "mask", "weight", "s", "b0_dir", "voxel_size")}


def main():
    import torch

    from qsmprep.dl.inference import invert_nsidl
    from qsmprep.dl.weights import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--weights", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--data-fit", nargs="+", default=["robust", "strong", "chain"],
                    help="NSIDL data fits to time (chain: the app's default, with its SMV-TV fit on the device)")
    a = ap.parse_args()
    dev = a.device
    model, info = load_model(a.weights, device=dev)
    h = synthetic_head(device=dev)
    res = {"grid": list(h["chi"].shape), "mask_voxels": int(h["mask"].sum()), "device": dev,
           "gpu": torch.cuda.get_device_name(0) if dev.startswith("cuda") else platform.processor(),
           "torch": str(torch.__version__), "weights_sha256": info["sha256"]}
    if dev.startswith("cuda"):  # CPU/GPU agreement: a smaller head and a CPU copy of the model
        sm = synthetic_head(shape=(96, 112, 96), vs=(1.5, 1.5, 1.5), seed=77, device=dev)
        agree_args = (sm["field"], sm["mask"] > 0, sm["voxel_size"], sm["b0_dir"], sm["weight"])
        model_cpu, _ = load_model(a.weights, device="cpu")
    from qsmprep.dl.restore import invert_nsidl_chain
    from qsmprep.qsm.masking import erode_mm

    eroded = erode_mm(h["mask"] > 0, 2.0, h["voxel_size"])  # the local field's mask (iSMV erodes 2 mm)
    res["presets"] = {}
    for k, fit in enumerate(a.data_fit):
        pr = res["presets"][fit] = {}
        for name, dt in (("fp32", None), ("bf16_cnn", torch.bfloat16)):
            if dt is not None and not dev.startswith("cuda"):
                continue
            if dev.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            if fit == "chain":  # the app's default data fit: the network, the void fit and the SMV-TV fit
                if dt is not None:
                    continue
                run = lambda: invert_nsidl_chain(h["field"], eroded, h["field"], h["mask"] > 0, h["voxel_size"],
                                                 h["b0_dir"], weight=h["weight"], device=dev, model=model)
            else:
                run = lambda: invert_nsidl(h["field"], h["mask"] > 0, h["voxel_size"], h["b0_dir"], h["weight"],
                                           device=dev, model=model, cnn_dtype=dt, data_fit=fit)
            run()
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                chi = run()
                ts.append(time.perf_counter() - t)
            m = h["mask"] > 0
            p, t_ = chi[m] - chi[m].mean(), h["chi"][m] - h["chi"][m].mean()
            pr[name] = {"median_s": float(np.median(ts)), "all_s": [round(x, 4) for x in ts],
                        "peak_gpu_mem_gib": float(torch.cuda.max_memory_allocated() / 2**30) if dev.startswith("cuda") else None,
                        "nrmse_pct": float(100 * np.linalg.norm(p - t_) / np.linalg.norm(t_))}
            print(fit, name, pr[name], flush=True)
        if dev.startswith("cuda") and fit != "chain":
            c_cpu = invert_nsidl(*agree_args, device="cpu", model=model_cpu, data_fit=fit)
            c_gpu = invert_nsidl(*agree_args, device=dev, model=model, data_fit=fit)
            pr["cpu_gpu_max_abs_ppm"] = float(np.abs(c_cpu - c_gpu).max())
            print(fit, "cpu/gpu max |diff| ppm", pr["cpu_gpu_max_abs_ppm"], flush=True)
        if k == 0:
            res.update(pr)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
