"""The official BIDS validator wrapper (qsmprep.bids_validator) and the bundled example datasets.

These tests run ``bids-validator-deno`` (a runtime dependency): when it is not installed they
FAIL (ValidatorNotFound), they never skip.  Each validator run takes about 0.5-1 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsmprep import bids_validator as bv

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "bids_examples"


def _nifti(path: Path, shape=(4, 4, 4)) -> None:
    import nibabel as nb

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(np.ones(shape, np.float32), np.eye(4))
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, str(path))


def _json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def tiny_megre(root: Path, subjects=("01",)) -> Path:
    """A valid two-echo MEGRE dataset: one sidecar per image (EchoTime; Units for phase)."""
    _json(root / "dataset_description.json", {"Name": "tiny", "BIDSVersion": "1.10.0", "Authors": ["a", "b"]})
    (root / "README").write_text("A tiny dataset for the validator tests of qsmprep. " * 4)
    _json(root / "MEGRE.json", {"MagneticFieldStrength": 3.0})
    for sub in subjects:
        for e, te in ((1, 0.005), (2, 0.010)):
            for part in ("mag", "phase"):
                stem = root / f"sub-{sub}" / "anat" / f"sub-{sub}_echo-{e}_part-{part}_MEGRE"
                _nifti(stem.with_name(stem.name + ".nii.gz"))
                meta = {"EchoTime": te, **({"Units": "rad"} if part == "phase" else {})}
                _json(stem.with_name(stem.name + ".json"), meta)
    return root


# ----------------------------------------------------------------------------- real validator
def test_validator_is_installed():
    exe = bv.find_validator()
    assert Path(exe).is_file() and os.access(exe, os.X_OK)
    assert bv.validator_version() != "unknown"


def test_valid_dataset_has_no_errors(tmp_path):
    res = bv.validate(tiny_megre(tmp_path / "ds"))
    assert res.ok and res.errors == [] and res.returncode == 0, res.summary()
    assert res.dataset_summary["totalFiles"] >= 8 and res.dataset_summary["subjects"] == ["01"]
    assert "found 0 errors" in res.summary()


def test_invalid_dataset_reports_code_files_and_summary(tmp_path):
    ds = tiny_megre(tmp_path / "ds")
    anat = ds / "sub-01" / "anat"
    _json(anat / "sub-01_echo-2_part-mag_MEGRE.json", {})  # EchoTime now missing
    _nifti(anat / "sub-01_brainz.nii.gz")  # no such BIDS name
    res = bv.validate(ds)
    assert not res.ok and res.returncode == bv.EXIT_ERRORS
    assert {"SIDECAR_KEY_REQUIRED", "NOT_INCLUDED"} <= res.codes
    kinds = res.by_kind("error")
    echo = kinds["SIDECAR_KEY_REQUIRED EchoTime"]  # (3.0.2 reports it once per schema rule)
    assert {i.sub_code for i in echo} == {"EchoTime"}
    assert {i.files for i in echo} == {("/sub-01/anat/sub-01_echo-2_part-mag_MEGRE.nii.gz",)}
    assert "/sub-01/anat/sub-01_brainz.nii.gz" in res.files("error")
    text = res.summary()
    assert str(ds) in text and "NOT_INCLUDED" in text and "SIDECAR_KEY_REQUIRED EchoTime" in text
    assert "sub-01_brainz.nii.gz" in text and "\n" not in text  # one paragraph
    assert all(line.startswith("[WARNING] ") for line in res.lines("warning"))
    # --ignoreWarnings keeps the errors and drops the warnings
    quiet = bv.validate(ds, ignore_warnings=True)
    assert quiet.warnings == [] and quiet.codes == res.codes


def test_participant_label_drops_other_subjects_issues(tmp_path):
    ds = tiny_megre(tmp_path / "ds", subjects=("01", "02"))
    _nifti(ds / "sub-02" / "anat" / "sub-02_brainz.nii.gz")
    assert "NOT_INCLUDED" in bv.validate(ds).codes
    assert bv.validate(ds, participant_label=["sub-01"]).ok
    assert not bv.validate(ds, participant_label=["02"]).ok


def test_bidsignore_folder_patterns(tmp_path):
    """3.0.2 matches folder paths without their trailing slash: 'sub-*/log' works, '*/log/' not."""
    ds = tiny_megre(tmp_path / "ds")
    (ds / "sub-01" / "log").mkdir()
    (ds / "sub-01" / "log" / "run.log").write_text("x")
    (ds / ".bidsignore").write_text("*/log/\n")
    assert "NOT_INCLUDED" in bv.validate(ds).codes
    (ds / ".bidsignore").write_text("sub-*/log\n")
    assert bv.validate(ds).ok


@pytest.mark.parametrize("name", ["ds-megre", "ds-t2starw"])
def test_bundled_examples_have_no_errors(name):
    res = bv.validate(EXAMPLES / name)
    assert res.ok, res.summary()
    # their ground truth is a derivative dataset of its own; validated by its path so that its
    # .bidsignore is read (with --recursive, 3.0.2 does not read a derivative's .bidsignore)
    gt = bv.validate(EXAMPLES / name / "derivatives" / "groundtruth")
    assert gt.ok, gt.summary()


# ----------------------------------------------------------------------------- no verdict
def test_missing_validator_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(bv.ValidatorNotFound, match="pip install bids-validator-deno"):
        bv.validate(tmp_path, executable=tmp_path / "bids-validator-deno")
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(bv.ValidatorNotFound, match="not found"):
        bv.find_validator()


def _fake(tmp_path: Path, body: str) -> Path:
    exe = tmp_path / "fake-validator"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_crash_and_timeout_are_validator_errors(tmp_path):
    ds = tiny_megre(tmp_path / "ds")
    with pytest.raises(bv.ValidatorError, match="exit status 3.*schema exploded"):
        bv.validate(ds, executable=_fake(tmp_path, "echo 'schema exploded' >&2; exit 3"))
    with pytest.raises(bv.ValidatorError, match="did not finish within 0.5 s"):
        bv.validate(ds, executable=_fake(tmp_path, "sleep 5"), timeout_s=0.5)
    with pytest.raises(bv.ValidatorError, match="does not exist"):
        bv.validate(tmp_path / "nope")


# ----------------------------------------------------------------------------- parsing
def test_parse_result_of_canned_output():
    data = {
        "issues": {
            "issues": [
                {"code": "NOT_INCLUDED", "severity": "error", "location": "/sub-01/log/"},
                {"code": "SIDECAR_KEY_REQUIRED", "subCode": "SkullStripped", "severity": "error",
                 "location": "/sub-01/anat/sub-01_Chimap.nii.gz", "affects": "/sub-01/anat/sub-01_Chimap.json"},
                {"code": "README_FILE_MISSING", "severity": "warning", "location": "/dataset_description.json"},
            ],
            "codeMessages": {"NOT_INCLUDED": "Files with such naming scheme are not part of BIDS specification. "
                                             "More text.", "SIDECAR_KEY_REQUIRED": "A key is missing.\n"},
        },
        "summary": {"totalFiles": 3, "size": 2_000_000, "subjects": ["01"], "schemaVersion": "1.2.7"},
        "derivativesSummary": {"/derivatives/x/": {"issues": {"issues": [
            {"code": "NOT_INCLUDED", "severity": "error", "location": "/a.txt"}]}, "summary": {}}},
    }
    res = bv.parse_result(data, "/data/ds")
    assert len(res.errors) == 2 and len(res.warnings) == 1 and not res.ok
    assert res.errors[1].files == ("/sub-01/anat/sub-01_Chimap.nii.gz", "/sub-01/anat/sub-01_Chimap.json")
    assert res.derivatives["/derivatives/x/"].codes == {"NOT_INCLUDED"}
    text = res.summary()
    assert "2 errors of 2 kinds and 1 warning in /data/ds (3 files, 2.0 MB, 1 subjects)" in text
    assert ("NOT_INCLUDED: Files with such naming scheme are not part of BIDS specification "
            "(1 file: /sub-01/log/)") in text
    assert "More text" not in text and "derivatives/derivatives/x" in text


def test_import_is_light():
    code = ("import sys, qsmprep.bids_validator; "
            "print(sorted(m for m in ('numpy', 'nibabel', 'nipype', 'torch', 'bids') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_run_outputs_with_rec_entity_are_valid(tmp_path):
    """Every per-run output name of a run with ``rec-`` (two runs that differ only in it) passes the validator: the
    field maps carry the rec label inside acq (BIDS field maps have no rec entity), and the two runs stay apart."""
    import json

    import nibabel as nb
    import numpy as np

    from qsmprep.cli.prepare import write_bidsignore, write_dataset_description
    from qsmprep.naming import run_path, sidecar_path

    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "dataset_description.json").write_text(json.dumps({"Name": "x", "BIDSVersion": "1.10.0"}))
    out = tmp_path / "out"
    out.mkdir()
    write_dataset_description(out, bids)
    write_bidsignore(out)
    img = nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    paths = set()
    for prefix in ("sub-01_rec-a", "sub-01_acq-fast_rec-b_run-1"):
        for key in ("mask", "total_field", "local_field", "magnitude", "chi"):
            path = out / run_path(key, prefix, "sub-01")
            path.parent.mkdir(parents=True, exist_ok=True)
            nb.save(img, str(path))
            units = {"total_field": "Hz", "mask": "arbitrary", "magnitude": "arbitrary"}.get(key, "ppm")
            sidecar_path(path).write_text(json.dumps({"Units": units, "SkullStripped": True}))
            paths.add(path.name)
    assert "sub-01_acq-reca_desc-total_fieldmap.nii.gz" in paths and "sub-01_rec-a_Chimap.nii.gz" in paths
    assert "sub-01_acq-fastrecb_run-1_magnitude.nii.gz" in paths and len(paths) == 10
    result = bv.validate(out)
    assert result.ok, result.summary()
