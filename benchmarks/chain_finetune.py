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
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import honest_heads as hh  # noqa: E402
from _common import ChainStopped, final_fit_recorded  # noqa: E402

SAMPLES = Path(os.environ.get("QSMPREP_CHAIN_SAMPLES", HERE.parent / ".chain_samples"))


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


def capture(case: dict, weights_path: str | None = None, with_fit: bool = False) -> dict:
    """The network's inputs in the app's chain for ``case`` (see the module docstring) and the true chi
    on the same crop: ``field``, ``mask``, ``weight``, ``chi`` (float32 3-D), ``s``, ``padded``,
    ``voxel_size``, ``b0_dir``, ``n_pre``, ``pre_solver``, ``dc_threshold``, ``dc_width``.

    ``with_fit``: the chain goes on past the network to the final fit (``smvfit.smv_tv``), and the sample also
    holds that fit's inputs (``fit_*``: the total field, brain mask, weight, chi's support, the TV-free voxels,
    radii, TV weight, iterations, over-relaxation, support penalty, and its start ``fit_start``), the network's
    chi placed in the volume (``net_placed``), the crop (``bb``: start and stop per axis), the true chi and the
    true brain mask on the whole volume (``chi_full``, ``brain``): what training through the fit needs
    (:func:`train_step_through_fit`)."""
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
        if not with_fit:
            raise ChainStopped  # the network's inputs are all a capture without the fit needs
        got["net_out"] = orig_run(model, arrays, s, padded, voxel_size, b0_dir, dev, net, dc)
        return got["net_out"]

    inference._run_network, inference.mask_bbox = run, bbox
    try:
        with final_fit_recorded(then="stop") as fitted:
            cb.invert_app("nsidl", case, chain, weights_path=weights_path)
        raise RuntimeError("the chain did not reach the network" + (" and the final fit" if with_fit else ""))
    except ChainStopped:
        pass
    finally:
        inference._run_network, inference.mask_bbox = orig_run, orig_bbox
    if with_fit:
        (tot, m, _, _), k = fitted["args"], fitted["kwargs"]
        shape = np.asarray(m).shape
        w, free = k.get("weight"), k.get("tv_free")
        got.update(fit_total=np.asarray(tot, np.float32), fit_mask=np.asarray(m, bool),
                   fit_weight=np.ones(shape, np.float32) if w is None else np.asarray(w, np.float32),
                   fit_weighted=w is not None, fit_support=np.asarray(k["support"], bool),
                   fit_tv_free=np.zeros(shape, bool) if free is None else np.asarray(free, bool),
                   # the edge-weighted TV map of the app's start (restore.FINAL_EDGE_TV), kept as captured
                   fit_tv_weight=np.ones(shape, np.float32) if k.get("tv_weight") is None
                   else np.asarray(k["tv_weight"], np.float32),
                   fit_radii=np.asarray(k["radii_mm"], np.float32), fit_lam=float(k["lam"]),
                   fit_n_iter=int(k["n_iter"]), fit_relax=float(k["relax"]), fit_support_mu=float(k["support_mu"]),
                   fit_start=np.asarray(k["chi_prior"], np.float32))
    bb = got.pop("bb")
    got["chi"] = np.asarray(case["chi"], np.float32)[bb]
    if with_fit:
        placed = np.zeros(got["fit_mask"].shape, np.float32)
        placed[bb] = got.pop("net_out") * (got["mask"] > 0)
        got.update(net_placed=placed, bb=np.array([[b.start, b.stop] for b in bb], np.int64),
                   chi_full=np.asarray(case["chi"], np.float32), brain=np.asarray(case["brain_mask"], bool))
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
    if "fit_n_iter" in d:
        for k in ("fit_lam", "fit_relax", "fit_support_mu"):
            d[k] = float(d[k])
        d["fit_n_iter"] = int(d["fit_n_iter"])
        d["fit_weighted"] = bool(d["fit_weighted"])
    return d


def _suffix(with_fit: bool) -> str:
    return "_fit" if with_fit else ""


def make_train(seeds, voxel_mm: float, with_fit: bool = False, workers: int = 1, prefix: str = "train") -> None:
    """Chain samples of the drawn training heads ``seeds`` (:func:`train_spec`); ``prefix`` "heldout": the same
    recipe as held-out heads (for choosing a checkpoint where the validation heads are not at hand, e.g. on a
    device); ``workers`` > 1: that many processes of 2 threads each."""
    todo = [s for s in seeds if not (SAMPLES / f"{prefix}-{s}_{voxel_mm:g}mm{_suffix(with_fit)}.npz").exists()]
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as ex:
            list(ex.map(_make_one, [(s, voxel_mm, with_fit, prefix) for s in todo]))
        return
    for seed in todo:
        _make_one((seed, voxel_mm, with_fit, prefix))


def _make_one(job) -> None:
    seed, voxel_mm, with_fit, prefix = job
    import torch

    torch.set_num_threads(2)
    path = SAMPLES / f"{prefix}-{seed}_{voxel_mm:g}mm{_suffix(with_fit)}.npz"
    t0 = time.time()
    spec = train_spec(seed)
    case = hh.make_sim(spec, voxel_mm)
    case["spec"] = spec
    save_sample(capture(case, with_fit=with_fit), path)
    print(f"[chain_finetune] {path.name}: {spec.b0_t:g} T, {len(spec.te_s)} echo(es), SNR {spec.snr:.0f}, "
          f"{time.time() - t0:.0f} s", flush=True)


def make_val(voxel_mm: float = 1.0, with_fit: bool = False, names=None) -> None:
    for spec in hh.cases("validation"):
        if names and spec.name not in names:
            continue
        path = SAMPLES / f"{spec.name}_{voxel_mm:g}mm{_suffix(with_fit)}.npz"
        if path.exists():
            continue
        t0 = time.time()
        save_sample(capture(hh.load_case(spec.name, voxel_mm), with_fit=with_fit), path)
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


def _update(model, opt, samples: list[dict], dev, loss_of) -> float | None:
    """One optimiser step on the mean of ``loss_of(model, d, dev)`` over ``samples`` (gradients accumulated one
    sample at a time, so memory is that of one sample; clipped at norm 0.5); the mean loss, or None (no update)
    when a loss is not finite."""
    import torch

    opt.zero_grad(set_to_none=True)
    total = 0.0
    for d in samples:
        loss = loss_of(model, d, dev)
        if not torch.isfinite(loss):
            opt.zero_grad(set_to_none=True)
            return None
        (loss / len(samples)).backward()
        total += float(loss.detach())
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 0.5)
    opt.step()
    return total / len(samples)


def _loss(model, d: dict, dev):
    """The training loss of ``qsmprep.dl.train`` on sample ``d``: demeaned L1, gradient L1 and deep supervision,
    the last iterate after the k-space step."""
    from qsmprep.dl.metrics import loss_terms

    t = _tensors(d, dev)
    preds = forward(model, d, dev, return_all=True, tensors=t)
    _, mask, _, truth, _ = t
    return loss_terms(preds, truth, mask, 0.5, 0.1, 0.0)[0]


def train_step(model, opt, d: dict, dev) -> float | None:
    """One optimiser step on sample ``d`` with :func:`_loss`; the loss, or None (no update) when it is not
    finite."""
    return _update(model, opt, [d], dev, _loss)


_FIT_CACHE: dict = {}


def final_fit_of(d: dict, dev, checkpoint_every: int = 5, cache: bool = True):
    """The sample's final fit (:class:`qsmprep.dl.finalfit.FinalFit` of its captured inputs); ``cache``: kept per
    sample (the validation samples; a training run does not keep one per training sample: 24 GB of RAM ran out with
    twenty 1.5 mm samples cached and 10 iterations per checkpointed chunk)."""
    from qsmprep.dl.finalfit import FinalFit
    from qsmprep.qsm.smvfit import smv_tv_problem

    key = (id(d), str(dev))
    if cache and key in _FIT_CACHE:
        return _FIT_CACHE[key]
    pb = smv_tv_problem(d["fit_total"], d["fit_mask"], d["voxel_size"], d["b0_dir"],
                        weight=d["fit_weight"] if d["fit_weighted"] else None,
                        radii_mm=tuple(float(r) for r in d["fit_radii"]), lam=d["fit_lam"], support=d["fit_support"],
                        support_mu=d["fit_support_mu"], tv_free=d["fit_tv_free"] if d["fit_tv_free"].any() else None,
                        tv_weight=d["fit_tv_weight"] if "fit_tv_weight" in d and np.any(d["fit_tv_weight"] != 1) else None)
    fit = FinalFit(pb, n_iter=d["fit_n_iter"], relax=d["fit_relax"], device=dev, checkpoint_every=checkpoint_every)
    if cache:
        _FIT_CACHE[key] = fit
    return fit


def through_fit(model, d: dict, dev, tensors=None, cache: bool = True):
    """The chain's chi after the final fit when the network (``model``) gives its start: the network's chi on the
    sample's crop replaces the app's start where the app's start was the network's (the voids' fit, which the
    chain runs between the two, keeps its values), then :func:`final_fit_of`.  Returns ``(chi, loss)``:
    chi (the whole volume, ppm) and :func:`qsmprep.dl.finalfit.chain_loss` against the truth."""
    import torch

    from qsmprep.dl.finalfit import chain_loss

    t = _tensors(d, dev) if tensors is None else tensors
    chi_c = forward(model, d, dev, tensors=t)[0, 0]
    bb = tuple(slice(int(a), int(b)) for a, b in d["bb"])
    start = torch.from_numpy(d["fit_start"]).to(dev)
    own = (d["mask"] > 0) & (np.abs(d["fit_start"][bb] - d["net_placed"][bb]) <= 1e-6)
    box = torch.where(torch.from_numpy(own).to(dev), chi_c, start[bb])
    start = start.clone()
    start[bb] = box
    chi = final_fit_of(d, dev, cache=cache)(start)
    sup = torch.from_numpy(d["fit_support"] | d["fit_mask"]).to(dev).float()
    brain = torch.from_numpy(d["brain"]).to(dev).float()
    return chi, chain_loss(chi, torch.from_numpy(d["chi_full"]).to(dev), brain, sup)


def score_through_fit(model, samples: list[dict], dev) -> dict:
    """Mean XSIM and demeaned NRMSE (%) of the chain's chi after the final fit (:func:`through_fit`, referenced
    as the app does) over the true brain mask, and the mean loss."""
    import torch

    from qsmprep.dl.finalfit import referenced
    from qsmprep.dl.metrics import xsim_t

    xs, nr, ls = [], [], []
    with torch.no_grad():
        for d in samples:
            chi, loss = through_fit(model, d, dev)
            sup = torch.from_numpy(d["fit_support"] | d["fit_mask"]).to(dev).float()
            brain = torch.from_numpy(d["brain"]).to(dev).float()[None, None]
            r = referenced(chi, sup)[None, None]
            xs.append(float(xsim_t(r, torch.from_numpy(d["chi_full"]).to(dev)[None, None], brain)[0]))
            ls.append(float(loss))
            nr.append(100.0 * math.sqrt(float(loss)))
    return {"nrmse": float(np.mean(nr)), "xsim": float(np.mean(xs)), "loss": float(np.mean(ls)),
            "score": float(np.mean(xs) - np.mean(nr) / 100), "per_head": [round(v, 4) for v in xs]}


def _loss_through_fit(model, d: dict, dev):
    return through_fit(model, d, dev, cache=False)[1]


def train_step_through_fit(model, opt, d: dict, dev) -> float | None:
    """One optimiser step on sample ``d`` with the loss *after* the chain's final fit (:func:`through_fit`):
    the network learns the start that the fit turns into the best chi, not a chi closest to the truth on its
    own (which the fit partly forgets and whose offset it keeps: ``benchmarks/RESULTS.md``)."""
    return _update(model, opt, [d], dev, _loss_through_fit)


def train(args) -> None:
    import torch

    from qsmprep.dl.train import export_weights
    from qsmprep.dl.weights import load_model

    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sfx = _suffix(args.through_fit)
    val_glob = args.val_glob or f"val-*_1mm{sfx}.npz"
    tr_paths = sorted(SAMPLES.glob(f"train-*_{args.voxel:g}mm{sfx}.npz"))
    # --lazy: a training sample is read when drawn (about 0.1 GB each at 1.5 mm: forty held at once, beside the
    # through-fit's checkpointed ADMM, ran a 24 GB machine out of memory in session 22)
    tr = tr_paths if args.lazy else [load_sample(p) for p in tr_paths]
    va = [load_sample(p) for p in sorted(SAMPLES.glob(val_glob))]
    if not tr or not va:
        raise SystemExit(f"no chain samples in {SAMPLES} (train-*_{args.voxel:g}mm{sfx}.npz, {val_glob}): "
                         "make them first with --make / --make-val" + (" --through-fit" if sfx else ""))
    loss_of, score_fn = (_loss_through_fit, score_through_fit) if args.through_fit else (_loss, score)
    model, _ = load_model(args.init, device=str(dev))
    model.train()
    if not args.train_step_sizes:
        # the unrolled step sizes stay as shipped: the ablation (U-Net output zeroed) is then the same
        # pipeline as the shipped weights' ablation, and only the proximal network changes
        model.step_logit.requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    log = open(out / "train_log.jsonl", "a")
    rec = {"step": 0, **score_fn(model, va, dev), "n_train": len(tr), "n_val": len(va),
           "through_fit": bool(args.through_fit)}
    print(json.dumps(rec), flush=True)
    log.write(json.dumps(rec) + "\n")
    best = (rec["score"], 0)
    export_weights(model, out / "best.pt", {"step": 0, **rec})
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    step = 0
    losses = []
    def validate(step, best):
        model.eval()
        rec = {"step": step, "loss": float(np.mean(losses)), "elapsed_s": round(time.time() - t0),
               **score_fn(model, va, dev)}
        model.train()
        losses.clear()
        print(json.dumps(rec), flush=True)
        log.write(json.dumps(rec) + "\n")
        log.flush()
        export_weights(model, out / f"step{step}.pt", {"step": step, **rec})
        if rec["score"] > best[0]:
            best = (rec["score"], step)
            export_weights(model, out / "best.pt", {"step": step, **rec})
        return best

    while time.time() - t0 < args.minutes * 60 and step < args.max_steps:
        step += 1
        frac = min(1.0, (time.time() - t0) / (args.minutes * 60))
        for g in opt.param_groups:
            g["lr"] = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        batch = [tr[int(i)] for i in rng.choice(len(tr), size=min(args.accum, len(tr)), replace=False)]
        if args.lazy:
            batch = [load_sample(p) for p in batch]
        loss = _update(model, opt, batch, dev, loss_of)
        if loss is not None:
            losses.append(loss)
        if step % args.val_every == 0:
            best = validate(step, best)
    if step % args.val_every:
        best = validate(step, best)  # the last state is always scored and exported
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
    ap.add_argument("--accum", type=int, default=1, help="training samples per optimiser step (gradients accumulated)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--train-step-sizes", action="store_true", help="also train the unrolled step sizes")
    ap.add_argument("--through-fit", action="store_true",
                    help="samples with the final fit's inputs (--make / --make-val), and training with the loss after "
                         "the final fit (train_step_through_fit)")
    ap.add_argument("--val-heads", nargs="*", default=None, help="--make-val: only these validation heads")
    ap.add_argument("--make-heldout", help="held-out drawn heads (seeds, e.g. 1900-1903), as the training heads")
    ap.add_argument("--val-glob", default=None, help="validation samples (default: val-*_1mm[_fit].npz)")
    ap.add_argument("--workers", type=int, default=1, help="--make: processes (2 threads each)")
    ap.add_argument("--device", default="cpu", help="--train: torch device")
    ap.add_argument("--lazy", action="store_true", help="--train: read each training sample when drawn (less memory)")
    a = ap.parse_args(argv)
    if a.make:
        make_train(seed_range(a.make), a.voxel, with_fit=a.through_fit, workers=a.workers)
    if a.make_heldout:
        make_train(seed_range(a.make_heldout), a.voxel, with_fit=a.through_fit, workers=a.workers, prefix="heldout")
    if a.make_val:
        make_val(with_fit=a.through_fit, names=a.val_heads)
    if a.train:
        train(a)
    return 0


def seed_range(text: str) -> range:
    """Seeds of ``--make`` / ``--make-heldout``: ``"1000-1031"`` (both ends included) or one seed, ``"1900"``."""
    lo, _, hi = text.partition("-")
    return range(int(lo), int(hi or lo) + 1)


if __name__ == "__main__":
    raise SystemExit(main())
