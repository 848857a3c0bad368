"""NSIDL inference on a whole volume: crop to the mask, pad for the FFT, run, un-pad, mask.

``invert_nsidl`` is the public entry point (see CONTRIBUTING.md).  Units: local field in
ppm, chi in ppm, voxel size in mm, B0 in T, TE in s; ``b0_dir`` in array axes.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Sequence

import numpy as np

from qsmprep.dl.weights import weights_info  # noqa: F401  (public API, CONTRIBUTING.md)

__all__ = ["invert_nsidl", "weights_info", "resolve_device", "normalise_weight", "mask_bbox", "CPU_GPU_ATOL_PPM",
           "DATA_FIT", "DEFAULT_DATA_FIT", "data_fit_settings", "data_fit_record",
           "kspace_threshold_for_noise"]

LOG = logging.getLogger("qsmprep.dl.inference")

#: Final k-space data consistency (``physics.kspace_consistency_t``): |D| ramp start and width.
#: Chosen on validation data only (MODEL_CARD.md, "Inference settings and how they were chosen").
DC_THRESHOLD = 0.2
DC_WIDTH = 0.1

#: Data-fit presets of :func:`invert_nsidl`: the pre-solver run before the unrolled network, the
#: k-space consistency threshold (a number, or ``"noise"``: :func:`kspace_threshold_for_noise` of the
#: field's measured relative noise) and ``dc_extrapolate`` (fit the network's chi offset to the field
#: and extend the field beyond the mask with the field of the network's chi,
#: :func:`qsmprep.dl.physics.extrapolate_field_t`, before the k-space step) and ``final_tv`` (None, or the TV weight
#: and ADMM iterations of a weighted-linear TV fit of the local field started from the network's chi,
#: :func:`qsmprep.qsm.tv.tv_admm`, after the k-space step).  ``robust`` (the default,
#: :data:`DEFAULT_DATA_FIT`) is for local fields from background removal -- the app's chain;
#: ``strong`` for clean local fields (simulations, challenge platforms, total-field methods).  Chosen
#: on validation data only (MODEL_CARD.md, "Inference settings and how they were chosen").
DATA_FIT = {
    "robust": {"pre_solver": "nesterov", "n_pre": 10, "dc_threshold": DC_THRESHOLD, "dc_extrapolate": False,
               "final_tv": None},
    "strong": {"pre_solver": "cg", "n_pre": 50, "dc_threshold": "noise", "dc_extrapolate": True,
               "final_tv": (1e-5, 120)},
}
DEFAULT_DATA_FIT = "robust"

#: ``strong``'s k-space threshold against the field's relative noise (``qsm.inversion.field_noise``):
#: 0.05 up to a relative noise of 0.075, 0.1 from 0.145 on, linear between (MODEL_CARD.md).
DC_NOISE_KNOTS = ((0.075, 0.05), (0.145, 0.1))


def kspace_threshold_for_noise(relative_noise: float) -> float:
    """|D| threshold of the final k-space step for a field of this relative noise (see :data:`DC_NOISE_KNOTS`)."""
    (r0, t0), (r1, t1) = DC_NOISE_KNOTS
    r = float(relative_noise)
    if not np.isfinite(r) or r >= r1:
        return t1
    if r <= r0:
        return t0
    return t0 + (t1 - t0) * (r - r0) / (r1 - r0)

#: Stated CPU/GPU agreement: max |chi_cpu - chi_gpu| inside the mask, in ppm (fp32 both).
CPU_GPU_ATOL_PPM = 2e-3


def resolve_device(device: str = "auto"):
    """The torch device for ``device`` (``auto``, ``cpu``, ``cuda``): :func:`qsmprep.utils.gpu.resolve_device`."""
    import torch

    from qsmprep.utils.gpu import resolve_device as _resolve

    return torch.device(_resolve(device))


def mask_bbox(mask: np.ndarray, margin: int = 4) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` (bool 3-D) grown by ``margin`` voxels, clipped to the volume."""
    from qsmprep.qsm.geometry import bounding_box

    if not np.any(mask):
        raise ValueError("The brain mask is empty; check the mask file (it must contain non-zero voxels).")
    return bounding_box(mask, margin)


def normalise_weight(weight: np.ndarray | None, mask: np.ndarray, box: tuple[slice, ...] | None = None) -> np.ndarray:
    """Magnitude weight -> [0, 1]: divided by its 99th percentile in the mask, clipped, masked.

    ``None`` gives the mask itself (uniform weights).  ``box`` (slices containing the whole mask,
    e.g. :func:`mask_bbox`) returns the result cropped to it, computed on the crop only: the same
    numbers, less work.  A weight on another grid than the mask raises ValueError.
    """
    m = mask.astype(bool)
    if weight is not None and np.shape(weight) != m.shape:
        raise ValueError(f"Weight shape {np.shape(weight)} differs from the mask shape {m.shape}; pass a 3-D magnitude on the same grid.")
    if box is not None:
        m = m[box]
        weight = None if weight is None else np.asarray(weight)[box]
    if weight is None:
        return m.astype(np.float32)
    w = np.nan_to_num(np.asarray(weight, dtype=np.float32))
    p99 = float(np.percentile(w[m], 99)) if m.any() else 1.0
    if p99 <= 0:
        return m.astype(np.float32)
    return (np.clip(w / p99, 0, 1) * m).astype(np.float32)


_FROM_PRESET = "preset"


def data_fit_settings(data_fit: str | None = None, local_ppm: np.ndarray | None = None,
                      mask: np.ndarray | None = None) -> dict:
    """The :data:`DATA_FIT` preset ``data_fit`` (None = :data:`DEFAULT_DATA_FIT`), as a new dict.

    A noise-dependent k-space threshold (``"noise"``) is resolved from ``local_ppm`` and ``mask``
    (:func:`qsmprep.qsm.inversion.field_noise`, :func:`kspace_threshold_for_noise`) when they are
    given; the dict then also holds ``relative_noise``.
    """
    name = DEFAULT_DATA_FIT if data_fit is None else str(data_fit).lower()
    if name not in DATA_FIT:
        raise ValueError(f"NSIDL data fit must be one of {tuple(DATA_FIT)}, got {data_fit!r}.")
    out = {"name": name, **DATA_FIT[name]}
    if out["dc_threshold"] == "noise" and local_ppm is not None and mask is not None:
        from qsmprep.qsm.inversion import field_noise

        out["relative_noise"] = field_noise(local_ppm, mask)["relative"]
        out["dc_threshold"] = kspace_threshold_for_noise(out["relative_noise"])
    return out


def data_fit_record(fit: dict) -> dict:
    """The sidecar record (BIDS-style keys) of a :func:`data_fit_settings` result."""
    rec = {"Preset": fit["name"], "PreSolver": fit["pre_solver"], "PreSolverIterations": fit["n_pre"],
           "FieldExtrapolation": bool(fit.get("dc_extrapolate", False))}
    if "relative_noise" in fit:
        rec["FieldRelativeNoise"] = round(fit["relative_noise"], 4)
    if fit.get("final_tv"):
        rec["FinalTV"] = {"Method": "weighted-linear TV fit of the local field (ADMM) started from the network's chi",
                          "TVWeight": fit["final_tv"][0], "Iterations": fit["final_tv"][1]}
    return rec


@functools.lru_cache(maxsize=4)
def _cached_model(path: str | None, device: str):
    from qsmprep.dl.weights import load_model

    return load_model(path, device=device)


def invert_nsidl(
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    weight: np.ndarray | None = None,
    b0_t: float = 3.0,
    te_s: float = 0.02,
    device: str = "auto",
    weights_path: str | None = None,
    margin: int = 4,
    model=None,
    cnn_dtype=None,
    dc_threshold: float | None | str = _FROM_PRESET,
    dc_width: float = DC_WIDTH,
    data_fit: str | None = None,
    dc_extrapolate: bool | str = _FROM_PRESET,
    weights: str | None = None,
    final_tv: tuple[float, int] | None | str = _FROM_PRESET,
) -> np.ndarray:
    """Susceptibility (ppm, float32, zero outside ``mask``) from a local field (ppm) with NSIDL.

    Parameters
    ----------
    local_ppm : 3-D local field in ppm (after background removal).
    mask : 3-D brain mask (the eroded mask from background removal).
    voxel_size : mm.  b0_dir : unit B0 vector in array axes.
    weight : magnitude (any scale; normalised to its 99th percentile in the mask) or None.
    b0_t, te_s : field strength (T) and reference echo time (s) that set the phase scale
        ``s = rad_per_ppm(b0_t, te_s)`` of the nonlinear data term.
    device : "auto" (CUDA when visible), "cpu" or "cuda".
    weights_path : other weights than the shipped ones.  model : an NSIDL module to use instead.
    cnn_dtype : e.g. torch.bfloat16 to autocast the CNN on a GPU (physics stays fp32); default fp32.
    dc_threshold, dc_width : the last step puts the measured field back in k-space where
        ``|D| > dc_threshold`` (full weight from ``dc_threshold + dc_width``), keeping the
        network's estimate inside the dipole cone; ``None`` skips it (the bare network);
        default: the ``data_fit`` preset's threshold.
    data_fit : :data:`DATA_FIT` preset, ``"robust"`` (local fields from background removal,
        e.g. the app's chain) or ``"strong"`` (clean local fields): the pre-solver before the
        network and the k-space threshold.  None: the model's own pre-solver configuration and
        :data:`DC_THRESHOLD` (for the shipped weights the same as ``"robust"``).
    dc_extrapolate : before the k-space step, fit the network's chi offset to the field and extend
        the field beyond the mask with the field of the network's chi
        (:func:`qsmprep.dl.physics.extrapolate_field_t`), instead of zero; default: the preset's
        choice (``strong`` yes, ``robust`` no; off when ``data_fit`` is None).
    weights : which shipped weights run (a :data:`qsmprep.dl.weights.WEIGHTS_FOR` use) when neither
        ``model`` nor ``weights_path`` is given; default: those of ``data_fit`` (``robust``,
        ``strong``), or of the chain (:data:`qsmprep.dl.weights.DEFAULT_USE`) when ``data_fit`` is None.
    final_tv : (TV weight, ADMM iterations) of a weighted-linear TV fit of the local field started from the
        network's chi (:func:`qsmprep.qsm.tv.tv_admm`, the same ``weight``), or None; default: the preset's
        (``strong`` yes, ``robust`` no; off when ``data_fit`` is None).

    The volume is cropped to the mask's bounding box + ``margin`` voxels, the physics is
    zero-padded 1.5x inside the network, and the result is put back and masked.  The
    mean of chi is arbitrary (D(0) = 0): reference it afterwards.
    """
    from qsmprep.dl import physics
    from qsmprep.qsm.constants import rad_per_ppm

    f, m = _checked_inputs(local_ppm, mask)
    bb = mask_bbox(m, margin)
    fc, m_c = f[bb] * m[bb], m[bb]
    preset, dc_threshold, dc_extrapolate = _resolve_data_fit(data_fit, dc_threshold, dc_extrapolate, fc, m_c)
    dev = resolve_device(device)
    t0 = time.time()
    if model is None:
        model, _ = _cached_model(weights_path or str(_shipped_path(weights, data_fit)), str(dev))
    model = model.to(dev).eval()
    wc = normalise_weight(weight, m, bb)
    padded = physics.fast_padded_shape(fc.shape, 1.5)
    s = rad_per_ppm(b0_t, te_s)
    net = {"cnn_dtype": cnn_dtype, "n_pre": model.n_pre if preset is None else preset["n_pre"],
           "pre_solver": model.pre_solver if preset is None else preset["pre_solver"]}
    LOG.info("NSIDL: crop %s -> %s, FFT grid %s, device %s, s = %.2f rad/ppm, K = %d, data fit %s "
             "(%d %s pre-steps), k-space consistency %s", f.shape, fc.shape, padded, dev, s, model.n_iter,
             "model default" if preset is None else preset["name"], net["n_pre"], net["pre_solver"],
             "off" if dc_threshold is None else f"|D| > {dc_threshold}" + (", field extrapolated" if dc_extrapolate else ""))
    chi_c = _run_network(model, (fc, m_c.astype(np.float32), wc), s, padded, voxel_size, b0_dir, dev, net,
                         (dc_threshold, dc_width, dc_extrapolate))
    out = np.zeros(f.shape, dtype=np.float32)
    out[bb] = chi_c
    out *= m
    if isinstance(final_tv, str):
        if final_tv != _FROM_PRESET:
            raise ValueError(f"final_tv must be (TV weight, iterations), None or {_FROM_PRESET!r}, got {final_tv!r}.")
        final_tv = None if preset is None else preset.get("final_tv")
    if final_tv:
        from qsmprep.qsm.tv import tv_admm

        t1 = time.time()
        out = tv_admm(f, m, voxel_size, b0_dir, weight=weight, lam=float(final_tv[0]), n_iter=int(final_tv[1]),
                      chi_prior=out)
        LOG.info("NSIDL: final TV fit (weight %g, %d iterations) in %.1f s", final_tv[0], final_tv[1], time.time() - t1)
    LOG.info("NSIDL: done in %.1f s", time.time() - t0)
    return out


def _shipped_path(weights: str | None, data_fit: str | None):
    """The weights file of :func:`invert_nsidl`'s ``weights`` use (default: ``data_fit``'s, else the chain's)."""
    from qsmprep.dl.weights import DEFAULT_USE, WEIGHTS_FOR, default_weights_path

    use = weights or (data_fit if data_fit in WEIGHTS_FOR else DEFAULT_USE)
    return default_weights_path(use)


def _checked_inputs(local_ppm, mask):
    """(local field float32, mask bool): 3-D, the same shape, finite inside the mask (else ValueError)."""
    f = np.asarray(local_ppm, dtype=np.float32)
    m = np.asarray(mask).astype(bool)
    if f.ndim != 3 or f.shape != m.shape:
        raise ValueError(f"Local field {f.shape} and mask {m.shape} must be 3-D volumes of the same shape.")
    if not np.all(np.isfinite(f[m])):
        raise ValueError("The local field has NaN/inf inside the mask; fix the background-removal output or the mask.")
    return f, m


def _resolve_data_fit(data_fit, dc_threshold, dc_extrapolate, fc, m_c):
    """(preset dict or None, k-space threshold, field extrapolation) of :func:`invert_nsidl`'s
    arguments: ``"preset"`` values come from the ``data_fit`` preset (noise estimated on the
    cropped field ``fc`` in ``m_c``: the same as on the volume, the mask is inside the crop)."""
    preset = None
    if data_fit is not None:
        preset = data_fit_settings(data_fit, fc, m_c) if isinstance(dc_threshold, str) else data_fit_settings(data_fit)
    if isinstance(dc_threshold, str):
        if dc_threshold != _FROM_PRESET:
            raise ValueError(f"dc_threshold must be a number, None or {_FROM_PRESET!r}, got {dc_threshold!r}.")
        dc_threshold = DC_THRESHOLD if preset is None else preset["dc_threshold"]
    if isinstance(dc_extrapolate, str):
        if dc_extrapolate != _FROM_PRESET:
            raise ValueError(f"dc_extrapolate must be True, False or {_FROM_PRESET!r}, got {dc_extrapolate!r}.")
        dc_extrapolate = False if preset is None else bool(preset["dc_extrapolate"])
    return preset, dc_threshold, dc_extrapolate


def _run_network(model, arrays, s, padded, voxel_size, b0_dir, dev, net: dict, dc) -> np.ndarray:
    """The network on the cropped ``arrays`` (field ppm, mask, weight; float32 3-D), then the
    k-space step ``dc`` = (threshold or None, width, extrapolate).  Returns chi (ppm, float32 3-D)."""
    import torch

    from qsmprep.dl import physics

    dc_threshold, dc_width, dc_extrapolate = dc
    with torch.inference_mode():
        kern = physics.dipole_kernel_t(padded, voxel_size, b0_dir, device=dev)[None, None]
        tt = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)[None, None]
        field_t, mask_t, weight_t = (tt(a) for a in arrays)
        chi_c = model(field_t, mask_t, weight_t, s, kern, padded, **net)
        if dc_threshold is not None:
            if dc_extrapolate:
                chi_c, field_t, c, b = physics.extrapolate_field_t(chi_c, field_t, mask_t, kern, padded, weight_t)
                LOG.info("NSIDL: chi offset fitted to the field %.4f ppm, field offset %.5f ppm", float(c), float(b))
            chi_c = physics.kspace_consistency_t(chi_c, field_t, kern, padded, dc_threshold, dc_width)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return chi_c[0, 0].float().cpu().numpy()
