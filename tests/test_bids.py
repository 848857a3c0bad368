"""BIDS discovery with pybids: runs kept apart, echo stacks, single echo, units, metadata inheritance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TES_S, make_bids, simulate

from qsmprep.bids import InputError, check_output_dir, collect_runs


def test_runs_sessions_acq_kept_apart(tmp_path):
    bids = make_bids(tmp_path / "ds", subjects=("01", "02"), sessions=("pre", "post"), runs=("1", "2"), acq="fast")
    runs = collect_runs(bids)
    prefixes = [r.prefix for r in runs]
    assert len(runs) == 8 and len(set(prefixes)) == 8
    assert "sub-01_ses-post_acq-fast_run-1" in prefixes
    run = next(r for r in runs if r.prefix == "sub-02_ses-pre_acq-fast_run-2")
    assert run.anat_dir == "sub-02/ses-pre/anat"
    assert all(p.name.startswith("sub-02_ses-pre_acq-fast_run-2_echo-") for p in run.magnitude + run.phase)
    assert [p.name.split("_echo-")[1][0] for p in run.phase] == ["1", "2", "3"]
    # selection by label (with or without prefix) and session
    sel = collect_runs(bids, participant_label=["sub-02"], session_label=["ses-post"])
    assert [r.prefix for r in sel] == ["sub-02_ses-post_acq-fast_run-1", "sub-02_ses-post_acq-fast_run-2"]


def test_metadata_with_inheritance(tmp_path):
    bids = make_bids(tmp_path / "ds")
    (run,) = collect_runs(bids)
    assert run.echo_times_s == pytest.approx(TES_S)
    assert run.b0_t == 3.0  # only in the top-level MEGRE.json
    assert run.suffix == "MEGRE" and run.n_echoes == 3 and not run.is_stack
    assert run.shape == (32, 32, 32) and run.voxel_size == pytest.approx((4.0, 4.0, 4.0))
    assert run.phase_units == "rad"


def test_echo_times_sorted_by_value(tmp_path):
    """Echo files whose indices disagree with their TEs are ordered by TE, mag and phase together."""
    bids = make_bids(tmp_path / "ds")
    anat = bids / "sub-01/anat"
    for part in ("mag", "phase"):
        for echo, te in ((1, 0.03), (3, 0.006)):
            (anat / f"sub-01_echo-{echo}_part-{part}_MEGRE.json").write_text(json.dumps({"EchoTime": te}))
    (run,) = collect_runs(bids)
    assert run.echo_times_s == pytest.approx((0.006, 0.012, 0.03))
    assert [p.name[:13] for p in run.magnitude] == ["sub-01_echo-3", "sub-01_echo-2", "sub-01_echo-1"]
    assert [p.name[:13] for p in run.phase] == ["sub-01_echo-3", "sub-01_echo-2", "sub-01_echo-1"]
    assert run.reordered and "echo files ordered by EchoTime" in run.describe()  # --dry-run says so
    (run,) = collect_runs(make_bids(tmp_path / "ds2"))
    assert not run.reordered and "ordered by EchoTime" not in run.describe()


def test_four_d_stack(tmp_path):
    bids = make_bids(tmp_path / "ds", stack=True)
    (run,) = collect_runs(bids)
    assert run.is_stack and run.n_echoes == 3 and len(run.magnitude) == 1
    assert run.echo_times_s == pytest.approx(TES_S)
    assert run.magnitude[0].name == "sub-01_part-mag_MEGRE.nii.gz"


def test_four_d_stack_echo_count_mismatch(tmp_path):
    bids = make_bids(tmp_path / "ds", stack=True)
    side = bids / "sub-01/anat/sub-01_part-mag_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": [0.005, 0.01]}))
    with pytest.raises(InputError, match=r"has 3 echo volume\(s\) but 'EchoTime' lists 2"):
        collect_runs(bids)


def test_single_echo_t2starw(tmp_path):
    bids = make_bids(tmp_path / "ds", n_echoes=1, suffix="T2starw")
    (run,) = collect_runs(bids)
    assert run.suffix == "T2starw" and run.n_echoes == 1 and run.echo_times_s == pytest.approx((0.006,))
    assert run.prefix == "sub-01" and not run.is_stack


def test_scanner_units_detected(tmp_path):
    """12-bit codes (2048 per pi) are detected and converted back to the radians they code."""
    import nibabel as nb

    from qsmprep.qsm.echoes import magnitude_phase, wrap_to_pi

    bids = make_bids(tmp_path / "ds", scanner_units=True)
    (run,) = collect_runs(bids)
    assert run.phase_units == "scanner"
    codes = np.stack([np.asarray(nb.load(str(p)).dataobj) for p in run.phase], -1)
    _, rad = magnitude_phase(codes, codes, run.parts, run.phase_units)
    mag, ph, _, brain, _ = simulate()
    assert np.abs(wrap_to_pi(rad - ph)[brain]).max() <= np.pi / 2048  # one code


def test_b0_direction_from_oblique_affine(tmp_path):
    bids = make_bids(tmp_path / "ds", oblique_deg=30.0)
    (run,) = collect_runs(bids)
    assert run.b0_dir == pytest.approx([0.0, np.sin(np.deg2rad(30)), np.cos(np.deg2rad(30))], abs=1e-6)  # float32 sform
    assert run.obliquity_deg == pytest.approx(30.0)


def test_duplicate_echo_time(tmp_path):
    bids = make_bids(tmp_path / "ds")
    for part in ("mag", "phase"):
        (bids / f"sub-01/anat/sub-01_echo-2_part-{part}_MEGRE.json").write_text(json.dumps({"EchoTime": 0.006}))
    with pytest.raises(InputError, match="share EchoTime 0.006"):
        collect_runs(bids)


def test_non_numeric_field_strength(tmp_path):
    bids = make_bids(tmp_path / "ds")
    (bids / "MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": "3T"}))
    with pytest.raises(InputError, match="MagneticFieldStrength.*not valid"):
        collect_runs(bids)


def test_no_description(tmp_path):
    bids = make_bids(tmp_path / "ds")
    (bids / "dataset_description.json").unlink()
    with pytest.raises(InputError, match="dataset_description.json"):
        collect_runs(bids)


def test_other_datatypes_ignored(tmp_path):
    bids = make_bids(tmp_path / "ds")
    func = bids / "sub-01/func"
    func.mkdir()
    (func / "sub-01_task-rest_bold.nii.gz").write_bytes(b"not an image")
    assert len(collect_runs(bids)) == 1


def test_check_output_dir(tmp_path):
    bids = make_bids(tmp_path / "ds")
    check_output_dir(bids, tmp_path / "new" / "deeper")  # creatable: fine
    assert not (tmp_path / "new").exists()
    with pytest.raises(InputError, match="inside the input dataset"):
        check_output_dir(bids, bids / "derivatives")
    with pytest.raises(InputError, match="work folder"):
        check_output_dir(bids, tmp_path / "out", bids / "work")


def test_same_session_t1w_is_collected_for_registration(tmp_path):
    """A T1w of the same subject/session is attached to the run (the atlas step registers through it)."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "bids_examples" / "ds-megre"
    ds = tmp_path / "ds"
    shutil.copytree(src, ds, ignore=shutil.ignore_patterns("derivatives"))
    anat = ds / "sub-01" / "ses-1" / "anat"
    mag = sorted(anat.glob("*echo-1_part-mag_MEGRE.nii.gz"))[0]
    t1w = anat / "sub-01_ses-1_T1w.nii.gz"
    shutil.copyfile(mag, t1w)
    runs = {r.prefix: r for r in collect_runs(ds)}
    assert runs["sub-01_ses-1"].t1w == t1w
    assert runs["sub-01_ses-2"].t1w is None  # another session's T1w is not used
    assert runs["sub-02"].t1w is None


def test_bids_filter_file_picks_acquisitions_and_runs(tmp_path):
    """--bids-filter-file queries (fMRIPrep's format) select the GRE runs and the T1w; unknown queries are refused."""
    import shutil

    from qsmprep.bids import InputError

    bids = make_bids(tmp_path / "ds", runs=("1", "2"))
    make_bids(bids, acq="fast")
    runs = collect_runs(bids)
    assert {r.prefix for r in runs} == {"sub-01_run-1", "sub-01_run-2", "sub-01_acq-fast"}
    assert [r.prefix for r in collect_runs(bids, bids_filters={"megre": {"run": 2}})] == ["sub-01_run-2"]
    assert [r.prefix for r in collect_runs(bids, bids_filters={"megre": {"acquisition": "fast"}})] == ["sub-01_acq-fast"]
    # None = the entity must be absent
    got = collect_runs(bids, bids_filters={"megre": {"acquisition": None, "run": ["1", "2"]}})
    assert sorted(r.prefix for r in got) == ["sub-01_run-1", "sub-01_run-2"]
    anat = bids / "sub-01" / "anat"
    for acq in ("lo", "hi"):
        shutil.copyfile(anat / "sub-01_run-1_echo-1_part-mag_MEGRE.nii.gz", anat / f"sub-01_acq-{acq}_T1w.nii.gz")
    runs = collect_runs(bids, bids_filters={"megre": {"run": 1}, "t1w": {"acquisition": "lo"}})
    assert runs[0].t1w.name == "sub-01_acq-lo_T1w.nii.gz"
    with pytest.raises(InputError, match="unknown query bold"):
        collect_runs(bids, bids_filters={"bold": {"run": 1}})
    with pytest.raises(InputError, match="No multi-echo"):
        collect_runs(bids, bids_filters={"megre": {"run": 9}})
