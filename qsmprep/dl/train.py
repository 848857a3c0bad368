"""Train NSIDL on on-the-fly synthetic data (the command line is :mod:`qsmprep.dl.train_cli`).

    python -m qsmprep.dl.train --config qsmprep/data/nsidl/train_gpu.yaml --out runs/nsidl [--resume]
    qsmprep-train --config X.yaml --out DIR [--device cpu|cuda|auto] [--max-minutes M] [--max-steps N]

The YAML config has the sections ``seed``, ``device``, ``model`` (:func:`qsmprep.dl.model.build_model`
keys), ``data`` (``batch_size`` + :class:`qsmprep.dl.synthetic.SynthConfig` fields), ``optim``
(``lr``, ``lr_min``, ``weight_decay``, ``clip``, ``warmup``), ``budget`` (``max_steps``,
``max_minutes``: whichever comes first; the cosine schedule follows the larger progress fraction),
``loss`` (``grad_weight``, ``deep_weight``, ``xsim_weight``; :func:`qsmprep.dl.metrics.loss_terms`),
``val`` (``dir`` of ``*.npz`` heads, ``every`` steps; :mod:`qsmprep.dl.validation`), ``presets``
(optional: a list of inference settings ``{pre_solver, n_pre, dc_threshold, p}``, one drawn per step
with probability ``p``; the loss then scores the final iterate *after* the k-space data-consistency
step that inference applies (:func:`qsmprep.dl.physics.kspace_consistency_t`), and validation scores
every preset, selecting on their mean ``val_score``), ``ema_decay`` (exponential moving average of
the weights, 0 = off; validation and export use the average) and ``ckpt_every``.  With validation
heads, the exported weights are the validated state with the best ``val_xsim - val_nrmse / 100``
(``best_step`` in the summary).  Batches are a pure function of (seed, step), so ``--resume``
continues the same data stream from the last checkpoint (``DIR/ckpt.pt``).  Outputs in DIR:
``ckpt.pt``, ``train_log.jsonl`` (one JSON line per logged step / validation), ``nsidl.pt``
(exported weights for :mod:`qsmprep.dl.weights`) and ``summary.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

from qsmprep.dl.metrics import loss_terms
from qsmprep.dl.validation import check_presets, load_val_heads, run_preset, validate

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

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dev = pick_device(cfg["device"])
    torch.manual_seed(int(cfg["seed"]))
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = False
    bs, scfg = _synth_config(cfg["data"])
    model = build_model(cfg["model"]).to(dev)
    oc = cfg["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=float(oc["lr"]), weight_decay=float(oc["weight_decay"]))
    ckpt_path = out / "ckpt.pt"
    step, elapsed0, ema = _start_state(model, opt, cfg, ckpt_path, dev, resume)
    heads = load_val_heads(cfg["val"].get("dir"), dev, int(cfg["val"].get("max_heads", 4)))
    presets = check_presets(cfg.get("presets"))
    max_steps = int(cfg["budget"]["max_steps"])
    max_s = float(cfg["budget"]["max_minutes"]) * 60.0
    log = _JsonLog(out / "train_log.jsonl")
    log({"event": "start", "step": step, "device": str(dev), "params": n_parameters(model), "config": cfg,
         "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None})
    best = _Best()
    if heads and step == 0:
        v = validate(model, heads, baseline=True, presets=presets)
        log({"event": "val", "step": 0, **v})
        best.consider(v, 0, model)
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
        lr = _cosine_lr(oc, step, max_steps, el, max_s)
        for gr in opt.param_groups:
            gr["lr"] = lr
        done = _train_step(model, opt, ema, cfg, scfg, bs, dev, presets, amp, step)
        if done is None:
            log({"event": "nonfinite", "step": step})
            step += 1
            continue
        loss, parts, gn = done
        step += 1
        pbar.update(1)
        stats.append((loss, gn))
        if step % int(cfg["log_every"]) == 0:
            ml = sum(s[0] for s in stats) / len(stats)
            mg = sum(s[1] for s in stats) / len(stats)
            stats = []
            log({"event": "train", "step": step, "loss": ml, "grad_norm": mg, "lr": lr, "elapsed_s": elapsed0 + time.time() - t0,
                 "a_k": [round(float(a), 4) for a in model.step_sizes().detach()], **parts})
            pbar.set_postfix(loss=f"{ml:.3f}")
        if heads and step % int(cfg["val"]["every"]) == 0:
            v = _validate_averaged(model, ema, heads, presets, best, step)
            log({"event": "val", "step": step, "elapsed_s": elapsed0 + time.time() - t0, "ema": ema is not None, **v})
            LOG.info("step %d val NRMSE %.2f %% XSIM %.3f", step, v["val_nrmse"], v["val_xsim"])
        if step % int(cfg["ckpt_every"]) == 0:
            _save_ckpt(model, opt, step, elapsed0 + time.time() - t0, cfg, ckpt_path, ema)
    pbar.close()
    elapsed = elapsed0 + time.time() - t0
    _save_ckpt(model, opt, step, elapsed, cfg, ckpt_path, ema)
    if ema is not None:
        ema.swap(model)  # export / final validation use the average
    final = _final_validation(model, heads, presets, best, step, log, elapsed, ema is not None)
    summary = _export_run(model, out, cfg, dev, step, elapsed, bs, final, best.step if heads else step)
    log({"event": "end", **summary})
    log.close()
    return summary


def _synth_config(data: dict):
    """(batch size, :class:`qsmprep.dl.synthetic.SynthConfig`) of the config's ``data`` section."""
    from qsmprep.dl.synthetic import SynthConfig

    data_cfg = dict(data)
    bs = int(data_cfg.pop("batch_size", 2))
    valid = {f.name for f in dataclasses.fields(SynthConfig)}
    unknown = set(data_cfg) - valid
    if unknown:
        raise ValueError(f"Unknown data keys {sorted(unknown)} in the training config; valid keys are {sorted(valid)}.")
    return bs, SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in data_cfg.items()})


def _start_state(model, opt, cfg: dict, ckpt_path: Path, dev, resume: bool):
    """Warm start (``init_weights``) or resume from ``ckpt_path``; returns (step, elapsed s, EMA or None)."""
    import torch

    step, elapsed0 = 0, 0.0
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
    return step, elapsed0, ema


def _cosine_lr(oc: dict, step: int, max_steps: int, elapsed: float, max_s: float) -> float:
    """Cosine schedule from ``lr`` to ``lr_min`` over the larger of the step and time fractions, after
    a linear warm-up over ``warmup`` steps."""
    frac = min(1.0, max(step / max_steps, elapsed / max_s))
    lr = float(oc["lr_min"]) + 0.5 * (float(oc["lr"]) - float(oc["lr_min"])) * (1 + math.cos(math.pi * frac))
    return lr * min(1.0, (step + 1) / max(1, int(oc["warmup"])))


def _train_step(model, opt, ema, cfg: dict, scfg, bs: int, dev, presets, amp, step: int):
    """One optimiser step on the batch of ``step``; returns (loss, loss parts, gradient norm), or None
    (and no update) when the loss is not finite."""
    import torch

    from qsmprep.dl.synthetic import make_batch

    b = make_batch(int(cfg["seed"]) * 7_919 + step, bs, dev, scfg)
    preset = _draw_preset(presets, int(cfg["seed"]), step)
    preds = run_preset(model, b["field"], b["mask"], b["weight"], b["s"], b["kernel"], b["padded"], preset,
                       return_all=True, cnn_dtype=amp)
    lc = cfg["loss"]
    loss, parts = loss_terms(preds, b["chi"], b["mask"], float(lc["grad_weight"]), float(lc["deep_weight"]),
                             float(lc.get("xsim_weight", 0.0)))
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return None
    loss.backward()
    gn = float(torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["optim"]["clip"])))
    opt.step()
    if ema is not None:
        ema.update(model)
    return float(loss.detach()), parts, gn


def _validate_averaged(model, ema, heads, presets, best, step: int) -> dict:
    """:func:`validate` with the EMA weights (when EMA is on), offered to ``best``."""
    if ema is not None:
        ema.swap(model)
    v = validate(model, heads, presets=presets)
    best.consider(v, step, model)
    if ema is not None:
        ema.swap(model)
    return v


def _final_validation(model, heads, presets, best, step: int, log, elapsed: float, ema_on: bool) -> dict:
    """Validate the final weights; when an earlier validated state scored better, load it into
    ``model`` and return its scores (empty dict without validation heads)."""
    final = validate(model, heads, baseline=True, presets=presets) if heads else {}
    if final:
        log({"event": "val", "step": step, "elapsed_s": elapsed, "ema": ema_on, **final})
        best.consider(final, step, model)
        if best.step != step:
            model.load_state_dict(best.state)
            final = dict(best.val)
            LOG.info("exporting the best validated state (step %s, val_score %.4f)", best.step, best.score)
    return final


def _export_run(model, out: Path, cfg: dict, dev, step: int, elapsed: float, bs: int, final: dict, best_step) -> dict:
    """Export ``model`` to ``out/nsidl.pt`` with its metadata and write ``out/summary.json``; returns the summary."""
    import torch

    from qsmprep.dl.model import n_parameters

    meta = {"steps": step, "train_seconds": round(elapsed, 1), "device": str(dev),
            "gpu": torch.cuda.get_device_name(0) if dev.type == "cuda" else None,
            "torch": str(torch.__version__), "seed": int(cfg["seed"]), "batch_size": bs,
            "val_nrmse": final.get("val_nrmse"), "val_xsim": final.get("val_xsim"),
            "val_nrmse_tkd": final.get("val_nrmse_tkd"), "best_step": best_step,
            "ema_decay": float(cfg.get("ema_decay") or 0.0),
            "a_k": [float(a) for a in model.step_sizes().detach()]}
    sha = export_weights(model, out / "nsidl.pt", meta)
    summary = {**meta, "weights": str(out / "nsidl.pt"), "sha256": sha, "params": n_parameters(model), "final_val": final}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


class _JsonLog:
    """Append-only JSON-lines log, flushed after every record."""

    def __init__(self, path: Path):
        self._f = open(path, "a")

    def __call__(self, rec: dict) -> None:
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class _Best:
    """The validated weights with the best ``val_score`` (EMA weights when EMA is on)."""

    def __init__(self):
        self.score, self.step, self.state, self.val = -math.inf, None, None, {}

    def consider(self, v: dict, at: int, model) -> None:
        if v and v["val_score"] > self.score:
            state = {k: t.detach().cpu().clone() for k, t in model.state_dict().items()}
            self.score, self.step, self.val, self.state = v["val_score"], at, v, state


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


def main(argv=None) -> int:
    """:func:`qsmprep.dl.train_cli.main` (kept here for ``python -m qsmprep.dl.train`` and for
    ``qsmprep-train`` scripts installed before the command line moved)."""
    from qsmprep.dl.train_cli import main as _main

    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
