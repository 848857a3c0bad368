"""Group level (qsmprep.group.run_group): long/wide study tables, participants.tsv join, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmprep.atlas.labels import DGM_LABELS
from qsmprep.atlas.rois import roi_table, write_roi_table
from qsmprep.group import NoParticipantOutputsError, long_to_wide, run_group

# (participant, session or None, run, chi offset in ppm): every region's mean = offset + index/1000
RUNS = [("01", None, "1", 0.0), ("02", "a", "1", 0.1), ("02", "b", "1", 0.2), ("03", None, "2", 0.3)]


def _write_run_table(out_dir, sub, ses, run, offset):
    dseg = np.zeros((8, 8, 8), np.int16)
    chi = np.zeros((8, 8, 8), np.float32)
    flat = dseg.reshape(-1)
    for lab in DGM_LABELS:  # 4 voxels per label
        sl = slice(4 * (lab.index - 1), 4 * lab.index)
        flat[sl] = lab.index
        chi.reshape(-1)[sl] = offset + lab.index / 1000.0
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_run-{run}"
    anat = out_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    df = roi_table(chi, dseg, participant_id=f"sub-{sub}", session_id=f"ses-{ses}" if ses else "n/a",
                   run=run, reference_region="whole brain")
    write_roi_table(df, anat / f"{prefix}_desc-dgm_stats.tsv")


@pytest.fixture
def study(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    for r in RUNS:
        _write_run_table(out, *r)
    (bids / "participants.tsv").write_text(
        "participant_id\tage\tsex\tgroup\n"
        "sub-01\t34\tF\tcontrol\n"
        "sub-02\t61\tM\tpatient\n"
        "sub-03\tn/a\tF\tpatient\n"
        "sub-99\t20\tM\tcontrol\n"
    )
    (bids / "participants.json").write_text(json.dumps({"age": {"Description": "age", "Units": "year"}}))
    return bids, out


def test_run_group_long_wide_and_join(study):
    import pandas as pd
    from PIL import Image

    bids, out = study
    written = run_group(bids, out)
    names = sorted(p.name for p in written)
    assert names == ["group_desc-dgm_chi.png", "group_desc-dgm_stats.json", "group_desc-dgm_stats.tsv",
                     "group_desc-dgm_wide.json", "group_desc-dgm_wide.tsv"]
    assert all(p.parent == out / "group" for p in written)

    long = pd.read_csv(out / "group" / "group_desc-dgm_stats.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(long) == len(RUNS) * len(DGM_LABELS)
    assert {"age", "sex", "group", "mean_ppm", "structure", "hemisphere"} <= set(long.columns)
    assert set(long.loc[long.participant_id == "sub-02", "age"]) == {"61"}
    assert set(long.loc[long.participant_id == "sub-03", "age"]) == {"n/a"}
    assert "sub-99" not in set(long.participant_id)  # no outputs -> not in the study table

    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", na_values=["n/a"],
                       keep_default_na=False, dtype={"run": str, "session_id": str})
    wide["session_id"] = wide["session_id"].fillna("n/a")
    assert len(wide) == len(RUNS)  # one row per run
    regions = [lab.name for lab in DGM_LABELS]
    assert list(wide.columns[:7]) == ["participant_id", "session_id", "acquisition", "run", "age", "sex", "group"]
    assert list(wide.columns[7:]) == regions
    for sub, ses, run, offset in RUNS:
        row = wide[(wide.participant_id == f"sub-{sub}") & (wide.session_id == (f"ses-{ses}" if ses else "n/a"))]
        assert len(row) == 1 and row.run.iloc[0] == run
        for lab in DGM_LABELS:
            assert row[lab.name].iloc[0] == pytest.approx(offset + lab.index / 1000.0, abs=1e-6)
    assert wide.loc[wide.participant_id == "sub-01", "group"].iloc[0] == "control"

    side = json.loads((out / "group" / "group_desc-dgm_wide.json").read_text())
    assert side["caudate_L"]["Units"] == "ppm" and side["age"]["Units"] == "year"
    side_long = json.loads((out / "group" / "group_desc-dgm_stats.json").read_text())
    assert len(side_long["Sources"]) == len(RUNS) and side_long["mean_ppm"]["Units"] == "ppm"
    with Image.open(out / "group" / "group_desc-dgm_chi.png") as im:
        im.verify()
        assert im.size[0] > 200


def test_participant_label_filter_and_no_participants_tsv(study):
    import pandas as pd

    bids, out = study
    (bids / "participants.tsv").unlink()
    run_group(bids, out, participant_label=["sub-02", "03"])
    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert sorted(wide.participant_id) == ["sub-02", "sub-02", "sub-03"]
    assert "age" not in wide.columns


def test_no_outputs_clear_error(tmp_path):
    (tmp_path / "out" / "sub-01" / "anat").mkdir(parents=True)
    with pytest.raises(NoParticipantOutputsError, match="run the participant level first") as info:
        run_group(tmp_path / "bids", tmp_path / "out")
    assert isinstance(info.value, ValueError) and str(tmp_path / "out") in str(info.value)
    _write_run_table(tmp_path / "out", "01", None, "1", 0.0)
    with pytest.raises(NoParticipantOutputsError, match="sub-07"):
        run_group(tmp_path / "bids", tmp_path / "out", participant_label="07")


def test_long_to_wide_known_answer():
    import pandas as pd

    long = pd.DataFrame({
        "participant_id": ["sub-1"] * 2 + ["sub-2"] * 2, "session_id": "n/a", "acquisition": "n/a",
        "run": "1", "structure": ["caudate", "putamen"] * 2, "hemisphere": "L",
        "mean_ppm": [0.01, 0.02, 0.03, np.nan],
    })
    wide = long_to_wide(long)
    assert list(wide.columns) == ["participant_id", "session_id", "acquisition", "run", "caudate_L", "putamen_L"]
    assert wide.caudate_L.tolist() == [0.01, 0.03]
    assert wide.putamen_L.iloc[0] == 0.02 and np.isnan(wide.putamen_L.iloc[1])
