"""The honest whole-chain benchmark (issue #13): chi from phase, scored over the true brain mask.

Heads: ``benchmarks/honest_heads.py`` (fields simulated on a 2x finer grid and averaged down; two
generators; validation and test sets).  Per head the app's chain runs once up to the local field
(``_common.app_chain_field``: the same functions and defaults as the Nipype graph), then every
method of :data:`METHODS` inverts it and is scored against the true chi over the TRUE brain mask
(voxels the chain dropped count as 0; qsm-ci's challenge metrics), with:

* deep-gray ROI means (the 12 labels of ``qsmprep.sim.phantom``): slope of recon vs true means and
  their mean absolute error (both maps demeaned in the true brain mask, as the scorer does);
* lesions: calcification moment error relative to the true moment (qsm-ci's moment deviation /
  |true moment|) and the haemorrhage region's detrended NRMSE (label 18 dilated by one voxel);
* the NSIDL ablation: every ``nsidl*`` row has an ``*-off`` twin, the same pipeline with the
  U-Net's output set to zero (its last convolution zeroed: the unrolled data-term steps, the
  pre-solver and the final data-consistency step stay).

Usage::

    .venv/bin/python benchmarks/chain_benchmark.py --role validation --voxel 2 --methods tkd nsidl nsidl-off
    .venv/bin/python benchmarks/chain_benchmark.py --role test --voxel 1 --out benchmarks/chain_benchmark.json

Classical anchors ``*-tuned`` use :data:`TUNED` (chosen by ``--tune`` on the validation heads only).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import app_chain_field, app_inversion, max_rss_mb, qsmci_seg, roi_stats, score_chi  # noqa: E402
import honest_heads as hh  # noqa: E402

#: Classical parameters chosen on the validation heads (``--tune``); see benchmarks/RESULTS.md.
TUNED: dict[str, dict] = {
    # chosen by ``--tune`` at 1 mm on the four validation heads (best mean XSIM - NRMSE/100 - HFEN/100)
    "tkd": {"threshold": 0.15},
    "cgl2": {"lam": 0.005, "max_iter": 5},
    "ndi": {"n_iter": 15, "step": 4.0},  # at the physical phase scale (rad_per_ppm(B0, mean TE))
    "tv": {"lam": 3e-5, "n_iter": 150},  # 60 until 2026-12-05 (session 10: the grid got 150)
}


# ------------------------------------------------------------------------------------------
# scoring
# ------------------------------------------------------------------------------------------


def lesion_stats(chi: np.ndarray, truth: np.ndarray, labels: np.ndarray, mask: np.ndarray, met: dict) -> dict:
    """Calcification moment error (relative) and haemorrhage region detrended NRMSE (%)."""
    from qsm_ci.qsm_eval import nrmse_challenge
    from scipy import ndimage

    out = {}
    calc = labels == 17
    if calc.any():
        t = np.where(mask > 0, truth - truth[mask > 0].mean(), 0)
        gt = float(t[calc].sum())
        out["calc_moment_rel"] = float(met.get("calc_moment_dev", math.nan)) / abs(gt) if gt else math.nan
    haem = labels == 18
    if haem.any():
        reg = ndimage.binary_dilation(haem, iterations=1) & (mask > 0)
        m = mask > 0
        r = np.where(m, chi - chi[m].mean(), 0)
        tt = np.where(m, truth - truth[m].mean(), 0)
        _, dt = nrmse_challenge(r, tt, reg)
        out["haem_dnrmse"] = float(dt)
        out["haem_mean_ratio"] = float(r[haem].mean() / tt[haem].mean())
    return out


def score(chi: np.ndarray, case: dict) -> dict:
    """All metrics of ``chi`` against the case's truth over the true brain mask."""
    m = case["brain_mask"]
    seg = qsmci_seg(case["labels"])
    met = score_chi(chi, case["chi"], m, seg)
    keep = {k: float(met[k]) for k in ("nrmse", "nrmse_detrend", "hfen", "xsim", "correlation", "calc_moment_dev",
                                       "calc_streak", "nrmse_dgm", "nrmse_blood", "dgm_linearity") if k in met}
    keep["coverage"] = float(((chi != 0) & m).sum() / m.sum())
    keep.update(roi_stats(chi, case["chi"], case["labels"], m))
    keep.update(lesion_stats(chi, case["chi"], case["labels"], m, met))
    return keep


# ------------------------------------------------------------------------------------------
# methods
# ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _wrapped_loader(wrap: Callable):
    """Within this block, NSIDL's model loader (``inference._cached_model``) returns ``wrap(model, info)``."""
    import qsmprep.dl.inference as inf

    orig = inf._cached_model
    inf._cached_model = lambda path, device: wrap(*orig(path, device))
    try:
        yield
    finally:
        inf._cached_model = orig


def network_off():
    """Within this block, NSIDL's U-Net outputs zero (its last convolution zeroed): the ablation."""
    def zeroed(model, info):
        import torch

        m = copy.deepcopy(model)
        with torch.no_grad():
            m.prox.out.weight.zero_()
            m.prox.out.bias.zero_()
        return m, info

    return _wrapped_loader(zeroed)


@contextlib.contextmanager
def weights_used():
    """Within this block, the sha256 of every NSIDL weights file the methods load (a list, first use first)."""
    seen = []

    def recording(model, info):
        if info["sha256"] not in seen:
            seen.append(info["sha256"])
        return model, info

    with _wrapped_loader(recording):
        yield seen


def validation_case(name: str, voxel_mm: float = 1.0, cache=None) -> dict:
    """:func:`honest_heads.load_case` for a validation study; a test head stops the study."""
    if hh.CASES[name].role != "validation":
        raise SystemExit(f"{name} is a {hh.CASES[name].role} head; this study runs on validation heads only.")
    return hh.load_case(name, voxel_mm, cache)


def log_study_row(out: str, r: dict, t0: float, **tag) -> dict:
    """One JSON line of a validation study: ``tag``, then :func:`score`'s XSIM, NRMSE, HFEN, ROI slope,
    calcification moment error and haemorrhage dNRMSE, and the seconds since ``t0``; printed and appended
    to ``out``."""
    d = dict(tag, xsim=r["xsim"], nrmse=r["nrmse"], hfen=r["hfen"], slope=r["roi_slope"],
             calc=r.get("calc_moment_rel"), haem=r.get("haem_dnrmse"), s=round(time.time() - t0, 1))
    print(json.dumps(d), flush=True)
    with open(out, "a") as fh:
        fh.write(json.dumps(d) + "\n")
    return d


def _ref(chi, mask):
    m = mask > 0
    return np.where(m, chi - chi[m].mean(), 0).astype(np.float32)


def invert_app(name: str, case: dict, chain: dict, **kw) -> np.ndarray:
    """chi (ppm, unreferenced) of ``methods.invert(name)`` as the graph calls it on ``chain`` (the local field,
    final mask and fit weight, the total field and the brain mask) on the CPU; ``kw`` are method options."""
    from qsmprep.methods import invert, reference_echo_time

    tot = chain["field_hz"] / np.float32(_hz_per_ppm(case["b0_t"]))
    chi, _ = invert(name, chain["local_ppm"], chain["eroded"], case["voxel_size"], case["b0_dir"],
                    weight=chain["weight"], b0_t=case["b0_t"], te_s=reference_echo_time(case["te_s"]),
                    device="cpu", total_ppm=tot, brain_mask=chain["mask"], magnitude=chain.get("magnitude"), **kw)
    return chi


def m_app(name: str, **kw) -> Callable:
    """The app's inversion dispatch (``methods.invert``) as the app calls it once wired for issue #13:
    the chain's local field, final mask and fit weight, plus the total field and the brain mask
    (used by the methods with ``total_field``, i.e. NSIDL's default data fit); referenced in the
    mask the chi covers."""
    def run(case, chain):
        from qsmprep.methods import get_inversion

        chi = invert_app(name, case, chain, **kw)
        out = chain["eroded"]
        if get_inversion(name).total_field and kw.get("nsidl_data_fit", "auto") in ("auto", "chain"):
            from qsmprep.methods import chi_mask, reference_echo_time

            out = chi_mask(name, out, chain["mask"], magnitude=chain.get("magnitude"), voxel_size=case["voxel_size"],
                           b0_t=case["b0_t"], te_s=reference_echo_time(case["te_s"]))
        return _ref(chi, out)
    return run


def m_classical(name: str, params: dict | None = None, physical_scale: bool = False) -> Callable:
    def run(case, chain):
        from qsmprep.methods import reference_echo_time
        from qsmprep.qsm import inversion
        from qsmprep.qsm.constants import rad_per_ppm

        p = dict(TUNED.get(name, {}) if params is None else params)
        if name == "tv":
            from qsmprep.qsm.tv import tv_admm as fn
        else:
            fn = inversion.METHODS[name]
        if name != "tkd":
            p["weight"] = chain["weight"]
        if physical_scale:
            p["rad_per_ppm"] = rad_per_ppm(case["b0_t"], reference_echo_time(case["te_s"]))
        chi = fn(chain["local_ppm"], chain["eroded"], case["voxel_size"], case["b0_dir"], **p)
        return _ref(chi, chain["eroded"])
    return run


def m_off(inner: Callable) -> Callable:
    def run(case, chain):
        with network_off():
            return inner(case, chain)
    return run


def m_truth_in_final_mask(case, chain):
    """Oracle: the true chi inside the chain's final mask (the coverage ceiling)."""
    return _ref(np.where(chain["eroded"], case["chi"], 0), chain["eroded"])


def m_true_local(name: str, **kw) -> Callable:
    """Oracle input: the method fed the true (fine-grid simulated) local field and the true mask."""
    def run(case, chain):
        from qsmprep.methods import invert, reference_echo_time

        m = case["brain_mask"]
        chi, _ = invert(name, case["local_field_ppm"], m, case["voxel_size"], case["b0_dir"],
                        weight=np.sqrt((case["mag"] ** 2).sum(-1)), b0_t=case["b0_t"],
                        te_s=reference_echo_time(case["te_s"]), device="cpu", **kw)
        return _ref(chi, m)
    return run


def m_true_local_classical(name: str) -> Callable:
    """A tuned classical anchor fed the true local field with the true brain mask (clean-field rows)."""
    def run(case, chain):
        m = case["brain_mask"]
        fake = dict(chain, local_ppm=case["local_field_ppm"], eroded=m, weight=np.sqrt((case["mag"] ** 2).sum(-1)))
        return m_classical(name, physical_scale=name == "ndi")(case, fake)
    return run


def m_true_local_in_final(name: str, **kw) -> Callable:
    """Oracle input: the true local field restricted to the chain's final mask (demeaned there)."""
    def run(case, chain):
        from qsmprep.methods import invert, reference_echo_time

        m = chain["eroded"]
        f = np.where(m, case["local_field_ppm"] - case["local_field_ppm"][m].mean(), 0).astype(np.float32)
        chi, _ = invert(name, f, m, case["voxel_size"], case["b0_dir"], weight=chain["weight"], b0_t=case["b0_t"],
                        te_s=reference_echo_time(case["te_s"]), device="cpu", **kw)
        return _ref(chi, m)
    return run


def m_bfr_of_true_total(name: str, **kw) -> Callable:
    """Oracle input: the app's background removal of the noise-free true total field, chain's brain mask."""
    def run(case, chain):
        from qsmprep.methods import invert, reference_echo_time
        from qsmprep.qsm.background import remove_background

        loc, m = remove_background(case["field_ppm"], chain["mask"], case["voxel_size"])
        chi, _ = invert(name, loc, m, case["voxel_size"], case["b0_dir"], weight=chain["weight"], b0_t=case["b0_t"],
                        te_s=reference_echo_time(case["te_s"]), device="cpu", **kw)
        return _ref(chi, m)
    return run


def m_front(front: str, name: str, source: str = "chain", **kw) -> Callable:
    """A background-removal front end on the chain's brain mask, then an inversion of its local field.

    ``front``: ``pdf`` or ``true-local`` (the true local field on the chain's brain mask);
    ``source``: ``chain`` (the chain's fitted total field) or ``true`` (the noise-free total field)."""
    def run(case, chain):
        from qsmprep.methods import invert, reference_echo_time

        m = chain["mask"]
        tot = case["field_ppm"] if source == "true" else chain["field_hz"] / np.float32(_hz_per_ppm(case["b0_t"]))
        if front == "pdf":
            from qsmprep.qsm.pdf import pdf

            loc, m = pdf(tot, m, case["voxel_size"], case["b0_dir"], weight=chain["weight"])
        else:
            loc = np.where(m, case["local_field_ppm"] - case["local_field_ppm"][m].mean(), 0).astype(np.float32)
        chi, _ = invert(name, loc, m, case["voxel_size"], case["b0_dir"], weight=chain["weight"], b0_t=case["b0_t"],
                        te_s=reference_echo_time(case["te_s"]), device="cpu", **kw)
        return _ref(chi, m)
    return run


def m_nsidl_chain(true_total: bool = False, **kw) -> Callable:
    """NSIDL for the chain (``qsmprep.dl.restore.invert_nsidl_chain``): local + total field, brain mask.
    ``true_total``: oracle input, the noise-free true total field instead of the chain's."""
    def run(case, chain):
        from qsmprep.dl.restore import invert_nsidl_chain
        from qsmprep.methods import reference_echo_time

        tot = chain["field_hz"] / np.float32(_hz_per_ppm(case["b0_t"]))
        if true_total:
            tot = case["field_ppm"]
        chi = invert_nsidl_chain(chain["local_ppm"], chain["eroded"], tot, chain["mask"], case["voxel_size"],
                                 case["b0_dir"], weight=chain["weight"], b0_t=case["b0_t"],
                                 te_s=reference_echo_time(case["te_s"]), device="cpu", **kw)
        from qsmprep.dl.restore import support_mask

        return _ref(chi, support_mask(chain["mask"]))
    return run


def _hz_per_ppm(b0_t):
    from qsmprep.qsm.constants import hz_per_ppm

    return hz_per_ppm(b0_t)


METHODS: dict[str, Callable] = {
    "truth-in-final-mask": m_truth_in_final_mask,
    "tkd": m_app("tkd"),
    "cgl2": m_app("cgl2"),
    "ndi": m_app("ndi"),
    "tkd-tuned": m_classical("tkd"),
    "cgl2-tuned": m_classical("cgl2"),
    "ndi-phys-tuned": m_classical("ndi", physical_scale=True),
    "tv-tuned": m_classical("tv"),
    "nsidl": m_app("nsidl"),
    "nsidl-off": m_off(m_app("nsidl")),
    "nsidl-robust": m_app("nsidl", nsidl_data_fit="robust"),
    "nsidl-robust-off": m_off(m_app("nsidl", nsidl_data_fit="robust")),
    "nsidl-strong": m_app("nsidl", nsidl_data_fit="strong"),
    "nsidl-strong-off": m_off(m_app("nsidl", nsidl_data_fit="strong")),
    "true-local:nsidl-strong": m_true_local("nsidl", nsidl_data_fit="strong"),
    "true-local:nsidl-strong-off": m_off(m_true_local("nsidl", nsidl_data_fit="strong")),
    "true-local:tkd": m_true_local("tkd"),
    "true-local:tkd-tuned": m_true_local_classical("tkd"),
    "true-local:cgl2-tuned": m_true_local_classical("cgl2"),
    "true-local:ndi-phys-tuned": m_true_local_classical("ndi"),
    "true-local:tv-tuned": m_true_local_classical("tv"),
    "true-local-final:nsidl-strong": m_true_local_in_final("nsidl", nsidl_data_fit="strong"),
    "true-local-final:nsidl-robust": m_true_local_in_final("nsidl", nsidl_data_fit="robust"),
    "true-local-final:tkd": m_true_local_in_final("tkd"),
    "bfr-true-total:nsidl-strong": m_bfr_of_true_total("nsidl", nsidl_data_fit="strong"),
    "bfr-true-total:nsidl-robust": m_bfr_of_true_total("nsidl", nsidl_data_fit="robust"),
    "bfr-true-total:tkd": m_bfr_of_true_total("tkd"),
    "true-local-M:nsidl-strong": m_front("true-local", "nsidl", nsidl_data_fit="strong"),
    "pdf-true-total:nsidl-strong": m_front("pdf", "nsidl", "true", nsidl_data_fit="strong"),
    "pdf-true-total:nsidl-robust": m_front("pdf", "nsidl", "true", nsidl_data_fit="robust"),
    "pdf-true-total:tkd": m_front("pdf", "tkd", "true"),
    "pdf:nsidl-strong": m_front("pdf", "nsidl", nsidl_data_fit="strong"),
    "pdf:nsidl-strong-off": m_off(m_front("pdf", "nsidl", nsidl_data_fit="strong")),
    "pdf:nsidl-robust": m_front("pdf", "nsidl", nsidl_data_fit="robust"),
    "pdf:tkd": m_front("pdf", "tkd"),
    "nsidl-chain": m_nsidl_chain(),
    "nsidl-chain-off": m_off(m_nsidl_chain()),
    "true-total:nsidl-chain": m_nsidl_chain(true_total=True),
}



def chain_for(case: dict) -> dict:
    t0 = time.time()
    ch = app_chain_field(case["phase"], case["mag"], case["te_s"], case["voxel_size"], case["b0_t"],
                         b0_dir=case["b0_dir"])  # with the graph's offset-residual and phase-sign steps
    ch["time_s"] = time.time() - t0
    return ch


def run_case(name: str, voxel_mm: float, methods: list[str], cache=None, log=None) -> list[dict]:
    case = hh.load_case(name, voxel_mm, cache)
    chain = chain_for(case)
    rows = []
    for meth in methods:
        t0 = time.time()
        with weights_used() as shas:
            chi = METHODS[meth](case, chain)
        dt = time.time() - t0
        row = {"case": name, "role": case["spec"].role, "voxel_mm": voxel_mm, "method": meth, "time_s": dt,
               "chain_s": chain["time_s"], **score(chi, case)}
        if shas:  # the NSIDL weights the row ran (the shipped ones of its data fit, or --weights)
            row["weights_sha256"] = shas[0] if len(shas) == 1 else shas
        rows.append(row)
        line = (f"{name:22s} {meth:28s} XSIM {row['xsim']:.3f} NRMSE {row['nrmse']:6.1f} HFEN {row['hfen']:6.1f} "
                f"cov {row['coverage']:.3f} roi slope {row['roi_slope']:.3f} mae {row['roi_mae']:.4f} "
                f"calc {row.get('calc_moment_rel', math.nan):.2f} haem {row.get('haem_dnrmse', math.nan):.1f} "
                f"{dt:.1f}s")
        print(line, flush=True)
        if log:
            with open(log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    return rows


#: Parameter grids of ``--tune`` (classical anchors on the chain's local field, validation heads only).
TUNE_GRID = {
    "tkd": [{"threshold": t} for t in (0.1, 0.15, 0.2)],
    "cgl2": [{"lam": lam, "max_iter": n} for lam in (0.001, 0.005, 0.02) for n in (5, 10)],
    "ndi": [{"n_iter": n, "step": 4.0} for n in (15, 30, 60)],
    "tv": [{"lam": lam, "n_iter": n} for n in (60, 150) for lam in (1e-5, 3e-5, 1e-4)],
}


def tune(names: list[str], voxel_mm: float, methods: list[str], cache=None, log=None) -> dict:
    """Score every :data:`TUNE_GRID` setting on the validation heads; the best by mean
    ``XSIM - NRMSE/100 - HFEN/100`` (one number that rewards all three) becomes the choice.

    Settings already scored in ``log`` (same head, voxel size, method and parameters) are read from it,
    not rerun, so a grid can grow without repeating its old points."""
    scores: dict = {}
    logged: dict = {}
    if log and Path(log).exists():
        for line in Path(log).read_text().splitlines():
            r = json.loads(line)
            if r.get("tune"):
                logged[(r["case"], r["voxel_mm"], json.dumps([r["method"], r["params"]]))] = r
    for n in names:
        if hh.CASES[n].role != "validation":
            raise SystemExit(f"--tune runs on validation heads only; {n} is a {hh.CASES[n].role} head.")
        case = chain = None
        for meth in methods:
            for params in TUNE_GRID[meth]:
                key = json.dumps([meth, params])
                if (n, voxel_mm, key) in logged:
                    scores.setdefault(key, []).append(logged[(n, voxel_mm, key)])
                    continue
                if case is None:
                    case = hh.load_case(n, voxel_mm, cache)
                    chain = chain_for(case)
                fn = m_classical(meth, params, physical_scale=meth == "ndi")
                met = score(fn(case, chain), case)
                scores.setdefault(key, []).append(met)
                print(f"{n:22s} {meth:5s} {json.dumps(params):40s} XSIM {met['xsim']:.3f} NRMSE {met['nrmse']:.1f} "
                      f"HFEN {met['hfen']:.1f}", flush=True)
                if log:
                    with open(log, "a") as fh:
                        fh.write(json.dumps({"tune": True, "case": n, "voxel_mm": voxel_mm, "method": meth,
                                             "params": params, **met}) + "\n")
    best = {}
    for key, mets in scores.items():
        meth, params = json.loads(key)
        val = float(np.mean([m["xsim"] - m["nrmse"] / 100 - m["hfen"] / 100 for m in mets]))
        if meth not in best or val > best[meth][0]:
            best[meth] = (val, params)
    for meth, (val, params) in best.items():
        print(f"best {meth}: {params} (mean XSIM - NRMSE/100 - HFEN/100 = {val:.3f})")
    return {k: v[1] for k, v in best.items()}


def _timed_chain(name: str, voxel_mm: float, method: str, cache, q) -> None:
    """Child process: the app's chain from phase to referenced chi with ``method`` (wall, CPU, peak RSS)."""
    import resource

    case = hh.load_case(name, voxel_mm, cache)
    phase, mag = case.pop("phase"), case.pop("mag")
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.time()
    chain = app_chain_field(phase, mag, case["te_s"], case["voxel_size"], case["b0_t"],
                            b0_dir=case["b0_dir"])  # with the offset-residual and phase-sign steps, as the graph
    t1 = time.time()
    chi = METHODS[method](case, chain)
    t2 = time.time()
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    q.put({"case": name, "method": method, "chain_wall_s": t1 - t0, "inversion_wall_s": t2 - t1, "wall_s": t2 - t0,
           "cpu_s": (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime), "peak_rss_mb": max_rss_mb(),
           "load1": os.getloadavg()[0], "nonzero": int((chi != 0).sum())})


def time_chain(name: str, voxel_mm: float, method: str, cache=None) -> dict:
    """Whole chain (mask -> unwrap -> fit -> background removal -> inversion -> reference) in a fresh process."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_timed_chain, args=(name, voxel_mm, method, cache, q))
    p.start()
    out = q.get()
    p.join()
    return out


def render(log: str, methods: list[str] | None = None, role: str = "test") -> str:
    """Markdown tables (one row per case and method) from a ``--log`` JSONL file (the last row of
    each (case, method) wins)."""
    rows = {}
    for line in open(log):
        r = json.loads(line)
        if r.get("tune") or r.get("timing") or r.get("role") != role:
            continue
        rows[(r["case"], r["method"])] = r
    cases_ = [c.name for c in hh.cases(role) if any(k[0] == c.name for k in rows)]
    meths = methods or sorted({k[1] for k in rows})
    out = ["| case | method | NRMSE % | HFEN % | XSIM | coverage | ROI slope | ROI MAE (ppm) | calc. moment err | "
           "haem. dNRMSE % | time (s) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, nd: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{nd}f}"  # noqa: E731
    for c in cases_:
        for m in meths:
            r = rows.get((c, m))
            if r is None:
                continue
            out.append(f"| {c} | {m} | {f(r['nrmse'], 1)} | {f(r['hfen'], 1)} | {f(r['xsim'], 3)} | "
                       f"{f(r['coverage'], 3)} | {f(r['roi_slope'], 3)} | {f(r['roi_mae'], 4)} | "
                       f"{f(r.get('calc_moment_rel'), 2)} | {f(r.get('haem_dnrmse'), 1)} | {f(r['time_s'], 0)} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", default="validation", choices=["validation", "test", "all"])
    ap.add_argument("--cases", nargs="*", default=None)
    ap.add_argument("--voxel", type=float, default=2.0)
    ap.add_argument("--methods", nargs="*", default=["tkd", "nsidl", "nsidl-off"])
    ap.add_argument("--log", default=None, help="append one JSON line per (case, method)")
    ap.add_argument("--cache", default=None)
    ap.add_argument("--tune", nargs="*", default=None, help="tune these classical methods (validation heads)")
    ap.add_argument("--time", action="store_true", help="time each method's whole chain in a fresh process")
    ap.add_argument("--render", default=None, help="print markdown tables from this --log file and exit")
    ap.add_argument("--weights", default=None,
                    help="candidate NSIDL weights: adds the methods nsidl@cand and nsidl-off@cand (the default "
                         "chain and its ablation with these weights; rows record the file's sha256)")
    a = ap.parse_args(argv)
    if a.weights:
        METHODS["nsidl@cand"] = m_app("nsidl", weights_path=a.weights)
        METHODS["nsidl-off@cand"] = m_off(m_app("nsidl", weights_path=a.weights))
    names = a.cases or [c.name for c in hh.cases(None if a.role == "all" else a.role)]
    if a.render:
        print(render(a.render, a.methods if a.methods != ["tkd", "nsidl", "nsidl-off"] else None, a.role))
        return
    if a.tune is not None:
        tune(names, a.voxel, a.tune or list(TUNE_GRID), a.cache, a.log)
        return
    if a.time:
        for n in names:
            for meth in a.methods:
                row = time_chain(n, a.voxel, meth, a.cache)
                print(json.dumps(row), flush=True)
                if a.log:
                    with open(a.log, "a") as fh:
                        fh.write(json.dumps({"timing": True, **row}) + "\n")
        return
    for n in names:
        run_case(n, a.voxel, a.methods, a.cache, a.log)
    print(f"peak RSS {max_rss_mb():.0f} MB")


if __name__ == "__main__":
    main()
