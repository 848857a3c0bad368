"""Shared helpers for the qsmprep benchmarks: label mapping, scoring with qsm-ci, stage timing.

Not part of the package (benchmarks only).  Scoring conventions:

* Fields (total -> local): ``qsm_ci.qsm_eval.field_metrics`` on the evaluation mask, both maps
  demeaned in that mask first (V-SHARP cannot recover the field's mean).
* chi: ``qsm_ci.qsm_eval.score_arrays(kind="chi", seg=...)`` (2016/2019 challenge metrics:
  NRMSE, detrended NRMSE, tissue/blood/DGM NRMSE, DGM slope error, calcification metrics,
  correlation, XSIM, HFEN) with both maps mean-referenced in the evaluation mask
  (``reference_mean``; RC-2 demeans as well).  Voxels of the evaluation mask that a method
  eroded away count as 0 (qsm-ci's rule) -- ``coverage`` reports the fraction kept.
"""

from __future__ import annotations

import math
import os
import resource
import time
import tracemalloc
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

#: qsmprep phantom label -> qsm-ci / RC-2 label (1 caudate, 2 GP, 3 putamen, 4 RN, 5 dentate,
#: 6 SN, 7 thalamus, 8 WM, 9 GM, 10 CSF, 11 blood, 16 calcification).  Haemorrhage has no RC-2
#: label and is scored only in the global metrics.
PHANTOM_TO_QSMCI = {
    1: 1, 2: 1, 3: 3, 4: 3, 5: 2, 6: 2, 7: 7, 8: 7, 9: 6, 10: 6, 11: 4, 12: 4,
    13: 10, 14: 9, 15: 8, 16: 11, 17: 16, 24: 11,
}


def qsmci_seg(labels: np.ndarray) -> np.ndarray:
    """Map :data:`qsmprep.sim.phantom.LABELS` to the qsm-ci segmentation scheme (int32)."""
    lut = np.zeros(int(labels.max()) + 1, dtype=np.int32)
    for k, v in PHANTOM_TO_QSMCI.items():
        if k < lut.size:
            lut[k] = v
    return lut[np.asarray(labels, dtype=np.int64)]


def _demean(x: np.ndarray, m: np.ndarray) -> np.ndarray:
    return np.where(m, x - x[m].mean(), 0.0).astype(np.float64)


def score_field(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> dict:
    """qsm-ci field metrics (nrmse, nrmse_detrend, correlation, xsim) in ``mask``, both demeaned."""
    from qsm_ci.qsm_eval import score_arrays

    m = np.asarray(mask) > 0
    met, _ = score_arrays(_demean(recon, m), _demean(truth, m), m.astype(np.uint8), kind="field")
    return met


def score_chi(recon: np.ndarray, truth: np.ndarray, mask: np.ndarray, seg: np.ndarray | None) -> dict:
    """qsm-ci chi metrics in ``mask`` (both mean-referenced there)."""
    from qsm_ci.qsm_eval import score_arrays

    m = np.asarray(mask) > 0
    r = np.where(np.isfinite(recon), recon, 0.0)
    met, _ = score_arrays(_demean(r, m), _demean(truth, m), m.astype(np.uint8), kind="chi", seg=seg)
    return met


def roi_stats(chi: np.ndarray, truth: np.ndarray, labels: np.ndarray, mask: np.ndarray) -> dict:
    """DGM ROI means of both maps (demeaned in ``mask``; labels with >= 3 voxels there): least-squares
    slope (recon vs truth) and mean absolute error (ppm); NaN with fewer than 3 labels."""
    from qsmprep.sim.phantom import DGM_INDICES

    m = mask > 0
    r = np.where(m, chi - chi[m].mean(), 0)
    t = np.where(m, truth - truth[m].mean(), 0)
    rm, tm = [], []
    for i in DGM_INDICES:
        s = (labels == i) & m
        if s.sum() >= 3:
            rm.append(float(r[s].mean()))
            tm.append(float(t[s].mean()))
    rm, tm = np.asarray(rm), np.asarray(tm)
    if rm.size < 3:
        return {"roi_slope": math.nan, "roi_mae": math.nan}
    slope = float(np.polyfit(tm, rm, 1)[0])
    return {"roi_slope": slope, "roi_mae": float(np.abs(rm - tm).mean())}


class ChainStopped(Exception):
    """Raised by a recorder (:func:`final_fit_recorded` with ``then="stop"``) to stop the app's chain once what a
    study needs is recorded."""


@contextmanager
def patched(target, attr: str, replacement) -> Iterator[None]:
    """``target.attr`` replaced by ``replacement`` while the block runs (studies: a function of the app's chain
    swapped for a variant), restored afterwards."""
    original = getattr(target, attr)
    setattr(target, attr, replacement)
    try:
        yield
    finally:
        setattr(target, attr, original)


def brain_mask_with(min_signal: float):
    """``qsmprep.qsm.masking.brain_mask`` with its void limit (``min_signal``) fixed, as the replacement studies of that
    limit patch in (:func:`patched`); made from the unpatched function."""
    from qsmprep.qsm import masking

    original = masking.brain_mask

    def brain_mask(*a, **k):
        return original(*a, **{**k, "min_signal": min_signal})
    return brain_mask


@contextmanager
def final_fit_recorded(then: str = "run") -> Iterator[dict]:
    """Record the chain's final SMV-TV fit (``qsmprep.qsm.smvfit.smv_tv``) while the block runs.

    Yields a dict that receives the fit's positional ``args`` and keyword ``kwargs`` (its start is
    ``kwargs["chi_prior"]``).  ``then``: what the patched fit does after recording: ``"run"`` runs the fit (its
    chi also in ``result``), ``"start"`` returns its start unchanged (the chain goes on without the fit), ``"stop"``
    raises :class:`ChainStopped` (the caller catches it)."""
    from qsmprep.qsm import smvfit

    if then not in ("run", "start", "stop"):
        raise ValueError(f"then={then!r}: one of 'run', 'start', 'stop'")
    got: dict = {}
    orig = smvfit.smv_tv

    def rec(*a, **k):
        got["args"], got["kwargs"] = a, dict(k)
        if then == "run":
            got["result"] = orig(*a, **k)
            return got["result"]
        if then == "start":
            return np.asarray(k["chi_prior"], np.float32)
        raise ChainStopped

    smvfit.smv_tv = rec
    try:
        yield got
    finally:
        smvfit.smv_tv = orig


def cpu_s() -> float:
    """User + system CPU time of this process so far (s), all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Stage:
    """Wall time (s), CPU time (s, all threads) and peak traced memory (MB) of one call.

    On a shared machine the wall time includes waiting for the CPU; the CPU time does not
    (with 2 FFT threads it can exceed the wall time of an idle machine by up to 2x).
    The traced peak counts numpy + Python allocations made during the call (tracemalloc; torch's
    own allocator is not traced); ``rss_mb`` is the process's peak RSS so far, after the call.
    """

    def __init__(self):
        self.records: list[dict[str, Any]] = []

    def run(self, name: str, fn: Callable, *args, trace: bool = True, **kwargs):
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        c0 = cpu_s()
        try:
            out = fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            dc = cpu_s() - c0
            peak = tracemalloc.get_traced_memory()[1] / 2**20 if trace else math.nan
            if trace:
                tracemalloc.stop()
        self.records.append({"stage": name, "wall_s": dt, "cpu_s": dc, "peak_mb": peak,
                             "rss_mb": max_rss_mb(), "load1": os.getloadavg()[0]})
        return out


def max_rss_mb() -> float:
    """Peak resident set size of this process's own memory so far (MB).

    ``VmHWM`` from ``/proc/self/status`` where available: ``getrusage(RUSAGE_SELF).ru_maxrss`` is
    preserved across ``execve`` and a forked child starts with its parent's high-water mark, so in a
    ``spawn``-ed child it reports at least the parent's peak at the time of the fork (a benchmark
    parent holding several GB made every chain child look that large).  Falls back to ``ru_maxrss``.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{nd}f}"


# ------------------------------------------------------------------------------------------
# the app's chain, call for call (qsmprep/interfaces/qsm.py + qsmprep/workflows/qsm.py)
# ------------------------------------------------------------------------------------------


def app_chain_field(phase, mag, te_s, voxel_size, b0_t, *, bfr: str | None = None, unwrapping: str = "romeo",
                    mask_kwargs: dict | None = None, stage: "Stage | None" = None, b0_dir=None,
                    phase_sign: str = "auto", single_echo_offset: str = "auto") -> dict:
    """The app's per-run chain up to the local field, with the same functions and defaults as the
    Nipype graph (``workflows.qsm.init_qsm_wf`` -> ``interfaces.qsm``):

    ``LoadEchoes``: ``echoes.scale_phase_to_radians``; ``BrainMask``: ``masking.brain_mask(mag4d,
    voxel_size, phase=phase4d)``; ``UnwrapEchoes``: ``unwrap.unwrap_echoes(method=unwrapping)``;
    ``FitField``: ``echoes.fit_field(demean_echoes=unwrapping == "laplacian")``, non-finite -> 0;
    ``BackgroundRemoval``: ``background.remove_background(field_hz / hz_per_ppm(b0_t), brain_mask, method=bfr)``
    (``bfr`` None = the app's default, ``config`` / ``background.DEFAULT_METHOD``).

    ``mask_kwargs`` (studies only) go to ``brain_mask``; ``stage`` (a :class:`Stage`) times each step
    as ``mask``, ``unwrap_<unwrapping>``, ``fit``, ``bfr``.  Returns a dict with ``mask`` (brain
    mask), ``field_hz``, ``weight``, ``local_ppm``, ``eroded`` (final mask).

    With ``b0_dir`` the graph's two later steps follow, as in the app: ``OffsetResidual`` (one echo:
    ``offsets.remove_offset_residual``, and the offset model out of the total field) and ``PhaseSign``
    (``phase_sign.choose_phase_sign``, applied to both fields); ``records`` holds their records.
    """
    from qsmprep.qsm.background import DEFAULT_METHOD, remove_background
    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.qsm.echoes import fit_field, scale_phase_to_radians
    from qsmprep.qsm.masking import brain_mask
    from qsmprep.qsm.unwrap import unwrap_echoes

    def run(name, fn, *a, **k):
        return stage.run(name, fn, *a, **k) if stage is not None else fn(*a, **k)

    vs = tuple(float(v) for v in voxel_size)
    te = [float(t) for t in te_s]
    mag = np.asarray(mag, dtype=np.float32)
    phase = scale_phase_to_radians(np.asarray(phase, dtype=np.float32))
    if phase.ndim == 3:
        phase, mag = phase[..., None], mag[..., None]
    mask = run("mask", brain_mask, mag, vs, phase=phase, **(mask_kwargs or {}))
    uw = run(f"unwrap_{unwrapping}", unwrap_echoes, phase, mag, te, mask, method=unwrapping, voxel_size=vs)
    fit = run("fit", fit_field, uw, mag, te, mask, demean_echoes=unwrapping == "laplacian")
    # the echoes are not needed any more (the app's later nodes do not hold them either); callers that
    # pass their only reference (e.g. ``d.pop("phase")``) get the memory back here
    del uw, phase
    field_hz = np.where(np.isfinite(fit.field_hz), fit.field_hz, 0.0).astype(np.float32)
    weight = np.where(np.isfinite(fit.weight), fit.weight, 0.0).astype(np.float32)
    del fit
    method = bfr or DEFAULT_METHOD
    local, eroded = run("bfr", remove_background, field_hz / np.float32(hz_per_ppm(b0_t)), mask, voxel_size=vs, method=method)
    records = {}
    if b0_dir is not None:
        from qsmprep.qsm.echoes import combine_magnitude
        from qsmprep.qsm.offsets import offset_model, remove_offset_residual
        from qsmprep.qsm.phase_sign import choose_phase_sign

        if len(te) == 1 and str(single_echo_offset) != "0":
            order = single_echo_offset if single_echo_offset == "auto" else int(single_echo_offset)
            local, rec = run("offset", remove_offset_residual, local, eroded, mask, vs, method=method, order=order)
            model = offset_model(field_hz.shape, vs, mask, rec) * np.float32(hz_per_ppm(b0_t))
            field_hz = np.where(mask, field_hz - model, 0.0).astype(np.float32)
            records["offset_residual"] = rec
        sign, records["phase_sign"] = choose_phase_sign(local, eroded, combine_magnitude(mag), vs, b0_dir, phase_sign)
        local = (np.float32(sign) * local).astype(np.float32)
        field_hz = (np.float32(sign) * field_hz).astype(np.float32)
    from qsmprep.qsm.echoes import combine_magnitude

    from qsmprep.qsm.slab import cut_axis, r2star_loglinear

    magnitude = combine_magnitude(mag).astype(np.float32)  # the graph's out_combined, for the inversion
    # the graph's SlabTrend reads the echoes only for a multi-echo slab; here R2* is kept for it (over the brain
    # mask: the slab trend uses R2* only inside chi's mask, which the brain mask covers up to filled holes)
    r2star = r2star_loglinear(mag, te) if len(te) > 1 and cut_axis(mask, vs) is not None else None
    del mag
    return dict(mask=mask, field_hz=field_hz, weight=weight, local_ppm=local, eroded=eroded, bfr=method, records=records,
                magnitude=magnitude, r2star=r2star)


#: Benchmark method names that are an app inversion with options: name -> (method, ``methods.invert`` options).
#: ``nsidl-strong`` is NSIDL with the ``strong`` data-fit preset (``qsmprep invert --nsidl-data-fit strong``).
APP_VARIANTS = {"nsidl-strong": ("nsidl", {"nsidl_data_fit": "strong"})}


def app_method(name: str) -> tuple[str, dict]:
    """Benchmark method name -> (``methods.invert`` method, extra keyword arguments)."""
    method, kw = APP_VARIANTS.get(name, (name, {}))
    return method, dict(kw)


def app_inversion(method: str, chain: dict, voxel_size, b0_dir, b0_t: float, te_s, *,
                  stage: "Stage | None" = None, device: str = "cpu") -> np.ndarray:
    """The app's ``DipoleInversion`` + ``ReferenceChi`` on :func:`app_chain_field`'s output:
    :func:`qsmprep.methods.invert` (the one dispatch of the app and ``qsmprep invert``; names in
    :data:`APP_VARIANTS` add options) with the fit weight and the mean echo time
    (``methods.reference_echo_time``), then ``reference.reference_mean`` in the final mask.
    Timed as ``inv_<method>`` and ``ref_<method>`` when ``stage`` is given."""
    from qsmprep.methods import invert, reference_echo_time
    from qsmprep.qsm.reference import reference_mean

    def run(name, fn, *a, **k):
        return stage.run(name, fn, *a, **k) if stage is not None else fn(*a, **k)

    from qsmprep.methods import chi_mask
    from qsmprep.qsm.constants import hz_per_ppm

    em = chain["eroded"]
    base, kw = app_method(method)
    total = chain["field_hz"] / np.float32(hz_per_ppm(b0_t))  # the node gets the total field and the brain mask
    chi, _ = run(f"inv_{method}", invert, base, chain["local_ppm"], em, tuple(float(v) for v in voxel_size),
                 tuple(float(b) for b in b0_dir), weight=chain["weight"], b0_t=float(b0_t),
                 te_s=reference_echo_time(te_s), device=device, total_ppm=total, brain_mask=chain["mask"],
                 magnitude=chain.get("magnitude"), **kw)
    # where chi is defined: the final mask of the app
    out = chi_mask(base, em, chain["mask"], magnitude=chain.get("magnitude"), voxel_size=tuple(float(v) for v in voxel_size),
                   b0_t=float(b0_t), te_s=reference_echo_time(te_s))
    if chain.get("r2star") is not None:  # the graph's SlabTrend (multi-echo runs; unchanged unless a slab)
        from qsmprep.qsm.slab import remove_slab_trend

        chi, _ = run(f"slab_{method}", remove_slab_trend, chi, out, chain["r2star"], tuple(float(v) for v in voxel_size),
                     brain_mask=chain["mask"])
    chi, _ = run(f"ref_{method}", reference_mean, chi, out)
    return np.where(out, chi, 0.0).astype(np.float32)
