"""Thin Nipype interfaces over the numerical QSM functions.

Each interface loads NIfTI files, checks them, calls ONE function from
:mod:`qsmprep.qsm` (or :mod:`qsmprep.dl`), saves the result as float32 NIfTI in
the node's folder and fills ``self._results``.  Voxel sizes and the B0 direction
come from the image affine (:mod:`qsmprep.qsm.geometry`), never assumed.
Units: phase rad, TE s, B0 T, total field Hz, local field ppm, chi ppm.
"""

from __future__ import annotations

import json
import os

import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from qsmprep.methods import BACKGROUND_REMOVALS, INVERSIONS, NSIDL_DATA_FITS, UNWRAPPINGS


# --------------------------------------------------------------------------- helpers


def load_volume(path, dtype=np.float32):
    """``(data, img)`` of a NIfTI file; data as ``dtype``."""
    import nibabel as nb

    img = nb.load(str(path))
    return np.asarray(img.dataobj, dtype=dtype), img


def save_volume(data, ref_img, fname, newpath, dtype=np.float32) -> str:
    """Save ``data`` on ``ref_img``'s grid as ``newpath/fname``; returns the path."""
    import nibabel as nb

    arr = np.asarray(data, dtype=dtype)
    hdr = ref_img.header.copy()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(arr.shape)
    hdr.set_slope_inter(1.0, 0.0)
    out = nb.Nifti1Image(arr, ref_img.affine, hdr)
    out.header.set_xyzt_units("mm", "sec")
    path = os.path.join(newpath, fname)
    out.to_filename(path)
    return path


def geometry(img):
    """``(voxel_size_mm, b0_dir)`` from a NIfTI image's scanner-based transform
    (:func:`qsmprep.qsm.geometry.header_b0_geometry`: the sform, or the qform when the sform is
    aligned to a template); RuntimeError when the header has neither."""
    from qsmprep.qsm.geometry import header_b0_geometry

    try:
        voxel_size, b0_dir, _ = header_b0_geometry(img.header)
    except ValueError as exc:
        raise RuntimeError(
            f"{img.get_filename()} has {exc}, so the direction of B0 is unknown; write the scanner transform "
            "into the header (qform_code or sform_code 1)."
        ) from None
    return voxel_size, b0_dir


def _mask(path):
    data, _ = load_volume(path, dtype=np.float32)
    mask = data > 0.5
    if not mask.any():
        raise RuntimeError(f"The mask {path} is empty; check the magnitude images and the masking step.")
    return mask


# --------------------------------------------------------------------------- masking


class _BrainMaskInputSpec(BaseInterfaceInputSpec):
    in_magnitude = File(exists=True, mandatory=True, desc="magnitude, 3-D or 4-D (echoes last)")
    in_phase = File(exists=True, desc="wrapped phase (rad), same grid; incoherent-phase voxels are left out")


class _BrainMaskOutputSpec(TraitedSpec):
    out_mask = File(exists=True, desc="brain mask (uint8, 1 inside)")


class BrainMask(SimpleInterface):
    """Brain mask from the magnitude (:func:`qsmprep.qsm.masking.brain_mask`).

    With ``in_phase`` the voxels of incoherent (aliased or noisy) phase are left out, as
    are signal voids (always): both would spoil the field fit and V-SHARP around them.
    """

    input_spec = _BrainMaskInputSpec
    output_spec = _BrainMaskOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.masking import brain_mask

        mag, img = load_volume(self.inputs.in_magnitude)
        voxel_size, _ = geometry(img)
        phase = load_volume(self.inputs.in_phase)[0] if isdefined(self.inputs.in_phase) else None
        if phase is not None and phase.shape[:3] != mag.shape[:3]:
            raise RuntimeError(
                f"The phase {self.inputs.in_phase} ({phase.shape}) and magnitude {self.inputs.in_magnitude} "
                f"({mag.shape}) are on different grids; give both parts of the same run."
            )
        mask = brain_mask(mag, voxel_size=voxel_size, phase=phase)
        if not np.any(mask):
            raise RuntimeError(f"The brain mask of {self.inputs.in_magnitude} is empty; check the magnitude images.")
        self._results["out_mask"] = save_volume(mask, img, "brain_mask.nii.gz", runtime.cwd, dtype=np.uint8)
        return runtime


# --------------------------------------------------------------------------- unwrapping


class _UnwrapInputSpec(BaseInterfaceInputSpec):
    in_phase = File(exists=True, mandatory=True, desc="wrapped phase (rad), 4-D echoes last")
    in_magnitude = File(exists=True, mandatory=True, desc="magnitude, 4-D echoes last")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    method = traits.Enum(*UNWRAPPINGS, usedefault=True, desc="unwrapping method")


class _UnwrapOutputSpec(TraitedSpec):
    out_phase = File(exists=True, desc="unwrapped phase (rad), 4-D")


class UnwrapEchoes(SimpleInterface):
    """Spatial/temporal phase unwrapping (:func:`qsmprep.qsm.unwrap.unwrap_echoes`)."""

    input_spec = _UnwrapInputSpec
    output_spec = _UnwrapOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.unwrap import unwrap_echoes

        phase, img = load_volume(self.inputs.in_phase)
        mag, _ = load_volume(self.inputs.in_magnitude)
        mask = _mask(self.inputs.in_mask)
        voxel_size, _ = geometry(img)
        if phase.ndim == 3:
            phase, mag = phase[..., None], mag[..., None]
        out = unwrap_echoes(
            phase, mag, list(self.inputs.echo_times), mask, method=self.inputs.method, voxel_size=voxel_size
        )
        self._results["out_phase"] = save_volume(out, img, "phase_unwrapped.nii.gz", runtime.cwd)
        return runtime


# --------------------------------------------------------------------------- echo fit


class _FitFieldInputSpec(BaseInterfaceInputSpec):
    in_phase = File(exists=True, mandatory=True, desc="unwrapped phase (rad), 4-D echoes last")
    in_magnitude = File(exists=True, mandatory=True, desc="magnitude, 4-D echoes last")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s)")
    demean_echoes = traits.Bool(False, usedefault=True, desc="remove each echo's mean (after Laplacian unwrapping)")


class _FitFieldOutputSpec(TraitedSpec):
    out_field = File(exists=True, desc="total field (Hz)")
    out_offset = File(exists=True, desc="echo-independent phase offset (rad)")
    out_noise = File(exists=True, desc="field noise standard deviation (Hz)")
    out_weight = File(exists=True, desc="data weight in [0, 1] (unit-free)")


class FitField(SimpleInterface):
    """Multi-echo field fit (:func:`qsmprep.qsm.echoes.fit_field`)."""

    input_spec = _FitFieldInputSpec
    output_spec = _FitFieldOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.echoes import fit_field

        phase, img = load_volume(self.inputs.in_phase)
        mag, _ = load_volume(self.inputs.in_magnitude)
        mask = _mask(self.inputs.in_mask)
        fit = fit_field(phase, mag, list(self.inputs.echo_times), mask, demean_echoes=self.inputs.demean_echoes)
        for name, arr in (("field", fit.field_hz), ("offset", fit.offset_rad), ("noise", fit.noise_hz), ("weight", fit.weight)):
            arr = np.where(np.isfinite(arr), arr, 0.0)
            self._results[f"out_{name}"] = save_volume(arr, img, f"{name}.nii.gz", runtime.cwd)
        return runtime


# --------------------------------------------------------------------------- background


class _BackgroundRemovalInputSpec(BaseInterfaceInputSpec):
    in_field = File(exists=True, mandatory=True, desc="total field (Hz)")
    in_mask = File(exists=True, mandatory=True, desc="brain mask")
    b0_t = traits.Float(mandatory=True, desc="main field strength (T)")
    method = traits.Enum(*BACKGROUND_REMOVALS, usedefault=True, desc="background-field removal method")


class _BackgroundRemovalOutputSpec(TraitedSpec):
    out_field = File(exists=True, desc="local field (ppm)")
    out_mask = File(exists=True, desc="eroded mask where the local field is valid")


class BackgroundRemoval(SimpleInterface):
    """Hz -> ppm (:func:`qsmprep.qsm.constants.hz_per_ppm`), then background-field removal
    (:func:`qsmprep.qsm.background.remove_background`)."""

    input_spec = _BackgroundRemovalInputSpec
    output_spec = _BackgroundRemovalOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.background import remove_background
        from qsmprep.qsm.constants import hz_per_ppm

        field_hz, img = load_volume(self.inputs.in_field)
        mask = _mask(self.inputs.in_mask)
        voxel_size, _ = geometry(img)
        local_ppm, eroded = remove_background(field_hz / hz_per_ppm(self.inputs.b0_t), mask, voxel_size=voxel_size,
                                              method=self.inputs.method)
        self._results["out_field"] = save_volume(local_ppm, img, "local_field_ppm.nii.gz", runtime.cwd)
        self._results["out_mask"] = save_volume(eroded, img, "mask_eroded.nii.gz", runtime.cwd, dtype=np.uint8)
        return runtime


# --------------------------------------------------------------------------- single-echo offset


class _OffsetResidualInputSpec(BaseInterfaceInputSpec):
    in_field = File(exists=True, mandatory=True, desc="local field (ppm) from background removal")
    in_mask = File(exists=True, mandatory=True, desc="mask where it is valid (background removal's)")
    in_brain_mask = File(exists=True, mandatory=True, desc="the brain mask background removal was given")
    method = traits.Enum(*BACKGROUND_REMOVALS, usedefault=True, desc="the background-removal method used")
    order = traits.Enum("auto", "0", "2", "3", "4", usedefault=True,
                        desc="polynomial degree of the offset model (qsmprep.qsm.offsets.remove_offset_residual)")
    in_total = File(exists=True, desc="total field (Hz): the fitted offset model is subtracted from it too")
    b0_t = traits.Float(3.0, usedefault=True, desc="main field strength (T), for the total field's Hz")


class _OffsetResidualOutputSpec(TraitedSpec):
    out_field = File(exists=True, desc="local field (ppm) without the offset's residual")
    out_total = File(desc="total field (Hz) without the offset model's non-harmonic part (when in_total is given)")
    out_record = File(exists=True, desc="JSON: order used, share of the local field removed, coefficients")


class OffsetResidual(SimpleInterface):
    """Single echo: remove what background removal left of the receive-phase offset
    (:func:`qsmprep.qsm.offsets.remove_offset_residual`)."""

    input_spec = _OffsetResidualInputSpec
    output_spec = _OffsetResidualOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.offsets import remove_offset_residual

        local, img = load_volume(self.inputs.in_field)
        mask = _mask(self.inputs.in_mask)
        brain = _mask(self.inputs.in_brain_mask)
        voxel_size, _ = geometry(img)
        order = self.inputs.order if self.inputs.order == "auto" else int(self.inputs.order)
        out, record = remove_offset_residual(local, mask, brain, voxel_size, method=self.inputs.method, order=order)
        record["requested"] = self.inputs.order
        record["message"] = (f"Single echo: the receive-phase offset's residual was fitted out of the local field with "
                             f"a degree-{record['order']} polynomial (it explained {record['explained']:.0%} of it)."
                             if record["order"] else "Single echo: no receive-phase offset residual was removed.")
        self._results["out_field"] = save_volume(out, img, "local_field_ppm.nii.gz", runtime.cwd)
        if isdefined(self.inputs.in_total):
            from qsmprep.qsm.constants import hz_per_ppm
            from qsmprep.qsm.offsets import offset_model

            total, timg = load_volume(self.inputs.in_total)
            model = offset_model(total.shape, voxel_size, brain, record) * np.float32(hz_per_ppm(self.inputs.b0_t))
            self._results["out_total"] = save_volume(np.where(brain, total - model, 0.0), timg, "total_field_hz.nii.gz",
                                                     runtime.cwd)
        self._results["out_record"] = _write_json(record, "offset_residual.json", runtime.cwd)
        return runtime


def _write_json(data, fname, newpath) -> str:
    path = os.path.join(newpath, fname)
    with open(path, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    return path


# --------------------------------------------------------------------------- phase sign


class _PhaseSignInputSpec(BaseInterfaceInputSpec):
    in_local = File(exists=True, mandatory=True, desc="local field (ppm) computed with the phase as stored")
    in_total = File(exists=True, mandatory=True, desc="total field (Hz) computed with the phase as stored")
    in_mask = File(exists=True, mandatory=True, desc="mask where the local field is valid")
    in_magnitude = File(exists=True, mandatory=True, desc="magnitude (3-D or 4-D) on the same grid")
    phase_sign = traits.Enum("auto", "1", "-1", usedefault=True,
                             desc="1: as stored; -1: negate; auto: the sign that makes veins and iron paramagnetic")


class _PhaseSignOutputSpec(TraitedSpec):
    out_local = File(exists=True, desc="local field (ppm) with qsmprep's sign")
    out_total = File(exists=True, desc="total field (Hz) with qsmprep's sign")
    out_record = File(exists=True, desc="JSON: the sign, who decided, the evidence, one sentence for the log")


class PhaseSign(SimpleInterface):
    """Apply the phase sign to the fields (:func:`qsmprep.qsm.phase_sign.choose_phase_sign`); logs what it chose."""

    input_spec = _PhaseSignInputSpec
    output_spec = _PhaseSignOutputSpec

    def _run_interface(self, runtime):
        import logging

        from qsmprep.qsm.phase_sign import choose_phase_sign

        local, img = load_volume(self.inputs.in_local)
        total, timg = load_volume(self.inputs.in_total)
        mask = _mask(self.inputs.in_mask)
        mag, _ = load_volume(self.inputs.in_magnitude)
        voxel_size, b0_dir = geometry(img)
        sign, record = choose_phase_sign(local, mask, mag, voxel_size, b0_dir, self.inputs.phase_sign)
        logger = logging.getLogger("nipype.interface")
        (logger.info if record["consistent"] else logger.warning)(record["message"])
        self._results["out_local"] = save_volume(np.float32(sign) * local, img, "local_field_ppm.nii.gz", runtime.cwd)
        self._results["out_total"] = save_volume(np.float32(sign) * total, timg, "total_field_hz.nii.gz", runtime.cwd)
        self._results["out_record"] = _write_json(record, "phase_sign.json", runtime.cwd)
        return runtime


# --------------------------------------------------------------------------- quality control


class _QualityControlInputSpec(BaseInterfaceInputSpec):
    in_brain_mask = File(exists=True, mandatory=True, desc="brain mask")
    in_mask = File(exists=True, mandatory=True, desc="final mask (background removal's)")
    in_local = File(exists=True, mandatory=True, desc="local field (ppm) as inverted")
    in_chi = File(exists=True, mandatory=True, desc="chi (ppm), referenced")
    in_magnitude = File(exists=True, mandatory=True, desc="magnitude (3-D or 4-D)")
    in_phase_unwrapped = File(exists=True, desc="unwrapped phase (rad), 4-D: for the echo disagreement")
    in_field = File(exists=True, desc="fitted total field (Hz), as the fit gave it")
    in_offset = File(exists=True, desc="fitted phase offset (rad)")
    echo_times = traits.List(traits.Float, desc="echo times (s)")
    in_records = traits.List(File(exists=True), desc="JSON records of the steps (phase sign, offset residual, slab trend)")


class _QualityControlOutputSpec(TraitedSpec):
    out_qc = File(exists=True, desc="JSON: measures, thresholds, failed checks, warnings, passed")


class QualityControl(SimpleInterface):
    """Per-run QC measures and flags (:func:`qsmprep.qsm.qc.measures` / :func:`qsmprep.qsm.qc.assess`);
    each failed check is logged as a warning (the run still succeeds)."""

    input_spec = _QualityControlInputSpec
    output_spec = _QualityControlOutputSpec

    def _run_interface(self, runtime):
        import logging

        from qsmprep.qsm.qc import assess, measures

        brain = load_volume(self.inputs.in_brain_mask)[0] > 0.5
        final, img = load_volume(self.inputs.in_mask)
        voxel_size, _ = geometry(img)
        extra = {}
        if isdefined(self.inputs.in_phase_unwrapped) and isdefined(self.inputs.in_field) and isdefined(self.inputs.in_offset):
            extra = dict(phase_uw=load_volume(self.inputs.in_phase_unwrapped)[0],
                         field_hz=load_volume(self.inputs.in_field)[0], offset_rad=load_volume(self.inputs.in_offset)[0])
        values = measures(brain_mask=brain, final_mask=final > 0.5, local_ppm=load_volume(self.inputs.in_local)[0],
                          chi_ppm=load_volume(self.inputs.in_chi)[0], magnitude=load_volume(self.inputs.in_magnitude)[0],
                          voxel_size=voxel_size, te_s=list(self.inputs.echo_times) if isdefined(self.inputs.echo_times) else (),
                          **extra)
        report = assess(values)
        steps = {}
        for path in (self.inputs.in_records if isdefined(self.inputs.in_records) else []):
            name = os.path.splitext(os.path.basename(path))[0]
            steps[name] = json.loads(open(path).read())
        report["steps"] = steps
        logger = logging.getLogger("nipype.interface")
        for line in report["warnings"]:
            logger.warning(line)
        self._results["out_qc"] = _write_json(report, "qc.json", runtime.cwd)
        return runtime


# --------------------------------------------------------------------------- inversion


class _InversionInputSpec(BaseInterfaceInputSpec):
    in_field = File(exists=True, mandatory=True, desc="local field (ppm)")
    in_mask = File(exists=True, mandatory=True, desc="mask where the local field is valid")
    in_weight = File(exists=True, desc="data weight in [0, 1] (optional)")
    in_total = File(exists=True, desc="total field (Hz) before background removal (methods that use it: NSIDL's chain fit)")
    in_brain_mask = File(exists=True, desc="the brain mask background removal started from (with in_total)")
    in_magnitude = File(exists=True, desc="combined magnitude (with in_total): long echoes' voids at the brain's "
                                          "surface join chi's support (qsmprep.dl.restore.chi_support)")
    method = traits.Enum(*INVERSIONS, usedefault=True, desc="inversion method (qsmprep.methods.INVERSIONS)")
    b0_t = traits.Float(3.0, usedefault=True, desc="main field strength (T)")
    te_s = traits.Float(0.02, usedefault=True, desc="reference echo time (s) for the nonlinear data term")
    device = traits.Enum("auto", "cpu", "cuda", usedefault=True, nohash=True, desc="torch device (torch methods)")
    nsidl_data_fit = traits.Enum(*NSIDL_DATA_FITS, usedefault=True,
                                 desc="NSIDL data fit (qsmprep.methods.NSIDL_DATA_FITS); auto: chain with the total field")
    use_gpu = traits.Bool(False, usedefault=True, nohash=True, desc="scheduled on a GPU (Nipype's GPU slots)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="CPU threads")


class _InversionOutputSpec(TraitedSpec):
    out_chi = File(exists=True, desc="susceptibility (ppm), not referenced")
    out_meta = File(exists=True, desc="JSON: the inversion's sidecar record (qsmprep.methods.invert)")
    out_mask = File(exists=True, desc="where chi is defined (qsmprep.methods.chi_mask): the final mask")


class DipoleInversion(SimpleInterface):
    """Dipole inversion local field (ppm) -> chi (ppm) with :func:`qsmprep.methods.invert`.

    ``use_gpu`` (nohash) is the trait Nipype's ``Node.is_gpu_node`` looks for, so
    MultiProc's ``n_gpu_procs`` applies; the device does not enter the cache hash and
    is recorded in ``out_meta`` (and the Chimap sidecar) instead.
    """

    input_spec = _InversionInputSpec
    output_spec = _InversionOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.methods import get_inversion, invert

        local, img = load_volume(self.inputs.in_field)
        mask = _mask(self.inputs.in_mask)
        weight = load_volume(self.inputs.in_weight)[0] if isdefined(self.inputs.in_weight) else None
        voxel_size, b0_dir = geometry(img)
        inv = get_inversion(self.inputs.method)
        if inv.uses_torch:
            import torch

            torch.set_num_threads(max(1, int(self.inputs.num_threads)))
        from qsmprep.methods import chi_mask, total_field_support
        from qsmprep.qsm.constants import hz_per_ppm

        options = {key: getattr(self.inputs, key) for key in inv.options}
        total = brain = mag = support = None
        if inv.total_field and isdefined(self.inputs.in_total) and isdefined(self.inputs.in_brain_mask):
            total = load_volume(self.inputs.in_total)[0] / np.float32(hz_per_ppm(self.inputs.b0_t))
            brain = _mask(self.inputs.in_brain_mask)
            if isdefined(self.inputs.in_magnitude):
                from qsmprep.qsm.echoes import combine_magnitude

                mag = combine_magnitude(load_volume(self.inputs.in_magnitude)[0])
            support = total_field_support(brain, mag, voxel_size, self.inputs.b0_t, self.inputs.te_s)
        chi, meta = invert(self.inputs.method, local, mask, voxel_size, b0_dir, weight=weight, b0_t=self.inputs.b0_t,
                           te_s=self.inputs.te_s, device=self.inputs.device, total_ppm=total, brain_mask=brain,
                           support=support, **options)
        self._results["out_chi"] = save_volume(chi, img, "chi_raw.nii.gz", runtime.cwd)
        out = chi_mask(self.inputs.method, mask, brain, support=support)
        self._results["out_mask"] = save_volume(out, img, "chi_mask.nii.gz", runtime.cwd, dtype=np.uint8)
        path = os.path.join(runtime.cwd, "inversion.json")
        with open(path, "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
        self._results["out_meta"] = path
        return runtime


# --------------------------------------------------------------------------- referencing


class _SlabTrendInputSpec(BaseInterfaceInputSpec):
    in_chi = File(exists=True, mandatory=True, desc="susceptibility (ppm) from the inversion")
    in_mask = File(exists=True, mandatory=True, desc="where chi is defined (the inversion's mask)")
    in_brain_mask = File(exists=True, mandatory=True, desc="the brain mask (it decides whether the run is a slab)")
    in_magnitude = File(exists=True, mandatory=True, desc="the echoes' magnitudes (4-D, echoes last)")
    echo_times = traits.List(traits.Float, mandatory=True, desc="echo times (s), one per magnitude volume")


class _SlabTrendOutputSpec(TraitedSpec):
    out_chi = File(exists=True, desc="susceptibility (ppm) without the slab's unmeasured trend (unchanged for a whole head)")
    out_record = File(exists=True, desc="JSON: whether a cut axis was found, the axis and the trend removed")


class SlabTrend(SimpleInterface):
    """Multi-echo partial coverage: remove the chi trend along the slab's cut axis that chi shares across R2*
    classes (:func:`qsmprep.qsm.slab.remove_slab_trend`); a whole head passes unchanged."""

    input_spec = _SlabTrendInputSpec
    output_spec = _SlabTrendOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.slab import cut_axis, r2star_loglinear, remove_slab_trend

        chi, img = load_volume(self.inputs.in_chi)
        mask = _mask(self.inputs.in_mask)
        brain = _mask(self.inputs.in_brain_mask)
        voxel_size, _ = geometry(img)
        r2s = None
        if cut_axis(brain, voxel_size) is not None:  # the echoes are read only for a slab
            mag, _ = load_volume(self.inputs.in_magnitude)
            r2s = r2star_loglinear(mag, self.inputs.echo_times, mask)
        out, record = remove_slab_trend(chi, mask, r2s, voxel_size, brain_mask=brain)
        self._results["out_chi"] = save_volume(out, img, "chi.nii.gz", runtime.cwd)
        self._results["out_record"] = _write_json(record, "slab_trend.json", runtime.cwd)
        return runtime


class _ReferenceInputSpec(BaseInterfaceInputSpec):
    in_chi = File(exists=True, mandatory=True, desc="susceptibility (ppm)")
    in_mask = File(exists=True, mandatory=True, desc="reference region (the final brain mask)")


class _ReferenceOutputSpec(TraitedSpec):
    out_chi = File(exists=True, desc="susceptibility (ppm), mean over the mask = 0")


class ReferenceChi(SimpleInterface):
    """Whole-brain mean referencing (:func:`qsmprep.qsm.reference.reference_mean`)."""

    input_spec = _ReferenceInputSpec
    output_spec = _ReferenceOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.qsm.reference import reference_mean

        chi, img = load_volume(self.inputs.in_chi)
        mask = _mask(self.inputs.in_mask)
        out, _ = reference_mean(chi, mask)
        self._results["out_chi"] = save_volume(np.where(mask, out, 0.0), img, "chi.nii.gz", runtime.cwd)
        return runtime
