"""Two participant jobs writing to the same output folder at the same time.

What a SLURM job array does: several ``qsmprep ... participant --participant-label X`` run at
once with one shared ``out_dir``.  Both update ``dataset_description.json`` and ``.bidsignore``
and write their own subject folders.  Neither may corrupt the shared files or the other's.
The two subjects of the synthetic dataset have identical images, so their derivatives must be
bit-identical: any interleaved or truncated write would show.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from conftest import make_bids

QSMPREP = Path(sys.executable).with_name("qsmprep")


def test_two_participant_processes_share_one_out_dir(tmp_path):
    import nibabel as nb

    bids = make_bids(tmp_path / "bids", subjects=("01", "02"))
    out = tmp_path / "out"
    procs = {}
    for label in ("01", "02"):
        log = open(tmp_path / f"sub-{label}.log", "w")
        procs[label] = (subprocess.Popen(
            [str(QSMPREP), str(bids), str(out), "participant", "--participant-label", label,
             "-w", str(tmp_path / f"work-{label}"), "--nprocs", "1", "--skip-atlas", "--inversion", "tkd"],
            stdout=log, stderr=subprocess.STDOUT), log)
    deadline = time.monotonic() + 600
    for label, (proc, log) in procs.items():
        rc = proc.wait(timeout=max(1, deadline - time.monotonic()))
        log.close()
        assert rc == 0, f"sub-{label} failed:\n{(tmp_path / f'sub-{label}.log').read_text()[-3000:]}"

    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmprep"

    files = {label: sorted(p.relative_to(out / f"sub-{label}") for p in (out / f"sub-{label}").rglob("*")
                           if p.is_file() and "log" not in p.parts)
             for label in ("01", "02")}
    as_01 = [Path(str(p).replace("sub-02", "sub-01")) for p in files["02"]]
    assert files["01"] and files["01"] == as_01, "the two jobs wrote different sets of files"
    for rel in files["01"]:
        a, b = out / "sub-01" / rel, out / "sub-02" / Path(str(rel).replace("sub-01", "sub-02"))
        if a.name.endswith(".nii.gz"):
            np.testing.assert_array_equal(np.asanyarray(nb.load(a).dataobj), np.asanyarray(nb.load(b).dataobj),
                                          err_msg=str(rel))
        elif a.suffix == ".json":
            ja, jb = json.loads(a.read_text()), json.loads(b.read_text())
            assert set(ja) == set(jb), rel
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not leftovers, f"temporary files left behind: {leftovers}"
