"""A qsmprep run killed half-way and started again reuses what was finished and completes.

On a cluster a job can be killed at any moment (time limit, preemption, node failure): SLURM
sends SIGKILL to the whole process tree.  The test does the same to a real ``qsmprep``
participant run (its own process group: the main process and its MultiProc workers) as soon
as the first nodes have finished, then reruns the identical command with the same work folder
and checks that

* the finished computing nodes were not run again (their Nipype result files are untouched),
* the run completes, with derivatives identical to an uninterrupted run,
* nothing truncated is left under a final BIDS name.

Data: the tiny synthetic dataset of ``tests/conftest.py`` (32^3 voxels of 4 mm), one subject,
``--skip-atlas --inversion tkd`` and one process so that the nodes run one after another.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_bids

QSMPREP = Path(sys.executable).with_name("qsmprep")
OPTS = ["--participant-label", "01", "--skip-atlas", "--inversion", "tkd", "--nprocs", "1"]
#: computing nodes in run order; the run is killed once KILL_AFTER has finished
KILL_AFTER = "fit_field"
#: nodes that run every time by design: the data sinks and the report (they rewrite the outputs), and
#: the Merge nodes that only collect the sinks' outputs for the report
ALWAYS_RUN = ("ds_", "fig_", "report", "written", "merge_written")


def _cmd(bids, out, work):
    return [str(QSMPREP), str(bids), str(out), "participant", "-w", str(work), *OPTS]


def _results(work: Path) -> dict[str, int]:
    """``{node name: mtime_ns of its result file}`` for every finished node in ``work``."""
    return {p.parent.name: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")}


def _arrays(out: Path) -> dict[str, np.ndarray]:
    import nibabel as nb

    return {str(p.relative_to(out)): np.asanyarray(nb.load(p).dataobj) for p in sorted(out.rglob("anat/*.nii.gz"))}


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    return make_bids(tmp_path_factory.mktemp("resume") / "bids", subjects=("01",))


@pytest.fixture(scope="module")
def reference(bids, tmp_path_factory):
    base = tmp_path_factory.mktemp("reference")
    proc = subprocess.run(_cmd(bids, base / "out", base / "work"), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return base / "out"


def test_killed_run_resumes_from_finished_nodes(bids, reference, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_cmd(bids, out, work), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while KILL_AFTER not in _results(work):
            assert proc.poll() is None, f"qsmprep ended before it could be killed:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "the first nodes never finished"
            time.sleep(0.05)
    finally:
        # what SLURM does at the time limit / on preemption: SIGKILL to every process of the job
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    done_before = _results(work)
    computing = {n: t for n, t in done_before.items() if not n.startswith(ALWAYS_RUN)}
    assert {"load_echoes", "brain_mask", "unwrap", KILL_AFTER} <= set(computing), sorted(done_before)
    assert "inversion" not in done_before, "killed too late: the run was nearly complete"
    assert not list(out.rglob("*_Chimap.nii.gz")), "killed too late: the susceptibility map was already written"

    rerun = subprocess.run(_cmd(bids, out, work), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]

    done_after = _results(work)
    rerun_nodes = sorted(n for n, t in computing.items() if done_after.get(n) != t)
    assert not rerun_nodes, f"finished nodes were run again instead of reused: {rerun_nodes}"
    assert {"background", "inversion", "reference", "report"} <= set(done_after), "the rerun did not complete the graph"

    got, want = _arrays(out), _arrays(reference)
    assert sorted(got) == sorted(want) and want
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    # a kill can leave a hidden temporary file, never a truncated file under a BIDS name
    for p in out.rglob("*"):
        if p.is_file() and ".tmp" in p.name:
            assert p.name.startswith("."), f"temporary file under a visible name: {p}"


def test_second_identical_run_recomputes_nothing(bids, reference, tmp_path):
    """A finished work folder is reused entirely (the sinks rewrite the same files)."""
    work = reference.parent / "work"
    before = _results(work)
    proc = subprocess.run(_cmd(bids, tmp_path / "out", work), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    after = _results(work)
    computing = [n for n in before if not n.startswith(ALWAYS_RUN)]
    assert computing and all(after[n] == before[n] for n in computing)
    got, want = _arrays(tmp_path / "out"), _arrays(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_another_build_does_not_reuse_the_work_folder(bids, reference, tmp_path, monkeypatch, caplog):
    """A work folder kept from another qsmprep build (an upgrade, edited code, other weights) is not reused:
    Nipype's cache keys on node inputs, not on code, so the top workflow's name carries the build's fingerprint
    and every computing node runs again in a folder of its own; the old folder is left as it was, with a warning."""
    import logging
    import shutil

    from qsmprep.cli.run import main
    from qsmprep.workflows.base import top_name

    work = tmp_path / "work"
    shutil.copytree(reference.parent / "work", work)
    (old,) = [p for p in work.iterdir() if p.name.startswith("qsmprep_") and p.is_dir()]
    assert old.name == top_name()
    old_results = {p: p.stat().st_mtime_ns for p in old.rglob("result_*.pklz")}
    assert old_results
    monkeypatch.setattr("qsmprep.utils.build.package_fingerprint", lambda *a, **k: "0abc1234")
    new_name = top_name()
    assert new_name != old.name and "0abc1234" in new_name
    with caplog.at_level(logging.WARNING):
        code = main([str(bids), str(tmp_path / "out"), "participant", "-w", str(work), *OPTS])
    assert code == 0
    assert any(old.name in r.getMessage() and "other qsmprep builds" in r.getMessage() for r in caplog.records)
    new_nodes = {p.parent.name for p in (work / new_name).rglob("result_*.pklz")}
    old_nodes = {p.parent.name for p in old_results}
    assert {n for n in old_nodes if not n.startswith(ALWAYS_RUN)} <= new_nodes
    assert {p: p.stat().st_mtime_ns for p in old.rglob("result_*.pklz")} == old_results
    got, want = _arrays(tmp_path / "out"), _arrays(reference)
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
