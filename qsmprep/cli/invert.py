"""``qsmprep invert``: one dipole inversion, local field (ppm) -> chi (ppm), as a stage command.

    qsmprep invert --local-field F.nii.gz --mask M.nii.gz [--magnitude MAG.nii.gz]
                   [--b0 T --te S] [--field-units ppm|hz] --method {nsidl,tkd,cgl2,ndi} --out chi.nii.gz
                   [--device auto|cpu|cuda] [--weights W.pt] [--total-field T --brain-mask B]
                   [--nsidl-data-fit auto|chain|robust|strong]

It runs the same code as the app's inversion node (:func:`qsmprep.methods.invert`), so the same
field, mask and weight give the same chi, bit for bit, and the same sidecar vocabulary.  Every
input is checked before anything runs or is written (:func:`check_inputs`); the exit codes are
those of ``qsmprep`` (:mod:`qsmprep.messages`): 0 done, 1 the inversion failed, 2 bad input or
command line, 126 ``--device cuda`` without a usable GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qsmprep import messages as msg
from qsmprep.methods import INVERSIONS, reference_echo_time

LOG = logging.getLogger("qsmprep.invert")
#: Field units ``--field-units`` accepts (and a sidecar's ``Units`` may say).
FIELD_UNITS = ("ppm", "hz")
#: A local field in ppm stays well inside this (99th percentile of |field - median| in the mask); larger
#: values mean a field in Hz, or a total field that still holds the background field.
MAX_LOCAL_FIELD_PPM = 2.0
_AFFINE_ATOL_MM = 1e-3

CHECKS = """\
checks, all before anything runs or is written (exit status 2, one sentence naming the file):
  * every input exists and is a NIfTI image; the field is 3-D; the mask (and magnitude) share its
    shape and affine; the mask is not empty;
  * --out is a .nii/.nii.gz path that is not one of the inputs (nor their JSON sidecars);
  * units: --field-units, else the sidecar's "Units" (ppm or Hz), else ppm; a field whose values
    inside the mask are implausible for a local field in ppm (99th percentile of |field - median|
    above 2 ppm: a field in Hz, or a total field) is refused;
  * B0 (T) and TE (s), from the options or the field's sidecar (MagneticFieldStrength; EchoTime,
    the mean if a list), are needed by nsidl (its phase scale) and for a field in Hz; B0 must be
    within 0.1-12 T and TE within (0, 1) s;
  * --device cuda needs a GPU that PyTorch can use (exit status 126 otherwise).

exit status: 0 done; 1 the inversion failed; 2 bad input or command line; 126 no usable GPU.
"""


class InvertError(Exception):
    """A user-facing input error: one sentence naming the file and the fix (exit status 2)."""


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
        data = json.loads(sc.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvertError(f"{sc} is not valid JSON ({getattr(exc, 'msg', exc)}); fix or remove the sidecar.") from None
    if not isinstance(data, dict):
        raise InvertError(f"{sc} does not hold a JSON object; fix or remove the sidecar.")
    return data


def acquisition_params(field_path, b0_t=None, te_s=None, need_b0=True, need_te=True) -> tuple[float | None, float | None]:
    """B0 (T) and reference TE (s) from the arguments or the field's sidecar (the mean TE of a list)."""
    from qsmprep.qsm.constants import check_field_strength

    meta = read_sidecar(field_path)
    try:
        if b0_t is None and "MagneticFieldStrength" in meta:
            b0_t = float(meta["MagneticFieldStrength"])
        if te_s is None:
            te = meta.get("EchoTimeReference", meta.get("EchoTime"))
            if te is not None:
                te_s = reference_echo_time(te) if isinstance(te, (list, tuple)) else float(te)
    except (TypeError, ValueError):
        raise InvertError(f"{sidecar_of(field_path)} has a non-numeric MagneticFieldStrength or EchoTime; fix the "
                          "sidecar or pass --b0 and --te.") from None
    missing = " and ".join(n for n, v, nd in (("--b0", b0_t, need_b0), ("--te", te_s, need_te)) if nd and v is None)
    if missing:
        raise InvertError(
            f"{field_path}: the field strength / echo time are unknown (no {sidecar_of(field_path).name} with "
            f"MagneticFieldStrength and EchoTime); pass {missing}.")
    if te_s is not None and not 0 < te_s < 1:
        raise InvertError(f"{field_path}: echo time {te_s} is not in seconds (0 < TE < 1); pass --te in seconds, e.g. 0.02.")
    if b0_t is not None:
        why = check_field_strength(b0_t)
        if why:
            raise InvertError(f"{field_path}: field strength {b0_t} {why}; pass --b0 in tesla, e.g. 3.")
    return b0_t, te_s


def _load(path, what):
    import nibabel as nb
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise InvertError(f"The {what} file {p} does not exist; check the path.")
    try:
        img = nb.load(str(p))
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:  # nibabel raises many types for a file that is not an image
        why = str(exc).strip().rstrip(".") or type(exc).__name__
        raise InvertError(f"The {what} file {p} cannot be read as a NIfTI image ({why}); pass a .nii or .nii.gz file.") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    return img, data


def _same_grid(path, img, data, ref_path, ref_img, ref_data, what):
    import numpy as np

    if data.shape[:3] != ref_data.shape:
        raise InvertError(f"The {what} {path} has shape {data.shape[:3]} but the field {ref_path} has {ref_data.shape}; "
                          f"pass the {what} on the field's grid.")
    if not np.allclose(img.affine, ref_img.affine, atol=_AFFINE_ATOL_MM):
        shift = float(np.abs(np.asarray(img.affine)[:3, 3] - np.asarray(ref_img.affine)[:3, 3]).max())
        raise InvertError(f"The {what} {path} has another affine than the field {ref_path} (origins up to {shift:.1f} mm "
                          f"apart); reslice the {what} onto the field's grid.")


def _check_out(args) -> Path:
    out = Path(args.out)
    if not out.name.endswith((".nii", ".nii.gz")):
        raise InvertError(f"--out {out} must name a NIfTI file (.nii.gz or .nii).")
    inputs = [p for p in (args.local_field, args.mask, args.magnitude, args.weights, args.total_field, args.brain_mask) if p]
    taken = {Path(p).resolve() for p in inputs} | {sidecar_of(p).resolve() for p in inputs}
    for target in (out, sidecar_of(out)):
        if target.resolve() in taken:
            raise InvertError(f"--out {out} would overwrite the input {target}; choose another output name.")
    return out


@dataclass
class Inputs:
    """What :func:`check_inputs` found: arrays, grid and parameters, ready for the inversion."""

    field: object
    mask: object
    weight: object
    total: object
    brain_mask: object
    img: object
    voxel_size: tuple
    b0_dir: tuple
    b0_t: float | None
    te_s: float | None
    units: str
    out: Path


def check_inputs(args) -> Inputs:
    """Every check of ``qsmprep invert`` (see :data:`CHECKS`); raises :class:`InvertError`."""
    import numpy as np

    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.qsm.geometry import b0_direction_from_affine, voxel_sizes

    out = _check_out(args)
    inv = INVERSIONS[args.method]
    if args.weights and not inv.weights:
        users = ", ".join(i.name for i in INVERSIONS.values() if i.weights)
        raise InvertError(f"--weights {args.weights} applies to --method {users} only; drop it or choose that method.")
    fimg, field = _load(args.local_field, "local field")
    if field.ndim != 3:
        raise InvertError(f"{args.local_field} has shape {field.shape}; pass a 3-D local field map.")
    mimg, mask = _load(args.mask, "mask")
    _same_grid(args.mask, mimg, mask, args.local_field, fimg, field, "mask")
    mask = mask.reshape(field.shape) > 0
    if not mask.any():
        raise InvertError(f"{args.mask} is empty; pass a brain mask with non-zero voxels.")
    weight = None
    if args.magnitude:
        gimg, mag = _load(args.magnitude, "magnitude")
        _same_grid(args.magnitude, gimg, mag, args.local_field, fimg, field, "magnitude")
        weight = np.sqrt(np.sum(mag.astype(np.float64) ** 2, axis=3)).astype(np.float32) if mag.ndim == 4 else mag
    total = brain = None
    if bool(args.total_field) != bool(args.brain_mask):
        raise InvertError("--total-field and --brain-mask go together (NSIDL's chain data fit needs both); pass both or neither.")
    if args.total_field:
        timg, total = _load(args.total_field, "total field")
        _same_grid(args.total_field, timg, total, args.local_field, fimg, field, "total field")
        bimg, brain = _load(args.brain_mask, "brain mask")
        _same_grid(args.brain_mask, bimg, brain, args.local_field, fimg, field, "brain mask")
        brain = brain.reshape(field.shape) > 0
    if not np.all(np.isfinite(field[mask])):
        raise InvertError(f"{args.local_field} has NaN/Inf values inside the mask {args.mask}; fix the field or the mask.")

    meta = read_sidecar(args.local_field)
    units = (args.field_units or str(meta.get("Units", "ppm"))).lower()
    if units not in FIELD_UNITS:
        raise InvertError(f"{sidecar_of(args.local_field)} says Units={meta.get('Units')!r}; the local field must be in "
                          "ppm or Hz (or pass --field-units).")
    b0_t, te_s = acquisition_params(args.local_field, args.b0, args.te, need_b0=inv.needs_phase_scale or units == "hz",
                                    need_te=inv.needs_phase_scale)
    field = np.where(mask, field, np.float32(0.0)).astype(np.float32)
    if units == "hz":
        field = (field / hz_per_ppm(b0_t)).astype(np.float32)
    if total is not None:
        tunits = str(read_sidecar(args.total_field).get("Units", "ppm")).lower()
        if tunits == "hz":
            if b0_t is None:
                raise InvertError(f"{args.total_field} is in Hz; pass --b0 (or MagneticFieldStrength in the field's sidecar).")
            total = (total / hz_per_ppm(b0_t)).astype(np.float32)
        total = np.nan_to_num(total).astype(np.float32)
    vals = field[mask]
    spread = float(np.percentile(np.abs(vals - np.median(vals)), 99))
    if spread > MAX_LOCAL_FIELD_PPM:
        raise InvertError(
            f"{args.local_field}: the field inside the mask reaches {spread:.3g} (99th percentile of |field - median|), "
            f"implausible for a local field in ppm (below {MAX_LOCAL_FIELD_PPM:g}); if it is in Hz pass --field-units hz, "
            "if it is a total field remove the background field first.")
    return Inputs(field, mask, weight, total, brain, fimg, voxel_sizes(fimg.affine), tuple(float(v) for v in b0_direction_from_affine(fimg.affine)),
                  b0_t, te_s, units, out)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qsmprep invert", description="Dipole inversion: local field (ppm) -> chi (ppm).",
                                 epilog=CHECKS, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local-field", required=True, help="local field map in ppm (NIfTI)")
    ap.add_argument("--mask", required=True, help="brain mask of the local field (NIfTI, same grid)")
    ap.add_argument("--magnitude", help="magnitude image used as data weight (nsidl, ndi, cgl2); 4-D: echo-RSS; with "
                    "--total-field and long echoes (7 T) also finds the signal voids at the brain's surface")
    ap.add_argument("--b0", type=float, help="field strength in T (default: sidecar MagneticFieldStrength)")
    ap.add_argument("--te", type=float, help="reference echo time in s (default: sidecar EchoTime, mean if several)")
    ap.add_argument("--field-units", choices=FIELD_UNITS, type=str.lower,
                    help="units of the field (default: the sidecar's Units, else ppm)")
    ap.add_argument("--total-field", help="total field before background removal (NIfTI; Hz if its sidecar says so, "
                                          "else ppm) with --brain-mask: NSIDL's default data fit then fits it (the app's)")
    ap.add_argument("--brain-mask", help="the brain mask background removal started from (with --total-field)")
    ap.add_argument("--method", choices=tuple(INVERSIONS), default="nsidl",
                    help="; ".join(f"{i.name}: {i.description}" for i in INVERSIONS.values()))
    ap.add_argument("--out", required=True, help="output chi map (NIfTI, ppm); its sidecar is written beside it")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="device of torch methods (nsidl)")
    ap.add_argument("--weights", help="NSIDL weights file (default: the shipped weights of the data fit, "
                                          "qsmprep.dl.weights.WEIGHTS_FOR: v3 for chain, v2 for robust and strong)")
    ap.add_argument("--nsidl-data-fit", choices=INVERSIONS["nsidl"].options["nsidl_data_fit"], default="auto",
                    help="NSIDL data fit: auto (default) = chain with --total-field and --brain-mask (the app's: the "
                         "network on the local field, then a TV-regularised SMV-consistent fit of the total field; "
                         "signal voids kept in the map), else robust (for a local field from background removal "
                         "alone); strong for clean local fields (simulations, challenge platforms; the network, then a "
                         "weighted TV fit of the field started from its chi)")
    ap.add_argument("-v", "--verbose", action="store_true")
    return ap


def run(args) -> dict:
    """Check the inputs, run the inversion, write chi and its sidecar; returns the sidecar dict.

    Raises :class:`InvertError` (bad input) or :class:`qsmprep.utils.gpu.DeviceUnavailableError`
    before anything is written.
    """
    import nibabel as nb
    import numpy as np

    from qsmprep.methods import invert
    from qsmprep.utils.atomic import save_nifti, write_json
    from qsmprep.utils.gpu import resolve_device

    inp = check_inputs(args)
    inv = INVERSIONS[args.method]
    device = resolve_device(args.device) if inv.uses_torch else "cpu"
    options = {key: getattr(args, key) for key in inv.options}
    if inv.weights:
        options["weights_path"] = args.weights
    if options.get("nsidl_data_fit") == "strong":  # its k-space threshold follows the field's noise
        from qsmprep.qsm.inversion import field_noise

        try:
            field_noise(inp.field, inp.mask)
        except ValueError:
            raise InvertError(f"{args.mask} has too few interior voxels for the strong preset's noise estimate; pass "
                              "the brain mask of this field or use --nsidl-data-fit robust.") from None
    t0 = time.time()
    chi, record = invert(args.method, inp.field, inp.mask, inp.voxel_size, inp.b0_dir, weight=inp.weight, b0_t=inp.b0_t,
                         te_s=inp.te_s, device=device, total_ppm=inp.total, brain_mask=inp.brain_mask,
                         magnitude=inp.weight if args.magnitude else None, **options)
    side = {"Units": "ppm", "Referenced": False, "VoxelSize": list(inp.voxel_size), **record,
            "InputFieldUnits": "Hz" if inp.units == "hz" else "ppm",
            "Sources": [str(args.local_field), str(args.mask)] + ([str(args.magnitude)] if args.magnitude else []),
            "ElapsedSeconds": round(time.time() - t0, 2)}
    img = nb.Nifti1Image(np.asarray(chi, dtype=np.float32), inp.img.affine, inp.img.header)
    img.set_data_dtype(np.float32)
    img.header.set_slope_inter(1.0, 0.0)
    save_nifti(img, inp.out)
    write_json(sidecar_of(inp.out), side)
    return side


def main(argv=None) -> int:
    """Entry point of ``qsmprep invert``; returns the exit status (see :data:`CHECKS`)."""
    from qsmprep.utils.gpu import DeviceUnavailableError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        side = run(args)
    except InvertError as exc:
        print(f"qsmprep invert: error: {exc}", file=sys.stderr)
        return msg.EXIT_INPUT_ERROR
    except DeviceUnavailableError as exc:
        print(f"qsmprep invert: error: {exc}", file=sys.stderr)
        return msg.EXIT_CANNOT_EXECUTE
    except Exception as exc:  # the inversion itself failed
        LOG.debug("inversion failed", exc_info=True)
        print(f"qsmprep invert: error: the {args.method} inversion failed ({type(exc).__name__}: {exc}); rerun with -v "
              "for details.", file=sys.stderr)
        return msg.EXIT_WORKFLOW_FAILED
    LOG.info("wrote %s (%s, %s s)", args.out, side["InversionMethod"], side["ElapsedSeconds"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
