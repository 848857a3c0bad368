"""``qsmprep invert``: one dipole inversion, local field (ppm) -> chi (ppm), as a stage command.

    qsmprep invert --local-field F.nii.gz --mask M.nii.gz [--magnitude MAG.nii.gz]
                   [--b0 T --te S] --method {nsidl,tkd,cgl2,ndi} --out chi.nii.gz
                   [--device auto|cpu|cuda] [--weights W.pt] [--nsidl-data-fit robust|strong]

* The B0 direction comes from the field's affine (``b0_direction_from_affine``), the voxel
  size from its header.
* B0 (T) and TE (s) are needed by ``nsidl`` and ``ndi`` (phase scale of the nonlinear data
  term).  When not given they are read from the JSON sidecar next to the field
  (``MagneticFieldStrength``; ``EchoTimeReference`` or ``EchoTime``, the mean if a list).
* A field whose sidecar says ``"Units": "Hz"`` is converted to ppm with B0.
* ``--nsidl-data-fit``: ``robust`` (default) for local fields from background removal;
  ``strong`` for clean local fields (simulations, challenge platforms: the whole field of the
  sources inside the mask), where more data fitting pays and the field outside the mask is
  extrapolated from them (``qsmprep.dl.inference.DATA_FIT``).
* Output: chi (float32 NIfTI, ppm, zero outside the mask, not referenced) written atomically,
  plus ``<out>.json`` with the method, device, weights sha256 and software version.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import time
from pathlib import Path

METHOD_CHOICES = ("nsidl", "tkd", "cgl2", "ndi")
LOG = logging.getLogger("qsmprep.invert")


class InvertError(Exception):
    """A user-facing error: one sentence naming the file and the fix."""


def _strip_nii(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)])
    return path.with_suffix("")


def sidecar_of(path: str | Path) -> Path:
    """``F.nii.gz`` -> ``F.json``."""
    p = _strip_nii(Path(path))
    return p.with_name(p.name + ".json")


def read_sidecar(path: str | Path) -> dict:
    sc = sidecar_of(path)
    if not sc.is_file():
        return {}
    try:
        return json.loads(sc.read_text())
    except json.JSONDecodeError as exc:
        raise InvertError(f"{sc} is not valid JSON ({exc.msg}); fix or remove the sidecar.") from exc


def acquisition_params(field_path, b0_t=None, te_s=None, need_b0=True, need_te=True) -> tuple[float | None, float | None]:
    """B0 (T) and reference TE (s) from the arguments or the field's sidecar."""
    meta = read_sidecar(field_path)
    if b0_t is None and "MagneticFieldStrength" in meta:
        b0_t = float(meta["MagneticFieldStrength"])
    if te_s is None:
        te = meta.get("EchoTimeReference", meta.get("EchoTime"))
        if te is not None:
            te_s = float(sum(te) / len(te)) if isinstance(te, (list, tuple)) else float(te)
    missing = " and ".join(n for n, v, nd in (("--b0", b0_t, need_b0), ("--te", te_s, need_te)) if nd and v is None)
    if missing:
        raise InvertError(
            f"{field_path}: the field strength / echo time are unknown (no {sidecar_of(field_path).name} with "
            f"MagneticFieldStrength and EchoTime); pass {missing}.")
    if te_s is not None and not 0 < te_s < 1:
        raise InvertError(f"{field_path}: echo time {te_s} is not in seconds (0 < TE < 1); pass --te in seconds, e.g. 0.02.")
    if b0_t is not None and not 0 < b0_t < 20:
        raise InvertError(f"{field_path}: field strength {b0_t} is not in tesla; pass --b0 in T, e.g. 3.")
    return b0_t, te_s


def _load(path, what):
    import nibabel as nb
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InvertError(f"The {what} file {p} does not exist; check the path.")
    img = nb.load(str(p))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return img, data


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qsmprep invert", description="Dipole inversion: local field (ppm) -> chi (ppm).")
    ap.add_argument("--local-field", required=True, help="local field map in ppm (NIfTI)")
    ap.add_argument("--mask", required=True, help="brain mask of the local field (NIfTI)")
    ap.add_argument("--magnitude", help="magnitude image used as data weight (nsidl, ndi, cgl2); 4-D: echo-RSS")
    ap.add_argument("--b0", type=float, help="field strength in T (default: sidecar MagneticFieldStrength)")
    ap.add_argument("--te", type=float, help="reference echo time in s (default: sidecar EchoTime, mean if several)")
    ap.add_argument("--method", choices=METHOD_CHOICES, default="nsidl")
    ap.add_argument("--out", required=True, help="output chi map (NIfTI, ppm)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="NSIDL device")
    ap.add_argument("--weights", help="NSIDL weights file (default: the shipped weights)")
    ap.add_argument("--nsidl-data-fit", choices=("robust", "strong"), default="robust",
                    help="NSIDL data-fit preset: robust (default) for local fields from background removal, whose "
                         "errors near the brain edge strong fitting would amplify; strong for clean local fields "
                         "(simulations, challenge platforms): more data fitting and the field extrapolated beyond the mask, "
                         "sharper and more accurate there")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def run(args) -> dict:
    """Do the inversion for parsed ``args``; returns the sidecar dict."""
    import nibabel as nb
    import numpy as np

    from qsmprep import __version__
    from qsmprep.qsm.constants import hz_per_ppm, rad_per_ppm
    from qsmprep.qsm.geometry import b0_direction_from_affine, voxel_sizes
    from qsmprep.utils.atomic import save_nifti, write_json

    fimg, field = _load(args.local_field, "local field")
    _, mask = _load(args.mask, "mask")
    if field.ndim != 3:
        raise InvertError(f"{args.local_field} has shape {field.shape}; pass a 3-D local field map.")
    if mask.shape != field.shape:
        raise InvertError(f"{args.mask} has shape {mask.shape} but the field has {field.shape}; pass the mask of this field.")
    mask = mask > 0
    if not mask.any():
        raise InvertError(f"{args.mask} is empty; pass a brain mask with non-zero voxels.")
    weight = None
    if args.magnitude:
        _, mag = _load(args.magnitude, "magnitude")
        if mag.ndim == 4:
            mag = np.sqrt(np.sum(mag.astype(np.float64) ** 2, axis=3)).astype(np.float32)
        if mag.shape != field.shape:
            raise InvertError(f"{args.magnitude} has shape {mag.shape} but the field has {field.shape}; pass a magnitude on the field's grid.")
        weight = mag
    meta = read_sidecar(args.local_field)
    units = str(meta.get("Units", "ppm")).lower()
    need_phase = args.method in ("nsidl", "ndi")
    b0_t, te_s = acquisition_params(args.local_field, args.b0, args.te, need_b0=need_phase or units == "hz", need_te=need_phase)
    if units == "hz":
        field = field / hz_per_ppm(b0_t)
    elif units not in ("ppm", ""):
        raise InvertError(f"{sidecar_of(args.local_field)} says Units={meta.get('Units')!r}; the local field must be in ppm (or Hz).")
    field = np.nan_to_num(field) * mask
    vs = voxel_sizes(fimg.affine)
    b0_dir = b0_direction_from_affine(fimg.affine)
    t0 = time.time()
    side = {"Units": "ppm", "Method": args.method, "SoftwareVersion": __version__, "SoftwareName": "qsmprep",
            "B0Direction": [float(v) for v in b0_dir], "VoxelSize": list(vs), "Referenced": False,
            "Sources": [str(args.local_field), str(args.mask)] + ([str(args.magnitude)] if args.magnitude else [])}
    if b0_t is not None:
        side["MagneticFieldStrength"] = b0_t
    if te_s is not None:
        side["EchoTimeReference"] = te_s
    if args.method == "nsidl":
        from qsmprep.dl.inference import data_fit_record, data_fit_settings, invert_nsidl, resolve_device
        from qsmprep.dl.weights import weights_info

        try:
            dev = resolve_device(args.device)
        except RuntimeError as exc:
            raise InvertError(str(exc)) from exc
        info = weights_info(args.weights)
        try:
            fit = data_fit_settings(args.nsidl_data_fit, field, mask)
        except ValueError as exc:  # the strong preset's noise estimate needs a mask with an interior
            raise InvertError(f"{args.mask} has too few interior voxels for the strong preset's noise estimate; pass "
                              "the brain mask of this field or use --nsidl-data-fit robust.") from exc
        chi = invert_nsidl(field, mask, vs, b0_dir, weight, b0_t=b0_t, te_s=te_s, device=str(dev), weights_path=args.weights,
                           data_fit=fit["name"], dc_threshold=fit["dc_threshold"])
        side.update({"Device": str(dev), "WeightsName": info["name"], "WeightsSha256": info["sha256"],
                     "RadPerPpm": rad_per_ppm(b0_t, te_s),
                     "DataFit": {**data_fit_record(fit), "KSpaceThreshold": round(fit["dc_threshold"], 4)}})
    else:
        from qsmprep.qsm.inversion import METHODS

        fn = METHODS[args.method]
        params = inspect.signature(fn).parameters
        kw = {}
        if "weight" in params:
            kw["weight"] = weight
        if "rad_per_ppm" in params and b0_t is not None and te_s is not None:
            kw["rad_per_ppm"] = rad_per_ppm(b0_t, te_s)
            side["RadPerPpm"] = kw["rad_per_ppm"]
        chi = fn(field, mask, vs, b0_dir, **kw)
        side["Device"] = "cpu"
    side["ElapsedSeconds"] = round(time.time() - t0, 2)
    chi = np.asarray(chi, dtype=np.float32) * mask
    out = Path(args.out)
    img = nb.Nifti1Image(chi, fimg.affine, fimg.header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    save_nifti(img, out)
    write_json(sidecar_of(out), side)
    return side


def main(argv=None) -> int:
    """Entry point of ``qsmprep invert``; returns the exit status (0 ok, 1 user error)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        side = run(args)
    except (InvertError, FileNotFoundError) as exc:
        print(f"qsmprep invert: error: {exc}", file=sys.stderr)
        return 1
    LOG.info("wrote %s (%s, %s s)", args.out, side["Method"], side["ElapsedSeconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
