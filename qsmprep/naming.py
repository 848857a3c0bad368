"""The output naming table: one entry per derivative file, shared by the writers, the reports and the
group level.

A run's outputs live in ``sub-<l>/[ses-<s>/]<datatype>/`` with the run's prefix
``sub-<l>[_ses-<s>][_acq-<a>][_rec-<r>][_run-<r>]``, then the derivative entities (``from``,
``to``, ``mode``, ``space``, ``desc``) and the suffix.  Nothing else in qsmprep spells an output
name: the data sinks (:mod:`qsmprep.workflows.outputs`) write :func:`run_path`, the subject report
and the group level find files with :func:`find_runs` / :func:`run_path`.  Pure (no Nipype).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

#: Entity order in derivative names (after sub/ses/acq/rec/run, before the suffix).
DERIVATIVE_ENTITIES = ("from", "to", "mode", "space", "desc")
#: Template space of the atlas outputs.
TEMPLATE = "MNI152NLin2009aSym"


def bids_stem(prefix: str, suffix: str, **entities) -> str:
    """BIDS derivative file stem (no extension).

    >>> bids_stem("sub-01_run-2", "Chimap")
    'sub-01_run-2_Chimap'
    >>> bids_stem("sub-01_ses-a", "mask", desc="brain")
    'sub-01_ses-a_desc-brain_mask'
    >>> bids_stem("sub-01", "xfm", **{"from": "T2starw", "to": "MNI152NLin2009aSym", "mode": "image"})
    'sub-01_from-T2starw_to-MNI152NLin2009aSym_mode-image_xfm'
    """
    unknown = set(entities) - set(DERIVATIVE_ENTITIES)
    if unknown:
        raise ValueError(f"Unknown derivative entities {sorted(unknown)}; use {DERIVATIVE_ENTITIES}.")
    parts = [prefix] + [f"{k}-{entities[k]}" for k in DERIVATIVE_ENTITIES if entities.get(k)]
    return "_".join(parts + ([suffix] if suffix else []))


def fmap_prefix(prefix: str) -> str:
    """A run prefix as a field map's name can carry it: BIDS field maps have no ``rec`` entity, so its label joins
    the ``acq`` label (``acq-<a>rec<r>``, or ``acq-rec<r>``), which keeps runs that differ only in ``rec`` apart.

    >>> fmap_prefix("sub-01_ses-a_acq-fast_rec-mag_run-2")
    'sub-01_ses-a_acq-fastrecmag_run-2'
    >>> fmap_prefix("sub-01_rec-b")
    'sub-01_acq-recb'
    >>> fmap_prefix("sub-01_acq-fast_run-1")
    'sub-01_acq-fast_run-1'
    """
    parts = prefix.split("_")
    rec = next((p for p in parts if p.startswith("rec-")), None)
    if rec is None:
        return prefix
    parts.remove(rec)
    label = "rec" + rec[len("rec-"):]
    acq = next((i for i, p in enumerate(parts) if p.startswith("acq-")), None)
    if acq is not None:
        parts[acq] += label
    else:
        at = next((i for i, p in enumerate(parts) if p.startswith("run-")), len(parts))
        parts.insert(at, "acq-" + label)
    return "_".join(parts)


@dataclass(frozen=True)
class Output:
    """One derivative file of a run: its suffix, entities, extension and folder (datatype)."""

    suffix: str
    extension: str = ".nii.gz"
    entities: dict = field(default_factory=dict)
    datatype: str = "anat"
    sidecar: bool = True
    """A JSON sidecar is written beside it."""

    def stem(self, prefix: str) -> str:
        return bids_stem(fmap_prefix(prefix) if self.datatype == "fmap" else prefix, self.suffix, **self.entities)

    @property
    def tail(self) -> str:
        """The name after the run prefix, e.g. ``_desc-brain_mask.nii.gz``."""
        return bids_stem("", self.suffix, **self.entities) + self.extension


#: Every per-run derivative qsmprep writes (key -> :class:`Output`).  The field maps live in ``fmap/``
#: with the echo-combined magnitude (``_magnitude``), the form the BIDS specification has for field
#: maps (the official validator accepts it; in ``anat/`` it reports ALL_FILENAME_RULES_HAVE_ISSUES).
OUTPUTS: dict[str, Output] = {
    "mask": Output("mask", entities={"desc": "brain"}),
    "total_field": Output("fieldmap", entities={"desc": "total"}, datatype="fmap"),
    "local_field": Output("fieldmap", entities={"desc": "local"}, datatype="fmap"),
    "magnitude": Output("magnitude", datatype="fmap"),
    "chi": Output("Chimap"),
    "dseg": Output("dseg", entities={"desc": "dgm"}),
    "dseg_tsv": Output("dseg", ".tsv", entities={"desc": "dgm"}, sidecar=False),
    "chi_mni": Output("Chimap", entities={"space": TEMPLATE}),
    "xfm_to_mni": Output("xfm", ".h5", entities={"from": "T2starw", "to": TEMPLATE, "mode": "image"}, sidecar=False),
    "xfm_from_mni": Output("xfm", ".h5", entities={"from": TEMPLATE, "to": "T2starw", "mode": "image"}, sidecar=False),
    "roi_tsv": Output("stats", ".tsv", entities={"desc": "dgm"}, sidecar=False),
    "roi_json": Output("stats", ".json", entities={"desc": "dgm"}, sidecar=False),
    #: the run's quality control (``qsmprep.qsm.qc``): measures, thresholds, failed checks, warnings
    "qc": Output("", ".json", entities={"desc": "qc"}, sidecar=False),
}

#: Per-run figures of the subject report, in ``sub-<l>/figures/`` (key -> name after the prefix).
FIGURES = {
    "mask": "_desc-maskmag_mask.png",
    "fields": "_desc-fields_fieldmap.png",
    "chi": "_desc-mosaic_Chimap.png",
    "dgm_contours": "_desc-dgmcontours_Chimap.png",
    "roi_bars": "_desc-dgmbar_Chimap.png",
}
#: Outputs by which :func:`find_runs` recognises a run.
RUN_MARKERS = ("chi", "mask", "roi_tsv")


def subject_dir(subject: str, session: str | None = None) -> str:
    """``sub-<l>[/ses-<s>]`` (labels with or without their prefixes)."""
    sub = subject if str(subject).startswith("sub-") else f"sub-{subject}"
    if not session:
        return sub
    return f"{sub}/{session if str(session).startswith('ses-') else 'ses-' + str(session)}"


def run_path(key: str, prefix: str, base_dir: str) -> str:
    """Path of output ``key`` of the run ``prefix``, relative to ``out_dir``, with its extension.

    ``base_dir`` is the run's ``sub-<l>[/ses-<s>]`` (:func:`subject_dir`).

    >>> run_path("chi", "sub-01_ses-a_run-2", "sub-01/ses-a")
    'sub-01/ses-a/anat/sub-01_ses-a_run-2_Chimap.nii.gz'
    >>> run_path("roi_tsv", "sub-01", "sub-01")
    'sub-01/anat/sub-01_desc-dgm_stats.tsv'
    """
    out = OUTPUTS[key]
    return f"{base_dir}/{out.datatype}/{out.stem(prefix)}{out.extension}"


def run_stem(key: str, prefix: str, base_dir: str) -> str:
    """:func:`run_path` without the extension (what a data sink takes)."""
    return run_path(key, prefix, base_dir)[: -len(OUTPUTS[key].extension)]


def sidecar_path(path: str | Path) -> Path:
    """``X.nii.gz`` / ``X.tsv`` -> ``X.json``."""
    p = Path(path)
    for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".json"):
        if p.name.endswith(ext):
            return p.with_name(p.name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def figure_path(key: str, prefix: str, subject: str) -> str:
    """Path of a report figure of run ``prefix``, relative to ``out_dir``."""
    return f"{subject_dir(subject)}/figures/{prefix}{FIGURES[key]}"


def report_path(subject: str) -> str:
    """The subject's HTML report, relative to ``out_dir``."""
    return f"{subject_dir(subject)}.html"


def find_runs(out_dir, subject) -> dict[str, str]:
    """Run prefixes of ``subject`` with outputs in ``out_dir`` -> their ``sub-<l>[/ses-<s>]`` folder."""
    out_dir = Path(out_dir)
    root = out_dir / subject_dir(subject)
    runs: dict[str, str] = {}
    bases = [root, *sorted(root.glob("ses-*"))]
    for base in bases:
        rel = str(base.relative_to(out_dir))
        for key in RUN_MARKERS:
            out = OUTPUTS[key]
            folder = base / out.datatype
            if not folder.is_dir():
                continue
            for f in sorted(folder.glob(f"*{out.tail}")):
                prefix = f.name[: -len(out.tail)]
                if prefix.startswith("sub-") and "_space-" not in prefix:
                    runs.setdefault(prefix, rel)
    return dict(sorted(runs.items()))


def find_all(out_dir, key: str) -> list[Path]:
    """Every file of output ``key`` under ``out_dir`` (all subjects and sessions), sorted."""
    out = OUTPUTS[key]
    out_dir = Path(out_dir)
    hits = {p for pat in (f"sub-*/{out.datatype}/*{out.tail}", f"sub-*/ses-*/{out.datatype}/*{out.tail}")
            for p in out_dir.glob(pat)}
    return sorted(p for p in hits if "_space-" not in p.name or "space" in out.entities)
