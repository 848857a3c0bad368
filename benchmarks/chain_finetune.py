"""Fine-tune NSIDL on the CPU on what the app's chain feeds it (issue #13, "Training": without a GPU).

The shipped weights were trained on synthetic local fields (``qsmprep.dl.synthetic``); in the app the
network sees the chain's local field instead (brain mask, ROMEO, the echo fit, iSMV over the mask with
its voids filled: ``qsmprep.dl.restore.invert_nsidl_chain``), which has lost the part of the sources'
field that is harmonic inside the mask.  This harness

1. makes training heads with ``qsmprep.sim`` only (seeds 1000+, drawn acquisitions: 3 T / 7 T, 1-5
   echoes, B0 tilts up to 25 deg, SNR 40-150; fields on a 2x finer grid, as ``honest_heads``), never
   the qsm-forward generator (its heads stay a second generator for the test);
2. runs the app's chain on each (``chain_benchmark.chain_for``) and the app's inversion dispatch up to
   the network, capturing exactly what the network receives (``qsmprep.dl.inference._run_network``'s
   arrays: the cropped field, mask and weight, the phase scale, the k-space step) and the true chi on
   that crop (the "chain samples", cached as ``.npz``);
3. fine-tunes the weights on those samples with the robust preset's forward pass (its pre-steps and
   the k-space step, as in the app) and the training loss (``qsmprep.dl.metrics.loss_terms``), scoring
   the network's output on the validation heads' chain samples (``val-*`` of ``honest_heads``) every
   ``--val-every`` steps and exporting the best state.

The exported candidate is then judged through the whole chain on the validation heads
(``chain_benchmark.py --weights``); it ships only if it beats the current weights there.

    .venv/bin/python benchmarks/chain_finetune.py --make 1000-1039 --voxel 1.5   # chain samples (40 heads)
    .venv/bin/python benchmarks/chain_finetune.py --make-val                       # validation samples (1 mm)
    .venv/bin/python benchmarks/chain_finetune.py --train --voxel 1.5 --out runs/ft1 --minutes 55 --lr 5e-5 --val-every 30
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import honest_heads as hh  # noqa: E402

SAMPLES = HERE.parent / ".chain_samples"


class _Captured(Exception):
    pass


def train_spec(seed: int) -> "hh.CaseSpec":
    """A drawn acquisition for training head ``seed`` (qsmprep.sim only)."""
    rng = np.random.default_rng(seed)
    b0_t = float(rng.choice([3.0, 7.0]))
    kind = rng.choice(["ME", "ME", "SE"])
    if kind == "SE":
        te = (float(rng.uniform(0.012, 0.025)) if b0_t == 3.0 else float(rng.uniform(0.008, 0.016)),)
    else:
        te = hh.ME3 if b0_t == 3.0 else hh.ME7
    tilt = float(rng.uniform(0.0, 25.0))
    b0 = hh._tilt(tilt, str(rng.choice(["x", "y"])))
    snr = float(np.exp(rng.uniform(np.log(40.0), np.log(150.0))))
    return hh.CaseSpec(f"train-{seed}", "sim", int(seed), "train", b0_t, te, b0, snr,
                       phase_offset="harmonic" if len(te) == 1 else "auto")


def capture(case: dict, weights_path: str | None = None) -> dict:
    """The network's inputs in the app's chain for ``case`` (see the module docstring) and the true chi
    on the same crop: ``field``, ``mask``, ``weight``, ``chi`` (float32 3-D), ``s``, ``padded``,
    ``voxel_size``, ``b0_dir``, ``n_pre``, ``pre_solver``, ``dc_threshold``, ``dc_width``."""
    from qsmprep.dl import inference

    import chain_benchmark as cb

    chain = cb.chain_for(case)
    got: dict = {}
    orig_run, orig_bbox = inference._run_network, inference.mask_bbox

    def bbox(m, margin=4):
        got["bb"] = orig_bbox(m, margin)
        return got["bb"]

    def run(model, arrays, s, padded, voxel_size, b0_dir, dev, net, dc):
        got.update(field=arrays[0], mask=arrays[1], weight=arrays[2], s=float(s), padded=tuple(padded),
                   voxel_size=tuple(float(v) for v in voxel_size), b0_dir=tuple(float(v) for v in b0_dir),
                   n_pre=int(net["n_pre"]), pre_solver=str(net["pre_solver"]),
                   dc_threshold=dc[0], dc_width=float(dc[1]))
        raise _Captured

    inference._run_network, inference.mask_bbox = run, bbox
    try:
        cb.invert_app("nsidl", case, chain, weights_path=weights_path)
        raise RuntimeError("the chain did not reach the network")
    except _Captured:
        pass
    finally:
        inference._run_network, inference.mask_bbox = orig_run, orig_bbox
    got["chi"] = np.asarray(case["chi"], np.float32)[got.pop("bb")]
    return got


def save_sample(d: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    d = {**d, "dc_threshold": np.nan if d["dc_threshold"] is None else d["dc_threshold"]}
    np.savez(tmp, **{k: np.asarray(v) for k, v in d.items()})
    tmp.replace(path)


def load_sample(path: Path) -> dict:
    z = np.load(path)
    d = {k: z[k] for k in z.files}
    for k in ("s", "dc_width"):
        d[k] = float(d[k])
    d["n_pre"] = int(d["n_pre"])
    d["pre_solver"] = str(d["pre_solver"])
    d["dc_threshold"] = None if np.isnan(d["dc_threshold"]) else float(d["dc_threshold"])
    d["padded"] = tuple(int(v) for v in d["padded"])
    d["voxel_size"] = tuple(float(v) for v in d["voxel_size"])
    d["b0_dir"] = tuple(float(v) for v in d["b0_dir"])
    return d


def make_train(seeds, voxel_mm: float) -> None:
    for seed in seeds:
        path = SAMPLES / f"train-{seed}_{voxel_mm:g}mm.npz"
        if path.exists():
            continue
        t0 = time.time()
        spec = train_spec(seed)
        case = hh.make_sim(spec, voxel_mm)
        case["spec"] = spec
        save_sample(capture(case), path)
        print(f"[chain_finetune] {path.name}: {spec.b0_t:g} T, {len(spec.te_s)} echo(es), SNR {spec.snr:.0f}, "
              f"{time.time() - t0:.0f} s", flush=True)


def make_val(voxel_mm: float = 1.0) -> None:
    for spec in hh.cases("validation"):
        path = SAMPLES / f"{spec.name}_{voxel_mm:g}mm.npz"
        if path.exists():
            continue
        t0 = time.time()
        save_sample(capture(hh.load_case(spec.name, voxel_mm)), path)
        print(f"[chain_finetune] {path.name}: {time.time() - t0:.0f} s", flush=True)


def _tensors(d: dict, dev):
    import torch

    from qsmprep.dl import physics

    tt = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).to(dev)[None, None]
    kern = physics.dipole_kernel_t(d["padded"], d["voxel_size"], d["b0_dir"], device=dev)[None, None]
    return tt(d["field"]), tt(d["mask"]), tt(d["weight"]), tt(d["chi"]), kern


def forward(model, d: dict, dev, return_all: bool = False, tensors=None):
    """The network as the app runs it on sample ``d`` (its pre-steps, then the k-space step); ``tensors``:
    :func:`_tensors` of ``d`` when the caller has them already."""
    from qsmprep.dl.validation import run_preset

    field, mask, weight, _, kern = _tensors(d, dev) if tensors is None else tensors
    preset = {"n_pre": d["n_pre"], "pre_solver": d["pre_solver"], "dc_threshold": d["dc_threshold"],
              "dc_extrapolate": False}
    return run_preset(model, field, mask, weight, d["s"], kern, d["padded"], preset, return_all=return_all)


def score(model, samples: list[dict], dev) -> dict:
    """Mean demeaned NRMSE (%) and XSIM of the network's output against the truth in the sample's mask."""
    import torch

    from qsmprep.dl.metrics import nrmse_demeaned, xsim_t

    nr, xs = [], []
    with torch.no_grad():
        for d in samples:
            t = _tensors(d, dev)
            chi = forward(model, d, dev, tensors=t)
            _, mask, _, truth, _ = t
            nr.append(nrmse_demeaned(chi, truth, mask))
            xs.append(float(xsim_t(chi, truth, mask)[0]))
    return {"nrmse": float(np.mean(nr)), "xsim": float(np.mean(xs)), "score": float(np.mean(xs) - np.mean(nr) / 100),
            "per_head": [round(v, 4) for v in xs]}


def train_step(model, opt, d: dict, dev) -> float | None:
    """One optimiser step on sample ``d`` (the training loss of ``qsmprep.dl.train``: demeaned L1, gradient
    L1 and deep supervision, the last iterate after the k-space step); the loss, or None (no update)
    when it is not finite."""
    import torch

    from qsmprep.dl.metrics import loss_terms

    t = _tensors(d, dev)
    preds = forward(model, d, dev, return_all=True, tensors=t)
    _, mask, _, truth, _ = t
    loss, _ = loss_terms(preds, truth, mask, 0.5, 0.1, 0.0)
    opt.zero_grad(set_to_none=True)
    if not torch.isfinite(loss):
        return None
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.5)
    opt.step()
    return float(loss.detach())


def train(args) -> None:
    import torch

    from qsmprep.dl.train import export_weights
    from qsmprep.dl.weights import load_model

    torch.manual_seed(args.seed)
    dev = torch.device("cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tr = [load_sample(p) for p in sorted(SAMPLES.glob(f"train-*_{args.voxel:g}mm.npz"))]
    va = [load_sample(p) for p in sorted(SAMPLES.glob("val-*_1mm.npz"))]
    model, _ = load_model(args.init, device="cpu")
    model.train()
    if not args.train_step_sizes:
        # the unrolled step sizes stay as shipped: the ablation (U-Net output zeroed) is then the same
        # pipeline as the shipped weights' ablation, and only the proximal network changes
        model.step_logit.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    log = open(out / "train_log.jsonl", "a")
    rec = {"step": 0, **score(model, va, dev), "n_train": len(tr), "n_val": len(va)}
    print(json.dumps(rec), flush=True)
    log.write(json.dumps(rec) + "\n")
    best = (rec["score"], 0)
    export_weights(model, out / "best.pt", {"step": 0, **rec})
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    step = 0
    losses = []
    while time.time() - t0 < args.minutes * 60 and step < args.max_steps:
        step += 1
        frac = min(1.0, (time.time() - t0) / (args.minutes * 60))
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        loss = train_step(model, opt, tr[int(rng.integers(len(tr)))], dev)
        if loss is not None:
            losses.append(loss)
        if step % args.val_every == 0:
            model.eval()
            rec = {"step": step, "loss": float(np.mean(losses)), "elapsed_s": round(time.time() - t0),
                   **score(model, va, dev)}
            model.train()
            losses = []
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
            if rec["score"] > best[0]:
                best = (rec["score"], step)
                export_weights(model, out / "best.pt", {"step": step, **rec})
    summary = {"steps": step, "best_step": best[1], "best_score": best[0], "minutes": args.minutes, "lr": args.lr,
               "elapsed_s": round(time.time() - t0)}
    log.close()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary), flush=True)


def main(argv=None) -> int:
    import torch

    torch.set_num_threads(2)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--make", help="training seeds, e.g. 1000-1023")
    ap.add_argument("--make-val", action="store_true")
    ap.add_argument("--voxel", type=float, default=1.5)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--out", default="runs/chain_ft")
    ap.add_argument("--init", default=None, help="start weights (default: the shipped ones)")
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--val-every", type=int, default=40)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--train-step-sizes", action="store_true", help="also train the unrolled step sizes")
    a = ap.parse_args(argv)
    if a.make:
        lo, hi = (int(v) for v in a.make.split("-"))
        make_train(range(lo, hi + 1), a.voxel)
    if a.make_val:
        make_val()
    if a.train:
        train(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
