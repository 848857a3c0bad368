"""Multi-echo field fit on the validation heads (issue #13): per-voxel intercept vs through the origin.

For each multi-echo validation head of ``honest_heads`` (fields made on a 2x finer grid and
averaged down) the app's chain runs up to the unwrapped echoes (``masking.brain_mask``,
``unwrap.unwrap_echoes`` as in the graph), then :func:`qsmprep.qsm.echoes.fit_field` fits the
field three ways:

* ``voxel``: a straight line with a per-voxel intercept (the fit before issue #13);
* ``origin``: the smoothed echo-independent offset removed, then the field through the origin
  (the default), without the even/odd-echo term;
* ``origin+bipolar``: the default (with the even/odd-echo term for >= 3 echoes).

Printed per head and fit: the fit's own standard error (median ``noise_hz`` in the brain mask),
the error against the true total field (Hz, both demeaned in the mask; RMS, and the RMS of its
fine part = error minus its 4 mm Gaussian smoothing, i.e. the noise), and the local field after
the app's background removal scored against the true local field (qsm-ci field xSIM / NRMSE in
the final mask).  ``--bipolar RAD`` adds a bipolar-readout error (``honest_heads._bipolar``) of
that amplitude to the even echoes first.

Usage::

    .venv/bin/python benchmarks/field_fit_study.py --log benchmarks/field_fit_study.jsonl
    .venv/bin/python benchmarks/field_fit_study.py --cases val-qf-3T-ME-obl --bipolar 0.6 --log ...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from _common import score_field  # noqa: E402
import honest_heads as hh  # noqa: E402

FITS = {
    "voxel": {"offset": "voxel"},
    "origin": {"offset": "smooth", "bipolar": False},
    "origin+bipolar": {"offset": "smooth", "bipolar": True},
}


def fine_rms(err: np.ndarray, mask: np.ndarray, voxel_size, sigma_mm: float = 4.0) -> float:
    """RMS in ``mask`` of ``err`` minus its normalised Gaussian smoothing (``sigma_mm``)."""
    from scipy.ndimage import gaussian_filter

    m = mask.astype(np.float64)
    sig = [sigma_mm / float(v) for v in voxel_size]
    smooth = gaussian_filter(err * m, sig) / np.maximum(gaussian_filter(m, sig), 1e-6)
    return float(np.sqrt(np.mean((err - smooth)[mask] ** 2)))


def study(name: str, voxel_mm: float, cache: str, bipolar_rad: float = 0.0) -> list[dict]:
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.qsm.echoes import fit_field
    from qsmprep.qsm.masking import brain_mask
    from qsmprep.qsm.unwrap import unwrap_echoes

    d = hh.load_case(name, voxel_mm, cache=cache)
    vs = tuple(float(v) for v in d["voxel_size"])
    te = [float(t) for t in d["te_s"]]
    phase, mag = d["phase"], d["mag"]
    if bipolar_rad:
        phase = hh._bipolar(phase, d["brain_mask"], bipolar_rad, np.random.default_rng(0))
    mask = brain_mask(mag, vs, phase=phase)
    uw = unwrap_echoes(phase, mag, te, mask, method="romeo", voxel_size=vs)
    hz = hz_per_ppm(float(d["b0_t"]))
    true_hz = d["field_ppm"].astype(np.float64) * hz
    rows = []
    for label, kw in FITS.items():
        fit = fit_field(uw, mag, te, mask, voxel_size=vs, **kw)
        f = np.where(np.isfinite(fit.field_hz), fit.field_hz, 0.0)
        err = (f - true_hz)
        err = err - err[mask].mean()
        local, eroded = remove_background((f / hz).astype(np.float32), mask, voxel_size=vs)
        fm = score_field(local, d["local_field_ppm"], eroded & d["brain_mask"])
        rows.append({"case": name, "voxel_mm": voxel_mm, "bipolar_rad": bipolar_rad, "fit": label,
                     "noise_hz_median": float(np.median(fit.noise_hz[mask])),
                     "err_rms_hz": float(np.sqrt(np.mean(err[mask] ** 2))),
                     "err_fine_rms_hz": fine_rms(err, mask, vs),
                     "local_xsim": float(fm["xsim"]), "local_nrmse": float(fm["nrmse"])})
        r = rows[-1]
        print(f"{name:20s} bipolar {bipolar_rad:.1f} {label:15s} noise_hz {r['noise_hz_median']:.3f} "
              f"err rms {r['err_rms_hz']:.3f} fine {r['err_fine_rms_hz']:.3f} Hz | local xSIM {r['local_xsim']:.3f} "
              f"NRMSE {r['local_nrmse']:.1f}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="*", default=[c.name for c in hh.cases("validation") if len(c.te_s) > 1])
    p.add_argument("--voxel", type=float, default=1.0)
    p.add_argument("--cache", default=str(HERE.parent / ".honest_heads"))
    p.add_argument("--bipolar", type=float, default=0.0, help="bipolar-readout error (rad) added to even echoes")
    p.add_argument("--log", help="append one JSON line per (case, fit)")
    a = p.parse_args(argv)
    for name in a.cases:
        for row in study(name, a.voxel, a.cache, a.bipolar):
            if a.log:
                with open(a.log, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
