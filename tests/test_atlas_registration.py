"""Default (``fast``) registration on a 1 mm simulated head, and bit-identical reruns (slow).

The 1 mm test is the acceptance measurement of the atlas step: Dice >= 0.7 for caudate,
putamen and thalamus, and the 12 ROI means within 0.01 ppm of the true means given the true
chi (labels eroded by 1 mm, the workflow default).  About 1.5-2 min on 2 free cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_fast_registration_1mm_dice_and_roi_means(tmp_path):
    import nibabel as nb

    from qsmprep.atlas.labels import dice_per_structure
    from qsmprep.atlas.registration import register_to_template, warp_labels_to_run
    from qsmprep.atlas.rois import erode_mm_to_voxels, roi_table
    from qsmprep.sim.phantom import make_head

    h = make_head(voxel_size=(1.0, 1.0, 1.0), seed=0)
    mag = nb.Nifti1Image((h.m0 * np.exp(-0.02 * h.r2star)).astype(np.float32), h.affine)
    mask = nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine)
    t0 = time.perf_counter()
    reg = register_to_template(mag, mask, out_dir=tmp_path, num_threads=2)  # default: fast
    warped = np.asarray(warp_labels_to_run(mag, reg.from_mni).dataobj)
    elapsed = time.perf_counter() - t0
    d = dice_per_structure(warped, h.labels)
    print(f"fast registration + label warp: {elapsed:.1f} s; Dice {d}")
    for s in ("caudate", "putamen", "thalamus"):
        assert d[s] >= 0.7, (s, d)
    truth = h.dgm_true_means()
    df = roi_table(h.chi, warped, h.voxel_size, mask=h.brain_mask,
                   erode_voxels=erode_mm_to_voxels(1.0, h.voxel_size))
    err = {f"{r.structure}_{r.hemisphere}": r.mean_ppm - truth[f"{r.structure}_{r.hemisphere}"]
           for r in df.itertuples()}
    print("ROI mean errors (ppm):", {k: round(v, 4) for k, v in err.items()})
    assert max(abs(v) for v in err.values()) < 0.01, err


_REPRO = textwrap.dedent("""
    import sys, tempfile
    import numpy as np, nibabel as nb
    from qsmprep.atlas.registration import register_to_template, warp_labels_to_run
    from qsmprep.sim.phantom import make_head
    h = make_head(voxel_size=(3.0, 3.0, 3.0), seed=2, veins=False, lesions=False)
    mag = nb.Nifti1Image((h.m0 * np.exp(-0.02 * h.r2star)).astype(np.float32), h.affine)
    mask = nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine)
    outs = []
    for i in range(2):
        with tempfile.TemporaryDirectory() as d:
            reg = register_to_template(mag, mask, out_dir=d, flavor="testing", seed=7)
            outs.append(np.asarray(warp_labels_to_run(mag, reg.from_mni).dataobj))
    print("DIFF", int((outs[0] != outs[1]).sum()))
""")


def test_one_thread_registration_is_bit_identical():
    """With one ITK thread (set before ANTs starts) and a fixed seed, two runs agree exactly."""
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _REPRO], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DIFF 0" in out.stdout, out.stdout
