"""Killing qsmprep (``kill -9`` of the main process only) ends its MultiProc workers, forkserver and
resource tracker within seconds instead of leaving them running (issue #15)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import make_bids

QSMPREP = Path(sys.executable).with_name("qsmprep")


def _children() -> dict[int, int]:
    """``{pid: ppid}`` of every process (Linux ``/proc``)."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                pass
    return out


def _descendants(root: int) -> set[int]:
    tree = _children()
    found, frontier = set(), {root}
    while frontier:
        frontier = {p for p, pp in tree.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and PR_SET_PDEATHSIG")
def test_workers_end_with_the_killed_main_process(tmp_path):
    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    cmd = [str(QSMPREP), str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "work"),
           "--skip-atlas", "--inversion", "nsidl", "--device", "cpu", "--nprocs", "2", "--skip-bids-validation"]
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        workers: set[int] = set()
        while len(workers) < 3:  # forkserver + >= 2 workers (+ resource tracker)
            assert proc.poll() is None, (tmp_path / "log.txt").read_text()[-3000:]
            assert time.monotonic() < deadline, "MultiProc never started its workers"
            time.sleep(0.2)
            workers = _descendants(proc.pid)
        time.sleep(1.0)
        workers = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the main process only, as an OOM killer or a careless kill does
        proc.wait(timeout=30)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = sorted(p for p in workers if _alive(p))
        assert not left, f"processes of the killed run still alive after 10 s: {left}"
    finally:
        log.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in _descendants(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
