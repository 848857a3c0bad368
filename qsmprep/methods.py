"""The methods qsmprep offers, each declared once: name, description, references, resources, call.

Everything that names or runs a method reads it from here: the command-line choices
(:mod:`qsmprep.config`), the Nipype interfaces, ``qsmprep invert``, the dry run, the sidecars,
the report's methods text and the benchmarks.  Pure: no Nipype, no configuration, no file I/O;
numpy/torch in and out (torch only for the methods that use it, imported when they run).

* :data:`INVERSIONS` -- dipole inversions; :func:`invert` runs one and returns chi with its
  sidecar record (one vocabulary for the app and ``qsmprep invert``).
* :data:`BACKGROUND_REMOVALS`, :data:`UNWRAPPINGS` -- the other steps with a choice.
* :data:`CITATIONS` -- references by key, used by the methods text.

Adding an inversion method: write its function (local field in ppm -> chi in ppm) and add ONE
:class:`Inversion` entry to :data:`INVERSIONS` (CONTRIBUTING.md shows a worked example).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np


@dataclass(frozen=True)
class Citation:
    """A reference: ``text`` in the usual author-year-journal form and its DOI."""

    text: str
    doi: str


#: References by key (the methods text and ``CITATION.md`` cite these).
CITATIONS: dict[str, Citation] = {
    "nsidl": Citation("Guo H, Zhang Z, et al. Nonlinear susceptibility inversion deep learning (NSIDL) for "
                      "quantitative susceptibility mapping. Quant Imaging Med Surg. 2026.", "10.21037/qims-2025-1851"),
    "lpcnn": Citation("Lai KW, Aggarwal M, van Zijl P, Li X, Sulam J. Learned proximal networks for quantitative "
                      "susceptibility mapping. MICCAI 2020, LNCS 12262:125-135.", "10.1007/978-3-030-59713-9_13"),
    "ndi": Citation("Polak D, Chatnuntawech I, Yoon J, et al. Nonlinear dipole inversion (NDI) enables robust "
                    "quantitative susceptibility mapping (QSM). NMR Biomed. 2020;33:e4271.", "10.1002/nbm.4271"),
    "tkd": Citation("Shmueli K, de Zwart JA, van Gelderen P, Li TQ, Dodd SJ, Duyn JH. Magnetic susceptibility mapping "
                    "of brain tissue in vivo using MRI phase data. Magn Reson Med. 2009;62:1510-1522.",
                    "10.1002/mrm.22135"),
    "cgl2": Citation("Bilgic B, Chatnuntawech I, Fan AP, et al. Fast image reconstruction with L2-regularization. "
                     "J Magn Reson Imaging. 2014;40:181-191.", "10.1002/jmri.24365"),
    "smvqsm": Citation("Chatnuntawech I, McDaniel P, Cauley SF, et al. Single-step quantitative susceptibility mapping "
                       "with variational penalties. NMR Biomed. 2017;30:e3570.", "10.1002/nbm.3570"),
    "tv": Citation("Bilgic B, Fan AP, Polimeni JR, et al. Fast quantitative susceptibility mapping with L1-regularization "
                   "and automatic parameter selection. Magn Reson Med. 2014;72:1444-1459.", "10.1002/mrm.25029"),
    "fansi": Citation("Milovic C, Bilgic B, Zhao B, Acosta-Cabronero J, Tejos C. Fast nonlinear susceptibility inversion "
                      "with variational regularization. Magn Reson Med. 2018;80:814-821.", "10.1002/mrm.27073"),
    "pdf": Citation("Liu T, Khalidov I, de Rochefort L, et al. A novel background field removal method for MRI using "
                    "projection onto dipole fields (PDF). NMR Biomed. 2011;24:1129-1136.", "10.1002/nbm.1670"),
    "ismv": Citation("Wen Y, Zhou D, Liu T, Spincemaille P, Wang Y. An iterative spherical mean value method for "
                     "background field removal in MRI. Magn Reson Med. 2014;72:1065-1071.", "10.1002/mrm.24816"),
    "vsharp": Citation("Li W, Wu B, Liu C. Quantitative susceptibility mapping of human brain reflects spatial "
                       "variation in tissue composition. NeuroImage. 2011;55:1645-1656.",
                       "10.1016/j.neuroimage.2010.11.088"),
    "romeo": Citation("Dymerska B, Eckstein K, Bachrata B, et al. Phase unwrapping with a rapid opensource minimum "
                      "spanning tree algorithm (ROMEO). Magn Reson Med. 2021;85:2294-2308.", "10.1002/mrm.28563"),
    "laplacian": Citation("Schofield MA, Zhu Y. Fast phase unwrapping algorithm for interferometric applications. "
                          "Opt Lett. 2003;28:1194-1196.", "10.1364/OL.28.001194"),
    "otsu": Citation("Otsu N. A threshold selection method from gray-level histograms. IEEE Trans Syst Man Cybern. "
                     "1979;9:62-66.", "10.1109/TSMC.1979.4310076"),
    "ants": Citation("Avants BB, Tustison NJ, Song G, Cook PA, Klein A, Gee JC. A reproducible evaluation of ANTs "
                     "similarity metric performance in brain image registration. NeuroImage. 2011;54:2033-2044.",
                     "10.1016/j.neuroimage.2010.09.025"),
    "mni152": Citation("Fonov V, Evans AC, Botteron K, Almli CR, McKinstry RC, Collins DL. Unbiased average "
                       "age-appropriate atlases for pediatric studies. NeuroImage. 2011;54:313-327.",
                       "10.1016/j.neuroimage.2010.07.033"),
    "aal3": Citation("Rolls ET, Huang CC, Lin CP, Feng J, Joliot M. Automated anatomical labelling atlas 3. "
                     "NeuroImage. 2020;206:116189.", "10.1016/j.neuroimage.2019.116189"),
    "nipype": Citation("Gorgolewski K, Burns CD, Madison C, et al. Nipype: a flexible, lightweight and extensible "
                       "neuroimaging data processing framework in Python. Front Neuroinform. 2011;5:13.",
                       "10.3389/fninf.2011.00013"),
    "pybids": Citation("Yarkoni T, Markiewicz CJ, de la Vega A, et al. PyBIDS: Python tools for BIDS datasets. "
                       "J Open Source Softw. 2019;4(40):1294.", "10.21105/joss.01294"),
    "echofit": Citation("Robinson SD, Bredies K, Khabipova D, Dymerska B, Marques JP, Schweser F. An illustrated "
                        "comparison of processing methods for MR phase imaging and QSM: combining array coil signals "
                        "and phase unwrapping. NMR Biomed. 2017;30:e3601.", "10.1002/nbm.3601"),
    "numpy": Citation("Harris CR, Millman KJ, van der Walt SJ, et al. Array programming with NumPy. Nature. "
                      "2020;585:357-362.", "10.1038/s41586-020-2649-2"),
    "scipy": Citation("Virtanen P, Gommers R, Oliphant TE, et al. SciPy 1.0: fundamental algorithms for scientific "
                      "computing in Python. Nat Methods. 2020;17:261-272.", "10.1038/s41592-019-0686-2"),
    "pytorch": Citation("Paszke A, Gross S, Massa F, et al. PyTorch: an imperative style, high-performance deep "
                        "learning library. Adv Neural Inf Process Syst. 2019;32:8024-8035.",
                        "10.48550/arXiv.1912.01703"),
}


# --------------------------------------------------------------------------- steps with a choice


@dataclass(frozen=True)
class Step:
    """One method of a processing step: its command-line name, words and references."""

    name: str
    description: str
    citations: tuple[str, ...] = ()


#: Background-field removal (``qsmprep.qsm.background.remove_background(method=name)``).
BACKGROUND_REMOVALS: dict[str, Step] = {
    "ismv": Step("ismv", "iSMV (iterative spherical mean value, radius max(2 x the smallest voxel edge, the largest "
                         "voxel edge), moment-corrected sphere, CG-solved)",
                 ("ismv",)),
    "vsharp": Step("vsharp", "V-SHARP (radii 12 mm down to the voxel size, TSVD threshold 0.05, one rim refinement)",
                   ("vsharp",)),
}
#: Phase unwrapping (``qsmprep.qsm.unwrap.unwrap_echoes(method=name)``).
UNWRAPPINGS: dict[str, Step] = {
    "romeo": Step("romeo", "ROMEO-style quality-guided region growing (magnitude and phase coherence), "
                           "temporal unwrapping of later echoes", ("romeo",)),
    "laplacian": Step("laplacian", "Laplacian (FFT) unwrapping, each echo demeaned before the echo fit",
                      ("laplacian",)),
}


# --------------------------------------------------------------------------- inversions


@dataclass(frozen=True)
class Inversion:
    """A dipole inversion: local field (ppm) -> chi (ppm).

    ``run(local_ppm, mask, voxel_size, b0_dir, *, weight, b0_t, te_s, device, **options)`` returns
    ``(chi, record)``: chi in ppm (any float array; masked by :func:`invert`) and the method's own
    sidecar fields.  ``uses_torch``: the method runs on a torch device (a GPU when one is used).
    ``mem_volumes``: float32 volumes of the run's grid the step holds at its peak (the node's
    ``mem_gb``).  ``needs_phase_scale``: the method needs B0 (T) and a reference TE (s).
    ``options``: the method's own options (keyword -> choices), passed through by the app's node and
    ``qsmprep invert``.  ``weights``: the method runs trained weights (``weights_path`` option).
    ``preflight``: called before anything runs (e.g. the weights file must exist); raises
    FileNotFoundError with a sentence naming what is missing.  ``total_field``: the method also takes
    the total field (ppm, before background removal) and the brain mask the removal started from
    (``total_ppm``, ``brain_mask`` of :func:`invert`); its chi then covers the brain mask with its
    holes filled (``qsmprep.dl.restore.support_mask``), not only the eroded mask.
    """

    name: str
    title: str
    description: str
    run: Callable[..., tuple[np.ndarray, dict]]
    citations: tuple[str, ...] = ()
    uses_torch: bool = False
    mem_volumes: int = 60
    needs_phase_scale: bool = False
    options: dict = field(default_factory=dict)
    weights: bool = False
    preflight: Callable[[], object] | None = None
    total_field: bool = False


def _run_classical(name: str):
    def run(local_ppm, mask, voxel_size, b0_dir, *, weight=None, b0_t=None, te_s=None, device="cpu"):
        from qsmprep.qsm import inversion

        chi = inversion.METHODS[name](local_ppm, mask, voxel_size, b0_dir, **({} if name == "tkd" else {"weight": weight}))
        record = {}
        if name == "ndi":
            # NDI keeps its tuned phase scale (inversion.NDI_DEFAULT_RAD_PER_PPM), not the physical one
            record["PhaseScaleRadPerPpm"] = inversion.NDI_DEFAULT_RAD_PER_PPM
        return chi, record

    return run


def _nsidl_weights_present():
    from qsmprep.dl.weights import WEIGHTS_FOR, weights_info

    return [weights_info(use=use) for use in WEIGHTS_FOR]


#: NSIDL data fits of the app and ``qsmprep invert`` (option ``nsidl_data_fit``).  ``auto`` (the
#: default): ``chain`` when the total field and the brain mask are given, else ``robust``.
#: ``chain``: ``qsmprep.dl.restore.invert_nsidl_chain`` (the network on the local field, signal voids
#: fitted from the field around them, then a TV-regularised SMV-consistent fit of the total field
#: from the network's chi; issue #13).  ``robust`` / ``strong``: ``qsmprep.dl.inference.DATA_FIT``
#: (``strong`` is for clean local fields: simulations, challenge data, total-field methods).
NSIDL_DATA_FITS = ("auto", "chain", "robust", "strong")
#: The ``chain`` data fit's last step, as its sidecar and the methods text name it.
CHAIN_FINAL_FIT = "TV-regularised SMV-consistent fit of the total field (ADMM)"


def _run_nsidl(local_ppm, mask, voxel_size, b0_dir, *, weight=None, b0_t=3.0, te_s=0.02, device="cpu",
               nsidl_data_fit: str = "auto", weights_path: str | None = None, total_ppm=None, brain_mask=None,
               magnitude=None, support=None):
    from qsmprep.dl.inference import DC_WIDTH, data_fit_record, data_fit_settings, invert_nsidl
    from qsmprep.dl.weights import weights_info
    from qsmprep.qsm.constants import rad_per_ppm

    name = str(nsidl_data_fit).lower()
    if name not in NSIDL_DATA_FITS:
        raise ValueError(f"NSIDL data fit must be one of {NSIDL_DATA_FITS}, got {nsidl_data_fit!r}.")
    have_total = total_ppm is not None and brain_mask is not None
    if name == "auto":
        name = "chain" if have_total else "robust"
    info = weights_info(weights_path, use=name)  # each data fit runs its own shipped weights
    import torch

    record = {"WeightsName": info["name"], "WeightsSHA256": info["sha256"],
              "PhaseScaleRadPerPpm": rad_per_ppm(b0_t, te_s), "TorchVersion": torch.__version__}
    if name == "chain":
        if not have_total:
            raise ValueError("The NSIDL 'chain' data fit needs the total field (total_ppm) and the brain mask (brain_mask).")
        from qsmprep.dl import restore

        if support is None:
            support = restore.chi_support(brain_mask, magnitude, voxel_size, b0_t, te_s)
        lam, sigma = restore.final_tv_lambda(local_ppm, mask, voxel_size)
        n_iter = restore.final_iterations(voxel_size)
        chi = restore.invert_nsidl_chain(local_ppm, mask, total_ppm, brain_mask, voxel_size, b0_dir, weight=weight,
                                         b0_t=b0_t, te_s=te_s, device=device, weights_path=weights_path,
                                         final_lam=lam, final_iter=n_iter, final_relax=restore.FINAL_RELAX,
                                         final_refit_voids=restore.FINAL_REFIT_VOIDS,
                                         final_void_iter=restore.FINAL_VOID_ITER,
                                         final_tv_free_voids=restore.FINAL_TV_FREE_VOIDS, support=support,
                                         final_edge_tv=restore.FINAL_EDGE_TV,
                                         final_edge_tv_band=restore.FINAL_EDGE_TV_BAND)
        n_surface = int((support & ~restore.support_mask(brain_mask)).sum())
        record["DataFit"] = {
            "Preset": "chain", "NetworkDataFit": "robust",
            "NetworkGridParts": list(restore.net_splits(voxel_size)),
            "SignalVoids": "kept in the map (zero weight), fitted from the field around them",
            "VoidCorePower": restore.void_core_power(b0_t, te_s),
            "SurfaceVoidVoxels": n_surface,
            "SurfaceVoidsWithoutTV": bool(n_surface and restore.SURFACE_TV_FREE),
            "FinalFit": {"Method": CHAIN_FINAL_FIT,
                         "RadiiMm": list(restore.FINAL_RADII_MM), "TVWeight": lam,
                         "TVWeightRule": f"{restore.FINAL_TV_PER_NOISE} x local-field noise, within "
                                         f"{list(restore.FINAL_TV_RANGE)}, at most {restore.THICK_TV_MAX} "
                                         f"for voxel aspect >= {restore.THICK_ASPECT}",
                         "LocalFieldNoisePpm": None if not np.isfinite(sigma) else round(sigma, 6),
                         "Iterations": n_iter, "OverRelaxation": restore.FINAL_RELAX,
                         "SupportPenalty": restore.FINAL_SUPPORT_MU,
                         "EdgeWeightedTV": None if not restore.FINAL_EDGE_TV else {
                             "Guide": "the fit's start (the network's chi)",
                             "EdgeFraction": restore.FINAL_EDGE_TV[0], "TVFactorOnEdges": restore.FINAL_EDGE_TV[1],
                             "RampBandQuantiles": restore.FINAL_EDGE_TV_BAND,
                             "UniformOn": "the signal voids and a voxel around them"},
                         "VoidsRefitted": restore.FINAL_REFIT_VOIDS,
                         "VoidRefitIterations": restore.FINAL_VOID_ITER if restore.FINAL_REFIT_VOIDS else 0},
        }
        record["OutputMask"] = "brain mask with its holes filled" + (
            " and the signal voids at its surface" if n_surface else "")
        return chi, record
    fit = data_fit_settings(name, local_ppm, mask)
    chi = invert_nsidl(local_ppm, mask, voxel_size, b0_dir, weight=weight, b0_t=b0_t, te_s=te_s, device=device,
                       weights_path=weights_path, data_fit=fit["name"], dc_threshold=fit["dc_threshold"])
    record["DataFit"] = data_fit_record(fit)
    record["KSpaceDataConsistency"] = {"DipoleKernelThreshold": fit["dc_threshold"], "RampWidth": DC_WIDTH}
    return chi, record


def _run_tv(local_ppm, mask, voxel_size, b0_dir, *, weight=None, b0_t=None, te_s=None, device="cpu"):
    from qsmprep.qsm import tv

    chi = tv.tv_admm(local_ppm, mask, voxel_size, b0_dir, weight=weight)
    return chi, {"TVWeight": tv.TV_LAMBDA, "Iterations": tv.TV_N_ITER}


#: Dipole inversions by command-line name (the default first).
INVERSIONS: dict[str, Inversion] = {
    "nsidl": Inversion(
        "nsidl", "NSIDL",
        "NSIDL (unrolled proximal gradient network, nonlinear NDI data term)",
        _run_nsidl, citations=("nsidl", "lpcnn", "ndi", "smvqsm", "tv"), uses_torch=True, mem_volumes=260,
        needs_phase_scale=True, options={"nsidl_data_fit": NSIDL_DATA_FITS}, weights=True,
        preflight=_nsidl_weights_present, total_field=True,
    ),
    "tkd": Inversion("tkd", "TKD", "TKD (truncated k-space division)", _run_classical("tkd"), citations=("tkd",)),
    "cgl2": Inversion("cgl2", "CG-L2", "CG-L2 (weighted Tikhonov, conjugate gradient)", _run_classical("cgl2"),
                      citations=("cgl2",)),
    "ndi": Inversion("ndi", "NDI", "NDI (nonlinear dipole inversion, gradient descent)", _run_classical("ndi"),
                     citations=("ndi",)),
    "tv": Inversion("tv", "TV", "TV (total variation, weighted linear data term, ADMM)", _run_tv,
                    citations=("tv", "fansi"), mem_volumes=80),
}
DEFAULT_INVERSION = "nsidl"


def reference_echo_time(echo_times_s: Sequence[float]) -> float:
    """Reference TE (s) of the nonlinear data term for these echoes: their mean (rounded to 1 ns).

    >>> reference_echo_time([0.01, 0.02, 0.03])
    0.02
    """
    tes = [float(t) for t in echo_times_s]
    return round(sum(tes) / len(tes), 9)


def get_inversion(name: str) -> Inversion:
    """The :class:`Inversion` called ``name``; ValueError naming the choices otherwise."""
    try:
        return INVERSIONS[str(name)]
    except KeyError:
        raise ValueError(f"Unknown inversion {name!r}; choose one of {', '.join(INVERSIONS)}.") from None


def chi_mask(method: str, mask: np.ndarray, brain_mask: np.ndarray | None = None, *,
             magnitude: np.ndarray | None = None, voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
             b0_t: float | None = None, te_s: float | None = None, support: np.ndarray | None = None) -> np.ndarray:
    """Where :func:`invert` gives chi: the local field's mask, or, for a method that uses the total
    field when it and the brain mask are given, also chi's support there (``qsmprep.dl.restore.chi_support``:
    the brain mask with its holes filled and, with long echoes and the ``magnitude``, the voids at its
    surface; ``support``: that support when the caller has it already)."""
    m = np.asarray(mask) > 0
    if get_inversion(method).total_field and brain_mask is not None:
        if support is None:
            support = total_field_support(brain_mask, magnitude, voxel_size, b0_t, te_s)
        return m | (np.asarray(support) > 0)
    return m


def total_field_support(brain_mask: np.ndarray, magnitude: np.ndarray | None = None,
                        voxel_size: Sequence[float] = (1.0, 1.0, 1.0), b0_t: float | None = None,
                        te_s: float | None = None) -> np.ndarray:
    """chi's support for the methods that use the total field (``qsmprep.dl.restore.chi_support``), computed
    once by the caller and passed to :func:`chi_mask` and :func:`invert` as ``support`` (with long echoes the
    surface-void search takes seconds on a 1 mm head)."""
    from qsmprep.dl.restore import chi_support

    return chi_support(np.asarray(brain_mask) > 0, magnitude, voxel_size, b0_t, te_s)


def invert(
    method: str,
    local_ppm: np.ndarray,
    mask: np.ndarray,
    voxel_size: Sequence[float],
    b0_dir: Sequence[float],
    *,
    weight: np.ndarray | None = None,
    b0_t: float | None = None,
    te_s: float | None = None,
    device: str = "cpu",
    total_ppm: np.ndarray | None = None,
    brain_mask: np.ndarray | None = None,
    magnitude: np.ndarray | None = None,
    support: np.ndarray | None = None,
    **options,
) -> tuple[np.ndarray, dict]:
    """Run the inversion ``method``; returns ``(chi, record)``.

    Parameters
    ----------
    local_ppm : 3-D local field in ppm.  mask : 3-D mask where it is valid (bool or 0/1).
    voxel_size : mm.  b0_dir : unit B0 vector in array axes.
    weight : data weight (magnitude or fit weight; any scale) or None.
    b0_t, te_s : field strength (T) and reference echo time (s); required by the methods with
        ``needs_phase_scale``.
    device : ``auto``, ``cpu`` or ``cuda`` for torch methods (resolved by
        :func:`qsmprep.utils.gpu.resolve_device`); classical methods always run on the CPU.
    total_ppm, brain_mask : the total field (ppm, before background removal) and the brain mask the
        removal started from; used by the methods with ``total_field`` (NSIDL's default data fit),
        ignored by the others.  With them chi covers the brain mask with its holes filled.
    magnitude : the combined magnitude (any units), for the same methods: with long echoes the signal voids
        at the brain's surface join chi's support (``qsmprep.dl.restore.chi_support``).
    support : that support (:func:`total_field_support`) when the caller has it already; else computed here once.
    options : method options (e.g. ``nsidl_data_fit``, ``weights_path`` for NSIDL).

    Returns chi in ppm (float32, zero outside the mask, not referenced) and the sidecar record:
    ``InversionMethod``, ``EstimationAlgorithm``, ``EstimationSoftwareName`` / ``Version``,
    ``Device``, ``B0Direction``, ``MagneticFieldStrength`` and ``ReferenceEchoTime`` when known, and
    the method's own fields (e.g. ``WeightsSHA256``, ``DataFit``, ``PhaseScaleRadPerPpm``).
    """
    from qsmprep import __version__
    from qsmprep.utils.gpu import resolve_device

    inv = get_inversion(method)
    if inv.needs_phase_scale and (b0_t is None or te_s is None):
        raise ValueError(f"The {inv.title} inversion needs the field strength (b0_t, T) and a reference echo time (te_s, s).")
    dev = resolve_device(device) if inv.uses_torch else "cpu"
    m = np.asarray(mask) > 0
    kwargs = dict(weight=weight, b0_t=b0_t, te_s=te_s, device=dev)
    out_mask = m
    if inv.total_field and total_ppm is not None and brain_mask is not None:
        if support is None:
            support = total_field_support(brain_mask, magnitude, voxel_size, b0_t, te_s)
        support = np.asarray(support) > 0
        out_mask = chi_mask(method, m, brain_mask, support=support)
        kwargs.update(total_ppm=np.asarray(total_ppm, dtype=np.float32), brain_mask=np.asarray(brain_mask) > 0,
                      support=support)
    chi, own = inv.run(np.asarray(local_ppm, dtype=np.float32), m, tuple(float(v) for v in voxel_size),
                       tuple(float(v) for v in b0_dir), **kwargs, **options)
    record = {
        "InversionMethod": inv.name,
        "EstimationAlgorithm": inv.description,
        "EstimationSoftwareName": "qsmprep",
        "EstimationSoftwareVersion": __version__,
        "Device": dev,
        "B0Direction": [float(v) for v in b0_dir],
    }
    if b0_t is not None:
        record["MagneticFieldStrength"] = float(b0_t)
    if te_s is not None:
        record["ReferenceEchoTime"] = float(te_s)
    record.update(own)
    return np.where(out_mask, np.asarray(chi, dtype=np.float32), np.float32(0.0)).astype(np.float32), record
