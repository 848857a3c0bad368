"""Validation of NSIDL during training: validation heads, inference presets, scores.

* :func:`load_val_heads` -- ``*.npz`` heads as batch-1 tensors;
* :func:`check_presets` -- the training config's inference presets;
* :func:`run_preset` -- the model's forward pass as inference runs it with a preset;
* :func:`validate` -- mean demeaned NRMSE (%), XSIM and ``val_score`` over the heads.
"""

from __future__ import annotations

from pathlib import Path

from qsmprep.dl.metrics import nrmse_demeaned, xsim_t


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
