"""Per-run QSM graph: magnitude + phase echoes -> brain mask -> unwrapped phase -> total field (Hz)
-> local field (ppm) -> chi (ppm, referenced).

Wiring only; every node is a thin interface from :mod:`qsmprep.interfaces`.
"""

from __future__ import annotations

from qsmprep.methods import BACKGROUND_REMOVALS, INVERSIONS, UNWRAPPINGS, get_inversion, reference_echo_time

#: float32 volumes each node holds at its peak, per echo and fixed: ``mem_gb = volume_gb * factor``
#: (derived from the data, not the host).  The inversion's comes from its registry entry
#: (:attr:`qsmprep.methods.Inversion.mem_volumes`).
_MEM_FACTORS = {
    "load_echoes": (4, 2),  # (per echo, fixed)
    "brain_mask": (1, 8),
    "unwrap": (8, 8),
    "fit_field": (8, 12),
    "background": (0, 40),  # padded complex FFTs, one per radius
    "reference": (0, 4),
    "slab_trend": (1, 6),  # the echoes' magnitudes, R2*, chi, the mask
}
_MEM_FLOOR_GB = 0.2


def node_mem_gb(step: str, volume_gb: float, n_echoes: int, inversion: str = "tkd") -> float:
    """Memory estimate of one node in GB from the size of one float32 volume.

    >>> node_mem_gb("reference", 1.0, 4)
    4.0
    >>> node_mem_gb("load_echoes", 0.01, 4)  # small data: the floor
    0.2
    """
    if step == "inversion":
        factor = get_inversion(inversion).mem_volumes
    else:
        per_echo, fixed = _MEM_FACTORS[step]
        factor = per_echo * n_echoes + fixed
    return round(max(_MEM_FLOOR_GB, volume_gb * factor), 3)


def init_qsm_wf(
    *,
    echo_times_s,
    b0_t: float,
    inversion: str = "nsidl",
    unwrapping: str = "romeo",
    background_removal: str = "ismv",
    device: str = "auto",
    use_gpu: bool = False,
    omp_nthreads: int = 1,
    volume_gb: float = 0.01,
    phase_sign: str = "auto",
    single_echo_offset: str = "auto",
    slab_trend: str = "auto",
    parts: str = "mag-phase",
    phase_units: str = "auto",
    name: str = "qsm_wf",
):
    """Build the QSM graph of one run (nothing runs).

    Parameters
    ----------
    echo_times_s : list of float
        Echo times (s), ascending, one per echo.
    b0_t : float
        Main field strength (T).
    inversion : str
        A name of :data:`qsmprep.methods.INVERSIONS` (``nsidl`` by default).
    unwrapping : str
        A name of :data:`qsmprep.methods.UNWRAPPINGS` (``laplacian``: each echo is demeaned before the fit).
    background_removal : str
        A name of :data:`qsmprep.methods.BACKGROUND_REMOVALS` (``ismv`` by default).
    device : str
        ``auto``, ``cpu`` or ``cuda`` for an inversion that uses torch.
    use_gpu : bool
        Reserve a GPU for the inversion node (MultiProc ``n_gpu_procs``, SLURM ``--gres=gpu:1``,
        SGE ``-l gpu=1``); only for an inversion that uses torch.
    omp_nthreads : int
        Threads per node (``n_procs``).
    volume_gb : float
        Size of one float32 3-D volume of this run in GB (for ``mem_gb``).
    phase_sign : str
        ``auto`` (default: :func:`qsmprep.qsm.phase_sign.choose_phase_sign` checks that veins and
        iron come out paramagnetic), ``1`` (phase as stored) or ``-1`` (negated).
    single_echo_offset : str
        One echo only: degree of the receive-phase offset whose background-removal residual is
        removed (:func:`qsmprep.qsm.offsets.remove_offset_residual`): ``auto`` (default), ``2``,
        ``3``, ``4``, or ``0`` (none).  Several echoes fit the offset instead (no node).
    slab_trend : str
        Several echoes only: ``auto`` (default) removes a slab's chi trend along its cut axis
        (:func:`qsmprep.qsm.slab.remove_slab_trend`; whole heads pass unchanged), ``off`` leaves it (no node).
    parts : str
        ``mag-phase`` or ``real-imag`` (the inputs are the real and imaginary parts).
    phase_units : str
        Units of the phase input (``auto``, ``rad``, ``deg``, ``scanner``; :attr:`qsmprep.bids.QsmRun.phase_units`).

    Inputs
    ------
    magnitude, phase : list of files
        One 3-D file per echo in TE order, or one 4-D stack each.

    Outputs
    -------
    magnitude : echo-RSS magnitude (3-D).  magnitude4d : echoes stacked (4-D).
    brain_mask : mask from the magnitude, without signal voids and incoherent-phase voxels.  mask : final mask, where chi is defined (the mask of background removal; with NSIDL's chain fit also the brain mask with its holes filled).
    total_field : Hz.  local_field : ppm (both with the chosen phase sign).  weight : fit weight [0, 1].
    chi : ppm, mean over ``mask`` = 0.  inversion_meta : JSON (algorithm, device, weights).
    qc : JSON of the run's quality control (:mod:`qsmprep.qsm.qc`: measures, thresholds, failed
    checks, warnings, ``passed``; ``steps`` holds the phase-sign and single-echo offset records).
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.io import LoadEchoes
    from qsmprep.interfaces.qsm import (
        BackgroundRemoval,
        BrainMask,
        DipoleInversion,
        FitField,
        OffsetResidual,
        PhaseSign,
        QualityControl,
        ReferenceChi,
        SlabTrend,
        UnwrapEchoes,
    )

    for what, value, choices in (("inversion", inversion, INVERSIONS), ("unwrapping", unwrapping, UNWRAPPINGS),
                                 ("background removal", background_removal, BACKGROUND_REMOVALS)):
        if value not in choices:
            raise ValueError(f"Unknown {what} {value!r}; choose one of {', '.join(choices)}.")
    gpu = bool(use_gpu and INVERSIONS[inversion].uses_torch)
    tes = [float(t) for t in echo_times_s]
    n_echoes = len(tes)

    def mem(step):
        return node_mem_gb(step, volume_gb, n_echoes, inversion)

    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["magnitude", "phase"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["magnitude", "magnitude4d", "brain_mask", "mask", "total_field",
                                      "local_field", "weight", "chi", "inversion_meta", "qc"]),
        name="outputnode",
    )
    load_echoes = pe.Node(LoadEchoes(parts=parts, phase_units=phase_units), name="load_echoes", mem_gb=mem("load_echoes"))
    brain_mask = pe.Node(BrainMask(), name="brain_mask", mem_gb=mem("brain_mask"))
    unwrap = pe.Node(UnwrapEchoes(echo_times=tes, method=unwrapping), name="unwrap",
                     mem_gb=mem("unwrap"), n_procs=omp_nthreads)
    fit_field = pe.Node(FitField(echo_times=tes, demean_echoes=unwrapping == "laplacian"), name="fit_field",
                        mem_gb=mem("fit_field"))
    background = pe.Node(BackgroundRemoval(b0_t=b0_t, method=background_removal), name="background",
                         mem_gb=mem("background"), n_procs=omp_nthreads)
    inversion_node = pe.Node(
        DipoleInversion(method=inversion, b0_t=b0_t, te_s=reference_echo_time(tes), device=device,
                        use_gpu=gpu, num_threads=omp_nthreads),
        name="inversion", mem_gb=mem("inversion"), n_procs=omp_nthreads,
    )
    if gpu:
        # leading spaces: SLURMGraph/SGEGraph append a node's args to the plugin's with no separator
        inversion_node.plugin_args = {"sbatch_args": " --gres=gpu:1", "qsub_args": " -l gpu=1"}
    reference = pe.Node(ReferenceChi(), name="reference", mem_gb=mem("reference"))
    sign = pe.Node(PhaseSign(phase_sign=str(phase_sign)), name="phase_sign", mem_gb=mem("background"))
    qc = pe.Node(QualityControl(echo_times=tes), name="qc", mem_gb=mem("fit_field"))
    records = pe.Node(niu.Merge(2), name="qc_records", run_without_submitting=True)
    # one echo: the phase offset cannot be fitted; remove what background removal left of it
    offset = None
    if n_echoes == 1 and str(single_echo_offset) != "0":
        offset = pe.Node(OffsetResidual(method=background_removal, order=str(single_echo_offset), b0_t=b0_t),
                         name="offset_residual", mem_gb=mem("background"), n_procs=omp_nthreads)
    local_source = offset if offset is not None else background

    workflow.connect([
        (inputnode, load_echoes, [("magnitude", "in_magnitude"), ("phase", "in_phase")]),
        (load_echoes, brain_mask, [("out_magnitude", "in_magnitude"), ("out_phase", "in_phase")]),
        (load_echoes, unwrap, [("out_phase", "in_phase"), ("out_magnitude", "in_magnitude")]),
        (brain_mask, unwrap, [("out_mask", "in_mask")]),
        (unwrap, fit_field, [("out_phase", "in_phase")]),
        (load_echoes, fit_field, [("out_magnitude", "in_magnitude")]),
        (brain_mask, fit_field, [("out_mask", "in_mask")]),
        (fit_field, background, [("out_field", "in_field")]),
        (brain_mask, background, [("out_mask", "in_mask")]),
        (local_source, sign, [("out_field", "in_local")]),
        (background, sign, [("out_mask", "in_mask")]),
        (load_echoes, sign, [("out_combined", "in_magnitude")]),
        (sign, inversion_node, [("out_local", "in_field"), ("out_total", "in_total")]),
        (background, inversion_node, [("out_mask", "in_mask")]),
        (brain_mask, inversion_node, [("out_mask", "in_brain_mask")]),
        (load_echoes, inversion_node, [("out_combined", "in_magnitude")]),
        (fit_field, inversion_node, [("out_weight", "in_weight")]),
        (inversion_node, reference, [("out_mask", "in_mask")]),
        (brain_mask, qc, [("out_mask", "in_brain_mask")]),
        (background, qc, [("out_mask", "in_mask")]),
        (sign, qc, [("out_local", "in_local")]),
        (reference, qc, [("out_chi", "in_chi")]),
        (load_echoes, qc, [("out_combined", "in_magnitude")]),
        (unwrap, qc, [("out_phase", "in_phase_unwrapped")]),
        (fit_field, qc, [("out_field", "in_field"), ("out_offset", "in_offset")]),
        (sign, records, [("out_record", "in1")]),
        (records, qc, [("out", "in_records")]),
        (load_echoes, outputnode, [("out_combined", "magnitude"), ("out_magnitude", "magnitude4d")]),
        (brain_mask, outputnode, [("out_mask", "brain_mask")]),
        (inversion_node, outputnode, [("out_mask", "mask")]),
        (sign, outputnode, [("out_local", "local_field"), ("out_total", "total_field")]),
        (fit_field, outputnode, [("out_weight", "weight")]),
        (reference, outputnode, [("out_chi", "chi")]),
        (inversion_node, outputnode, [("out_meta", "inversion_meta")]),
        (qc, outputnode, [("out_qc", "qc")]),
    ])  # fmt:skip
    if offset is not None:
        # one echo: the total field loses the offset model too, so it stays consistent with the local field
        workflow.connect([
            (background, offset, [("out_field", "in_field"), ("out_mask", "in_mask")]),
            (brain_mask, offset, [("out_mask", "in_brain_mask")]),
            (fit_field, offset, [("out_field", "in_total")]),
            (offset, sign, [("out_total", "in_total")]),
            (offset, records, [("out_record", "in2")]),
        ])  # fmt:skip
    else:
        workflow.connect(fit_field, "out_field", sign, "in_total")
    if n_echoes > 1 and str(slab_trend) != "off":
        # partial coverage: the chi trend along the cut axis that the field does not measure, from R2* classes
        slab = pe.Node(SlabTrend(echo_times=tes), name="slab_trend", mem_gb=mem("slab_trend"))
        workflow.connect([
            (inversion_node, slab, [("out_chi", "in_chi"), ("out_mask", "in_mask")]),
            (brain_mask, slab, [("out_mask", "in_brain_mask")]),
            (load_echoes, slab, [("out_magnitude", "in_magnitude")]),
            (slab, reference, [("out_chi", "in_chi")]),
            (slab, records, [("out_record", "in2")]),
        ])  # fmt:skip
    else:
        workflow.connect(inversion_node, "out_chi", reference, "in_chi")
    return workflow
