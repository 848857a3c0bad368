"""Input and output interfaces: stack the echoes, write BIDS derivatives.

* :class:`LoadEchoes` stacks per-echo files (or takes a 4-D stack), converts the
  phase to radians (:func:`qsmprep.qsm.echoes.scale_phase_to_radians`) and
  computes the echo-combined magnitude.
* :class:`DerivativesSink` is the ONLY writer under ``out_dir``: it copies one
  file to its BIDS name through :mod:`qsmprep.utils.atomic` and writes the JSON
  sidecar.  Names come from the naming table :mod:`qsmprep.naming`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

_EXTENSIONS = (".nii.gz", ".nii", ".tsv", ".json", ".png", ".svg", ".html", ".h5", ".mat", ".txt", ".gz")


def split_extension(path) -> tuple[str, str]:
    """``("name", ".nii.gz")`` for known multi-part extensions.

    >>> split_extension("/x/chi.nii.gz")
    ('chi', '.nii.gz')
    >>> split_extension("xfm.h5")
    ('xfm', '.h5')
    """
    name = Path(path).name
    for ext in _EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, ext = os.path.splitext(name)
    return stem, ext


# --------------------------------------------------------------------------- LoadEchoes


class _LoadEchoesInputSpec(BaseInterfaceInputSpec):
    in_magnitude = InputMultiObject(File(exists=True), mandatory=True,
                                    desc="magnitude (or the real part, parts='real-imag'): one 3-D file per echo "
                                         "(TE order) or one 4-D stack")
    in_phase = InputMultiObject(File(exists=True), mandatory=True,
                                desc="phase in phase_units (or the imaginary part), same layout as the magnitude")
    parts = traits.Enum("mag-phase", "real-imag", usedefault=True,
                        desc="what the two inputs hold: magnitude and phase, or real and imaginary parts (GE)")
    phase_units = traits.Enum("auto", "rad", "deg", "scanner", usedefault=True,
                              desc="units of the phase (qsmprep.bids found them; auto: from the values' range)")


class _LoadEchoesOutputSpec(TraitedSpec):
    out_magnitude = File(exists=True, desc="magnitude, 4-D float32, echoes last")
    out_phase = File(exists=True, desc="wrapped phase in rad, 4-D float32, echoes last")
    out_combined = File(exists=True, desc="echo root-sum-of-squares magnitude, 3-D")


def _stack(paths):
    import nibabel as nb

    imgs = [nb.load(str(p)) for p in paths]
    arrays = [np.asarray(im.dataobj, dtype=np.float32) for im in imgs]
    arrays = [a[..., None] if a.ndim == 3 else a for a in arrays]
    return np.concatenate(arrays, axis=3), imgs[0]


class LoadEchoes(SimpleInterface):
    """Stack echoes to 4-D and make magnitude and phase in radians
    (:func:`qsmprep.qsm.echoes.magnitude_phase`: phase units converted, or real/imaginary parts combined)."""

    input_spec = _LoadEchoesInputSpec
    output_spec = _LoadEchoesOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.interfaces.qsm import save_volume
        from qsmprep.qsm.echoes import combine_magnitude, magnitude_phase

        mag, img = _stack(self.inputs.in_magnitude)
        phase, _ = _stack(self.inputs.in_phase)
        if mag.shape != phase.shape:
            raise RuntimeError(
                f"The magnitude ({self.inputs.in_magnitude[0]}, {mag.shape}) and phase "
                f"({self.inputs.in_phase[0]}, {phase.shape}) stacks differ in shape; give every echo "
                "a magnitude and a phase image on the same grid."
            )
        mag, phase = magnitude_phase(mag, phase, self.inputs.parts, self.inputs.phase_units)
        self._results["out_magnitude"] = save_volume(mag, img, "magnitude.nii.gz", runtime.cwd)
        self._results["out_phase"] = save_volume(phase, img, "phase_rad.nii.gz", runtime.cwd)
        self._results["out_combined"] = save_volume(combine_magnitude(mag), img, "magnitude_rss.nii.gz", runtime.cwd)
        return runtime


# --------------------------------------------------------------------------- DerivativesSink


class _DerivativesSinkInputSpec(BaseInterfaceInputSpec):
    base_directory = traits.Str(mandatory=True, desc="root of the derivatives dataset (out_dir)")
    in_file = File(exists=True, mandatory=True, desc="file to store")
    out_path = traits.Str(mandatory=True, desc="relative output path without extension, e.g. sub-01/anat/sub-01_Chimap")
    meta_dict = traits.Dict(desc="static sidecar fields (Units, Description, ...)")
    meta_file = File(exists=True, desc="JSON whose fields are merged into the sidecar (e.g. the inversion's)")
    source_files = traits.List(traits.Str, desc="input files this output was derived from (bids-relative)")
    sidecar = traits.Bool(True, usedefault=True, desc="write a JSON sidecar next to the file")
    compress = traits.Bool(True, usedefault=True, desc="store NIfTI as .nii.gz")


class _DerivativesSinkOutputSpec(TraitedSpec):
    out_file = File(desc="the stored file")
    out_meta = File(desc="its JSON sidecar")


def sidecar_metadata(meta_dict=None, meta_file=None, source_files=None) -> dict:
    """Sidecar content: software name/version, the static fields, the merged JSON, ``Sources`` (BIDS URIs)."""
    from qsmprep import __version__

    meta = {"SoftwareName": "qsmprep", "SoftwareVersion": __version__}
    meta.update(meta_dict or {})
    if meta_file:
        meta.update(json.loads(Path(meta_file).read_text()))
    if source_files:
        meta["Sources"] = [f"bids:raw:{s}" for s in source_files]
    return meta


class DerivativesSink(SimpleInterface):
    """Store one file (and its JSON sidecar) under ``out_dir``, atomically.

    Runs every time (``always_run``), so a rerun that hits the Nipype cache still
    restores outputs that were deleted from ``out_dir``.
    """

    input_spec = _DerivativesSinkInputSpec
    output_spec = _DerivativesSinkOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from qsmprep.utils import atomic

        src = Path(self.inputs.in_file)
        _, ext = split_extension(src)
        dest = Path(self.inputs.base_directory) / self.inputs.out_path
        if ext in (".nii", ".nii.gz"):
            import nibabel as nb

            img = nb.load(str(src))
            units_missing = "unknown" in img.header.get_xyzt_units()
            if (ext == ".nii" and self.inputs.compress) or units_missing:
                ext = ".nii.gz" if self.inputs.compress else ext
                if units_missing:  # BIDS wants the spatial unit in the header (mm)
                    img = nb.Nifti1Image(np.asanyarray(img.dataobj), img.affine, img.header)
                    img.header.set_xyzt_units("mm", "sec")
                out = atomic.save_nifti(img, dest.with_name(dest.name + ext), root=self.inputs.base_directory)
            else:
                out = atomic.copy_file(src, dest.with_name(dest.name + ext), root=self.inputs.base_directory)
        else:
            out = atomic.copy_file(src, dest.with_name(dest.name + ext), root=self.inputs.base_directory)
        self._results["out_file"] = str(out)
        if self.inputs.sidecar and ext != ".json":
            meta = sidecar_metadata(
                self.inputs.meta_dict if isdefined(self.inputs.meta_dict) else None,
                self.inputs.meta_file if isdefined(self.inputs.meta_file) else None,
                self.inputs.source_files if isdefined(self.inputs.source_files) else None,
            )
            self._results["out_meta"] = str(atomic.write_json(dest.with_name(dest.name + ".json"), meta,
                                                              root=self.inputs.base_directory))
        return runtime
