"""Registration of a run's magnitude (optionally through a same-session T1w) to MNI152 with antspyx.

One ``antsRegistration`` call runs rigid -> affine -> SyN with Mattes mutual information (the
GRE magnitude and the T1w template differ in contrast), starting from a centre-of-mass
alignment, with a fixed random seed.  Two parameter sets:

* ``fast`` (default): the fixed image is the 2 mm template, fewer iterations
  (1 mm simulated head: 93 s of CPU time in all, i.e. under 2 min on 2 cores; Dice 0.86-0.95);
* ``precise``: the 1 mm template, more levels and iterations (686 s of CPU time; on the
  simulated heads it was *not* more accurate than ``fast``: the magnitude/T1w contrast
  mismatch, not the grid, limits the Dice).

Reproducibility: the ANTs seed is fixed, but with several ITK threads the threaded metric sums
can move a few boundary voxels; bit-identical reruns need ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=1``
set *before* ANTs is first used in the process (ITK reads it once).

The result is two ITK composite transforms (``.h5``): ``to_mni`` maps run-space images into
MNI (``apply_transforms(fixed=MNI, moving=run, [to_mni])``) and ``from_mni`` maps MNI images
(labels) into the run (``apply_transforms(fixed=run, moving=MNI, [from_mni])``).

Images are passed as nibabel images; the transforms are files because that is what ANTs
writes.  ``ants`` is imported inside the functions (it takes ~3 s to import).
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: antsRegistration parameters per flavour: (template resolution mm, stages).
#: Each stage: (transform, convergence iterations, shrink factors, smoothing sigmas in voxels).
PARAMETERS: dict[str, dict] = {
    "fast": {
        "resolution_mm": 2,
        "stages": [
            ("Rigid[0.1]", "500x250x100", "4x2x1", "2x1x0"),
            ("Affine[0.1]", "500x250x100", "4x2x1", "2x1x0"),
            ("SyN[0.15,3,0]", "60x40x20", "4x2x1", "2x1x0"),
        ],
    },
    "precise": {
        "resolution_mm": 1,
        "stages": [
            ("Rigid[0.1]", "1000x500x250x100", "8x4x2x1", "3x2x1x0"),
            ("Affine[0.1]", "1000x500x250x100", "8x4x2x1", "3x2x1x0"),
            ("SyN[0.1,3,0]", "100x70x50x20", "8x4x2x1", "3x2x1x0"),
        ],
    },
    # Unit tests only: coarse (4 mm effective) and few iterations; a few seconds per run.
    "testing": {
        "resolution_mm": 2,
        "stages": [
            ("Rigid[0.1]", "200x100", "4x2", "2x1"),
            ("Affine[0.1]", "200x100", "4x2", "2x1"),
            ("SyN[0.2,3,0]", "40x20", "4x2", "2x1"),
        ],
    },
}

#: Default seed for ANTs' random metric sampling (reproducible runs).
DEFAULT_SEED = 20260


@dataclass
class Registration:
    """Result of :func:`register_to_template`.

    ``to_mni``/``from_mni`` are ITK composite transform files; ``seconds`` the wall time;
    ``flavor`` the parameter set; ``via_t1w`` whether a T1w was used as an intermediate.
    """

    to_mni: Path
    from_mni: Path
    seconds: float
    flavor: str
    via_t1w: bool = False


# ----------------------------------------------------------------------------- helpers
def _to_ants(img, tmpdir: str | os.PathLike, name: str, dtype=np.float32):
    """nibabel image -> ANTsImage (through an uncompressed temporary NIfTI)."""
    import ants
    import nibabel as nb

    path = Path(tmpdir) / f"{name}.nii"
    data = np.asarray(img.dataobj, dtype=dtype)
    out = nb.Nifti1Image(data, img.affine)
    out.set_qform(img.affine, code=1)
    out.set_sform(img.affine, code=1)
    nb.save(out, str(path))
    return ants.image_read(str(path))


def _to_nib(ants_img, tmpdir: str | os.PathLike, name: str, dtype=np.float32):
    """ANTsImage -> in-memory nibabel image (RAS affine from the NIfTI writer)."""
    import nibabel as nb

    path = Path(tmpdir) / f"{name}_out.nii"
    ants_img.to_file(str(path))
    img = nb.load(str(path))
    data = np.asarray(img.dataobj).astype(dtype)
    return nb.Nifti1Image(data, img.affine)


def prepare_moving(magnitude, mask=None):
    """Combined, brain-masked, robustly scaled magnitude (nibabel float32) for registration.

    A 4-D magnitude (echoes last) is combined by root-sum-of-squares.  Intensities are divided
    by the 99th percentile inside the mask, so the template (in [0, 1]) and the moving image have
    comparable ranges.  Outside the mask the image is 0 (the template is skull-stripped).
    """
    import nibabel as nb

    data = np.asarray(magnitude.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = np.sqrt(np.sum(data.astype(np.float64) ** 2, axis=-1)).astype(np.float32)
    if data.ndim != 3:
        raise ValueError(f"The magnitude must be 3-D or 4-D (echoes last), got shape {data.shape}.")
    data = np.nan_to_num(data)
    if mask is not None:
        m = np.asarray(mask.dataobj) > 0
        if m.shape != data.shape:
            raise ValueError(f"Mask shape {m.shape} differs from magnitude shape {data.shape}; "
                             "pass the brain mask of the same run.")
        data = np.where(m, data, 0.0).astype(np.float32)
        ref = data[m]
    else:
        ref = data[data > 0]
    scale = float(np.percentile(ref, 99)) if ref.size else 1.0
    if scale > 0:
        data = data / scale
    return nb.Nifti1Image(data.astype(np.float32), magnitude.affine)


def _run_ants_registration(fixed_path, moving_path, out_prefix, stages, *, seed, metric="Mattes",
                           init=None, write_composite=True):
    """Call the antsRegistration library entry point with an explicit argument list."""
    from ants.internal import get_lib_fn, process_arguments

    args = ["--dimensionality", "3", "--float", "1", "--collapse-output-transforms", "1",
            "--output", f"[{out_prefix}]", "--interpolation", "Linear",
            "--winsorize-image-intensities", "[0.005,0.995]", "--use-histogram-matching", "0",
            "--initial-moving-transform", init or f"[{fixed_path},{moving_path},1]",
            "--write-composite-transform", "1" if write_composite else "0",
            "--random-seed", str(int(seed))]
    for transform, iters, shrink, smooth in stages:
        if transform.startswith("SyN"):
            m = f"{metric}[{fixed_path},{moving_path},1,32]"
        else:
            m = f"{metric}[{fixed_path},{moving_path},1,32,Regular,0.3]"
        args += ["--transform", transform, "--metric", m,
                 "--convergence", f"[{iters},1e-6,10]", "--shrink-factors", shrink,
                 "--smoothing-sigmas", f"{smooth}vox"]
    rc = get_lib_fn("antsRegistration")(process_arguments(args))
    if rc != 0:
        raise RuntimeError(f"antsRegistration failed (exit code {rc}) for {moving_path}; "
                           "check that the magnitude and mask overlap a head.")


# ----------------------------------------------------------------------------- public API
def register_to_template(magnitude, mask=None, *, out_dir, t1w=None, precise=False,
                         flavor: str | None = None, seed: int = DEFAULT_SEED,
                         num_threads: int | None = None) -> Registration:
    """Register a run's magnitude (nibabel) to the MNI152 2009 template; write composite transforms.

    Parameters
    ----------
    magnitude : nibabel image, 3-D (or 4-D, echoes last), any units.
    mask : nibabel image or None; the run's brain mask (non-zero = brain).  Strongly recommended:
        the template is skull-stripped.
    out_dir : folder for the transform files (``xfm_to_mni.h5``, ``xfm_from_mni.h5``).
    t1w : nibabel image or None; a same-session T1w.  If given, the magnitude is registered
        rigidly to the T1w and the (skull-stripped) T1w non-linearly to MNI; the two are composed.
    precise : use the ``precise`` parameters (1 mm template, more iterations) instead of ``fast``.
    flavor : override the parameter set by name (``fast``, ``precise``, ``testing``).
    seed : ANTs random seed (metric sampling), fixed for reproducibility.
    num_threads : ITK threads (``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``); None leaves it as is.
    """
    import ants
    import nibabel as nb

    from qsmprep.atlas.templates import template_image

    flavor = flavor or ("precise" if precise else "fast")
    if flavor not in PARAMETERS:
        raise ValueError(f"Unknown registration flavor {flavor!r}; use one of {sorted(PARAMETERS)}.")
    if num_threads:
        os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(int(num_threads))
    params = PARAMETERS[flavor]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    moving = prepare_moving(magnitude, mask)
    with tempfile.TemporaryDirectory(prefix="qsmprep_reg_") as tmp:
        fixed_path = Path(tmp) / "fixed.nii"
        nb.save(template_image(params["resolution_mm"]), str(fixed_path))
        moving_path = Path(tmp) / "moving.nii"
        nb.save(moving, str(moving_path))
        to_mni, from_mni = out_dir / "xfm_to_mni.h5", out_dir / "xfm_from_mni.h5"
        if t1w is None:
            prefix = str(Path(tmp) / "reg_")
            _run_ants_registration(fixed_path, moving_path, prefix, params["stages"], seed=seed)
            os.replace(prefix + "Composite.h5", to_mni)
            os.replace(prefix + "InverseComposite.h5", from_mni)
        else:
            # 1) magnitude -> T1w, rigid.
            t1_path = Path(tmp) / "t1w.nii"
            t1 = np.asarray(t1w.dataobj, dtype=np.float32)
            if t1.ndim != 3:
                raise ValueError(f"The T1w must be 3-D, got shape {t1.shape}.")
            nb.save(nb.Nifti1Image(t1 / max(float(np.percentile(t1, 99)), 1e-6), t1w.affine),
                    str(t1_path))
            rig_prefix = str(Path(tmp) / "rig_")
            _run_ants_registration(t1_path, moving_path, rig_prefix, params["stages"][:1],
                                   seed=seed, write_composite=False)
            rigid = rig_prefix + "0GenericAffine.mat"
            # 2) skull-strip the T1w with the run's mask carried over, then T1w -> MNI.
            t1_ants = ants.image_read(str(t1_path))
            if mask is not None:
                m_ants = _to_ants(mask, tmp, "mask")
                m_t1 = ants.apply_transforms(t1_ants, m_ants, [rigid], interpolator="nearestNeighbor")
                m_t1 = ants.iMath(m_t1, "MD", 3)
                t1_ants = t1_ants * m_t1
            t1b_path = Path(tmp) / "t1w_brain.nii"
            t1_ants.to_file(str(t1b_path))
            prefix = str(Path(tmp) / "reg_")
            _run_ants_registration(fixed_path, t1b_path, prefix, params["stages"], seed=seed)
            # 3) compose into one file per direction (displacement fields on the target grids).
            fixed_ants = ants.image_read(str(fixed_path))
            mov_ants = ants.image_read(str(moving_path))
            ants.apply_transforms(fixed_ants, mov_ants, [prefix + "Composite.h5", rigid],
                                  compose=str(to_mni))
            ants.apply_transforms(mov_ants, fixed_ants, [rigid, prefix + "InverseComposite.h5"],
                                  whichtoinvert=[True, False], compose=str(from_mni))
    return Registration(to_mni=to_mni, from_mni=from_mni, seconds=time.perf_counter() - t0,
                        flavor=flavor, via_t1w=t1w is not None)


def apply_transform(moving, reference, transform, *, interpolation="linear", default_value=0.0,
                    dtype=np.float32):
    """Resample nibabel image ``moving`` onto nibabel ``reference``'s grid through ``transform``.

    ``transform`` is one transform file (or a list, applied last-first as in ANTs).
    ``interpolation``: ``linear``, ``nearestNeighbor``, ``genericLabel``, ``bSpline``...
    Returns an in-memory nibabel image of ``dtype`` on the reference grid.
    """
    import ants

    tl = [str(t) for t in (transform if isinstance(transform, (list, tuple)) else [transform])]
    with tempfile.TemporaryDirectory(prefix="qsmprep_apply_") as tmp:
        ref = _to_ants(reference, tmp, "ref")
        mov = _to_ants(moving, tmp, "mov")
        out = ants.apply_transforms(ref, mov, tl, interpolator=interpolation,
                                    defaultvalue=default_value, whichtoinvert=[False] * len(tl))
        return _to_nib(out, tmp, "out", dtype=dtype)


def warp_labels_to_run(reference, transform_from_mni, dseg_mni=None):
    """Bring the 12-label DGM image (MNI) into the run's grid with ``genericLabel`` (int16 nibabel)."""
    import nibabel as nb

    from qsmprep.atlas.labels import dgm_template_dseg

    dseg_mni = dseg_mni if dseg_mni is not None else dgm_template_dseg()
    ref = nb.Nifti1Image(np.zeros(reference.shape[:3], np.float32), reference.affine)
    out = apply_transform(dseg_mni, ref, transform_from_mni, interpolation="genericLabel")
    data = np.rint(np.asarray(out.dataobj)).astype(np.int16)
    img = nb.Nifti1Image(data, reference.affine)
    img.header.set_data_dtype(np.int16)
    return img


def warp_to_template(img, transform_to_mni, *, resolution_mm: int = 1, interpolation="linear"):
    """Resample a run-space image (e.g. chi in ppm) into the MNI template grid (float32 nibabel)."""
    from qsmprep.atlas.templates import template_image

    return apply_transform(img, template_image(resolution_mm), transform_to_mni,
                           interpolation=interpolation)
