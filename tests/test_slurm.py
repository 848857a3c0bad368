"""qsmprep on a real SLURM cluster (one node, started on this machine by ``.ci/slurm.sh up``).

The session fixture starts munged, slurmctld and slurmd (installing Debian's slurm-wlm and
munge when missing) and stops them afterwards unless they were already running.  If the
cluster cannot be started the tests FAIL with the reason (deselect them with ``-m "not
slurm"`` on a machine where that is expected); they never pass without a scheduler.

No slurmdbd runs, so ``sacct`` has no data: job states and exit codes come from
``scontrol show job`` (jobs are kept for MinJobAge = 1 h) and from the job-completion log
(``jobcomp/filetxt``).  The cluster offers one GPU "generic resource" without a device, so
that ``--gres=gpu:1`` requests are accepted and scheduled as on a GPU cluster.

End-to-end: the bundled example ``bids_examples/ds-megre`` (two participants, three runs)
through (a) ``workflows/slurm/submit.sh`` (job array + dependent group job) and (b)
``qsmprep --use-plugin workflows/plugins/slurmgraph.yml`` (one job per Nipype node); both must
give the same derivatives as a local MultiProc run.  ``--skip-atlas --inversion tkd`` keep the
CI time down (the registration alone takes minutes on 2 cores); the SLURMGraph resubmission
test runs the default NSIDL inversion, so the shipped network also runs as a SLURM job.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.slurm]

ROOT = Path(__file__).resolve().parents[1]
SLURM_SH = ROOT / ".ci" / "slurm.sh"
SLURM_DIR = Path(os.environ.get("QSMPREP_SLURM_DIR", "/tmp/qsmprep-slurm"))
EXAMPLE = ROOT / "bids_examples" / "ds-megre"
QSMPREP = Path(sys.executable).with_name("qsmprep")
#: options that keep the end-to-end runs short on 2 CPUs (the whole pipeline still runs)
FAST = ["--skip-atlas", "--inversion", "tkd"]


# ------------------------------------------------------------------------------------ helpers


def _daemons_running() -> bool:
    def alive(name):
        pid = SLURM_DIR / f"{name}.pid"
        try:
            os.kill(int(pid.read_text().strip()), 0)
            return True
        except (OSError, ValueError):
            return False

    return alive("slurmctld") and alive("slurmd")


@pytest.fixture(scope="session")
def slurm_env():
    """Environment for SLURM clients; the cluster is up for the whole session."""
    if os.geteuid() != 0:
        pytest.fail("the SLURM tests start slurmctld/slurmd with .ci/slurm.sh and need root; "
                    "run them as root (CI does) or deselect them with -m 'not slurm'.")
    already = _daemons_running()
    env = dict(os.environ, SLURM_CONF=str(SLURM_DIR / "slurm.conf"), QSMPREP_SLURM_DIR=str(SLURM_DIR))
    proc = subprocess.run(["bash", str(SLURM_SH), "up"], env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"could not start the SLURM cluster with .ci/slurm.sh up (exit {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
    yield env
    if not already:
        subprocess.run(["bash", str(SLURM_SH), "down"], env=env, capture_output=True, text=True, timeout=300)


def _run(cmd, env, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 600)
    return subprocess.run([str(c) for c in cmd], env=env, capture_output=True, text=True, **kw)


def _jobs(env, min_id: int = 0) -> dict[int, dict]:
    """``{job id: fields}`` of the jobs slurmctld still knows (``scontrol show job -o``)."""
    out = _run(["scontrol", "show", "job", "-o"], env).stdout
    jobs = {}
    for line in out.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" in fields and int(fields["JobId"]) > min_id:
            jobs[int(fields["JobId"])] = fields
    return jobs


def _max_job_id(env) -> int:
    return max(_jobs(env), default=0)


def _wait_idle(env, min_id: int, timeout: float) -> dict[int, dict]:
    """Wait until every job newer than ``min_id`` has ended; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        jobs = _jobs(env, min_id)
        pending = {j: f["JobState"] for j, f in jobs.items() if f["JobState"] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}
        if not pending:
            return jobs
        if time.monotonic() > deadline:
            _run(["scancel", *map(str, pending)], env)
            pytest.fail(f"SLURM jobs still not finished after {timeout:.0f} s: {pending}")
        time.sleep(1.0)


def _failed(jobs: dict[int, dict]) -> dict[int, str]:
    return {j: f"{f.get('JobName')} {f['JobState']} exit {f.get('ExitCode')} (reason {f.get('Reason')})"
            for j, f in jobs.items() if f["JobState"] != "COMPLETED" or f.get("ExitCode") != "0:0"}


def _ts(value: str) -> float:
    return time.mktime(time.strptime(value, "%Y-%m-%dT%H:%M:%S"))


def _derivative_arrays(out_dir: Path) -> dict[str, np.ndarray]:
    import nibabel as nb

    return {str(p.relative_to(out_dir)): np.asanyarray(nb.load(p).dataobj)
            for p in sorted(out_dir.glob("sub-*/**/anat/*.nii.gz"))}


def _assert_same_derivatives(out: Path, ref: Path) -> None:
    got, want = _derivative_arrays(out), _derivative_arrays(ref)
    assert want, f"the local reference run wrote no derivatives in {ref}"
    assert sorted(got) == sorted(want), f"different outputs: {sorted(set(got) ^ set(want))}"
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-6, err_msg=name)


def _example() -> Path:
    if not (EXAMPLE / "participants.tsv").is_file():
        pytest.fail(f"the bundled example {EXAMPLE} is missing; generate it with "
                    "'.venv/bin/python bids_examples/make_examples.py'.")
    return EXAMPLE


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory):
    """The example processed locally (MultiProc) with the same options: what SLURM must match."""
    bids = _example()
    base = tmp_path_factory.mktemp("local")
    out = base / "out"
    proc = _run([QSMPREP, bids, out, "participant", "-w", base / "work", "--nprocs", "2", *FAST],
                dict(os.environ), timeout=420)
    assert proc.returncode == 0, f"local qsmprep run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


# ------------------------------------------------------------------------ the cluster itself


def test_trivial_job_completes(slurm_env, tmp_path):
    before = _max_job_id(slurm_env)
    out = tmp_path / "hello.out"
    proc = _run(["sbatch", "--wait", "--parsable", "-J", "hello", "-o", out,
                 "--wrap", "echo hello from $SLURM_JOB_ID on $(hostname -s)"], slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jid = int(proc.stdout.strip().split(";")[0])
    assert jid > before
    assert f"hello from {jid}" in out.read_text()
    job = _jobs(slurm_env)[jid]
    assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0")
    # the completion log is what replaces sacct here
    assert re.search(rf"JobId={jid} .*JobState=COMPLETED", (SLURM_DIR / "jobcomp.log").read_text())


def test_failing_job_is_reported_failed(slurm_env, tmp_path):
    """The job-state checks below can fail: a non-zero exit shows up as FAILED."""
    proc = _run(["sbatch", "--wait", "--parsable", "-o", tmp_path / "x.out", "--wrap", "exit 3"],
                slurm_env, timeout=120)
    assert proc.returncode != 0
    jid = int(proc.stdout.strip().split(";")[0])
    job = _jobs(slurm_env)[jid]
    assert (job["JobState"], job["ExitCode"]) == ("FAILED", "3:0")
    assert _failed({jid: job})


def test_gpu_gres_request_is_scheduled(slurm_env, tmp_path):
    """``--gres=gpu:1`` (what the NSIDL node asks for) is accepted, scheduled and exported."""
    out = tmp_path / "gpu.out"
    proc = _run(["sbatch", "--wait", "--parsable", "--gres=gpu:1", "-o", out,
                 "--wrap", "echo gpus=$SLURM_JOB_GPUS"], slurm_env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    jid = int(proc.stdout.strip().split(";")[0])
    assert "gpus=0" in out.read_text()
    assert "gpu:1" in _jobs(slurm_env)[jid].get("TresPerNode", "")


# ----------------------------------------------------------------------- (a) the array script


def _submit(env, bids, out, *qsmprep_opts) -> tuple[int, int]:
    proc = _run(["bash", ROOT / "workflows" / "slurm" / "submit.sh", bids, out, "--", *qsmprep_opts], env)
    assert proc.returncode == 0, proc.stderr
    ids = dict(re.findall(r"(array|group)=(\d+)", proc.stdout.strip().splitlines()[-1]))
    return int(ids["array"]), int(ids["group"])


def test_array_script_and_dependent_group_job(slurm_env, local_reference, tmp_path):
    """The real pipeline, one participant per array task; the group job waits for all of them."""
    bids = _example()
    out = tmp_path / "out"
    env = dict(slurm_env, QSMPREP_CMD=str(QSMPREP), QSMPREP_WORK=str(tmp_path / "work"),
               QSMPREP_LOG_DIR=str(tmp_path / "logs"),
               QSMPREP_SBATCH_ARGS="--cpus-per-task=1 --mem=4G --time=00:20:00")
    before = _max_job_id(slurm_env)
    array_id, group_id = _submit(env, bids, out, *FAST)

    jobs = _wait_idle(slurm_env, before, timeout=900)
    logs = {p.name: p.read_text() for p in sorted((tmp_path / "logs").glob("*.out"))}
    tail = "\n".join(f"--- {n}\n{t[-1500:]}" for n, t in logs.items())
    tasks = {j: f for j, f in jobs.items() if f.get("ArrayJobId") == str(array_id)}
    labels = _run(["bash", ROOT / "workflows" / "slurm" / "qsmprep_array.sbatch", "--list", bids], env).stdout.split()
    assert len(tasks) == len(labels) == 2, f"expected one array task per participant: {tasks}"
    assert not _failed(tasks), f"array tasks failed: {_failed(tasks)}\n{tail}"
    # one participant per task, each with its own work folder; same results as a local run
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == [f"sub-{l}" for l in labels]
    _assert_same_derivatives(out, local_reference)

    # the group job started only after every participant had finished (afterok)
    group = jobs[group_id]
    assert group["StartTime"] not in ("Unknown", "None"), f"the group job never started: {group}"
    assert _ts(group["StartTime"]) >= max(_ts(f["EndTime"]) for f in tasks.values())
    group_log = logs[f"qsmprep-group-{group_id}.out"]
    assert f"{out} group" in group_log, group_log
    if _failed({group_id: group}):
        # --skip-atlas (CI time) leaves no ROI tables, and the group level says so clearly
        assert "dgm_stats" in group_log and "--skip-atlas" in group_log, f"group job failed:\n{group_log}"


_STUB = """#!/bin/bash
# stands in for qsmprep: records the call; participant 02 fails when FAIL_02 is set
echo "$@" >> "$STUB_LOG"
case "$*" in *"--participant-label 02"*) [ -n "${FAIL_02:-}" ] && exit 1 ;; esac
exit 0
"""


@pytest.mark.parametrize("fail", [False, True], ids=["all-succeed", "one-fails"])
def test_group_job_runs_only_after_every_task_succeeded(slurm_env, tmp_path, fail):
    """afterok + --kill-on-invalid-dep: one failed participant and the group job never runs."""
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\nsub-01\nsub-02\nsub-03\n")
    stub = tmp_path / "stub.sh"
    stub.write_text(_STUB)
    stub.chmod(0o755)
    log = tmp_path / "calls.log"
    env = dict(slurm_env, QSMPREP_CMD=str(stub), STUB_LOG=str(log), QSMPREP_LOG_DIR=str(tmp_path / "logs"),
               QSMPREP_WORK=str(tmp_path / "work"), QSMPREP_SBATCH_ARGS="--cpus-per-task=1 --mem=200M")
    if fail:
        env["FAIL_02"] = "1"
    before = _max_job_id(slurm_env)
    array_id, group_id = _submit(env, bids, tmp_path / "out")
    jobs = _wait_idle(slurm_env, before, timeout=300)
    tasks = {int(f["ArrayTaskId"]): f for f in jobs.values() if f.get("ArrayJobId") == str(array_id)}
    assert sorted(tasks) == [1, 2, 3]
    calls = log.read_text().splitlines()
    group_ran = any(c.endswith(" group") for c in calls)
    if fail:
        assert tasks[2]["JobState"] == "FAILED" and tasks[1]["JobState"] == tasks[3]["JobState"] == "COMPLETED"
        assert not group_ran, "the group level ran although a participant failed"
        assert jobs[group_id]["JobState"] == "CANCELLED", jobs[group_id]
    else:
        assert not _failed(jobs), _failed(jobs)
        assert group_ran and calls[-1].endswith(" group"), calls
        assert sorted(c.split("--participant-label ")[1].split()[0] for c in calls[:-1]) == ["01", "02", "03"]


# -------------------------------------------------------------- (b) SLURMGraph via --use-plugin


def _ci_plugin_file(src: Path, dst: Path, cpus: int) -> Path:
    """The shipped plugin file with the resource numbers cut down to this one small node."""
    import yaml

    data = yaml.safe_load(src.read_text())

    def shrink(args: str) -> str:
        args = re.sub(r"--cpus-per-task=\d+", f"--cpus-per-task={cpus}", args)
        return re.sub(r"--mem=\d+G", "--mem=3G", args)

    data["plugin_args"]["sbatch_args"] = shrink(data["plugin_args"]["sbatch_args"])
    for node_args in (data.get("node_plugin_args") or {}).values():
        node_args["sbatch_args"] = shrink(node_args["sbatch_args"])
    dst.write_text(yaml.safe_dump(data))
    return dst


def test_slurmgraph_plugin_runs_every_node_as_a_job(slurm_env, local_reference, tmp_path):
    bids = _example()
    out, work = tmp_path / "out", tmp_path / "work"
    plugin = _ci_plugin_file(ROOT / "workflows" / "plugins" / "slurmgraph.yml", tmp_path / "slurmgraph.yml",
                             cpus=1)
    before = _max_job_id(slurm_env)
    proc = _run([QSMPREP, bids, out, "participant", "-w", work, "--use-plugin", plugin, *FAST], slurm_env)
    jobs = _wait_idle(slurm_env, before, timeout=900)
    assert len(jobs) >= 10, f"SLURMGraph submitted only {len(jobs)} job(s):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    errs = {p.name: p.read_text()[-1500:] for p in work.rglob("batchscript_*.sh.e") if p.stat().st_size}
    assert not _failed(jobs), f"node jobs failed: {_failed(jobs)}\n{errs}"
    names = [f["JobName"] for f in jobs.values()]
    inversion = [j for j, f in jobs.items() if f["JobName"].endswith("_inversion")]
    assert inversion, f"no inversion job among {names}"
    _assert_same_derivatives(out, local_reference)
    # the inversion node, and only it, asked for the GPU through node_plugin_args
    gres = {f["JobName"]: f.get("TresPerNode", "") for f in jobs.values()}
    assert all("gpu:1" in gres[jobs[j]["JobName"]] for j in inversion), (
        "the inversion jobs did not request --gres=gpu:1: qsmprep must apply the plugin file's "
        f"node_plugin_args to the matching nodes ({gres})")
    assert not [n for n, g in gres.items() if "gpu" in g and not n.endswith("_inversion")]
    # qsmprep returns once the graph is submitted; that is a success, not a failure
    assert proc.returncode == 0, (
        "qsmprep --use-plugin slurmgraph.yml exited non-zero although every job succeeded (it must "
        f"not judge the run before the submitted jobs ran):\n{proc.stderr[-2000:]}")
    # the subject reports are nodes of the graph: the jobs wrote them, no second command needed
    report_jobs = [f["JobName"] for f in jobs.values() if f["JobName"].endswith("_report")]
    assert len(report_jobs) == 2, names
    for sub in ("sub-01", "sub-02"):
        html = out / f"{sub}.html"
        assert html.is_file() and "<img" in html.read_text(), f"no report for {sub} after the SLURMGraph jobs"


def test_slurmgraph_rerun_resubmits_nothing_that_finished(slurm_env, tmp_path):
    """``dont_resubmit_completed_jobs``: a second submission with the same work folder reuses it all."""
    bids = _example()
    out, work = tmp_path / "out", tmp_path / "work"
    plugin = _ci_plugin_file(ROOT / "workflows" / "plugins" / "slurmgraph.yml", tmp_path / "sg.yml", cpus=1)
    # the default NSIDL inversion here (CPU, ~20 s), so the shipped network runs as a SLURM job too
    cmd = [QSMPREP, bids, out, "participant", "--participant-label", "02", "-w", work,
           "--use-plugin", plugin, "--skip-atlas"]
    before = _max_job_id(slurm_env)
    _run(cmd, slurm_env)
    first = _wait_idle(slurm_env, before, timeout=600)
    assert first and not _failed(first), _failed(first)
    chi = next(out.glob("sub-02/**/anat/*_Chimap.nii.gz"))
    reference = chi.read_bytes()
    sidecar = json.loads(chi.with_name(chi.name.replace(".nii.gz", ".json")).read_text())
    assert sidecar["InversionMethod"] == "nsidl" and sidecar["Units"] == "ppm", sidecar

    before = _max_job_id(slurm_env)
    proc = _run(cmd, slurm_env)
    second = _wait_idle(slurm_env, before, timeout=600)
    assert not _failed(second), _failed(second)
    # only the nodes that run every time go back to the queue: the derivative sinks and the report
    # (they rewrite the outputs) and the Merge nodes that collect the sinks' outputs for the report;
    # no computing node is resubmitted
    always = ("_ds_", "_report", "_written", "_merge_written")
    again = sorted(f["JobName"] for f in second.values())
    assert len(second) < len(first), f"the rerun resubmitted {len(second)} of {len(first)} jobs"
    assert all(any(a in name for a in always) for name in again), f"computing nodes were resubmitted: {again}"
    assert chi.read_bytes() == reference
    # the second call, made after the jobs finished, is a complete and successful run
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "sub-02.html").is_file()

    # the same command without --use-plugin recomputes nothing
    results = {p: p.stat().st_mtime_ns for p in work.rglob("result_*.pklz")
               if not p.parent.name.startswith(("ds_", "fig_", "report", "written", "merge_written"))}
    local = _run([a for a in cmd if a not in ("--use-plugin", plugin)] + ["--nprocs", "2"], dict(os.environ))
    assert local.returncode == 0, local.stderr[-2000:]
    assert results and all(p.stat().st_mtime_ns == t for p, t in results.items()), "nodes were recomputed"
    assert chi.read_bytes() == reference
