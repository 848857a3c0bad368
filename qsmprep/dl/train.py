"""Train NSIDL on on-the-fly synthetic data.

    python -m qsmprep.dl.train --config qsmprep/data/nsidl/train_gpu.yaml --out runs/nsidl [--resume]
    qsmprep-train --config X.yaml --out DIR [--device cpu|cuda|auto] [--max-minutes M] [--max-steps N]

The YAML config has the sections ``seed``, ``device``, ``model`` (:func:`qsmprep.dl.model.build_model`
keys), ``data`` (``batch_size`` + :class:`qsmprep.dl.synthetic.SynthConfig` fields), ``optim``
(``lr``, ``lr_min``, ``weight_decay``, ``clip``, ``warmup``), ``budget`` (``max_steps``,
``max_minutes``: whichever comes first; the cosine schedule follows the larger progress fraction),
``loss`` (``grad_weight``, ``deep_weight``, ``xsim_weight``), ``val`` (``dir`` of ``*.npz`` heads,
``every`` steps), ``presets`` (optional: a list of inference settings ``{pre_solver, n_pre,
dc_threshold, p}``, one drawn per step with probability ``p``; the loss then scores the final
iterate *after* the k-space data-consistency step that inference applies
(:func:`qsmprep.dl.physics.kspace_consistency_t`), and validation scores every preset, selecting on
their mean ``val_score``), ``ema_decay`` (exponential moving average of the weights, 0 = off; validation and
export use the average) and ``ckpt_every``.  With validation heads, the exported weights are the
validated state with the best ``val_xsim - val_nrmse / 100`` (``best_step`` in the summary).  Batches are a pure function of (seed, step), so ``--resume`` continues the
same data stream from the last checkpoint (``DIR/ckpt.pt``).  Outputs in DIR: ``ckpt.pt``,
``train_log.jsonl`` (one JSON line per logged step / validation), ``nsidl.pt`` (exported weights
for :mod:`qsmprep.dl.weights`) and ``summary.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

LOG = logging.getLogger("qsmprep.dl.train")

DEFAULTS = {
    "seed": 1234,
    "device": "auto",
    "model": {"n_iter": 4, "widths": [16, 32, 64], "init": "tkd", "tkd_threshold": 0.2},
    "data": {"batch_size": 2},
    "optim": {"lr": 5e-4, "lr_min": 1e-5, "weight_decay": 0.0, "clip": 0.5, "warmup": 100},
    "budget": {"max_steps": 100000, "max_minutes": 6.5},
    "loss": {"grad_weight": 0.5, "deep_weight": 0.1, "xsim_weight": 0.0},
    "val": {"dir": None, "every": 250, "max_heads": 4},
    "ckpt_every": 250,
    "log_every": 25,
    "amp_bf16": False,
    "init_weights": None,
    "ema_decay": 0.0,
    "presets": None,
}

# qsm-ci's XSIM constants (L = 1 ppm, K1 = 0.01, K2 = 0.001) and window (5x5x5, truncated at the edges)
XSIM_C1, XSIM_C2, XSIM_WIN = 1e-4, 1e-6, 5


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in (over or {}).items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_config(path: str | os.PathLike | None) -> dict:
    """DEFAULTS updated by the YAML file at ``path`` (None -> defaults)."""
    import yaml

    if path is None:
        return json.loads(json.dumps(DEFAULTS))
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Training config {p} does not exist; pass an existing YAML file to --config.")
    return _merge(DEFAULTS, yaml.safe_load(p.read_text()) or {})


def pick_device(name: str):
    """'auto' -> cuda if visible else cpu; 'cuda' without a GPU raises."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU; use device='cpu' or 'auto'.")
    return torch.device(name)


def demeaned(x, mask):
    """x minus its mean inside mask (per sample), zero outside.  Shapes (B,1,X,Y,Z)."""
    n = mask.sum(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1)
    return (x - (x * mask).sum(dim=(1, 2, 3, 4), keepdim=True) / n) * mask


def xsim_map(a, b):
    """Per-voxel XSIM of ``a`` against ``b`` (qsm-ci ``xsim``: 5x5x5 windows truncated at the
    volume edge, c1 = 1e-4 ppm^2, c2 = 1e-6 ppm^2).  Maps in ppm, shapes (B,1,X,Y,Z).
    Returns (value, den): average ``value`` where the mask is set and ``den > 0``."""
    import torch.nn.functional as F

    def win(x):
        return F.avg_pool3d(x, XSIM_WIN, stride=1, padding=XSIM_WIN // 2, count_include_pad=False)

    mu_a, mu_b = win(a), win(b)
    var_a = win(a * a) - mu_a * mu_a
    var_b = win(b * b) - mu_b * mu_b
    cov = win(a * b) - mu_a * mu_b
    num = (2.0 * mu_a * mu_b + XSIM_C1) * (2.0 * cov + XSIM_C2)
    den = (mu_a * mu_a + mu_b * mu_b + XSIM_C1) * (var_a + var_b + XSIM_C2)
    return num / den.clamp_min(1e-20), den


def xsim_t(pred, truth, mask):
    """Mean XSIM per sample (B,) of ``pred`` against ``truth`` (ppm), both demeaned in ``mask`` and
    zeroed outside it first (as ``qsm_ci.qsm_eval.score_arrays`` scores chi after referencing)."""
    v, den = xsim_map(demeaned(pred, mask), demeaned(truth, mask))
    sel = (mask > 0) & (den > 0)
    return (v * sel).sum(dim=(1, 2, 3, 4)) / sel.sum(dim=(1, 2, 3, 4)).clamp_min(1)


def loss_terms(preds, chi, mask, grad_weight=0.5, deep_weight=0.1, xsim_weight=0.0):
    """L1 of the demeaned error in the mask (in units of 0.1 ppm) + gradient L1 + deep supervision
    + ``xsim_weight`` x (1 - XSIM) of the last iterate (the challenge metric made a loss: it rewards
    fine structure that an L1 loss alone lets the network smooth away)."""
    import torch

    from qsmprep.dl.model import SIGMA_PPM

    n = mask.sum().clamp_min(1)
    t = demeaned(chi, mask)

    def l1(p):
        return (demeaned(p, mask) - t).abs().sum() / n / SIGMA_PPM

    def gl1(p):
        e = demeaned(p, mask) - t
        tot = 0.0
        for ax in (2, 3, 4):
            d = torch.diff(e, dim=ax).abs()
            m = torch.minimum(mask.narrow(ax, 0, mask.shape[ax] - 1), mask.narrow(ax, 1, mask.shape[ax] - 1))
            tot = tot + (d * m).sum()
        return tot / n / SIGMA_PPM

    main = l1(preds[-1])
    g = gl1(preds[-1])
    deep = sum(l1(p) for p in preds[:-1]) / max(1, len(preds) - 1) if len(preds) > 1 else torch.zeros(())
    total = main + grad_weight * g + deep_weight * deep
    parts = {"l1": float(main.detach()), "grad": float(g.detach()), "deep": float(deep.detach()) if torch.is_tensor(deep) else float(deep)}
    if xsim_weight:
        xs = xsim_t(preds[-1], chi, mask.float()).mean()
        total = total + xsim_weight * (1.0 - xs)
        parts["xsim"] = float(xs.detach())
    return total, parts


def nrmse_demeaned(pred, truth, mask) -> float:
    """100 ||p' - t'|| / ||t'|| with both demeaned in the mask (%, ALGORITHMS.md 3.6 NRMSE)."""
    p = demeaned(pred, mask)
    t = demeaned(truth, mask)
    return float(100 * (p - t).norm() / t.norm().clamp_min(1e-12))


def load_val_heads(folder, device, max_heads=4):
    """Validation heads ``*.npz`` (chi, field, mask, weight, voxel_size, b0_dir, s) as batch-1 dicts."""
    import numpy as np
    import torch

    from qsmprep.dl import physics

    if not folder:
        return []
    files = sorted(Path(folder).glob("*.npz"))[: max_heads]
    heads = []
    for f in files:
        z = np.load(f)
        vs = tuple(float(v) for v in z["voxel_size"])
        b0 = tuple(float(v) for v in z["b0_dir"])
        sh = z["chi"].shape
        padded = physics.fast_padded_shape(sh, 1.5)
        t = {k: torch.as_tensor(z[k].astype("float32"), device=device)[None, None] for k in ("chi", "field", "mask", "weight")}
        t["kernel"] = physics.dipole_kernel_t(padded, vs, b0, device=device)[None, None]
        t["padded"] = padded
        t["s"] = torch.tensor([float(z["s"])], device=device)
        t["name"] = f.stem
        heads.append(t)
    return heads


def check_presets(presets) -> list[dict]:
    """Validate the config's ``presets`` list (None -> []); returns dicts with float ``p`` summing to 1."""
    from qsmprep.dl.model import _check_pre_solver

    if not presets:
        return []
    out = []
    for i, pr in enumerate(presets):
        unknown = set(pr) - {"name", "pre_solver", "n_pre", "dc_threshold", "dc_extrapolate", "p"}
        if unknown:
            raise ValueError(f"Unknown keys {sorted(unknown)} in presets[{i}] of the training config; "
                             "valid keys are name, pre_solver, n_pre, dc_threshold, dc_extrapolate, p.")
        out.append({"name": str(pr.get("name", f"preset{i}")), "pre_solver": _check_pre_solver(pr.get("pre_solver", "nesterov")),
                    "n_pre": int(pr.get("n_pre", 0)), "dc_threshold": pr.get("dc_threshold"),
                    "dc_extrapolate": bool(pr.get("dc_extrapolate", False)), "p": float(pr.get("p", 1.0))})
    tot = sum(pr["p"] for pr in out)
    if tot <= 0:
        raise ValueError("The presets' probabilities p in the training config must add up to more than 0.")
    for pr in out:
        pr["p"] /= tot
    return out


def run_preset(model, field, mask, weight, s, kernel, padded, preset=None, return_all=False, cnn_dtype=None):
    """The model's forward pass as inference runs it with ``preset`` (pre-solver override, then the
    k-space data-consistency step when ``dc_threshold`` is set, after the field extrapolation of
    ``qsmprep.dl.physics.extrapolate_field_t`` when ``dc_extrapolate``; masked).  ``preset`` None = the
    model's own forward, no k-space step.  With ``return_all`` the list of iterates, the last one
    after the k-space step."""
    from qsmprep.dl import physics
    from qsmprep.dl.inference import DC_WIDTH

    if preset is None:
        return model(field, mask, weight, s, kernel, padded, return_all=return_all, cnn_dtype=cnn_dtype)
    outs = model(field, mask, weight, s, kernel, padded, return_all=True, cnn_dtype=cnn_dtype,
                 n_pre=preset["n_pre"], pre_solver=preset["pre_solver"])
    if preset.get("dc_threshold") is not None:
        chi = outs[-1]
        if preset.get("dc_extrapolate"):
            chi, field, _, _ = physics.extrapolate_field_t(chi, field, mask, kernel, padded, weight)
        outs[-1] = physics.kspace_consistency_t(chi, field, kernel, padded, float(preset["dc_threshold"]), DC_WIDTH) * mask
    return outs if return_all else outs[-1]


def validate(model, heads, baseline: bool = False, presets=None) -> dict:
    """Mean demeaned NRMSE (%) and XSIM over the heads (``val_score`` = XSIM - NRMSE/100, the
    selection criterion); with ``baseline`` also TKD's NRMSE.  With ``presets`` (see
    :func:`check_presets`) each preset is scored (keys ``<name>_val_nrmse`` etc.) and the top-level
    values are the means over the presets."""
    out = {}
    if not heads:
        return out
    if presets:
        per = []
        for pr in presets:
            v = _validate_one(model, heads, pr)
            per.append(v)
            out.update({f"{pr['name']}_{k}": x for k, x in v.items()})
        for k in ("val_nrmse", "val_xsim", "val_score"):
            out[k] = sum(v[k] for v in per) / len(per)
    else:
        out = _validate_one(model, heads, None)
    if baseline:
        out["val_nrmse_tkd"] = _tkd_nrmse(heads)
    return out


def _tkd_nrmse(heads) -> float:
    import torch

    from qsmprep.dl import physics

    with torch.no_grad():
        tk = [nrmse_demeaned(physics.tkd_t(h["field"], h["kernel"], h["padded"], 0.2) * h["mask"], h["chi"], h["mask"])
              for h in heads]
    return sum(tk) / len(tk)


def _validate_one(model, heads, preset) -> dict:
    import torch

    out = {}
    was = model.training
    model.eval()
    vals, xs = [], []
    with torch.no_grad():
        for h in heads:
            pred = run_preset(model, h["field"], h["mask"], h["weight"], h["s"], h["kernel"], h["padded"], preset)
            vals.append(nrmse_demeaned(pred, h["chi"], h["mask"]))
            xs.append(float(xsim_t(pred, h["chi"], h["mask"])[0]))
            out[f"nrmse_{h['name']}"] = vals[-1]
            out[f"xsim_{h['name']}"] = xs[-1]
    model.train(was)
    out["val_nrmse"] = sum(vals) / len(vals)
    out["val_xsim"] = sum(xs) / len(xs)
    out["val_score"] = out["val_xsim"] - out["val_nrmse"] / 100.0
    return out


def export_weights(model, path, meta: dict) -> str:
    """Save ``{"state_dict", "config", "meta"}`` (weights_only-loadable); returns the sha256."""
    import torch

    from qsmprep.dl.weights import sha256_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_name("." + path.name + ".tmp")
    torch.save({"state_dict": sd, "config": model.config(), "meta": meta}, tmp)
    os.replace(tmp, path)
    return sha256_file(path)


def train(cfg: dict, out_dir, resume: bool = False) -> dict:
    """Run training with config ``cfg`` (see module docstring); returns the summary dict."""
    import torch
    from tqdm import tqdm

    from qsmprep.dl.model import build_model, n_parameters
    from qsmprep.dl.synthetic import SynthConfig, make_batch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(cfg["device"])
    torch.manual_seed(int(cfg["seed"]))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
    data_cfg = dict(cfg["data"])
    bs = int(data_cfg.pop("batch_size", 2))
    valid = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = set(data_cfg) - valid
    if unknown:
        raise ValueError(f"Unknown data keys {sorted(unknown)} in the training config; valid keys are {sorted(valid)}.")
    scfg = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_cfg.items()})
    model = build_model(cfg["model"]).to(dev)
    oc = cfg["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=float(oc["lr"]), weight_decay=float(oc["weight_decay"]))
    step, elapsed0 = 0, 0.0
    ckpt_path = out / "ckpt.pt"
    if cfg.get("init_weights") and not resume:
        blob = torch.load(cfg["init_weights"], map_location=dev, weights_only=True)
        sd = blob.get("state_dict", blob.get("model", blob))
        missing, unexpected = model.load_state_dict(sd, strict=False)
        LOG.info("warm start from %s (missing %s, unexpected %s)", cfg["init_weights"], missing, unexpected)
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume was given but {ckpt_path} does not exist; drop --resume to start afresh.")
        ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optim"])
        step, elapsed0 = int(ck["step"]), float(ck["elapsed_s"])
        LOG.info("resumed from %s at step %d", ckpt_path, step)
    ema = _Ema(model, float(cfg.get("ema_decay") or 0.0)) if cfg.get("ema_decay") else None
    if resume and ema is not None and "ema" in ck:
        ema.shadow = {k: v.to(dev) for k, v in ck["ema"].items()}
    heads = load_val_heads(cfg["val"].get("dir"), dev, int(cfg["val"].get("max_heads", 4)))
    presets = check_presets(cfg.get("presets"))
    max_steps = int(cfg["budget"]["max_steps"])
    max_s = float(cfg["budget"]["max_minutes"]) * 60.0
    logf = open(out / "train_log.jsonl", "a")

    def log(rec):
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    log({"event": "start", "step": step, "device": str(dev), "params": n_parameters(model), "config": cfg,
         "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None})
    best = {"score": -math.inf, "step": None, "state": None, "val": {}}

    def consider(v, at):
        """Keep the validated weights with the best val_score (EMA weights when EMA is on)."""
        if v and v["val_score"] > best["score"]:
            best.update(score=v["val_score"], step=at, val=v,
                        state={k: t.detach().cpu().clone() for k, t in model.state_dict().items()})

    if heads and step == 0:
        v = validate(model, heads, baseline=True, presets=presets)
        log({"event": "val", "step": 0, **v})
        consider(v, 0)
        LOG.info("step 0 (start) val NRMSE %.1f %% XSIM %.3f (TKD %.1f %%)", v["val_nrmse"], v["val_xsim"], v["val_nrmse_tkd"])
    amp = torch.bfloat16 if cfg.get("amp_bf16") else None
    t0 = time.time()
    pbar = tqdm(total=max_steps, initial=step, desc="NSIDL", mininterval=5, disable=None)
    stats = []
    model.train()
    while step < max_steps:
        el = elapsed0 + time.time() - t0
        if el >= max_s:
            break
        frac = min(1.0, max(step / max_steps, el / max_s))
        lr = float(oc["lr_min"]) + 0.5 * (float(oc["lr"]) - float(oc["lr_min"])) * (1 + math.cos(math.pi * frac))
        lr *= min(1.0, (step + 1) / max(1, int(oc["warmup"])))
        for gr in opt.param_groups:
            gr["lr"] = lr
        b = make_batch(int(cfg["seed"]) * 7_919 + step, bs, dev, scfg)
        preset = _draw_preset(presets, int(cfg["seed"]), step)
        preds = run_preset(model, b["field"], b["mask"], b["weight"], b["s"], b["kernel"], b["padded"], preset,
                           return_all=True, cnn_dtype=amp)
        lc = cfg["loss"]
        loss, parts = loss_terms(preds, b["chi"], b["mask"], float(lc["grad_weight"]), float(lc["deep_weight"]),
                                 float(lc.get("xsim_weight", 0.0)))
        opt.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            log({"event": "nonfinite", "step": step})
            step += 1
            continue
        loss.backward()
        gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(oc["clip"])))
        opt.step()
        if ema is not None:
            ema.update(model)
        step += 1
        pbar.update(1)
        stats.append((float(loss.detach()), gn))
        if step % int(cfg["log_every"]) == 0:
            ml = sum(s[0] for s in stats) / len(stats)
            mg = sum(s[1] for s in stats) / len(stats)
            stats = []
            log({"event": "train", "step": step, "loss": ml, "grad_norm": mg, "lr": lr, "elapsed_s": elapsed0 + time.time() - t0,
                 "a_k": [round(float(a), 4) for a in model.step_sizes().detach()], **parts})
            pbar.set_postfix(loss=f"{ml:.3f}")
        if heads and step % int(cfg["val"]["every"]) == 0:
            if ema is not None:
                ema.swap(model)
            v = validate(model, heads, presets=presets)
            consider(v, step)
            if ema is not None:
                ema.swap(model)
            log({"event": "val", "step": step, "elapsed_s": elapsed0 + time.time() - t0, "ema": ema is not None, **v})
            LOG.info("step %d val NRMSE %.2f %% XSIM %.3f", step, v["val_nrmse"], v["val_xsim"])
        if step % int(cfg["ckpt_every"]) == 0:
            _save_ckpt(model, opt, step, elapsed0 + time.time() - t0, cfg, ckpt_path, ema)
    pbar.close()
    elapsed = elapsed0 + time.time() - t0
    _save_ckpt(model, opt, step, elapsed, cfg, ckpt_path, ema)
    if ema is not None:
        ema.swap(model)  # export / final validation use the average
    final = validate(model, heads, baseline=True, presets=presets) if heads else {}
    if final:
        log({"event": "val", "step": step, "elapsed_s": elapsed, "ema": ema is not None, **final})
        consider(final, step)
        if best["step"] != step:
            model.load_state_dict(best["state"])
            final = dict(best["val"])
            LOG.info("exporting the best validated state (step %s, val_score %.4f)", best["step"], best["score"])
    meta = {"steps": step, "train_seconds": round(elapsed, 1), "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "torch": str(torch.__version__), "seed": int(cfg["seed"]), "batch_size": bs,
            "val_nrmse": final.get("val_nrmse"), "val_xsim": final.get("val_xsim"),
            "val_nrmse_tkd": final.get("val_nrmse_tkd"), "best_step": best["step"] if heads else step,
            "ema_decay": float(cfg.get("ema_decay") or 0.0),
            "a_k": [float(a) for a in model.step_sizes().detach()]}
    sha = export_weights(model, out / "nsidl.pt", meta)
    summary = {**meta, "weights": str(out / "nsidl.pt"), "sha256": sha, "params": n_parameters(model), "final_val": final}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    log({"event": "end", **summary})
    logf.close()
    return summary


def _draw_preset(presets, seed: int, step: int):
    """The preset of this step (a pure function of (seed, step), so --resume draws the same); None without presets."""
    if not presets:
        return None
    import random

    u = random.Random(seed * 1_000_003 + step).random()
    acc = 0.0
    for pr in presets:
        acc += pr["p"]
        if u < acc:
            return pr
    return presets[-1]


class _Ema:
    """Exponential moving average of a model's parameters (decay d per step)."""

    def __init__(self, model, decay: float):
        self.decay = float(decay)
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def update(self, model):
        import torch

        with torch.no_grad():
            for k, v in model.state_dict().items():
                if v.dtype.is_floating_point:
                    self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
                else:
                    self.shadow[k].copy_(v)

    def swap(self, model):
        """Exchange the model's weights and the average (call twice to restore)."""
        cur = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.shadow)
        self.shadow = cur


def _save_ckpt(model, opt, step, elapsed, cfg, path, ema=None):
    import torch

    tmp = Path(path).with_name(".ckpt.tmp")
    blob = {"model": model.state_dict(), "optim": opt.state_dict(), "step": int(step),
            "elapsed_s": float(elapsed), "config_json": json.dumps(cfg)}
    if ema is not None:
        blob["ema"] = ema.shadow
    torch.save(blob, tmp)
    os.replace(tmp, path)


def _set_key(cfg: dict, item: str) -> None:
    import yaml

    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE (e.g. data.batch_size=1), got {item!r}.")
    key, val = item.split("=", 1)
    node = cfg
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = yaml.safe_load(val)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="qsmprep-train", description="Train the NSIDL dipole-inversion network on synthetic data.")
    ap.add_argument("--config", help="YAML training config (defaults if omitted)")
    ap.add_argument("--out", required=True, help="output folder (checkpoint, logs, exported weights)")
    ap.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt")
    ap.add_argument("--device", help="override the config: auto, cpu or cuda")
    ap.add_argument("--max-minutes", type=float, help="override budget.max_minutes (wall clock)")
    ap.add_argument("--max-steps", type=int, help="override budget.max_steps")
    ap.add_argument("--val-dir", help="override val.dir (folder of *.npz heads)")
    ap.add_argument("--threads", type=int, help="torch CPU threads")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override any config entry, e.g. --set data.max_voxels=60000 (value parsed as YAML)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stdout)
    cfg = load_config(args.config)
    if args.device:
        cfg["device"] = args.device
    if args.max_minutes is not None:
        cfg["budget"]["max_minutes"] = args.max_minutes
    if args.max_steps is not None:
        cfg["budget"]["max_steps"] = args.max_steps
    if args.val_dir:
        cfg["val"]["dir"] = args.val_dir
    for item in args.set:
        _set_key(cfg, item)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    summary = train(cfg, args.out, resume=args.resume)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
