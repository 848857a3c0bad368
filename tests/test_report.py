"""Subject HTML report: built from synthetic derivatives, self-contained, rendered in Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from qsmprep.atlas.labels import DGM_LABELS
from qsmprep.atlas.rois import roi_table, write_roi_table
from qsmprep.methods import BACKGROUND_REMOVALS, CITATIONS, UNWRAPPINGS

SHAPE = (40, 44, 36)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
AFFINE[:3, 3] = (-40, -44, -36)


def _derivatives(out, prefix, anat, seed=0):
    import nibabel as nb

    rng = np.random.default_rng(seed)
    ii, jj, kk = np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij")
    brain = (ii / 0.8) ** 2 + (jj / 0.85) ** 2 + (kk / 0.8) ** 2 < 1
    dseg = np.zeros(SHAPE, np.int16)
    for lab in DGM_LABELS:  # small blobs, left labels at x < 0
        cx = -0.25 if lab.hemisphere == "L" else 0.25
        cy = -0.4 + 0.13 * ((lab.index - 1) // 2)
        dseg[((ii - cx) ** 2 + (jj - cy) ** 2 + kk ** 2) < 0.06 ** 2 * 4] = lab.index
    chi = np.where(brain, 0.02 * rng.normal(size=SHAPE), 0).astype(np.float32)
    chi[dseg > 0] += 0.1
    local = np.where(brain, 0.01 * np.sin(4 * ii) * np.cos(3 * jj), 0).astype(np.float32)
    total = (30 * ii + 20 * kk ** 2).astype(np.float32) * brain
    from qsmprep.naming import run_path

    d = out / anat
    base = anat.rsplit("/", 1)[0]
    for key, arr in (("mask", brain.astype(np.uint8)), ("chi", chi), ("local_field", local), ("total_field", total),
                     ("dseg", dseg)):
        path = out / run_path(key, prefix, base)
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.save(nb.Nifti1Image(arr, AFFINE), path)
    (d / f"{prefix}_Chimap.json").write_text(json.dumps({
        "Units": "ppm", "EstimationAlgorithm": "NSIDL", "Device": "cpu", "TorchVersion": "2.13.0",
        "WeightsSha256": "ab" * 32, "ReferenceRegion": "whole brain", "InversionMethod": "nsidl",
        "EchoTime": [0.004, 0.008, 0.012], "MagneticFieldStrength": 3.0, "SoftwareVersion": "0.1.0",
        "PhaseUnwrapping": UNWRAPPINGS["romeo"].description,
        "BackgroundFieldRemoval": BACKGROUND_REMOVALS["ismv"].description}))
    df = roi_table(chi, dseg, (2, 2, 2), mask=brain, participant_id="sub-01", run="1",
                   reference_region="whole brain")
    write_roi_table(df, d / f"{prefix}_desc-dgm_stats.tsv")
    return brain


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    import nibabel as nb

    from qsmprep.reports.subject import build_subject_report

    root = tmp_path_factory.mktemp("report")
    out, bids = root / "out", root / "bids"
    _derivatives(out, "sub-01_run-1", "sub-01/anat", seed=0)
    _derivatives(out, "sub-01_ses-b_run-1", "sub-01/ses-b/anat", seed=1)
    # raw magnitude for the first run only (4-D, echoes last): found through bids_dir
    raw = bids / "sub-01" / "anat"
    raw.mkdir(parents=True)
    mag = np.stack([np.full(SHAPE, 100.0 * np.exp(-e)) for e in range(3)], -1).astype(np.float32)
    nb.save(nb.Nifti1Image(mag, AFFINE), raw / "sub-01_run-1_echo-1_part-mag_MEGRE.nii.gz")
    log = out / "sub-01" / "log" / "20260101-000000_abc"
    log.mkdir(parents=True)
    (log / "qsmprep.toml").write_text('[workflow]\ninversion = "nsidl"\natlas_precise = false\n')
    html_path = build_subject_report(out, "01", bids_dir=bids)
    return out, html_path


def _data_uris(text):
    return re.findall(r'<img src="(data:[^"]+)"', text)


def test_report_is_self_contained(report):
    from PIL import Image

    out, html_path = report
    assert html_path == out / "sub-01.html"
    text = html_path.read_text()
    uris = _data_uris(text)
    # per run: mask, fields, chi mosaic, DGM contours, bar chart
    assert len(uris) == 10
    for uri in uris:
        assert uri.startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as im:
            im.verify()
    assert not re.search(r'(src|href)="(https?:|//|file:)', text)  # nothing external
    for needle in ("sub-01_run-1", "sub-01_ses-b_run-1", "NSIDL", "ab" * 32, "Device", "cpu",
                   'inversion = &quot;nsidl&quot;', "caudate", "putamen", "mean_ppm", "Reference region",
                   "magnitude (sub-01_run-1_echo-1_part-mag_MEGRE.nii.gz)", "local field"):
        assert needle in text, needle
    figs = sorted(p.name for p in (out / "sub-01" / "figures").glob("*.png"))
    assert len(figs) == 10 and "sub-01_run-1_desc-dgmcontours_Chimap.png" in figs


def test_report_has_methods_section(report):
    """The Methods section (issue #16): the subject's runs' methods text with numbered references,
    after the runs and before the software table, DOIs as text (no external link)."""
    _, html_path = report
    text = html_path.read_text()
    assert '<a href="#methods">methods</a>' in text
    start = text.index("<h2 id='methods'>Methods</h2>")
    section = text[start:text.index("<h2 id='provenance'>")]
    assert start > text.index('<h2 id="sub-01_ses-b_run-1">')
    assert 'class="qsmprep-methods"' in section
    for needle in ("Two gradient-echo runs of one participant were processed", "TE = 4, 8, 12 ms",
                   "NSIDL (unrolled proximal gradient network", "ROMEO-style", "iSMV", "ANTs", "AAL3",
                   CITATIONS["nsidl"].doi, CITATIONS["romeo"].doi, CITATIONS["aal3"].doi, "doi:10.21037/qims-2025-1851",
                   '<li id="ref-1">', "qsmprep 0.1.0"):
        assert needle in section, needle
    assert CITATIONS["tkd"].doi not in section and "href=\"https://doi.org" not in section


def test_missing_subject_clear_error(tmp_path):
    from qsmprep.reports.subject import NoSubjectOutputsError, build_subject_report

    with pytest.raises(NoSubjectOutputsError, match="run the participant level for sub-05"):
        build_subject_report(tmp_path, "sub-05")


def _chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_CHECK = """<script>
window.addEventListener('load', function () {
  var r = Array.prototype.map.call(document.images, function (i) {
    return (i.complete ? i.naturalWidth : -1) + 'x' + i.naturalHeight; });
  var d = document.createElement('div'); d.id = 'imgcheck'; d.textContent = r.join(',');
  document.body.appendChild(d);
});
</script>"""


def test_report_renders_in_chromium(report, tmp_path):
    """Headless Chromium loads the page and every <img> decodes (naturalWidth > 0)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs it (apt-get install -y chromium)")
        pytest.skip("chromium is not installed (apt-get install -y chromium); cannot render the report")
    _, html_path = report
    page = tmp_path / "page.html"
    page.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    m = re.search(r'<div id="imgcheck">([^<]*)</div>', res.stdout)
    assert m, res.stdout[-2000:]
    sizes = [tuple(int(v) for v in s.split("x")) for s in m.group(1).split(",")]
    assert len(sizes) == 10
    assert all(w > 100 and h > 100 for w, h in sizes), sizes


def test_report_shows_the_qc_banner(tmp_path):
    """A run whose QC failed gets a red banner with its warnings; a clean run a green line; the phase-sign note shows."""
    from qsmprep.reports.subject import build_subject_report

    out = tmp_path / "out"
    _derivatives(out, "sub-01_run-1", "sub-01/anat", seed=0)
    _derivatives(out, "sub-01_run-2", "sub-01/anat", seed=1)
    anat = out / "sub-01" / "anat"
    (anat / "sub-01_run-1_desc-qc.json").write_text(json.dumps({
        "passed": False, "failed": ["lowfreq_share"],
        "warnings": ["QC: the local field is dominated by a smooth component (0.52)."],
        "steps": {"phase_sign": {"message": "Phase sign: +1 (as stored)."}}}))
    (anat / "sub-01_run-2_desc-qc.json").write_text(json.dumps({"passed": True, "failed": [], "warnings": []}))
    text = build_subject_report(out, "01").read_text()
    run1 = text.split('id="sub-01_run-1"')[1].split('id="sub-01_run-2"')[0]
    run2 = text.split('id="sub-01_run-2"')[1]
    assert 'class="qc-fail"' in run1 and "dominated by a smooth component" in run1 and "Phase sign: +1" in run1
    assert 'class="qc-pass"' in run2 and 'class="qc-fail"' not in run2
