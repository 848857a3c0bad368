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
from typing import Any, Callable

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


def cpu_s() -> float:
    """User + system CPU time of this process so far (s), all threads."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class Stage:
    """Wall time (s), CPU time (s, all threads) and peak traced memory (MB) of one call.

    On a shared machine the wall time includes waiting for the CPU; the CPU time does not
    (with 2 FFT threads it can exceed the wall time of an idle machine by up to 2x).
    The traced peak counts numpy + Python allocations made during the call (tracemalloc).
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
                             "load1": os.getloadavg()[0]})
        return out


def max_rss_mb() -> float:
    """Peak resident set size of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def fmt(v, nd=3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, str):
        return v
    return f"{v:.{nd}f}"
