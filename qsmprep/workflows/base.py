"""Top-level graphs: all participants -> one participant -> one run.

This is the only module under ``workflows/`` that reads the :class:`qsmprep.config.Config`
(:func:`init_qsmprep_wf`); :func:`init_single_subject_wf` takes the settings as keywords
(:meth:`qsmprep.config.Config.workflow_kwargs`).  Building a graph runs nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from qsmprep.methods import BACKGROUND_REMOVALS, INVERSIONS, UNWRAPPINGS

#: First part of the top workflow's name (:func:`top_name`).
TOP_PREFIX = "qsmprep"


def top_name() -> str:
    """The top workflow's name, ``qsmprep_<version>_<fingerprint>_wf`` (its node folders' parent in the work folder):
    the same build of qsmprep gives the same name, so a rerun with the same work folder resumes; another build (an
    upgrade, an edited source, other weights: :func:`qsmprep.utils.build.package_fingerprint`) gets a folder of its
    own and never reuses results that older code computed (Nipype's cache keys on node inputs, not on code)."""
    from qsmprep import __version__
    from qsmprep.utils.build import package_fingerprint

    return _safe(f"{TOP_PREFIX}_{__version__}_{package_fingerprint()}_wf")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def run_metadata(run, *, unwrapping: str, inversion: str, background_removal: str, bids_dir=None) -> dict:
    """Sidecar fields shared by a run's outputs (``SpatialReference``: the run's first magnitude image,
    as a ``bids:raw:`` URI, when it lies in ``bids_dir``)."""
    meta = {
        "EchoTime": [float(t) for t in run.echo_times_s],
        "MagneticFieldStrength": float(run.b0_t),
        "B0Direction": [round(float(v), 6) for v in run.b0_dir],
        "InputPhaseUnits": run.phase_units,
        "PhaseUnwrapping": UNWRAPPINGS[unwrapping].description,
        "BackgroundFieldRemoval": BACKGROUND_REMOVALS[background_removal].description,
        "DipoleInversion": INVERSIONS[inversion].description,
        "InputParts": run.parts,
        "B0TransformSource": run.b0_source,
    }
    first = Path(run.magnitude[0])
    if bids_dir is not None and first.is_relative_to(Path(bids_dir)):
        meta["SpatialReference"] = f"bids:raw:{first.relative_to(Path(bids_dir))}"
    return meta


def init_single_subject_wf(
    *,
    subject: str,
    runs,
    bids_dir,
    output_dir,
    inversion: str,
    unwrapping: str,
    background_removal: str,
    skip_atlas: bool,
    atlas_precise: bool,
    sloppy: bool,
    phase_sign: str = "auto",
    single_echo_offset: str = "auto",
    slab_trend: str = "auto",
    device: str = "auto",
    use_gpu: bool = False,
    omp_nthreads: int = 1,
    seed: int = 20260,
    md_only_boilerplate: bool = False,
    name: str | None = None,
):
    """All runs of one participant: per run the QSM graph, the atlas graph and the writers, then the
    subject's report once everything is written.

    The processing keywords are the fields of :class:`qsmprep.config.WorkflowSettings`; ``device``,
    ``use_gpu`` and ``omp_nthreads`` are the resolved resources, ``seed`` the master random seed
    (it seeds ANTs' registration) and ``md_only_boilerplate`` writes the methods text as Markdown only.
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.reports import SubjectReport
    from qsmprep.naming import subject_dir
    from qsmprep.workflows.outputs import ATLAS_FIELDS, REFERENCE_REGION, init_ds_atlas_wf, init_ds_qsm_wf
    from qsmprep.workflows.qsm import init_qsm_wf

    workflow = pe.Workflow(name=name or f"sub_{_safe(subject)}_wf")
    bids_dir = Path(bids_dir)
    written = []  # (workflow, field) of every data-sink group, for the report
    for run in runs:
        if run.subject != subject:
            raise ValueError(f"Run {run.prefix} does not belong to subject {subject}.")
        run_id = _safe(run.prefix[len(f"sub-{subject}"):].strip("_")) or "single"
        base_dir = subject_dir(run.subject, run.session)
        qsm_wf = init_qsm_wf(
            echo_times_s=list(run.echo_times_s), b0_t=run.b0_t, inversion=inversion, unwrapping=unwrapping,
            background_removal=background_removal, device=device, use_gpu=use_gpu, omp_nthreads=omp_nthreads,
            volume_gb=run.volume_gb(), phase_sign=phase_sign, single_echo_offset=single_echo_offset,
            slab_trend=slab_trend,
            parts=run.parts, phase_units=run.phase_units, name=f"qsm_{run_id}_wf",
        )
        qsm_wf.inputs.inputnode.magnitude = [str(p) for p in run.magnitude]
        qsm_wf.inputs.inputnode.phase = [str(p) for p in run.phase]
        sources = [str(Path(p).relative_to(bids_dir)) if Path(p).is_relative_to(bids_dir) else str(p)
                   for p in (*run.magnitude, *run.phase)]
        ds_wf = init_ds_qsm_wf(
            output_dir=output_dir, prefix=run.prefix, base_dir=base_dir, source_files=sources,
            run_metadata=run_metadata(run, unwrapping=unwrapping, inversion=inversion,
                                      background_removal=background_removal, bids_dir=bids_dir), name=f"ds_qsm_{run_id}_wf",
        )
        workflow.connect([
            (qsm_wf, ds_wf, [
                ("outputnode.mask", "inputnode.mask"),
                ("outputnode.total_field", "inputnode.total_field"),
                ("outputnode.local_field", "inputnode.local_field"),
                ("outputnode.magnitude", "inputnode.magnitude"),
                ("outputnode.chi", "inputnode.chi"),
                ("outputnode.inversion_meta", "inputnode.inversion_meta"),
                ("outputnode.qc", "inputnode.qc"),
            ]),
        ])  # fmt:skip
        written.append(ds_wf)
        if not skip_atlas:
            from qsmprep.workflows.atlas import init_atlas_wf

            atlas_wf = init_atlas_wf(precise=atlas_precise, omp_nthreads=omp_nthreads, name=f"atlas_{run_id}_wf",
                                     reference_region=REFERENCE_REGION, seed=seed,
                                     flavor="testing" if sloppy else None)
            atlas_wf.inputs.inputnode.source_file = str(run.magnitude[0])
            if run.t1w:
                atlas_wf.inputs.inputnode.t1w = str(run.t1w)
            ds_atlas_wf = init_ds_atlas_wf(
                output_dir=output_dir, prefix=run.prefix, base_dir=base_dir, source_files=sources,
                spatial_reference=run_metadata(run, unwrapping=unwrapping, inversion=inversion,
                                               background_removal=background_removal,
                                               bids_dir=bids_dir).get("SpatialReference"),
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
            written.append(ds_atlas_wf)

    merge = pe.Node(niu.Merge(len(written)), name="written", run_without_submitting=True)
    for i, ds in enumerate(written, 1):
        workflow.connect(ds, "outputnode.out_files", merge, f"in{i}")
    report = pe.Node(SubjectReport(out_dir=str(output_dir), subject=subject, bids_dir=str(bids_dir),
                                   md_only=md_only_boilerplate), name="report", mem_gb=0.5)
    workflow.connect(merge, "out", report, "in_files")
    return workflow


def init_qsmprep_wf(config, runs):
    """The whole participant-level graph for ``runs`` (list of :class:`qsmprep.bids.QsmRun`).

    Reads the config's ``execution`` paths and :meth:`~qsmprep.config.Config.workflow_kwargs`;
    the work folder is ``config.execution.work_dir``.  Nothing runs.
    """
    from nipype.pipeline import engine as pe

    workflow = pe.Workflow(name=top_name(), base_dir=str(config.execution.work_dir))
    for subject in sorted({r.subject for r in runs}):
        sub_wf = init_single_subject_wf(
            subject=subject,
            runs=[r for r in runs if r.subject == subject],
            bids_dir=config.execution.bids_dir,
            output_dir=config.execution.output_dir,
            **config.workflow_kwargs(),
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
