"""Atlas workflow: registration to MNI152, DGM labels into the run, chi into MNI, ROI table."""

from __future__ import annotations

#: Methods paragraph for the boilerplate.
DESCRIPTION = (
    "The combined magnitude, brain-masked, was registered to the MNI152 2009a symmetric template "
    "(as shipped with nilearn) with ANTs (antspyx; rigid, affine and SyN stages, Mattes mutual "
    "information, fixed random seed). The deep-gray-matter labels of AAL3 (caudate, putamen, "
    "pallidum, thalamus as the union of its nuclei, substantia nigra and red nucleus, left and "
    "right) were brought into each run's space with label-preserving (genericLabel) "
    "interpolation, and susceptibility statistics were computed in each region after eroding the "
    "labels by 1 mm in whole voxels (floor(1 mm / smallest voxel edge): one voxel at 1 mm, none at "
    "voxels coarser than 1 mm; the number is in each table's sidecar, LabelErosionVoxels)."
)


def init_atlas_wf(*, precise: bool = False, omp_nthreads: int = 1, name: str = "atlas_wf",
                  flavor: str | None = None, reference_region: str = "n/a", seed: int = 20260,
                  erode_mm: float = 1.0):
    """Register a run to MNI152NLin2009aSym, warp DGM labels in and chi out, tabulate ROI chi.

    Parameters
    ----------
    precise : bool
        ``precise`` registration parameters (1 mm template, more iterations) instead of ``fast``.
    omp_nthreads : int
        Threads of the registration node.
    name : str
        Workflow name.
    flavor : str or None
        Override the registration parameter set (``fast``, ``precise``, ``testing``).
    reference_region : str
        Default of ``inputnode.reference_region`` (written in the ROI table).
    seed : int
        ANTs random seed.
    erode_mm : float
        Label erosion before the statistics (mm; 0 disables).

    Inputs
    ------
    magnitude, chi, mask, source_file, t1w (optional), reference_region

    Outputs
    -------
    dseg, dseg_tsv, chi_mni, xfm_to_mni, xfm_from_mni, roi_tsv, roi_json
    """
    from nipype.interfaces import utility as niu
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.atlas import ROIStats, RegisterToMNI, WarpLabelsToRun, WarpToMNI

    workflow = pe.Workflow(name=name)
    workflow.__desc__ = DESCRIPTION
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["magnitude", "chi", "mask", "source_file", "t1w",
                                      "reference_region"], mandatory_inputs=False),
        name="inputnode",
    )
    inputnode.inputs.reference_region = reference_region
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["dseg", "dseg_tsv", "chi_mni", "xfm_to_mni", "xfm_from_mni",
                                      "roi_tsv", "roi_json"]),
        name="outputnode",
    )
    register = pe.Node(RegisterToMNI(precise=precise, seed=seed, num_threads=omp_nthreads),
                       name="register", n_procs=omp_nthreads, mem_gb=2.5)
    if flavor:
        register.inputs.flavor = flavor
    warp_labels = pe.Node(WarpLabelsToRun(), name="warp_labels", mem_gb=1.0)
    warp_chi = pe.Node(WarpToMNI(), name="warp_chi", mem_gb=1.5)
    roi_stats = pe.Node(ROIStats(erode_mm=erode_mm), name="roi_stats", mem_gb=0.5)

    workflow.connect([
        (inputnode, register, [("magnitude", "magnitude"), ("mask", "mask"), ("t1w", "t1w")]),
        (inputnode, warp_labels, [("chi", "reference")]),
        (register, warp_labels, [("xfm_from_mni", "xfm_from_mni")]),
        (inputnode, warp_chi, [("chi", "in_file"), ("mask", "mask")]),
        (register, warp_chi, [("xfm_to_mni", "xfm_to_mni")]),
        (inputnode, roi_stats, [("chi", "chi"), ("mask", "mask"), ("source_file", "source_file"),
                                ("reference_region", "reference_region")]),
        (warp_labels, roi_stats, [("dseg", "dseg")]),
        (warp_labels, outputnode, [("dseg", "dseg"), ("dseg_tsv", "dseg_tsv")]),
        (warp_chi, outputnode, [("out_file", "chi_mni")]),
        (register, outputnode, [("xfm_to_mni", "xfm_to_mni"), ("xfm_from_mni", "xfm_from_mni")]),
        (roi_stats, outputnode, [("roi_tsv", "roi_tsv"), ("roi_json", "roi_json")]),
    ])  # fmt:skip
    return workflow

