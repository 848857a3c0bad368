"""ROI statistics (qsmprep.atlas.rois): known answers, TSV/JSON schema, the ROIStats interface."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmprep.atlas.labels import DGM_LABELS
from qsmprep.atlas.rois import (
    COLUMNS,
    ROI_COLUMNS,
    erode_labels,
    erode_mm_to_voxels,
    roi_sidecar,
    roi_table,
    write_roi_table,
)


def _blocks(shape=(20, 20, 20)):
    """Label 1 = 4x4x4 cube of values 0..63 (/1000 ppm); label 3 = 2x2x2 cube of 0.1 ppm."""
    dseg = np.zeros(shape, np.int16)
    chi = np.zeros(shape, np.float32)
    dseg[2:6, 2:6, 2:6] = 1
    chi[2:6, 2:6, 2:6] = (np.arange(64, dtype=np.float32) / 1000.0).reshape(4, 4, 4)
    dseg[10:12, 10:12, 10:12] = 3
    chi[10:12, 10:12, 10:12] = 0.1
    return chi, dseg


def test_roi_table_known_answer():
    chi, dseg = _blocks()
    df = roi_table(chi, dseg, (1.0, 2.0, 0.5), participant_id="sub-01", run="1", reference_region="CSF")
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == len(DGM_LABELS)
    r1 = df[df.label == 1].iloc[0]
    vals = np.arange(64) / 1000.0
    assert r1.structure == "caudate" and r1.hemisphere == "L"
    assert r1.voxel_count == 64 and r1.volume_mm3 == pytest.approx(64 * 1.0)  # 1*2*0.5 mm^3 voxels
    assert r1.mean_ppm == pytest.approx(0.0315, abs=1e-7)
    assert r1.median_ppm == pytest.approx(0.0315, abs=1e-7)
    assert r1.std_ppm == pytest.approx(vals.std(), abs=1e-7)
    assert r1.p25_ppm == pytest.approx(np.percentile(vals, 25), abs=1e-7)
    assert r1.p75_ppm == pytest.approx(np.percentile(vals, 75), abs=1e-7)
    r3 = df[df.label == 3].iloc[0]
    assert (r3.structure, r3.hemisphere, r3.voxel_count) == ("putamen", "L", 8)
    assert r3.mean_ppm == pytest.approx(0.1) and r3.std_ppm == pytest.approx(0.0, abs=1e-7)
    empty = df[df.label == 12].iloc[0]
    assert empty.voxel_count == 0 and np.isnan(empty.mean_ppm)
    assert set(df.participant_id) == {"sub-01"} and set(df.reference_region) == {"CSF"}
    assert set(df.session_id) == {"n/a"}


def test_roi_table_mask_and_nan_are_ignored():
    chi, dseg = _blocks()
    chi[2, 2, 2] = np.nan
    mask = np.ones(chi.shape, bool)
    mask[5, :, :] = False  # removes 16 voxels of label 1 (x = 5 plane)
    df = roi_table(chi, dseg, mask=mask)
    r1 = df[df.label == 1].iloc[0]
    expect = chi[2:5, 2:6, 2:6].ravel()
    expect = expect[np.isfinite(expect)]
    assert r1.voxel_count == 47
    assert r1.mean_ppm == pytest.approx(expect.mean(), abs=1e-7)


def test_erosion_known_answer_and_small_labels_kept():
    dseg = np.zeros((12, 12, 12), np.int16)
    dseg[1:6, 1:6, 1:6] = 1  # 5^3 -> 3^3 after one erosion
    dseg[8, 8, 8] = 2  # one voxel: erosion would empty it -> kept
    out = erode_labels(dseg, 1)
    assert (out == 1).sum() == 27 and (out == 2).sum() == 1
    assert (erode_labels(dseg, 1, keep_small=False) == 2).sum() == 0
    chi = np.where(dseg == 1, 0.05, 0.0).astype(np.float32)
    chi[1, 1:6, 1:6] = 1.0  # a contaminated face: removed by the erosion
    df = roi_table(chi, dseg, erode_voxels=1)
    assert df[df.label == 1].mean_ppm.iloc[0] == pytest.approx(0.05)


@pytest.mark.parametrize("vs, n", [((1, 1, 1), 1), ((2, 2, 2), 0), ((0.8, 0.8, 2.0), 1), ((0.5, 0.5, 0.5), 2)])
def test_erode_mm_to_voxels(vs, n):
    assert erode_mm_to_voxels(1.0, vs) == n


def test_shape_mismatch_error_names_the_fix():
    with pytest.raises(ValueError, match="warp the labels"):
        roi_table(np.zeros((4, 4, 4)), np.zeros((4, 4, 5), np.int16))


def test_tsv_and_json_schema(tmp_path):
    import pandas as pd

    chi, dseg = _blocks()
    df = roi_table(chi, dseg, participant_id="sub-01", session_id="ses-a", run="2")
    tsv, js = write_roi_table(df, tmp_path / "sub-01_desc-dgm_stats.tsv")
    assert js.name == "sub-01_desc-dgm_stats.json"
    text = tsv.read_text().splitlines()
    assert text[0].split("\t") == list(COLUMNS)
    assert len(text) == 1 + len(DGM_LABELS)
    assert "n/a" in text[-1]  # empty red nucleus -> n/a statistics
    back = pd.read_csv(tsv, sep="\t", na_values=["n/a"], keep_default_na=False, dtype={"run": str})
    assert back.mean_ppm.iloc[0] == pytest.approx(df.mean_ppm.iloc[0], rel=1e-5)
    side = json.loads(js.read_text())
    for col in COLUMNS:
        assert "Description" in side[col], col
    for col in ("mean_ppm", "median_ppm", "std_ppm", "p25_ppm", "p75_ppm"):
        assert side[col]["Units"] == "ppm"
    assert side["volume_mm3"]["Units"] == "mm^3"
    assert set(side["structure"]["Levels"]) == {lab.structure for lab in DGM_LABELS}
    assert side["Atlas"].startswith("AAL3")
    assert roi_sidecar(extra={"X": 1})["X"] == 1 and set(COLUMNS) <= set(ROI_COLUMNS)


def test_bids_entities():
    from qsmprep.interfaces.atlas import bids_entities

    e = bids_entities("/d/sub-07/ses-2/anat/sub-07_ses-2_acq-hr_run-03_echo-1_part-mag_MEGRE.nii.gz")
    assert e == {"participant_id": "sub-07", "session_id": "ses-2", "acquisition": "hr", "reconstruction": "n/a",
                 "run": "03"}
    assert bids_entities("sub-07_rec-mag_run-1_MEGRE.nii.gz")["reconstruction"] == "mag"
    assert bids_entities("sub-1_MEGRE.nii")["run"] == "n/a"


def test_roistats_interface(tmp_path):
    import nibabel as nb
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.atlas import ROIStats

    chi, dseg = _blocks()
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    nb.save(nb.Nifti1Image(chi, aff), tmp_path / "chi.nii.gz")
    nb.save(nb.Nifti1Image(dseg, aff), tmp_path / "dseg.nii.gz")
    nb.save(nb.Nifti1Image(np.ones(chi.shape, np.uint8), aff), tmp_path / "mask.nii.gz")
    node = pe.Node(ROIStats(chi=str(tmp_path / "chi.nii.gz"), dseg=str(tmp_path / "dseg.nii.gz"),
                            mask=str(tmp_path / "mask.nii.gz"), reference_region="whole brain",
                            source_file="sub-03_run-1_echo-1_part-mag_MEGRE.nii.gz"),
                   name="roi_stats", base_dir=str(tmp_path / "work"))
    res = node.run()
    text = open(res.outputs.roi_tsv).read().splitlines()
    row = dict(zip(text[0].split("\t"), text[1].split("\t")))
    assert row["participant_id"] == "sub-03" and row["run"] == "1" and row["reference_region"] == "whole brain"
    assert float(row["volume_mm3"]) == 64 * 8.0  # 2 mm voxels, no erosion (1 mm < 2 mm)
    side = json.load(open(res.outputs.roi_json))
    assert side["LabelErosionVoxels"] == 0
