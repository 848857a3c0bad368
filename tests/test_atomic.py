"""Atomic and concurrency-safe output writing (``qsmprep.utils.atomic``).

What a cluster run needs from it: a job killed (SIGKILL, time limit, node failure) or failing
in the middle of writing an output leaves no truncated file under the final name, and several
participant jobs updating the shared ``dataset_description.json`` at the same time neither
lose each other's updates nor ever expose half-written JSON to a reader.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from qsmprep.utils import atomic


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


# ----------------------------------------------------------------------------- single process


def test_write_json_roundtrip_and_no_temp_left(tmp_path):
    out = tmp_path / "sub-01" / "anat" / "x_Chimap.json"
    atomic.write_json(out, {"Units": "ppm", "b": [1, 2]})
    assert json.loads(out.read_text()) == {"Units": "ppm", "b": [1, 2]}
    assert _leftovers(out.parent) == []


def test_final_file_mode_follows_umask(tmp_path):
    """Regression: mkstemp made every output 0600, unreadable by the group on shared storage."""
    old = os.umask(0o022)
    try:
        p = atomic.write_text(tmp_path / "a.txt", "x")
        assert (p.stat().st_mode & 0o777) == 0o644
        os.umask(0o007)
        p = atomic.write_text(tmp_path / "b.txt", "x")
        assert (p.stat().st_mode & 0o777) == 0o660
    finally:
        os.umask(old)


def test_temp_file_is_hidden_in_same_folder_with_same_extension(tmp_path):
    final = tmp_path / "sub-01_Chimap.nii.gz"
    with atomic.atomic_path(final) as tmp:
        # same folder => os.replace is a rename on one file system (atomic);
        # hidden => BIDS tools and globbing for *_Chimap.nii.gz never see it;
        # same extension => nibabel picks the right format.
        assert tmp.parent == final.parent
        assert tmp.name.startswith(".")
        assert tmp.name.endswith(".nii.gz")
        assert not final.exists()
        tmp.write_bytes(b"data")
    assert final.read_bytes() == b"data"


def test_exception_mid_write_leaves_no_file_under_final_name(tmp_path):
    final = tmp_path / "x_desc-local_fieldmap.json"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_path(final) as tmp:
            tmp.write_text('{"Units": "pp')  # truncated JSON
            raise RuntimeError("boom")
    assert not final.exists()
    assert _leftovers(tmp_path) == []


def test_exception_mid_write_keeps_previous_version_intact(tmp_path):
    final = tmp_path / "dataset_description.json"
    atomic.write_json(final, {"Name": "old"})
    with pytest.raises(KeyboardInterrupt):
        with atomic.atomic_path(final) as tmp:
            tmp.write_text("{")
            raise KeyboardInterrupt  # BaseException too (Ctrl-C, SystemExit)
    assert json.loads(final.read_text()) == {"Name": "old"}
    assert _leftovers(tmp_path) == []


def test_save_nifti_failure_leaves_nothing(tmp_path):
    import nibabel as nb

    class Boom(nb.Nifti1Image):
        def to_filename(self, *a, **k):  # nb.save calls this after opening the file
            Path(a[0]).write_bytes(b"\x1f\x8b partial gzip")
            raise OSError("disk full")

    img = Boom(np.zeros((4, 4, 4), np.float32), np.eye(4))
    final = tmp_path / "sub-01_Chimap.nii.gz"
    with pytest.raises(OSError, match="disk full"):
        atomic.save_nifti(img, final)
    assert not final.exists()
    assert _leftovers(tmp_path) == []


def test_save_nifti_and_copy_file_roundtrip(tmp_path):
    import nibabel as nb
    data = np.arange(64, dtype=np.float32).reshape(4, 4, 4)
    p = atomic.save_nifti(nb.Nifti1Image(data, np.eye(4)), tmp_path / "a" / "x.nii.gz")
    np.testing.assert_array_equal(np.asarray(nb.load(p).dataobj), data)
    q = atomic.copy_file(p, tmp_path / "b" / "y.nii.gz")
    assert q.read_bytes() == p.read_bytes()
    assert _leftovers(p.parent) == [] and _leftovers(q.parent) == []


# ------------------------------------------------------------------------------- killed writer

_SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from qsmprep.utils import atomic
    final, ready = Path(sys.argv[1]), Path(sys.argv[2])
    with atomic.atomic_path(final) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(b"\\x00" * 1_000_000)      # half of the file is on disk ...
            fh.flush()
            ready.write_text(str(tmp))
            time.sleep(60)                      # ... when the job is killed
            fh.write(b"\\x00" * 1_000_000)
    """
)


@pytest.mark.parametrize("existing", [False, True], ids=["new-file", "overwrite"])
def test_sigkill_mid_write_leaves_no_truncated_file(tmp_path, existing):
    """SIGKILL (what SLURM sends at the time limit after SIGTERM) runs no cleanup at all."""
    final = tmp_path / "sub-01_Chimap.nii.gz"
    if existing:
        final.write_bytes(b"complete old version")
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(final), str(ready)])
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            assert proc.poll() is None, "the writer process died before writing"
            assert time.monotonic() < deadline, "the writer process never started writing"
            time.sleep(0.05)
        tmp = Path(ready.read_text())
        assert tmp.stat().st_size == 1_000_000  # really killed half-way
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    if existing:
        assert final.read_bytes() == b"complete old version"
    else:
        assert not final.exists()
    # The partial data survives only under the hidden temporary name, never a BIDS name.
    assert all(name.startswith(".") for name in _leftovers(tmp_path))
    # and the next run's sweep removes it (it predates that run), keeping other files
    (tmp_path / ".bidsignore").write_text("x\n")
    young = tmp_path / "sub-01" / ".sub-01_Chimap.abcd1234.tmp.nii.gz"  # a live writer's: after the sweep's start
    young.parent.mkdir()
    young.write_bytes(b"being written")
    os.utime(young, (time.time() + 5, time.time() + 5))
    removed = atomic.remove_stale_temporaries(tmp_path, before=time.time())
    assert [p.name for p in removed] == [tmp.name] and not tmp.exists()
    assert young.exists() and (tmp_path / ".bidsignore").exists() and (tmp_path / "ready").exists()


# ------------------------------------------------------------------------ concurrent processes

_UPDATER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from qsmprep.utils import atomic
    path, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for i in range(n):
        def update(d, i=i):
            d.setdefault("Name", "qsmprep derivatives")
            d.setdefault("DatasetType", "derivative")
            d.setdefault("Writers", []).append(f"{who}-{i}")
            return d
        atomic.locked_json_update(path, update)
        # each job also writes its own files in the shared folder
        atomic.write_json(path.parent / f"sub-{who}" / f"sub-{who}_{i}.json", {"who": who, "i": i})
    """
)

_READER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    path, stop = Path(sys.argv[1]), Path(sys.argv[2])
    n = 0
    while not stop.exists():
        if path.exists():
            json.loads(path.read_text())   # raises on a half-written file
            n += 1
    print(n)
    """
)


def test_two_processes_update_dataset_description_without_losing_updates(tmp_path):
    path = tmp_path / "dataset_description.json"
    stop = tmp_path / "stop"
    n = 150
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    reader = subprocess.Popen(
        [sys.executable, "-c", _READER, str(path), str(stop)], stdout=subprocess.PIPE, text=True, env=env
    )
    writers = [
        subprocess.Popen([sys.executable, "-c", _UPDATER, str(path), who, str(n)], env=env)
        for who in ("01", "02")
    ]
    try:
        for w in writers:
            assert w.wait(timeout=120) == 0
    finally:
        stop.touch()
        out, _ = reader.communicate(timeout=60)
    assert reader.returncode == 0, "a reader saw a half-written dataset_description.json"
    assert int(out.strip()) > 0, "the reader never read the file (the test checked nothing)"

    data = json.loads(path.read_text())
    assert data["DatasetType"] == "derivative"
    # every read-modify-write of both jobs survived: no lost update
    assert sorted(data["Writers"]) == sorted(f"{w}-{i}" for w in ("01", "02") for i in range(n))
    for who in ("01", "02"):
        files = sorted((tmp_path / f"sub-{who}").glob("*.json"))
        assert len(files) == n
        assert all(json.loads(f.read_text())["who"] == who for f in files)
    assert _leftovers(tmp_path) == []
