"""Top-level graphs: all participants -> one participant -> one run.

This is the only module under ``workflows/`` that reads the :class:`qsmprep.config.Config`;
the factories it calls take keyword arguments.  Building a graph runs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

#: Name of the top workflow; fixed so that a rerun with the same work folder resumes.
TOP_NAME = "qsmprep_wf"


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def atlas_factory(skip_atlas: bool = False):
    """``qsmprep.workflows.atlas.init_atlas_wf``, or None when skipped or not installed."""
    if skip_atlas:
        return None
    try:
        from qsmprep.workflows.atlas import init_atlas_wf
    except ModuleNotFoundError as exc:
        if exc.name in ("qsmprep.workflows.atlas",):
            return None
        raise
    return init_atlas_wf


BACKGROUND_DESCRIPTIONS = {
    "ismv": "iSMV (iterative spherical mean value, radius 2 x the largest voxel edge, CG-solved)",
    "vsharp": "V-SHARP (radii 12 mm down to the voxel size, TSVD threshold 0.05, one rim refinement)",
}


def workflow_steps(*, inversion: str, unwrapping: str, atlas: bool, precise: bool = False,
                   sloppy: bool = False, background_removal: str = "ismv") -> list[str]:
    """The processing steps in order, in words (for ``--dry-run`` and the log)."""
    inv = {"nsidl": "NSIDL deep-learning inversion (qsmprep.dl.inference.invert_nsidl)",
           "tkd": "TKD inversion", "cgl2": "CG-L2 (weighted Tikhonov) inversion", "ndi": "NDI inversion"}[inversion]
    steps = [
        "load echoes; phase to radians (integer scanner units detected and rescaled)",
        "brain mask from the echo-combined magnitude",
        f"phase unwrapping ({unwrapping})",
        "multi-echo field fit -> total field (Hz)",
        f"background-field removal, {BACKGROUND_DESCRIPTIONS[background_removal]} -> local field (ppm)",
        inv + " -> chi (ppm)",
        "referencing: whole-brain mean = 0",
    ]
    if atlas:
        flavor = "precise" if precise else "sloppy/testing" if sloppy else "fast"
        steps.append(f"registration to MNI152NLin2009aSym ({flavor}) and DGM ROI tables")
    else:
        steps.append("atlas/ROI step skipped")
    steps.append("BIDS derivatives, figures and the subject report")
    return steps


def run_metadata(run, *, unwrapping: str, inversion: str, background_removal: str = "ismv") -> dict:
    """Sidecar fields shared by a run's outputs."""
    return {
        "EchoTime": [float(t) for t in run.echo_times_s],
        "MagneticFieldStrength": float(run.b0_t),
        "B0Direction": [round(float(v), 6) for v in run.b0_dir],
        "InputPhaseUnits": run.phase_units,
        "PhaseUnwrapping": unwrapping,
        "BackgroundFieldRemoval": BACKGROUND_DESCRIPTIONS[background_removal],
        "DipoleInversion": inversion,
    }


def init_single_subject_wf(
    *,
    subject: str,
    runs,
    bids_dir,
    output_dir,
    inversion: str = "nsidl",
    unwrapping: str = "romeo",
    background_removal: str = "ismv",
    skip_atlas: bool = False,
    atlas_precise: bool = False,
    sloppy: bool = False,
    device: str = "auto",
    use_gpu: bool = False,
    omp_nthreads: int = 1,
    seed: int = 20260,
    name: str | None = None,
):
    """All runs of one participant: per run the QSM graph, the atlas graph and the writers.

    ``seed`` is the master random seed (``config.seeds.master``); it seeds ANTs' registration.
    """
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import call_with_supported
    from qsmprep.workflows.outputs import ATLAS_FIELDS, REFERENCE_REGION, init_ds_atlas_wf, init_ds_qsm_wf
    from qsmprep.workflows.qsm import init_qsm_wf

    init_atlas_wf = atlas_factory(skip_atlas)
    workflow = pe.Workflow(name=name or f"sub_{_safe(subject)}_wf")
    bids_dir = Path(bids_dir)
    for run in runs:
        if run.subject != subject:
            raise ValueError(f"Run {run.prefix} does not belong to subject {subject}.")
        run_id = _safe(run.prefix[len(f"sub-{subject}"):].strip("_")) or "single"
        qsm_wf = init_qsm_wf(
            echo_times_s=list(run.echo_times_s), b0_t=run.b0_t, inversion=inversion, unwrapping=unwrapping,
            background_removal=background_removal, device=device, use_gpu=use_gpu, omp_nthreads=omp_nthreads, volume_gb=run.volume_gb(),
            name=f"qsm_{run_id}_wf",
        )
        qsm_wf.inputs.inputnode.magnitude = [str(p) for p in run.magnitude]
        qsm_wf.inputs.inputnode.phase = [str(p) for p in run.phase]
        sources = [str(Path(p).relative_to(bids_dir)) if Path(p).is_relative_to(bids_dir) else str(p)
                   for p in (*run.magnitude, *run.phase)]
        ds_wf = init_ds_qsm_wf(
            output_dir=output_dir, prefix=run.prefix, anat_dir=run.anat_dir, source_files=sources,
            run_metadata=run_metadata(run, unwrapping=unwrapping, inversion=inversion,
                                      background_removal=background_removal), name=f"ds_qsm_{run_id}_wf",
        )
        workflow.connect([
            (qsm_wf, ds_wf, [
                ("outputnode.mask", "inputnode.mask"),
                ("outputnode.total_field", "inputnode.total_field"),
                ("outputnode.local_field", "inputnode.local_field"),
                ("outputnode.chi", "inputnode.chi"),
                ("outputnode.inversion_meta", "inputnode.inversion_meta"),
            ]),
        ])  # fmt:skip
        if init_atlas_wf is not None:
            extra = {"flavor": "testing"} if sloppy else {}
            atlas_wf = call_with_supported(init_atlas_wf, precise=atlas_precise, omp_nthreads=omp_nthreads,
                                           name=f"atlas_{run_id}_wf", reference_region=REFERENCE_REGION, seed=seed,
                                           **extra)
            atlas_wf.inputs.inputnode.source_file = str(run.magnitude[0])
            if getattr(run, "t1w", None):
                atlas_wf.inputs.inputnode.t1w = str(run.t1w)
            ds_atlas_wf = init_ds_atlas_wf(
                output_dir=output_dir, prefix=run.prefix, anat_dir=run.anat_dir, source_files=sources,
                name=f"ds_atlas_{run_id}_wf",
            )
            workflow.connect([
                (qsm_wf, atlas_wf, [
                    ("outputnode.magnitude", "inputnode.magnitude"),
                    ("outputnode.chi", "inputnode.chi"),
                    ("outputnode.mask", "inputnode.mask"),
                ]),
                (atlas_wf, ds_atlas_wf, [(f"outputnode.{f}", f"inputnode.{f}") for f in ATLAS_FIELDS]),
            ])  # fmt:skip
    return workflow


def init_qsmprep_wf(config, runs):
    """The whole participant-level graph for ``runs`` (list of :class:`qsmprep.bids.QsmRun`).

    Reads the config's ``execution``, ``workflow`` and ``nipype`` sections; the
    work folder is ``config.execution.work_dir``.  Nothing runs.
    """
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name=TOP_NAME, base_dir=str(config.execution.work_dir))
    subjects = sorted({r.subject for r in runs})
    for subject in subjects:
        sub_wf = init_single_subject_wf(
            subject=subject,
            runs=[r for r in runs if r.subject == subject],
            bids_dir=config.execution.bids_dir,
            output_dir=config.execution.output_dir,
            inversion=config.workflow.inversion,
            unwrapping=config.workflow.unwrapping,
            background_removal=config.workflow.background_removal,
            skip_atlas=config.workflow.skip_atlas,
            atlas_precise=config.workflow.atlas_precise,
            sloppy=config.workflow.sloppy,
            device=config.nipype.device,
            use_gpu=config.nipype.use_gpu,
            omp_nthreads=config.nipype.resolved_omp_nthreads(),
            seed=config.seeds.master,
        )
        workflow.add_nodes([sub_wf])
    return workflow


def apply_node_plugin_args(workflow, node_plugin_args: dict) -> list[str]:
    """Give nodes extra plugin arguments, e.g. ``{"inversion": {"sbatch_args": "--gres=gpu:1"}}``.

    A key matches a node by its name or by an ``fnmatch`` pattern of its dotted full
    name.  ``sbatch_args`` get a leading space because Nipype's SLURMGraph appends a
    node's ``sbatch_args`` to the plugin's without a separator.  Returns the full
    names of the nodes changed.
    """
    import fnmatch

    changed = []
    if not node_plugin_args:
        return changed
    for node in workflow._get_all_nodes():
        fullname = f"{node._hierarchy}.{node.name}" if node._hierarchy else node.name
        for pattern, args in node_plugin_args.items():
            if node.name == pattern or fnmatch.fnmatchcase(fullname, pattern):
                args = dict(args)
                if "sbatch_args" in args and not args.get("overwrite"):
                    args["sbatch_args"] = " " + str(args["sbatch_args"]).strip()
                node.plugin_args = {**(node.plugin_args or {}), **args}
                changed.append(fullname)
    return changed
