"""Derivatives writers: one sink node per output file, named by :mod:`qsmprep.naming`.

Every name comes from the naming table :data:`qsmprep.naming.OUTPUTS` (shared with the reports
and the group level); this module only wires one :class:`~qsmprep.interfaces.io.DerivativesSink`
per output with its sidecar fields.
"""

from __future__ import annotations

from qsmprep.naming import TEMPLATE, run_stem

REFERENCE_REGION = "whole-brain mean over the final brain mask (eroded by background-field removal)"
#: Outputs of ``qsmprep.workflows.atlas.init_atlas_wf`` that are written.
ATLAS_FIELDS = ("dseg", "dseg_tsv", "chi_mni", "xfm_to_mni", "xfm_from_mni", "roi_tsv", "roi_json")

#: Sidecar fields of each output (BIDS keys; ``SkullStripped`` is required for the maps).
_METHOD_DESCRIPTIONS = {
    "mask": {"Type": "Brain", "Description": "Brain mask from the magnitude, eroded by background-field removal; chi is defined inside it."},
    "total_field": {"Units": "Hz", "SkullStripped": True,
                    "Description": "Total field from the multi-echo phase fit (echo-independent offset removed), inside the brain mask."},
    "local_field": {"Units": "ppm", "SkullStripped": True,
                    "Description": "Local (tissue) field after background-field removal, in ppm of B0."},
    "magnitude": {"SkullStripped": False,
                  "Description": "Echo-combined (root-sum-of-squares) magnitude of the run, the field maps' magnitude."},
    "chi": {"Units": "ppm", "ReferenceRegion": REFERENCE_REGION, "SkullStripped": True,
            "Description": "Magnetic susceptibility (chi) map, referenced to the whole-brain mean."},
    "dseg": {"Description": "Deep-gray-matter labels (AAL3-derived) warped to the run's grid.",
             "structure": {"Description": "Deep-gray-matter structure (caudate, putamen, pallidum, thalamus, substantia "
                                          "nigra, red nucleus)."},
             "hemisphere": {"Description": "Hemisphere.", "Levels": {"L": "left", "R": "right"}},
             "aal3_labels": {"Description": "AAL3 label indices merged into this region (comma-separated)."}},
    "chi_mni": {"Units": "ppm", "ReferenceRegion": REFERENCE_REGION, "SpatialReference": TEMPLATE, "SkullStripped": True,
                "Description": "The chi map resampled into the MNI152NLin2009aSym template."},
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


def init_ds_qsm_wf(*, output_dir, prefix, base_dir, source_files=(), run_metadata=None, name="ds_qsm_wf"):
    """Write one run's mask, field maps, chi map and their sidecars (nothing runs now).

    Parameters
    ----------
    output_dir : path of the derivatives dataset.
    prefix, base_dir : the run's name prefix and ``sub-<l>[/ses-<s>]`` (:class:`qsmprep.bids.QsmRun`).
    source_files : bids-relative input paths (the sidecars' ``Sources``, as ``bids:raw:`` URIs).
    run_metadata : dict added to every sidecar (EchoTime list, B0, unwrapping, ...).

    Inputs
    ------
    mask, total_field, local_field, magnitude, chi, inversion_meta, qc (the QC JSON)

    Outputs
    -------
    out_files : the files written (for nodes that must run after them, e.g. the report)
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    common = dict(run_metadata or {})
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["mask", "total_field", "local_field", "magnitude", "chi", "inversion_meta", "qc"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    keys = ("mask", "total_field", "local_field", "magnitude", "chi", "qc")
    merge = pe.Node(niu.Merge(len(keys)), name="merge_written", run_without_submitting=True)
    for i, key in enumerate(keys, 1):
        if key == "qc":  # a JSON of its own, no sidecar
            sink = _sink("ds_qc", output_dir, run_stem(key, prefix, base_dir), (), sidecar=False)
        else:
            sink = _sink(f"ds_{key}", output_dir, run_stem(key, prefix, base_dir), source_files,
                         {**common, **_METHOD_DESCRIPTIONS[key]})
        workflow.connect([(inputnode, sink, [(key, "in_file")]), (sink, merge, [("out_file", f"in{i}")])])
        if key == "chi":
            workflow.connect(inputnode, "inversion_meta", sink, "meta_file")
    workflow.connect(merge, "out", outputnode, "out_files")
    return workflow


def init_ds_atlas_wf(*, output_dir, prefix, base_dir, source_files=(), spatial_reference=None, name="ds_atlas_wf"):
    """Write the atlas outputs of one run (``init_atlas_wf``'s outputnode fields).

    Inputs
    ------
    dseg, dseg_tsv, chi_mni, xfm_to_mni, xfm_from_mni, roi_tsv, roi_json

    Outputs
    -------
    out_files : the files written
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmprep.naming import OUTPUTS

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=list(ATLAS_FIELDS)), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["out_files"]), name="outputnode")
    merge = pe.Node(niu.Merge(len(ATLAS_FIELDS)), name="merge_written", run_without_submitting=True)
    for i, key in enumerate(ATLAS_FIELDS, 1):
        sidecar = OUTPUTS[key].sidecar
        meta = dict(_METHOD_DESCRIPTIONS.get(key) or {})
        if key == "dseg" and spatial_reference:
            meta["SpatialReference"] = spatial_reference
        sink = _sink(f"ds_{key}", output_dir, run_stem(key, prefix, base_dir), source_files if sidecar else (),
                     meta, sidecar=sidecar)
        workflow.connect([(inputnode, sink, [(key, "in_file")]), (sink, merge, [("out_file", f"in{i}")])])
    workflow.connect(merge, "out", outputnode, "out_files")
    return workflow
