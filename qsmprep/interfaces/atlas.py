"""Nipype interfaces of the atlas step: each loads files, calls one ``qsmprep.atlas`` function, saves.

* :class:`RegisterToMNI` - :func:`qsmprep.atlas.registration.register_to_template`
* :class:`WarpLabelsToRun` - :func:`qsmprep.atlas.registration.warp_labels_to_run`
* :class:`WarpToMNI` - :func:`qsmprep.atlas.registration.warp_to_template`
* :class:`ROIStats` - :func:`qsmprep.atlas.rois.roi_table`
"""

from __future__ import annotations

import os
import re

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

_ENTITY_RE = {
    "participant_id": re.compile(r"(?:^|_)(sub-[a-zA-Z0-9]+)"),
    "session_id": re.compile(r"(?:^|_)(ses-[a-zA-Z0-9]+)"),
    "acquisition": re.compile(r"(?:^|_)acq-([a-zA-Z0-9]+)"),
    "reconstruction": re.compile(r"(?:^|_)rec-([a-zA-Z0-9]+)"),
    "run": re.compile(r"(?:^|_)run-([a-zA-Z0-9]+)"),
}


def bids_entities(path) -> dict:
    """Row identifiers of a run from a BIDS file name ('n/a' where an entity is absent).

    >>> bids_entities("/x/sub-01_ses-pre_acq-fast_run-2_echo-1_part-mag_MEGRE.nii.gz")
    {'participant_id': 'sub-01', 'session_id': 'ses-pre', 'acquisition': 'fast', 'reconstruction': 'n/a', 'run': '2'}
    >>> bids_entities("sub-02_rec-b_MEGRE.nii")["reconstruction"]
    'b'
    >>> bids_entities("sub-02_MEGRE.nii")["session_id"]
    'n/a'
    """
    name = os.path.basename(str(path))
    out = {}
    for key, rx in _ENTITY_RE.items():
        m = rx.search(name)
        out[key] = m.group(1) if m else "n/a"
    return out


def _load(path):
    import nibabel as nb

    return nb.load(str(path))


def _voxel_size(img):
    from qsmprep.qsm.geometry import voxel_sizes

    return voxel_sizes(img.affine)


# ----------------------------------------------------------------------------- registration
class _RegisterToMNIInputSpec(BaseInterfaceInputSpec):
    magnitude = File(exists=True, mandatory=True, desc="run magnitude (3-D, or 4-D echoes last)")
    mask = File(exists=True, desc="run brain mask (non-zero = brain); the template is skull-stripped")
    t1w = File(exists=True, desc="optional same-session T1w used as intermediate")
    precise = traits.Bool(False, usedefault=True, desc="precise (1 mm, more iterations) parameters")
    flavor = traits.Enum("fast", "precise", "testing", desc="override the parameter set")
    seed = traits.Int(20260, usedefault=True, desc="ANTs random seed (reproducibility)")
    num_threads = traits.Int(1, usedefault=True, nohash=True, desc="ITK threads")


class _RegisterToMNIOutputSpec(TraitedSpec):
    xfm_to_mni = File(exists=True, desc="ITK composite transform run -> MNI152NLin2009aSym (.h5)")
    xfm_from_mni = File(exists=True, desc="ITK composite transform MNI152NLin2009aSym -> run (.h5)")
    seconds = traits.Float(desc="registration wall time in s")
    flavor = traits.Str(desc="parameter set used")


class RegisterToMNI(SimpleInterface):
    """Rigid -> affine -> SyN registration of the magnitude (through a T1w if given) to MNI152."""

    input_spec = _RegisterToMNIInputSpec
    output_spec = _RegisterToMNIOutputSpec

    def _run_interface(self, runtime):
        from qsmprep.atlas.registration import register_to_template

        mask = _load(self.inputs.mask) if isdefined(self.inputs.mask) else None
        t1w = _load(self.inputs.t1w) if isdefined(self.inputs.t1w) else None
        flavor = self.inputs.flavor if isdefined(self.inputs.flavor) else None
        reg = register_to_template(
            _load(self.inputs.magnitude), mask, out_dir=runtime.cwd, t1w=t1w,
            precise=self.inputs.precise, flavor=flavor, seed=self.inputs.seed,
            num_threads=self.inputs.num_threads,
        )
        self._results.update(xfm_to_mni=str(reg.to_mni), xfm_from_mni=str(reg.from_mni),
                             seconds=reg.seconds, flavor=reg.flavor)
        return runtime


# ----------------------------------------------------------------------------- labels into the run
class _WarpLabelsInputSpec(BaseInterfaceInputSpec):
    reference = File(exists=True, mandatory=True, desc="image on the run's grid (chi or magnitude)")
    xfm_from_mni = File(exists=True, mandatory=True, desc="transform MNI -> run")


class _WarpLabelsOutputSpec(TraitedSpec):
    dseg = File(exists=True, desc="12-label DGM segmentation on the run grid (int16)")
    dseg_tsv = File(exists=True, desc="BIDS look-up table of the labels")


class WarpLabelsToRun(SimpleInterface):
    """Warp the 12-label DGM image from MNI into the run (``genericLabel``)."""

    input_spec = _WarpLabelsInputSpec
    output_spec = _WarpLabelsOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb

        from qsmprep.atlas.labels import dseg_table
        from qsmprep.atlas.registration import warp_labels_to_run

        ref = _load(self.inputs.reference)
        img = warp_labels_to_run(ref, self.inputs.xfm_from_mni)
        out = os.path.join(runtime.cwd, "dseg.nii.gz")
        nb.save(img, out)
        tsv = os.path.join(runtime.cwd, "dseg.tsv")
        dseg_table().to_csv(tsv, sep="\t", index=False)
        self._results.update(dseg=out, dseg_tsv=tsv)
        return runtime


# ----------------------------------------------------------------------------- chi into MNI
class _WarpToMNIInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="run-space image (e.g. chi, ppm)")
    xfm_to_mni = File(exists=True, mandatory=True, desc="transform run -> MNI")
    mask = File(exists=True, desc="zero the image outside this mask before warping")
    resolution = traits.Enum(1, 2, usedefault=True, desc="template grid (mm)")


class _WarpToMNIOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="image on the MNI152NLin2009aSym grid (float32)")


class WarpToMNI(SimpleInterface):
    """Resample a run-space image into the MNI template grid (linear)."""

    input_spec = _WarpToMNIInputSpec
    output_spec = _WarpToMNIOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb
        import numpy as np

        from qsmprep.atlas.registration import warp_to_template

        img = _load(self.inputs.in_file)
        if isdefined(self.inputs.mask):
            m = np.asarray(_load(self.inputs.mask).dataobj) > 0
            data = np.where(m, np.asarray(img.dataobj, np.float32), 0).astype(np.float32)
            img = nb.Nifti1Image(data, img.affine)
        out_img = warp_to_template(img, self.inputs.xfm_to_mni, resolution_mm=self.inputs.resolution)
        out = os.path.join(runtime.cwd, "chi_mni.nii.gz")
        nb.save(out_img, out)
        self._results["out_file"] = out
        return runtime


# ----------------------------------------------------------------------------- ROI table
class _ROIStatsInputSpec(BaseInterfaceInputSpec):
    chi = File(exists=True, mandatory=True, desc="susceptibility map (ppm)")
    dseg = File(exists=True, mandatory=True, desc="DGM labels on the chi grid")
    mask = File(exists=True, desc="brain mask; voxels outside are ignored")
    source_file = File(desc="a BIDS input file of the run (names the row identifiers)")
    reference_region = traits.Str("n/a", usedefault=True, desc="region whose mean chi is 0")
    erode_mm = traits.Float(1.0, usedefault=True,
                            desc="erode each label by floor(erode_mm / voxel) voxels")


class _ROIStatsOutputSpec(TraitedSpec):
    roi_tsv = File(exists=True, desc="per-region statistics (TSV)")
    roi_json = File(exists=True, desc="column descriptions (JSON sidecar)")


class ROIStats(SimpleInterface):
    """Per-label chi statistics of one run (:func:`qsmprep.atlas.rois.roi_table`) as TSV + JSON."""

    input_spec = _ROIStatsInputSpec
    output_spec = _ROIStatsOutputSpec

    def _run_interface(self, runtime):
        import numpy as np

        from qsmprep.atlas.rois import erode_mm_to_voxels, roi_sidecar, roi_table, write_roi_table

        chi = _load(self.inputs.chi)
        dseg = _load(self.inputs.dseg)
        mask = np.asarray(_load(self.inputs.mask).dataobj) > 0 if isdefined(self.inputs.mask) else None
        vs = _voxel_size(chi)
        ents = bids_entities(self.inputs.source_file) if isdefined(self.inputs.source_file) else {}
        erode = erode_mm_to_voxels(self.inputs.erode_mm, vs)
        df = roi_table(np.asarray(chi.dataobj, np.float32), np.asarray(dseg.dataobj), vs, mask=mask,
                       reference_region=self.inputs.reference_region, erode_voxels=erode, **ents)
        tsv = os.path.join(runtime.cwd, "roi_stats.tsv")
        js = os.path.join(runtime.cwd, "roi_stats.json")
        write_roi_table(df, tsv, js, sidecar=roi_sidecar(extra={
            "LabelErosionVoxels": erode,
            "Description": "Susceptibility statistics per deep-gray-matter region; labels warped "
                           "from MNI152NLin2009aSym (AAL3) and eroded by LabelErosionVoxels voxels "
                           "(labels that erosion would empty are kept whole), voxels outside the "
                           "brain mask ignored.",
        }))
        self._results.update(roi_tsv=tsv, roi_json=js)
        return runtime
