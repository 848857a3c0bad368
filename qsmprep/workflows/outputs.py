"""Derivatives writers: one sink node per output file, names from the run's BIDS entities.

Layout (CONTRIBUTING.md "Derivatives layout"), per run in ``sub-<l>/[ses-<s>/]anat/``
with prefix ``sub-<l>[_ses-<s>][_acq-<a>][_rec-<r>][_run-<r>]``:

* ``_desc-brain_mask.nii.gz`` (final mask, chi is defined inside it),
  ``_desc-total_fieldmap.nii.gz`` (Hz), ``_desc-local_fieldmap.nii.gz`` (ppm),
  ``_Chimap.nii.gz`` (ppm), each with a JSON sidecar;
* atlas: ``_desc-dgm_dseg.nii.gz`` (+ ``.tsv``),
  ``_space-MNI152NLin2009aSym_Chimap.nii.gz``,
  ``_from-T2starw_to-MNI152NLin2009aSym_mode-image_xfm.*`` (and the inverse),
  ``_desc-dgm_stats.tsv`` (+ ``.json``);
* figures in ``sub-<l>/figures/`` and ``sub-<l>.html`` come from
  ``qsmprep.reports.subject.build_subject_report``, run after the graph.
"""

from __future__ import annotations

from qsmprep.interfaces.io import bids_stem

TEMPLATE = "MNI152NLin2009aSym"
REFERENCE_REGION = "whole-brain mean over the final brain mask (eroded by background-field removal)"
#: Outputs of ``qsmprep.workflows.atlas.init_atlas_wf`` that are written.
ATLAS_FIELDS = ("dseg", "dseg_tsv", "chi_mni", "xfm_to_mni", "xfm_from_mni", "roi_tsv", "roi_json")

_METHOD_DESCRIPTIONS = {
    "mask": {"Type": "Brain", "Description": "Brain mask from the magnitude, eroded by background-field removal; chi is defined inside it."},
    "total": {"Units": "Hz", "Description": "Total field from the multi-echo phase fit (echo-independent offset removed)."},
    "local": {"Units": "ppm", "Description": "Local (tissue) field after background-field removal, in ppm of B0."},
    "chi": {"Units": "ppm", "ReferenceRegion": REFERENCE_REGION,
            "Description": "Magnetic susceptibility (chi) map, referenced to the whole-brain mean."},
}


def run_stems(prefix: str, anat_dir: str) -> dict:
    """Relative output paths (without extension) of one run's files.

    >>> stems = run_stems("sub-01_ses-a_run-2", "sub-01/ses-a/anat")
    >>> stems["chi"]
    'sub-01/ses-a/anat/sub-01_ses-a_run-2_Chimap'
    >>> stems["xfm_to_mni"]
    'sub-01/ses-a/anat/sub-01_ses-a_run-2_from-T2starw_to-MNI152NLin2009aSym_mode-image_xfm'
    """
    return {
        "mask": f"{anat_dir}/{bids_stem(prefix, 'mask', desc='brain')}",
        "total_field": f"{anat_dir}/{bids_stem(prefix, 'fieldmap', desc='total')}",
        "local_field": f"{anat_dir}/{bids_stem(prefix, 'fieldmap', desc='local')}",
        "chi": f"{anat_dir}/{bids_stem(prefix, 'Chimap')}",
        "dseg": f"{anat_dir}/{bids_stem(prefix, 'dseg', desc='dgm')}",
        "chi_mni": f"{anat_dir}/{bids_stem(prefix, 'Chimap', space=TEMPLATE)}",
        "xfm_to_mni": f"{anat_dir}/{bids_stem(prefix, 'xfm', **{'from': 'T2starw', 'to': TEMPLATE, 'mode': 'image'})}",
        "xfm_from_mni": f"{anat_dir}/{bids_stem(prefix, 'xfm', **{'from': TEMPLATE, 'to': 'T2starw', 'mode': 'image'})}",
        "roi_stats": f"{anat_dir}/{bids_stem(prefix, 'stats', desc='dgm')}",
    }


def _sink(name, out_dir, out_path, source_files, meta=None, sidecar=True):
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.io import DerivativesSink

    sink = DerivativesSink(base_directory=str(out_dir), out_path=out_path, sidecar=sidecar)
    if source_files:
        sink.inputs.source_files = list(source_files)
    if meta:
        sink.inputs.meta_dict = dict(meta)
    return pe.Node(sink, name=name, run_without_submitting=True, mem_gb=0.2)


def init_ds_qsm_wf(*, output_dir, prefix, anat_dir, source_files=(), run_metadata=None, name="ds_qsm_wf"):
    """Write one run's mask, field maps, chi map and their sidecars (nothing runs now).

    Parameters
    ----------
    output_dir : path of the derivatives dataset.  prefix, anat_dir : from :class:`qsmprep.bids.QsmRun`.
    source_files : bids-relative input paths (``RawSources``).
    run_metadata : dict added to every sidecar (EchoTime list, B0, unwrapping, ...).

    Inputs
    ------
    mask, total_field, local_field, chi, inversion_meta
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    stems = run_stems(prefix, anat_dir)
    common = dict(run_metadata or {})
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["mask", "total_field", "local_field", "chi", "inversion_meta"]),
        name="inputnode",
    )
    ds_mask = _sink("ds_mask", output_dir, stems["mask"], source_files, {**common, **_METHOD_DESCRIPTIONS["mask"]})
    ds_total = _sink("ds_total_field", output_dir, stems["total_field"], source_files,
                     {**common, **_METHOD_DESCRIPTIONS["total"]})
    ds_local = _sink("ds_local_field", output_dir, stems["local_field"], source_files,
                     {**common, **_METHOD_DESCRIPTIONS["local"]})
    ds_chi = _sink("ds_chi", output_dir, stems["chi"], source_files, {**common, **_METHOD_DESCRIPTIONS["chi"]})


    workflow.connect([
        (inputnode, ds_mask, [("mask", "in_file")]),
        (inputnode, ds_total, [("total_field", "in_file")]),
        (inputnode, ds_local, [("local_field", "in_file")]),
        (inputnode, ds_chi, [("chi", "in_file"), ("inversion_meta", "meta_file")]),
    ])  # fmt:skip
    return workflow


def init_ds_atlas_wf(*, output_dir, prefix, anat_dir, source_files=(), name="ds_atlas_wf"):
    """Write the atlas outputs of one run (``init_atlas_wf``'s outputnode fields).

    Inputs
    ------
    dseg, dseg_tsv, chi_mni, xfm_to_mni, xfm_from_mni, roi_tsv, roi_json
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    stems = run_stems(prefix, anat_dir)
    workflow = pe.Workflow(name=name)
    fields = list(ATLAS_FIELDS)
    inputnode = pe.Node(niu.IdentityInterface(fields=fields), name="inputnode")
    ds_dseg = _sink("ds_dseg", output_dir, stems["dseg"], source_files,
                    {"Description": "Deep-gray-matter labels (AAL3-derived) warped to the run's grid."})
    ds_dseg_tsv = _sink("ds_dseg_tsv", output_dir, stems["dseg"], (), sidecar=False)
    ds_chi_mni = _sink("ds_chi_mni", output_dir, stems["chi_mni"], source_files,
                       {"Units": "ppm", "ReferenceRegion": REFERENCE_REGION, "SpatialReference": TEMPLATE})
    ds_xfm_to = _sink("ds_xfm_to_mni", output_dir, stems["xfm_to_mni"], (), sidecar=False)
    ds_xfm_from = _sink("ds_xfm_from_mni", output_dir, stems["xfm_from_mni"], (), sidecar=False)
    ds_roi_tsv = _sink("ds_roi_tsv", output_dir, stems["roi_stats"], (), sidecar=False)
    ds_roi_json = _sink("ds_roi_json", output_dir, stems["roi_stats"], (), sidecar=False)
    workflow.connect([
        (inputnode, ds_dseg, [("dseg", "in_file")]),
        (inputnode, ds_dseg_tsv, [("dseg_tsv", "in_file")]),
        (inputnode, ds_chi_mni, [("chi_mni", "in_file")]),
        (inputnode, ds_xfm_to, [("xfm_to_mni", "in_file")]),
        (inputnode, ds_xfm_from, [("xfm_from_mni", "in_file")]),
        (inputnode, ds_roi_tsv, [("roi_tsv", "in_file")]),
        (inputnode, ds_roi_json, [("roi_json", "in_file")]),
    ])  # fmt:skip
    return workflow
