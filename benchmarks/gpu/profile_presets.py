"""Where NSIDL's inference time goes on a 1 mm whole head, per data-fit preset (GPU or CPU).

    python benchmarks/gpu/profile_presets.py --out profile.json [--device cuda] [--repeats 5]

Times (median of ``--repeats`` after one warm-up; the GPU synchronised around each stage):
``host_prep_s`` (crop, the weight's normalisation and, for ``strong``, the field-noise estimate:
numpy on the host), ``kernel_s`` (dipole kernel on the device), ``pre_solver_s`` (TKD start + the
preset's pre-solver), ``unrolled_s`` (the K learned steps), ``kspace_s`` (the k-space step) and
``total_s`` (``invert_nsidl`` end to end, host-device copies included); on a GPU also the unrolled
steps with cuDNN's autotuner on (``unrolled_cudnn_benchmark_s``).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main():
    import torch

    from qsmprep.dl import physics
    from qsmprep.dl.inference import data_fit_settings, invert_nsidl, mask_bbox, normalise_weight
    from qsmprep.dl.model import cg_linearised, ndi_nesterov
    from qsmprep.dl.weights import load_model
    from qsmprep.qsm.constants import rad_per_ppm
    from time_inference import synthetic_head

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    dev = torch.device(a.device)
    model, info = load_model(None, device=dev)
    h = synthetic_head(device=dev)
    m = h["mask"] > 0

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        fn()
        sync()
        ts = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            r = fn()
            sync()
            ts.append(time.perf_counter() - t)
        return float(np.median(ts)), r

    res = {"device": str(dev), "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
           "torch": str(torch.__version__), "weights_sha256": info["sha256"], "grid": list(m.shape), "presets": {}}
    for name in ("robust", "strong"):
        def prep():
            bb = mask_bbox(m, 4)
            fc, mc = h["field"][bb] * m[bb], m[bb]
            fit = data_fit_settings(name, fc, mc)
            return fit, fc, mc, normalise_weight(h["weight"], m, bb)

        t_prep, (fit, fc, mc, wc) = timed(prep)
        padded = physics.fast_padded_shape(fc.shape, 1.5)
        t_kern, kern = timed(lambda: physics.dipole_kernel_t(padded, h["voxel_size"], h["b0_dir"], device=dev)[None, None])
        tt = lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(dev)[None, None]
        field, mask, w = tt(fc), tt(mc), tt(wc)
        w2 = (w * mask) ** 2
        s = rad_per_ppm(3.0, 0.02)
        with torch.inference_mode():
            def pre():
                chi = physics.tkd_t(field, kern, padded, model.tkd_threshold) * mask
                if fit["pre_solver"] == "cg":
                    return cg_linearised(chi, field, w2, mask, kern, padded, fit["n_pre"])
                s_b = torch.tensor(s, device=dev).reshape(1, 1, 1, 1, 1)
                alpha = model.pre_step / (s_b * s_b * w2.amax())
                return ndi_nesterov(chi, s_b * field, w2, mask, kern, padded, s_b, alpha, fit["n_pre"])

            t_pre, _ = timed(pre)
            t_all, chi = timed(lambda: model(field, mask, w, s, kern, padded, n_pre=fit["n_pre"], pre_solver=fit["pre_solver"]))
            t_dc, _ = timed(lambda: physics.kspace_consistency_t(chi, field, kern, padded, fit["dc_threshold"], 0.1))
        t_tot, _ = timed(lambda: invert_nsidl(h["field"], m, h["voxel_size"], h["b0_dir"], h["weight"], device=str(dev),
                                              model=model, data_fit=name))
        res["presets"][name] = {"n_pre": fit["n_pre"], "pre_solver": fit["pre_solver"], "fft_grid": list(padded),
                                "host_prep_s": t_prep, "kernel_s": t_kern, "pre_solver_s": t_pre,
                                "unrolled_s": t_all - t_pre, "kspace_s": t_dc, "total_s": t_tot}
        if dev.type == "cuda":  # the same with cuDNN's autotuner (fixed shapes; its tuning is in the warm-up)
            torch.backends.cudnn.benchmark = True
            with torch.inference_mode():
                t_b, _ = timed(lambda: model(field, mask, w, s, kern, padded, n_pre=fit["n_pre"], pre_solver=fit["pre_solver"]))
            torch.backends.cudnn.benchmark = False
            res["presets"][name]["unrolled_cudnn_benchmark_s"] = t_b - t_pre
        print(name, json.dumps(res["presets"][name]), flush=True)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
