#!/usr/bin/env python
"""Generate the bundled example BIDS datasets (deterministic; run from the repository root).

    .venv/bin/python bids_examples/make_examples.py            # both datasets
    .venv/bin/python bids_examples/make_examples.py --only megre

Everything is simulated with ``qsmprep.sim`` (a head phantom from nilearn's MNI152 maps and
AAL3, forward-simulated gradient-echo data), so the true susceptibility is known.  The same
arguments always give byte-identical files (seeded noise, gzip without time stamps).

``ds-megre/`` (3 T multi-echo GRE, 2.5 mm isotropic)
    * ``sub-01`` (control), sessions ``ses-1`` and ``ses-2`` (scan-rescan: same head and pose,
      new noise and phase offset), 4 echoes TE = 4/10/16/22 ms, phase as **int16 scanner units**
      (-4096..4095 for -pi..pi, ``Units: arbitrary``).
    * ``sub-02`` (patient: one haemorrhage and one calcification), no sessions, 3 echoes
      TE = 5/12.5/20 ms, phase as **float32 radians** (``Units: rad``).
    * Sidecars: ``MEGRE.json`` at the top (field strength, TR, flip angle, ...) is inherited by
      every image; each image has its own ``*_echo-<n>_part-<mag|phase>_MEGRE.json`` (EchoTime,
      EchoNumber, Units).  BIDS allows one applicable sidecar per folder level, so per-echo and
      per-part sidecars side by side (``*_echo-1_MEGRE.json`` + ``*_part-mag_MEGRE.json``) would
      be ambiguous (the validator's MULTIPLE_INHERITABLE_FILES).
``ds-t2starw/`` (7 T single echo, oblique B0 at 17 degrees to the slice axis)
    * ``sub-01``: ``part-mag`` / ``part-phase`` ``T2starw``, TE 15 ms, 2 x 2 x 2.5 mm voxels, phase in
      float32 radians; the affine is rotated so that the B0 direction read from it is the one
      used for the simulation.  One complete sidecar per image (the phase one adds
      ``Units: rad``).
``<ds>/derivatives/groundtruth/`` (a BIDS derivative dataset)
    per run: ``_Chimap`` (true chi in ppm, inside the brain, 0 outside), ``_desc-local_fieldmap``
    (true local field, ppm, demeaned in the brain), ``_desc-brain_mask``, ``_desc-phantom_dseg``
    (+ ``.tsv`` label table = ``qsmprep.sim.phantom.LABELS``), ``_desc-dgmtruth_stats.tsv`` (true mean chi
    of the 12 deep-gray structures) and ``_desc-simulation.json`` (every argument needed to
    regenerate the run with ``make_head`` / ``simulate_gre``).  Its ``.bidsignore`` lists the files
    BIDS has no name for (the simulation record, the truth table, and the local field map, which
    BIDS only allows in ``fmap/`` next to a magnitude image), so that
    ``bids-validator-deno --recursive`` gives no error either; all datasets validate with zero
    errors (tests/test_bids_validator.py).

To stay under the 20 MB repository budget the images are cropped to the brain + 15 mm
(simulated on the whole head first, so skull/air/sinus fields are all there), the magnitude is stored with a small integer scale
(noise sigma = 3 units) and the phase is zero outside the head (dilated by 2 voxels), as some
vendors' reconstructions do; the magnitude keeps its noise everywhere.  Float images are
rounded to dyadic steps far below noise and any error of interest (phase 2^-14 rad, chi
2^-16 ppm, local field 2^-18 ppm) so that gzip can compress them.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from qsmprep import __version__  # noqa: E402
from qsmprep.sim import forward as fw  # noqa: E402
from qsmprep.sim import phantom as ph  # noqa: E402

BIDS_VERSION = "1.10.0"
CROP_MARGIN_MM = 15.0  # around the brain bounding box (the brain stem is cut at the bottom)
MAG_NOISE_UNITS = 3.0  # magnitude scale: noise sigma in integer units
PHASE_BITS = 14  # float phase rounded to 2**-14 rad (6e-5 rad; noise is ~1e-2 rad)
CHI_BITS = 16  # true chi rounded to 2**-16 ppm (1.5e-5 ppm)
LOCAL_BITS = 18  # true local field rounded to 2**-18 ppm (3.8e-6 ppm)
PHASE_SCANNER_MAX = 4096  # int16 scanner units: -4096..4095 <-> -pi..pi

#: Runs of ds-megre: (sub, ses, head kwargs, simulation kwargs, phase storage).
MEGRE_RUNS = (
    ("01", "1", dict(seed=101, lesions=False), dict(te_s=(0.004, 0.010, 0.016, 0.022), snr=80.0, seed=1), "int16"),
    ("01", "2", dict(seed=101, lesions=False), dict(te_s=(0.004, 0.010, 0.016, 0.022), snr=80.0, seed=2), "int16"),
    ("02", None, dict(seed=202, lesions=True), dict(te_s=(0.005, 0.0125, 0.020), snr=80.0, seed=3), "float32"),
)
MEGRE_VOXEL_MM = (2.5, 2.5, 2.5)
MEGRE_COMMON = {
    "MagneticFieldStrength": 3.0,
    "RepetitionTime": 0.035,
    "FlipAngle": 15,
    "MRAcquisitionType": "3D",
    "Manufacturer": "qsmprep-sim",
    "ManufacturersModelName": "qsmprep.sim.forward.simulate_gre",
    "PulseSequenceType": "Multi-echo spoiled gradient echo",
    "ImageType": ["ORIGINAL", "PRIMARY", "M", "P"],
}
PARTICIPANTS = (("sub-01", 34, "F", "control"), ("sub-02", 67, "M", "patient"))
#: Ground-truth files BIDS has no name for (checked by tests/test_bids_validator.py).
GT_BIDSIGNORE = ("*_desc-simulation.json", "*_desc-dgmtruth_stats.tsv", "*_desc-local_fieldmap.*")

T2S_HEAD = dict(seed=303, lesions=True)
T2S_VOXEL_MM = (2.0, 2.0, 2.5)
T2S_OBLIQUE_DEG = 17.0
T2S_SIM = dict(te_s=(0.015,), snr=60.0, seed=4, b0_t=7.0)


# ----------------------------------------------------------------------------- writing helpers
def _write_bytes(path: Path, data: bytes) -> None:
    from qsmprep.utils.atomic import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, data: dict) -> None:
    _write_bytes(path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())


def write_text(path: Path, text: str) -> None:
    _write_bytes(path, text.encode())


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray, dtype) -> None:
    """Deterministic .nii.gz (no gzip time stamp), qform = sform = ``affine`` (scanner), mm/s units."""
    import nibabel as nb

    img = nb.Nifti1Image(np.asarray(data).astype(dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_slope_inter(1.0, 0.0)
    _write_bytes(path, gzip.compress(img.to_bytes(), compresslevel=9, mtime=0))


def dyadic(x: np.ndarray, bits: int) -> np.ndarray:
    """Round to multiples of 2**-bits (exact in float32, so gzip compresses it much better)."""
    return (np.round(np.asarray(x, np.float64) * 2.0**bits) / 2.0**bits).astype(np.float32)


def _prefix(sub: str, ses: str | None) -> tuple[str, str]:
    """(relative anat folder, file prefix)."""
    if ses is None:
        return f"sub-{sub}/anat", f"sub-{sub}"
    return f"sub-{sub}/ses-{ses}/anat", f"sub-{sub}_ses-{ses}"


def _mag_int16(mag: np.ndarray, sigma: float) -> np.ndarray:
    scale = MAG_NOISE_UNITS / sigma if sigma > 0 else 1000.0 / max(float(mag.max()), 1e-12)
    return np.clip(np.round(mag * scale), 0, 32767).astype(np.int16)


def _phase_store(phase: np.ndarray, head_mask: np.ndarray, kind: str) -> np.ndarray:
    p = np.where(head_mask[..., None] if phase.ndim == 4 else head_mask, phase, 0.0)
    if kind == "int16":
        return np.clip(np.round(p / np.pi * PHASE_SCANNER_MAX), -PHASE_SCANNER_MAX, PHASE_SCANNER_MAX - 1).astype(np.int16)
    return dyadic(p, PHASE_BITS)


def _head_support(head) -> np.ndarray:
    import scipy.ndimage as ndi

    return ndi.binary_dilation(head.labels > 0, iterations=2)


def crop_to_brain(head, sim, margin_mm: float = CROP_MARGIN_MM):
    """Crop head and simulation to the brain bounding box + ``margin_mm`` (not below the brain).

    The fields were computed on the full head grid, so the background sources outside the
    crop still shaped the data.  Returns new ``(head, sim)``; the affines are shifted.
    """
    import dataclasses

    idx = np.argwhere(head.brain_mask)
    marg = np.ceil(margin_mm / np.asarray(head.voxel_size)).astype(int)
    lo = np.maximum(idx.min(0) - marg, 0)
    lo[2] = max(idx.min(0)[2], 0)
    hi = np.minimum(idx.max(0) + marg + 1, head.shape)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo

    def cut(x):
        return np.ascontiguousarray(x[sl])

    head2 = dataclasses.replace(head, chi=cut(head.chi), labels=cut(head.labels), brain_mask=cut(head.brain_mask),
                                m0=cut(head.m0), r1=cut(head.r1), r2star=cut(head.r2star),
                                affine=head.affine @ shift)
    sim2 = dict(sim)
    for k in ("mag", "phase", "field_ppm", "field_hz", "local_field_ppm", "brain_mask", "phase_offset_rad"):
        sim2[k] = cut(sim[k])
    sim2["affine"] = sim["affine"] @ shift
    sim2["crop_start_voxel"] = [int(v) for v in lo]
    return head2, sim2


def write_groundtruth(gt_root: Path, sub: str, ses: str | None, suffix_src: str, head, sim, sim_args: dict) -> None:
    folder, pre = _prefix(sub, ses)
    d = gt_root / folder
    aff = sim["affine"]
    m = head.brain_mask
    chi = dyadic(np.where(m, head.chi, 0), CHI_BITS)
    write_nifti(d / f"{pre}_Chimap.nii.gz", chi, aff, np.float32)
    write_json(d / f"{pre}_Chimap.json", {
        "Units": "ppm",
        "SkullStripped": True,
        "Description": "True magnetic susceptibility inside the brain mask (0 outside), relative to CSF = 0.",
        "Sources": [f"bids::{folder}/{pre}_{suffix_src}"],
    })
    write_nifti(d / f"{pre}_desc-local_fieldmap.nii.gz", dyadic(sim["local_field_ppm"], LOCAL_BITS), aff, np.float32)
    write_json(d / f"{pre}_desc-local_fieldmap.json", {
        "Units": "ppm",
        "Description": "True local field: forward field of chi inside the brain mask only, demeaned in the mask.",
        "B0Direction": [float(v) for v in sim["b0_dir"]],
    })
    write_nifti(d / f"{pre}_desc-brain_mask.nii.gz", m, aff, np.uint8)
    write_json(d / f"{pre}_desc-brain_mask.json", {"Type": "Brain", "Description": "Phantom brain (labels 1-18)."})
    write_nifti(d / f"{pre}_desc-phantom_dseg.nii.gz", head.labels, aff, np.uint8)
    write_text(d / f"{pre}_desc-phantom_dseg.tsv", ph.labels_tsv())
    means = ph.label_means(chi, head.labels)
    counts = head.label_counts()
    rows = ["index\tname\tchi_mean_ppm\tn_voxels"]
    rows += [f"{i}\t{ph.LABELS[i]}\t{means[ph.LABELS[i]]:.6f}\t{counts[ph.LABELS[i]]}" for i in ph.DGM_INDICES]
    write_text(d / f"{pre}_desc-dgmtruth_stats.tsv", "\n".join(rows) + "\n")
    write_json(d / f"{pre}_desc-simulation.json", {
        "GeneratedBy": f"qsmprep {__version__} bids_examples/make_examples.py",
        "make_head": sim_args["head"],
        "simulate_gre": sim_args["sim"],
        "TissueChiPPM": {k: round(v, 6) for k, v in head.chi_values.items()},
        "NoiseSigma": sim["noise_sigma"],
        "BackgroundFieldMode": sim["background"],
        "B0Direction": [float(v) for v in sim["b0_dir"]],
        "XfmToMNI": np.round(head.xfm_to_mni, 6).tolist(),
        "CropStartVoxel": sim.get("crop_start_voxel"),
        "Note": "make_head + simulate_gre with these arguments, then crop_to_brain(), give these files.",
    })


def write_gt_description(gt_root: Path, source: str) -> None:
    write_json(gt_root / "dataset_description.json", {
        "Name": f"Ground truth of the simulated {source} example",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "qsmprep.sim", "Version": __version__,
                         "Description": "bids_examples/make_examples.py"}],
        "SourceDatasets": [{"URL": f"bids_examples/{source}"}],
    })
    write_text(gt_root / ".bidsignore", "".join(f"{p}\n" for p in GT_BIDSIGNORE))


def write_raw_description(root: Path, name: str, readme: str) -> None:
    write_json(root / "dataset_description.json", {
        "Name": name,
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "raw",
        "License": "CC0",
        "Authors": ["qsmprep developers"],
        "GeneratedBy": [{"Name": "qsmprep.sim", "Version": __version__,
                         "Description": "Simulated with bids_examples/make_examples.py"}],
    })
    write_text(root / "README", readme)


# ----------------------------------------------------------------------------- datasets
def make_megre(out: Path) -> Path:
    root = out / "ds-megre"
    if root.exists():
        shutil.rmtree(root)
    write_raw_description(root, "qsmprep example: simulated multi-echo GRE (3 T)", (
        "Simulated multi-echo gradient-echo data (3 T) with known susceptibility, made by\n"
        "bids_examples/make_examples.py (qsmprep.sim). sub-01 has two sessions (scan-rescan),\n"
        "phase in int16 scanner units (-4096..4095 = -pi..pi); sub-02 (one haemorrhage, one\n"
        "calcification) has no sessions, 3 echoes and phase in radians (float32). Phase is 0\n"
        "outside the head. Ground truth: derivatives/groundtruth.\n"))
    write_text(root / "participants.tsv", "participant_id\tage\tsex\tgroup\n" + "".join(
        f"{p}\t{a}\t{s}\t{g}\n" for p, a, s, g in PARTICIPANTS))
    write_json(root / "participants.json", {
        "age": {"Description": "age of the participant", "Units": "year"},
        "sex": {"Description": "sex of the participant", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "study group", "Levels": {"control": "healthy control", "patient": "patient"}},
    })
    write_json(root / "MEGRE.json", MEGRE_COMMON)
    gt_root = root / "derivatives" / "groundtruth"
    write_gt_description(gt_root, "ds-megre")
    heads: dict = {}
    for sub, ses, hkw, skw, kind in MEGRE_RUNS:
        hargs = dict(voxel_size=MEGRE_VOXEL_MM, **hkw)
        key = json.dumps(hargs, sort_keys=True)
        if key not in heads:
            heads[key] = ph.make_head(**hargs)
        head = heads[key]
        sargs = dict(b0_t=MEGRE_COMMON["MagneticFieldStrength"], tr_s=MEGRE_COMMON["RepetitionTime"],
                     flip_deg=MEGRE_COMMON["FlipAngle"], **skw)
        sim = fw.simulate_gre(head, **sargs)
        head_c, sim = crop_to_brain(head, sim)
        folder, pre = _prefix(sub, ses)
        d = root / folder
        mag = _mag_int16(sim["mag"], sim["noise_sigma"])
        phase = _phase_store(sim["phase"], _head_support(head_c), kind)
        units = {"mag": "arbitrary", "phase": "arbitrary" if kind == "int16" else "rad"}
        for e, te in enumerate(sim["te_s"], start=1):
            write_nifti(d / f"{pre}_echo-{e}_part-mag_MEGRE.nii.gz", mag[..., e - 1], sim["affine"], np.int16)
            write_nifti(d / f"{pre}_echo-{e}_part-phase_MEGRE.nii.gz", phase[..., e - 1], sim["affine"], phase.dtype)
            for part in ("mag", "phase"):
                write_json(d / f"{pre}_echo-{e}_part-{part}_MEGRE.json",
                           {"EchoTime": te, "EchoNumber": e, "Units": units[part]})
        write_groundtruth(gt_root, sub, ses, "echo-1_part-mag_MEGRE.nii.gz", head_c, sim,
                          {"head": hargs, "sim": {k: list(v) if isinstance(v, tuple) else v for k, v in sargs.items()}})
    return root


def make_t2starw(out: Path) -> Path:
    root = out / "ds-t2starw"
    if root.exists():
        shutil.rmtree(root)
    write_raw_description(root, "qsmprep example: simulated single-echo T2*-weighted GRE (7 T, oblique)", (
        "Simulated single-echo T2*-weighted gradient-echo data at 7 T with B0 oblique to the\n"
        f"image axes ({T2S_OBLIQUE_DEG:g} degrees from the third array axis; the affine carries\n"
        "the rotation), made by bids_examples/make_examples.py (qsmprep.sim). Phase in radians,\n"
        "0 outside the head. Ground truth: derivatives/groundtruth.\n"))
    write_text(root / "participants.tsv", "participant_id\tage\tsex\tgroup\nsub-01\t45\tM\tpatient\n")
    hargs = dict(voxel_size=T2S_VOXEL_MM, **T2S_HEAD)
    head = ph.make_head(**hargs)
    t = np.radians(T2S_OBLIQUE_DEG)
    phi = np.radians(30.0)
    b0 = (float(np.sin(t) * np.cos(phi)), float(np.sin(t) * np.sin(phi)), float(np.cos(t)))
    sargs = dict(b0_dir=b0, **T2S_SIM)
    sim = fw.simulate_gre(head, **sargs)
    head, sim = crop_to_brain(head, sim)
    folder, pre = _prefix("01", None)
    d = root / folder
    write_nifti(d / f"{pre}_part-mag_T2starw.nii.gz", _mag_int16(sim["mag"], sim["noise_sigma"])[..., 0], sim["affine"], np.int16)
    write_nifti(d / f"{pre}_part-phase_T2starw.nii.gz", _phase_store(sim["phase"], _head_support(head), "float32")[..., 0],
                sim["affine"], np.float32)
    common = {
        "EchoTime": sim["te_s"][0],
        "MagneticFieldStrength": sim["b0_t"],
        "RepetitionTime": 0.035,
        "FlipAngle": 15,
        "MRAcquisitionType": "3D",
        "Manufacturer": "qsmprep-sim",
    }
    write_json(d / f"{pre}_part-mag_T2starw.json", common)
    write_json(d / f"{pre}_part-phase_T2starw.json", {**common, "Units": "rad"})
    gt_root = root / "derivatives" / "groundtruth"
    write_gt_description(gt_root, "ds-t2starw")
    write_groundtruth(gt_root, "01", None, "part-mag_T2starw.nii.gz", head, sim,
                      {"head": hargs, "sim": {k: list(v) if isinstance(v, tuple) else v for k, v in sargs.items()}})
    return root


def check(root: Path) -> None:
    """Load with pybids and print what it finds (raises if files or EchoTime are missing)."""
    import bids

    layout = bids.BIDSLayout(str(root), derivatives=False, validate=True)
    files = layout.get(extension=".nii.gz")
    if not files:
        raise RuntimeError(f"pybids found no NIfTI files in {root}.")
    for f in files:
        md = layout.get_metadata(f.path)
        if "EchoTime" not in md or "MagneticFieldStrength" not in md:
            raise RuntimeError(f"{f.path}: EchoTime/MagneticFieldStrength missing after sidecar inheritance.")
    print(f"{root.name}: {len(files)} images, subjects {layout.get_subjects()}, sessions {layout.get_sessions()}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE, help="folder that receives ds-megre/ and ds-t2starw/")
    p.add_argument("--only", choices=("megre", "t2starw"), help="make only one dataset")
    p.add_argument("--no-check", action="store_true", help="skip the pybids check")
    args = p.parse_args(argv)
    roots = []
    if args.only in (None, "megre"):
        roots.append(make_megre(args.out))
    if args.only in (None, "t2starw"):
        roots.append(make_t2starw(args.out))
    for r in roots:
        size = sum(f.stat().st_size for f in r.rglob("*") if f.is_file())
        print(f"{r}: {size / 1e6:.2f} MB")
        if not args.no_check:
            check(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
