"""The self-contained HTML report of one subject (all runs), built from the derivatives on disk.

:func:`build_subject_report` reads, for every run of ``sub-<label>`` in ``out_dir``, the brain
mask, total and local field maps, the chi map and its JSON sidecar, the DGM labels and the ROI
table, draws the figures (also saved as PNG files in ``sub-<label>/figures/``), and writes
``out_dir/sub-<label>.html`` with every image embedded as a base64 data URI (opens offline, no
external resources).  Provenance comes from each ``_Chimap.json`` sidecar and the newest config
file in ``sub-<label>/log/``; the Methods section is the methods text of the subject's runs
(:mod:`qsmprep.reports.methods`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsmprep import naming

_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:24px;max-width:1200px;color:#222}
h1{border-bottom:2px solid #446;padding-bottom:4px} h2{margin-top:36px;color:#335;border-bottom:1px solid #ccd}
h3{color:#446} img{max-width:100%;border:1px solid #ddd;margin:6px 0}
table{border-collapse:collapse;font-size:12px;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#eef} .prov td{text-align:left} pre{background:#f6f6f8;padding:8px;font-size:11px;overflow-x:auto}
.note{color:#666;font-size:12px} nav a{margin-right:12px}
.qsmprep-methods{max-width:900px;line-height:1.45} .qsmprep-methods code{word-break:break-all}
.qc-fail{background:#fde8e8;border:2px solid #c0392b;color:#7b1d14;padding:8px 12px;margin:8px 0}
.qc-pass{background:#e9f6ec;border:1px solid #3c8d4f;color:#1d4d28;padding:6px 12px;margin:8px 0}
"""


class NoSubjectOutputsError(ValueError):
    """The output folder has no derivatives for the requested subject."""


def _sub(subject: str) -> str:
    subject = str(subject)
    return subject if subject.startswith("sub-") else f"sub-{subject}"


def find_runs(out_dir, subject) -> dict[str, Path]:
    """Run prefixes of ``subject`` in ``out_dir`` -> their ``sub-<l>[/ses-<s>]`` folder (absolute).

    A run is any prefix with a chi map (not in template space), a brain mask or an ROI table
    (:func:`qsmprep.naming.find_runs`).
    """
    return {prefix: Path(out_dir) / base for prefix, base in naming.find_runs(out_dir, subject).items()}


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _first(folder: Path, patterns) -> Path | None:
    for pat in patterns:
        hits = sorted(folder.glob(pat))
        if hits:
            return hits[0]
    return None


def _load(path):
    if path is None:
        return None, None
    import nibabel as nb

    img = nb.load(str(path))
    return np.asarray(img.dataobj, dtype=np.float32), img


def _source_dir(out_dir: Path) -> Path | None:
    desc = out_dir / "dataset_description.json"
    if not desc.exists():
        return None
    try:
        data = json.loads(desc.read_text())
    except ValueError:
        return None
    for src in data.get("SourceDatasets", []) or []:
        url = str(src.get("URL", "")) if isinstance(src, dict) else str(src)
        p = Path(url[7:] if url.startswith("file://") else url)
        if url and p.is_dir():
            return p
    return None


def _find_magnitude(prefix: str, base: Path, out_dir: Path, bids_dir: Path | None):
    """The run's magnitude in the raw dataset (first echo), for the mask figure; None if not found."""
    hit = None
    if bids_dir is not None:
        raw_anat = Path(bids_dir) / base.relative_to(out_dir) / "anat"
        if raw_anat.is_dir():
            hit = _first(raw_anat, [f"{prefix}_echo-1_part-mag_*.nii*", f"{prefix}*part-mag*.nii*"])
    data, _ = _load(hit)
    if data is not None and data.ndim == 4:
        data = np.sqrt(np.sum(data.astype(np.float64) ** 2, axis=-1)).astype(np.float32)
    return data, hit


def _data_uri(path: Path) -> str:
    mime = "image/svg+xml" if path.suffix == ".svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _img(path: Path, alt: str) -> str:
    return f'<figure><img src="{_data_uri(path)}" alt="{html.escape(alt)}"><figcaption class="note">{html.escape(alt)}</figcaption></figure>'


def _kv_table(d: dict) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(json.dumps(v) if not isinstance(v, str) else v)}</td></tr>"
                   for k, v in d.items())
    return f'<table class="prov">{rows}</table>'


def _versions() -> dict:
    import qsmprep
    from qsmprep.reports.methods import package_versions

    return {"qsmprep": qsmprep.__version__, "python": platform.python_version(),
            **package_versions(("numpy", "nibabel", "nipype", "antspyx", "nilearn", "torch", "matplotlib", "pandas"))}


def _newest_config(sub_dir: Path) -> Path | None:
    logs = sub_dir / "log"
    cands = [p for ext in ("toml", "json", "yml", "yaml") for p in logs.rglob(f"*.{ext}")] if logs.is_dir() else []
    return max(cands, key=lambda p: p.stat().st_mtime) if cands else None


#: Sidecar fields shown as the run's key provenance (the vocabulary of ``qsmprep.methods.invert`` and the sinks).
_PROV_KEYS = ("InversionMethod", "EstimationAlgorithm", "EstimationSoftwareVersion", "Device", "WeightsName",
              "WeightsSHA256", "TorchVersion", "DataFit", "PhaseUnwrapping", "BackgroundFieldRemoval",
              "ReferenceRegion", "SoftwareVersion")


def _methods_section(out_dir: Path, sub: str) -> str:
    """The methods text of this subject's runs (:mod:`qsmprep.reports.methods`) as an HTML fragment,
    DOIs as plain text (the report links to nothing outside itself)."""
    from qsmprep.reports.methods import methods_from_outputs, methods_html

    try:
        text = methods_html(methods_from_outputs(out_dir, sub), doi_links=False)
    except Exception as exc:  # the report is still useful without its methods text; say why it is missing
        why = html.escape(f"{type(exc).__name__}: {exc}")
        return f'<p class="note">The methods text could not be generated: {why}</p>'
    return ('<p class="note">Generated from the sidecars of the runs above; the same text for the whole dataset '
            "is in logs/CITATION.md (.html, .bib).</p>" + text)


def build_subject_report(out_dir, subject, *, bids_dir=None, n_slices: int = 8) -> Path:
    """Write ``out_dir/sub-<subject>.html`` (self-contained) and the figures; return the HTML path.

    Parameters
    ----------
    out_dir : the qsmprep derivatives folder.
    subject : participant label, with or without ``sub-``.
    bids_dir : raw BIDS folder, used only to find the magnitude for the mask figure when no
        magnitude derivative exists (default: the ``SourceDatasets`` URL of
        ``dataset_description.json`` if it is a local folder).  Without a magnitude the mask is
        drawn over the local field map.
    n_slices : slices per mosaic.

    Raises :class:`NoSubjectOutputsError` when ``out_dir`` holds nothing for the subject.
    """
    from qsmprep.utils.atomic import ensure_no_links, write_text

    out_dir = Path(out_dir)
    sub = _sub(subject)
    ensure_no_links(out_dir / naming.figure_path("chi", "x", sub), out_dir)  # never write through a linked figures/
    runs = find_runs(out_dir, sub)
    if not runs:
        raise NoSubjectOutputsError(
            f"No derivatives for {sub} in {out_dir} (expected {sub}/[ses-*/]anat/*_Chimap.nii.gz); "
            f"run the participant level for {sub} first or check the output folder."
        )
    bids_dir = Path(bids_dir) if bids_dir else _source_dir(out_dir)
    nav = [f'<a href="#{prefix}">{html.escape(prefix)}</a>' for prefix in runs]
    body = [_run_section(out_dir, sub, prefix, base, bids_dir, n_slices) for prefix, base in runs.items()]
    page = _page(out_dir, sub, len(runs), nav, body)
    return write_text(out_dir / naming.report_path(sub), page, root=out_dir)


@dataclass
class _RunImages:
    """One run's volumes for the figures (None where the file is absent)."""

    mask: np.ndarray | None  # bool
    chi: np.ndarray | None  # ppm
    chi_path: Path | None
    total: np.ndarray | None  # Hz
    local: np.ndarray | None  # ppm
    dseg: np.ndarray | None
    mag: np.ndarray | None  # echo-combined magnitude, from the derivatives or the raw dataset
    mag_path: Path | None


def _run_file(out_dir: Path, prefix: str, base: Path, key: str) -> Path | None:
    """The run's derivative ``key`` (a :data:`qsmprep.naming.OUTPUTS` key) if it exists."""
    return _existing(out_dir / naming.run_path(key, prefix, str(base.relative_to(out_dir))))


def _load_run(out_dir: Path, prefix: str, base: Path, bids_dir: Path | None) -> _RunImages:
    def path(key):
        return _run_file(out_dir, prefix, base, key)

    mask, _ = _load(path("mask"))
    chi_path = path("chi")
    chi, _ = _load(chi_path)
    total, _ = _load(path("total_field"))
    local, _ = _load(path("local_field"))
    dseg, _ = _load(path("dseg"))
    mag_path = path("magnitude")
    mag, _ = _load(mag_path)
    if mag is None:
        mag, mag_path = _find_magnitude(prefix, base, out_dir, bids_dir)
    return _RunImages(mask=mask > 0 if mask is not None else None, chi=chi, chi_path=chi_path, total=total,
                      local=local, dseg=dseg, mag=mag, mag_path=mag_path)


def _run_section(out_dir: Path, sub: str, prefix: str, base: Path, bids_dir: Path | None, n_slices: int) -> str:
    """One run's part of the report: its figures (also saved in ``sub-<l>/figures/``), ROI table and provenance."""

    def fig(key):
        return out_dir / naming.figure_path(key, prefix, sub)

    run = _load_run(out_dir, prefix, base, bids_dir)
    sec = [f'<h2 id="{prefix}">{html.escape(prefix)}</h2>']
    sec += _qc_html(_run_file(out_dir, prefix, base, "qc"))
    sec += _mask_html(run, fig, n_slices)
    sec += _maps_html(run, fig, n_slices)
    sec += _roi_html(_run_file(out_dir, prefix, base, "roi_tsv"), fig("roi_bars"))
    sec += _provenance_html(run.chi_path)
    return "\n".join(sec)


def _qc_html(qc_path: Path | None) -> list[str]:
    """The run's quality-control banner (``_desc-qc.json``): red with every warning when a check
    failed, green otherwise; the phase-sign decision in either case."""
    if qc_path is None:
        return []
    try:
        qc = json.loads(qc_path.read_text())
    except ValueError:
        return [f'<div class="qc-fail">The quality-control file {html.escape(qc_path.name)} cannot be read.</div>']
    steps = qc.get("steps") or {}
    notes = [str(s.get("message")) for s in steps.values() if isinstance(s, dict) and s.get("message")]
    if qc.get("passed", True):
        body = "<strong>Quality control: every check passed.</strong>"
        css = "qc-pass"
    else:
        items = "".join(f"<li>{html.escape(str(w))}</li>" for w in qc.get("warnings", []))
        body = (f"<strong>Quality control: this run may not be trustworthy.</strong> Check the map before using "
                f"it.<ul>{items}</ul>")
        css = "qc-fail"
    body += "".join(f'<br><span class="note">{html.escape(n)}</span>' for n in notes)
    return [f'<div class="{css}" id="qc-{qc_path.name}">{body}</div>']


def _mask_html(run: _RunImages, fig, n_slices: int) -> list[str]:
    """The brain mask outlined over the magnitude (else the local field, else chi)."""
    from qsmprep.reports import figures as F

    out = ["<h3>Brain mask</h3>"]
    if run.mask is None:
        return out + ['<p class="note">No brain mask found.</p>']
    under, what = (run.mag, f"magnitude ({run.mag_path.name})") if run.mag is not None else (run.local, "local field")
    if under is None:
        under, what = run.chi, "chi"
    if under is not None and under.shape[:3] == run.mask.shape:
        p = F.mosaic_png(fig("mask"), under, mask=run.mask,
                         overlay_mask=run.mask, title=f"brain mask (red) over the {what}",
                         symmetric=run.mag is None, cmap="gray", n_slices=n_slices)
        out.append(_img(p, f"Brain mask outline over the {what}"))
    return out


def _maps_html(run: _RunImages, fig, n_slices: int) -> list[str]:
    """The total and local field maps, the chi mosaic and the DGM label contours over chi."""
    from qsmprep.reports import figures as F

    out = []
    if run.total is not None or run.local is not None:
        out.append("<h3>Total and local field</h3>")
        p = F.fields_png(fig("fields"), run.total, run.local, mask=run.mask,
                         title="total field (Hz) and local field after background removal (ppm)")
        out.append(_img(p, "Total field (Hz, top) and local field (ppm, bottom)"))
    if run.chi is not None:
        out.append("<h3>Susceptibility (chi)</h3>")
        p = F.mosaic_png(fig("chi"), run.chi, mask=run.mask,
                         title="chi (ppm)", symmetric=True, units="ppm", n_slices=n_slices)
        out.append(_img(p, "Chi map, axial mosaic (ppm)"))
    if run.chi is not None and run.dseg is not None and run.dseg.shape == run.chi.shape:
        out.append("<h3>Deep-gray-matter labels</h3>")
        dm = np.rint(run.dseg).astype(np.int16)
        p = F.mosaic_png(fig("dgm_contours"), run.chi, mask=dm > 0,
                         title="DGM labels (AAL3, warped) over chi", symmetric=True, units="ppm",
                         contours=dm, n_slices=n_slices)
        out.append(_img(p, "DGM label contours over chi: caudate blue, putamen orange, pallidum "
                           "green, thalamus red, substantia nigra purple, red nucleus brown"))
    return out


def _roi_html(stats_path: Path | None, bars_png: Path) -> list[str]:
    """The ROI table and its bar chart (nothing without a table)."""
    if stats_path is None:
        return []
    import pandas as pd

    from qsmprep.reports import figures as F

    df = pd.read_csv(stats_path, sep="\t", na_values=["n/a"], keep_default_na=False,
                     dtype={"run": str, "session_id": str, "acquisition": str, "reconstruction": str})
    out = ["<h3>ROI statistics</h3>"]
    p = F.roi_bar_png(bars_png, df, title="mean chi per region")
    out.append(_img(p, "Mean chi per region (bars) with the interquartile range"))
    show = [c for c in ("structure", "hemisphere", "voxel_count", "volume_mm3", "mean_ppm",
                        "median_ppm", "std_ppm", "p25_ppm", "p75_ppm") if c in df.columns]
    out.append(df[show].to_html(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a", border=0))
    if "reference_region" in df.columns and len(df):
        out.append(f'<p class="note">Reference region: {html.escape(str(df["reference_region"].iloc[0]))}</p>')
    return out


def _provenance_html(chi_path: Path | None) -> list[str]:
    """The key fields and the whole of the chi map's JSON sidecar."""
    out = ["<h3>Provenance</h3>"]
    side = naming.sidecar_path(chi_path) if chi_path else None
    if side is None or not side.exists():
        return out + ['<p class="note">No Chimap JSON sidecar found.</p>']
    try:
        meta = json.loads(side.read_text())
    except ValueError:
        meta = {"error": f"unreadable sidecar {side.name}"}
    key = {k: meta[k] for k in _PROV_KEYS if k in meta}
    if key:
        out.append("<p>Key fields:</p>" + _kv_table(key))
    out.append(f"<details><summary>Full sidecar {html.escape(side.name)}</summary>{_kv_table(meta)}</details>")
    return out


def _software_html(out_dir: Path, sub: str) -> list[str]:
    """The software versions and the newest configuration file of the subject's log folder."""
    cfg = _newest_config(out_dir / sub)
    out = ["<h2 id='provenance'>Software and configuration</h2>", _kv_table(_versions())]
    if cfg is None:
        return out + ['<p class="note">No configuration file found in the log folder.</p>']
    out.append(f"<p>Configuration file: {html.escape(str(cfg.relative_to(out_dir)))}</p>")
    out.append(f"<pre>{html.escape(cfg.read_text(errors='replace')[:20000])}</pre>")
    return out


def _page(out_dir: Path, sub: str, n_runs: int, nav: list[str], body: list[str]) -> str:
    """The whole HTML page: the run sections, then the methods text and the software."""
    methods = ["<h2 id='methods'>Methods</h2>", _methods_section(out_dir, sub)]
    prov = _software_html(out_dir, sub)
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>qsmprep: {sub}</title><style>{_CSS}</style></head>
<body>
<h1>qsmprep report: {sub}</h1>
<p class="note">{n_runs} run(s); generated {now}. Images are embedded; this file opens offline.</p>
<nav>{' '.join(nav)} <a href="#methods">methods</a> <a href="#provenance">provenance</a></nav>
{''.join(body)}
{''.join(methods)}
{''.join(prov)}
</body></html>
"""
