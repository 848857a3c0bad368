"""Group level (qsmprep.group.run_group): study tables, input validation and all-or-none writing
(issue #15), group statistics on a synthetic cohort with known effects (issue #16)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qsmprep.atlas.labels import DGM_LABELS
from qsmprep.atlas.rois import roi_table, write_roi_table
from qsmprep.group import GroupInputError, NoParticipantOutputsError, long_to_wide, run_group

# (participant, session or None, run, chi offset in ppm): every region's mean = offset + index/1000
RUNS = [("01", None, "1", 0.0), ("02", "a", "1", 0.1), ("02", "b", "1", 0.2), ("03", None, "2", 0.3)]


def _write_values(out_dir, sub, ses, run, values):
    """A participant-level ROI table whose region means are ``values`` (label name -> ppm)."""
    dseg = np.zeros((8, 8, 8), np.int16)
    chi = np.zeros((8, 8, 8), np.float32)
    for lab in DGM_LABELS:  # 4 voxels per label
        sl = slice(4 * (lab.index - 1), 4 * lab.index)
        dseg.reshape(-1)[sl] = lab.index
        chi.reshape(-1)[sl] = values[lab.name]
    prefix = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_run-{run}"
    anat = out_dir / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
    df = roi_table(chi, dseg, participant_id=f"sub-{sub}", session_id=f"ses-{ses}" if ses else "n/a",
                   run=run, reference_region="whole brain")
    write_roi_table(df, anat / f"{prefix}_desc-dgm_stats.tsv")


def _write_run_table(out_dir, sub, ses, run, offset):
    """A participant-level ROI table whose region means are ``offset`` + label index / 1000 (ppm)."""
    _write_values(out_dir, sub, ses, run, {lab.name: offset + lab.index / 1000.0 for lab in DGM_LABELS})


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
    from qsmprep.group import QC_COLUMNS

    n = 7 + len(QC_COLUMNS)
    assert list(wide.columns[:n + 3]) == ["participant_id", "session_id", "acquisition", "reconstruction", "run",
                                          "source", "status",
                                          *QC_COLUMNS, "age", "sex", "group"]
    assert list(wide.columns[n + 3:]) == regions
    assert wide["qc_passed"].isna().all()  # these runs have no QC file
    assert set(wide.status) == {"ok"} and wide.source.str.endswith("_desc-dgm_stats.tsv").all()
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
    assert list(wide.columns) == ["participant_id", "session_id", "acquisition", "reconstruction", "run",
                                  "caudate_L", "putamen_L"]  # a table without the rec column: n/a
    assert wide.caudate_L.tolist() == [0.01, 0.03]
    assert wide.putamen_L.iloc[0] == 0.02 and np.isnan(wide.putamen_L.iloc[1])


# ----------------------------------------------------------------------------- issue #15
# Group level dropped a subject silently (text instead of a TSV, missing mean_ppm), crashed
# half-way after rewriting some group files (truncated TSV) or with an AttributeError (ragged).
# Every per-run table is now validated against its sidecar before anything is written, the
# outputs are swapped in as a set, and each refusal is one sentence naming the file and the fix.

TARGET = "sub-02/ses-a/anat/sub-02_ses-a_run-1_desc-dgm_stats.tsv"


def _snapshot(folder):
    """{name: bytes} of every file in ``folder`` ({} when absent)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else {}


def _one_sentence(message, path):
    assert str(path) in message, message
    assert "\n" not in message and message.endswith("."), message
    assert ". " not in message.replace(str(path), "<file>"), message


def _refused(bids, out, path, match, **kwargs):
    """run_group must raise GroupInputError naming ``path`` and leave out/group exactly as it was."""
    before = _snapshot(out / "group")
    with pytest.raises(GroupInputError, match=match) as info:
        run_group(bids, out, **kwargs)
    assert isinstance(info.value, ValueError) and info.value.path == path
    _one_sentence(str(info.value), path)
    assert _snapshot(out / "group") == before
    assert not list(out.glob(".group.*")), "a staging folder was left behind"
    return str(info.value)


@pytest.fixture
def done(study):
    """The study after one successful group run (so 'nothing changed' can be checked)."""
    bids, out = study
    run_group(bids, out)
    return bids, out


def _mangle(path, how):
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if how == "text":
        path.write_text("Traceback (most recent call last):\n  MemoryError: killed while writing\n")
    elif how == "missing_mean":
        import pandas as pd

        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False).drop(columns="mean_ppm")
        path.write_text(df.to_csv(sep="\t", index=False))
    elif how == "truncated":  # cut inside a row, just after a tab (pandas: could not convert '' to float)
        cut = text.index("\t", len(text) * 2 // 3) + 1
        path.write_text(text[:cut])
    elif how == "truncated_mid_number":  # every field present, the last one cut short
        path.write_text(text[:-3])
    elif how == "truncated_at_line":  # cut at a line boundary: rows missing
        path.write_text("".join(lines[:-3]))
    elif how == "ragged":
        lines[3] = lines[3].rstrip("\n") + "\textra\n"
        path.write_text("".join(lines))
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "binary":
        import gzip

        path.write_bytes(gzip.compress(text.encode()))
    elif how in ("empty_cell", "not_a_number"):
        cells = lines[2].split("\t")
        k = lines[0].split("\t").index("mean_ppm")
        cells[k] = "" if how == "empty_cell" else "nan%"
        lines[2] = "\t".join(cells)
        path.write_text("".join(lines))
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how, match", [
    ("text", "lacks the column"),
    ("missing_mean", "lacks the column.*mean_ppm"),
    ("truncated", "ends inside line .* looks truncated"),
    ("truncated_mid_number", "no final newline.* looks truncated"),
    ("truncated_at_line", "has no row for .* looks truncated"),
    ("ragged", "is ragged: line 4 has 17"),
    ("empty", "is empty"),
    ("binary", "is not a text file"),
    ("empty_cell", "empty cell in column mean_ppm on line 3"),
    ("not_a_number", "'nan%' in column mean_ppm on line 3"),
])
def test_bad_roi_table_refused_before_writing(done, how, match):
    """Issue #15: each broken per-run table is refused in one sentence; no group file changes."""
    bids, out = done
    path = out / TARGET
    _mangle(path, how)
    msg = _refused(bids, out, path, match)
    assert "rerun the participant level for sub-02" in msg


def test_bad_roi_table_refused_on_first_run(study):
    """Without earlier outputs nothing at all is written (no group/ folder)."""
    bids, out = study
    _mangle(out / TARGET, "missing_mean")
    _refused(bids, out, out / TARGET, "mean_ppm")
    assert not (out / "group").exists()


@pytest.mark.parametrize("how, match", [
    ("missing", "has no JSON sidecar"),
    ("not_json", "is not valid JSON"),
    ("list", "holds a JSON list"),
    ("no_mean", "does not describe the column.*mean_ppm"),
    ("ppb", "gives mean_ppm in 'ppb'"),
])
def test_bad_roi_sidecar_refused(done, how, match):
    bids, out = done
    side = (out / TARGET).with_suffix(".json")
    meta = json.loads(side.read_text())
    target = side
    if how == "missing":
        side.unlink()
        target = out / TARGET
    elif how == "not_json":
        side.write_text('{"mean_ppm": {"Units": "ppm"},')
    elif how == "list":
        side.write_text("[]")
    elif how == "no_mean":
        del meta["mean_ppm"]
        side.write_text(json.dumps(meta))
    else:
        meta["mean_ppm"]["Units"] = "ppb"
        side.write_text(json.dumps(meta))
    _refused(bids, out, target, match)


def test_extra_undescribed_column_and_wrong_participant_refused(done):
    import pandas as pd

    bids, out = done
    path = out / TARGET
    good = path.read_bytes()
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df["mystery"] = "1"
    path.write_text(df.to_csv(sep="\t", index=False))
    _refused(bids, out, path, "has the column.*mystery.* does not describe")
    # a table copied into another participant's folder would be counted twice under one name
    path.write_bytes(good.replace(b"sub-02\t", b"sub-03\t"))
    _refused(bids, out, path, "holds rows of sub-03 although it lies in the folder of sub-02")
    path.write_bytes(good.replace(b"\tses-a\t", b"\tses-b\t"))
    _refused(bids, out, path, "holds rows of session ses-b")
    lines = good.decode().splitlines(keepends=True)
    lines[-1] = lines[-1].replace("\tn/a\t1\t", "\tn/a\t2\t", 1)  # one row of another run
    path.write_text("".join(lines))
    _refused(bids, out, path, "mixes rows of 2 runs \\(different run\\)")


def test_duplicate_run_and_mixed_reference_refused(done):
    import shutil

    bids, out = done
    src = out / "sub-01" / "anat" / "sub-01_run-1_desc-dgm_stats.tsv"
    dup = src.with_name("sub-01_run-1_rec-x_desc-dgm_stats.tsv")  # another file, same run identifiers
    shutil.copy(src, dup)
    shutil.copy(src.with_suffix(".json"), dup.with_suffix(".json"))
    msg = _refused(bids, out, dup, "describe the same run")
    assert str(src) in msg
    dup.unlink()
    dup.with_suffix(".json").unlink()
    path = out / TARGET
    path.write_text(path.read_text().replace("whole brain", "CSF"))
    _refused(bids, out, path, "reference region 'CSF'")


@pytest.mark.parametrize("content, match", [
    (b"", "is empty"),
    (b"\xef\xbb\xbf\n\n", "is empty"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "is not a text file"),
    (b"participant_id\tage\nsub-01\t34\textra\nsub-02\t61\n", "is ragged: line 2 has 3"),
    (b"subject\tage\nsub-01\t34\n", "has no participant_id column"),
    (b"participant_id\tage\nsub-01\t34\n01\t35\n", "lists sub-01 more than once"),
    (b"participant_id\tage\tage\nsub-01\t1\t2\n", "repeats the column name"),
    (b"participant_id\tage\n\t34\n", "has no participant label on line 2"),
    (b"participant_id\tage\n", "has a header line but no data rows"),
])
def test_malformed_participants_tsv_refused(done, content, match):
    bids, out = done
    (bids / "participants.tsv").write_bytes(content)
    _refused(bids, out, bids / "participants.tsv", match)


def test_malformed_participants_json_refused(done):
    bids, out = done
    (bids / "participants.json").write_text("{'age': 1}")
    _refused(bids, out, bids / "participants.json", "is not valid JSON")


def test_participants_tsv_crlf_bom_and_no_final_newline_accepted(study):
    import pandas as pd

    bids, out = study
    (bids / "participants.tsv").write_bytes(
        "\ufeffparticipant_id\tage\r\nsub-01\t34\r\n02\tn/a\r\nsub-03\t40".encode())
    run_group(bids, out)
    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert dict(zip(wide.participant_id, wide.age)) == {"sub-01": "34", "sub-02": "n/a", "sub-03": "40"}


def test_all_or_none_when_the_figure_fails(done, monkeypatch):
    """Issue #15: a failure in a later step (the figure) leaves every group file as it was."""
    import qsmprep.reports.figures as figures

    bids, out = done
    before = _snapshot(out / "group")
    _write_run_table(out, "04", None, "1", 0.5)  # new data: the tables would change

    def boom(*args, **kwargs):
        raise RuntimeError("figure failed")

    monkeypatch.setattr(figures, "group_png", boom)
    with pytest.raises(RuntimeError, match="figure failed"):
        run_group(bids, out)
    assert _snapshot(out / "group") == before
    assert not list(out.glob(".group.*"))
    monkeypatch.undo()
    run_group(bids, out)  # and the next run goes through
    assert _snapshot(out / "group")["group_desc-dgm_wide.tsv"] != before["group_desc-dgm_wide.tsv"]


def test_stale_outputs_replaced_and_foreign_files_kept(cohort):
    bids, out, _ = cohort
    written = run_group(bids, out, group_by="group")
    assert (out / "group" / "group_desc-groupeffects_stats.tsv") in written
    (out / "group" / "notes.txt").write_text("mine")
    written = run_group(bids, out)
    names = sorted(p.name for p in (out / "group").iterdir())
    assert names == sorted([p.name for p in written] + ["notes.txt"])  # stats of the earlier run gone
    assert (out / "group" / "notes.txt").read_text() == "mine"


def test_interrupted_swap_is_recovered(done):
    """A crash between the two renames leaves '.group.X.old'; the next run restores and replaces it."""
    bids, out = done
    (out / "group").rename(out / ".group.crash.old")
    (out / ".group.crash2.tmp").mkdir()
    run_group(bids, out)
    assert (out / "group" / "group_desc-dgm_wide.tsv").exists()
    assert not list(out.glob(".group.*"))


def test_run_status_listed(study):
    import pandas as pd

    bids, out = study
    path = out / "sub-03" / "anat" / "sub-03_run-2_desc-dgm_stats.tsv"
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.loc[:, [c for c in df.columns if c.endswith("_ppm")]] = "n/a"
    df["voxel_count"] = "0"
    path.write_text(df.to_csv(sep="\t", index=False))
    path = out / TARGET
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    df.loc[df.structure == "red_nucleus", "mean_ppm"] = "n/a"
    path.write_text(df.to_csv(sep="\t", index=False))
    run_group(bids, out)
    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    status = dict(zip(wide.participant_id + "/" + wide.session_id, wide.status))
    assert status == {"sub-01/n/a": "ok", "sub-02/ses-a": "partial", "sub-02/ses-b": "ok", "sub-03/n/a": "no-data"}
    side = json.loads((out / "group" / "group_desc-dgm_wide.json").read_text())
    assert set(side["status"]["Levels"]) == {"ok", "partial", "no-data"}


# ----------------------------------------------------------------------------- issue #16
# A synthetic cohort with KNOWN effects: patients +0.02 ppm in the putamen, +0.001 ppm/year of
# age in the caudate; the within-group noise pattern sums to 0 and is orthogonal to age, and
# both groups have the same ages, so the group difference and the slopes are exact.
AGES = (30, 40, 50, 60, 70, 80)
NOISE = (0.002, -0.003, 0.001, 0.001, -0.003, 0.002)
PATIENT_PUTAMEN_PPM = 0.02
AGE_SLOPE_PPM_PER_YEAR = 0.001


def _true_value(lab, patient, age, noise):
    v = 0.05 + lab.index / 1000.0 + noise
    if lab.structure == "putamen" and patient:
        v += PATIENT_PUTAMEN_PPM
    if lab.structure == "caudate":
        v += AGE_SLOPE_PPM_PER_YEAR * (age - 55)
    return round(v, 6)


@pytest.fixture
def cohort(tmp_path):
    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    rows = ["participant_id\tgroup\tage\tsite\tiq\tconstant"]
    truth = {}
    for i in range(12):
        sub, patient, pos = f"{i + 1:02d}", i >= 6, i % 6
        age = AGES[pos]
        vals = {lab.name: _true_value(lab, patient, age, NOISE[pos]) for lab in DGM_LABELS}
        truth[f"sub-{sub}"] = vals
        if sub == "02":  # two sessions, +/- 0.004 around the truth
            for ses, d in (("a", 0.004), ("b", -0.004)):
                _write_values(out, sub, ses, "1", {k: round(v + d, 6) for k, v in vals.items()})
        elif sub == "08":  # three runs in two sessions, deviations +0.006, -0.003, -0.003
            for ses, run, d in (("a", "1", 0.006), ("a", "2", -0.003), ("b", "1", -0.003)):
                _write_values(out, sub, ses, run, {k: round(v + d, 6) for k, v in vals.items()})
        else:
            _write_values(out, sub, None, "1", vals)
        rows.append(f"sub-{sub}\t{'patient' if patient else 'control'}\t{age}\t{'B' if i == 0 else 'A'}\t"
                    f"{100 if i < 2 else 'n/a'}\t7")
    # sub-13: no group, no age (left out, listed); sub-14: a level with one participant (no contrast)
    for sub, grp in (("13", "n/a"), ("14", "other")):
        vals = {lab.name: 0.3 for lab in DGM_LABELS}
        truth[f"sub-{sub}"] = vals
        _write_values(out, sub, None, "1", vals)
        rows.append(f"sub-{sub}\t{grp}\tn/a\tA\tn/a\t7")
    (bids / "participants.tsv").write_text("\n".join(rows) + "\n")
    (bids / "participants.json").write_text(json.dumps({
        "age": {"Description": "age at scan", "Units": "year"},
        "group": {"Description": "diagnosis", "Levels": {"control": "healthy control", "patient": "patient"}},
    }))
    return bids, out, truth


def _read(path):
    import pandas as pd

    return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False)


def test_group_statistics_known_answers(cohort):
    from PIL import Image

    from qsmprep.group_stats import hedges_correction

    bids, out, truth = cohort
    written = run_group(bids, out, group_by="group", covariate="age")
    g = out / "group"
    assert sorted(p.name for p in written) == sorted([
        "group_desc-dgm_stats.tsv", "group_desc-dgm_stats.json", "group_desc-dgm_wide.tsv",
        "group_desc-dgm_wide.json", "group_desc-dgm_chi.png",
        "group_desc-participantmeans_stats.tsv", "group_desc-participantmeans_stats.json",
        "group_desc-groupmeans_stats.tsv", "group_desc-groupmeans_stats.json",
        "group_desc-groupeffects_stats.tsv", "group_desc-groupeffects_stats.json",
        "group_desc-covariatefit_stats.tsv", "group_desc-covariatefit_stats.json",
        "group_desc-groupmeans_chi.png", "group_desc-covariatefit_chi.png", "group_desc-dgm_report.html"])

    # repeated measures: one value per participant, the mean of its runs
    pm = _read(g / "group_desc-participantmeans_stats.tsv")
    assert len(pm) == 14 * 18 and set(pm.hemisphere) == {"L", "R", "bilateral"}
    for sub, vals in truth.items():
        for name, v in vals.items():
            s, h = name.rsplit("_", 1)
            row = pm[(pm.participant_id == sub) & (pm.structure == s) & (pm.hemisphere == h)]
            assert row.mean_ppm.iloc[0] == pytest.approx(v, abs=1e-7)
    r08 = pm[pm.participant_id == "sub-08"].iloc[0]
    r02 = pm[pm.participant_id == "sub-02"].iloc[0]
    assert (r08.n_runs, r08.n_sessions, r02.n_runs, r02.n_sessions) == (3, 2, 2, 2)

    means = _read(g / "group_desc-groupmeans_stats.tsv")
    put = means[(means.structure == "putamen") & (means.hemisphere == "L")].set_index("level")
    assert put.loc["control", "n"] == 6 and put.loc["patient", "n"] == 6  # participants, not runs (7/8)
    assert put.loc["control", "mean_ppm"] == pytest.approx(0.053, abs=1e-7)
    assert put.loc["patient", "mean_ppm"] == pytest.approx(0.073, abs=1e-7)
    sd = float(np.std(NOISE, ddof=1))
    half = 2.570581835636314 * sd / np.sqrt(6)  # t(0.975, 5)
    assert put.loc["patient", "ci_low_ppm"] == pytest.approx(0.073 - half, abs=1e-7)
    assert put.loc["other", "n"] == 1 and np.isnan(put.loc["other", "ci_low_ppm"])
    assert "n/a" not in set(means.level.astype(str))  # sub-13 (no group) left out

    eff = _read(g / "group_desc-groupeffects_stats.tsv")
    assert set(eff.contrast) == {"patient - control"} and len(eff) == 18  # no contrast for 'other' (n = 1)
    for _, row in eff.iterrows():
        if row.structure == "putamen":
            assert row.difference_ppm == pytest.approx(PATIENT_PUTAMEN_PPM, abs=1e-7)
            assert row.ci_low_ppm < PATIENT_PUTAMEN_PPM < row.ci_high_ppm
            assert row.p < 1e-6 and row.p_fdr < 1e-5 and row.anova_p < 1e-6
            assert row.cohens_d == pytest.approx(PATIENT_PUTAMEN_PPM / sd, rel=1e-4)
            assert row.hedges_g == pytest.approx(hedges_correction(10) * PATIENT_PUTAMEN_PPM / sd, rel=1e-4)
            assert (row.n_level, row.n_reference, row.anova_df_within) == (6, 6, 10)
        else:
            assert row.difference_ppm == pytest.approx(0.0, abs=1e-7) and row.p > 0.99

    fits = _read(g / "group_desc-covariatefit_stats.tsv")
    assert len(fits) == 18 and set(fits.n) == {12}  # sub-13/14 have no age
    for _, row in fits.iterrows():
        expected = AGE_SLOPE_PPM_PER_YEAR if row.structure == "caudate" else 0.0
        assert row.slope_ppm_per_unit == pytest.approx(expected, abs=1e-9)
        if row.structure == "caudate":
            assert row.slope_ci_low_ppm_per_unit < expected < row.slope_ci_high_ppm_per_unit
            assert row.r > 0.9 and row.p < 1e-4
    side = json.loads((g / "group_desc-covariatefit_stats.json").read_text())
    assert side["slope_ppm_per_unit"]["Units"] == "ppm per year" and side["Covariate"] == "age"
    assert sorted(side["ParticipantsWithoutValue"]) == ["sub-13", "sub-14"]
    side = json.loads((g / "group_desc-groupeffects_stats.json").read_text())
    assert side["ReferenceLevel"] == "control" and side["LevelsWithoutContrast"] == ["other"]
    assert side["ParticipantsWithoutValue"] == ["sub-13"] and "averaged" in side["RepeatedMeasures"]
    assert side["difference_ppm"]["Units"] == "ppm"

    for name in ("group_desc-groupmeans_chi.png", "group_desc-covariatefit_chi.png"):
        with Image.open(g / name) as im:
            im.verify()
    page = (g / "group_desc-dgm_report.html").read_text()
    assert page.count('src="data:image/png;base64,') == 3
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "averaged" in page and "patient - control" in page and "sub-08" in page


def test_group_by_only_and_covariate_only(cohort):
    bids, out, _ = cohort
    names = {p.name for p in run_group(bids, out, group_by="group")}
    assert "group_desc-groupeffects_stats.tsv" in names and "group_desc-covariatefit_stats.tsv" not in names
    names = {p.name for p in run_group(bids, out, covariate="age")}
    assert "group_desc-covariatefit_stats.tsv" in names and "group_desc-groupmeans_stats.tsv" not in names
    assert not (out / "group" / "group_desc-groupmeans_stats.tsv").exists()  # stale one removed
    names = {p.name for p in run_group(bids, out)}  # without options: only the tables
    assert names == {"group_desc-dgm_stats.tsv", "group_desc-dgm_stats.json", "group_desc-dgm_wide.tsv",
                     "group_desc-dgm_wide.json", "group_desc-dgm_chi.png"}


@pytest.mark.parametrize("kwargs, match", [
    ({"group_by": "diagnosis"}, "has no column diagnosis .*fix --group-by"),
    ({"group_by": "participant_id"}, "has no column participant_id"),
    ({"group_by": "site"}, "fewer than 2 groups with at least 2 participants .*A 13, B 1"),
    ({"group_by": "iq"}, "fewer than 2 groups .*100 2"),
    ({"covariate": "group"}, "column group is not numeric \\('control' for sub-01\\)"),
    ({"covariate": "iq"}, "has 2 participant\\(s\\) with outputs and a finite value, but"),
    ({"covariate": "constant"}, "\\(all equal\\)"),
])
def test_bad_statistics_columns_refused(cohort, kwargs, match):
    bids, out, _ = cohort
    _refused(bids, out, bids / "participants.tsv", match, **kwargs)
    assert not (out / "group").exists()


def test_statistics_without_participants_tsv_refused(cohort):
    bids, out, _ = cohort
    (bids / "participants.tsv").unlink()
    msg = _refused(bids, out, bids / "participants.tsv", "does not exist", covariate="age")
    assert "drop --covariate" in msg


def test_all_or_none_with_statistics(cohort, monkeypatch):
    """The HTML report is the last file written: if it fails, none of the new files appear."""
    import qsmprep.reports.group as rep

    bids, out, _ = cohort
    run_group(bids, out)
    before = _snapshot(out / "group")

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(rep, "build_group_html", boom)
    with pytest.raises(OSError, match="disk full"):
        run_group(bids, out, group_by="group", covariate="age")
    assert _snapshot(out / "group") == before and not list(out.glob(".group.*"))


def test_wide_table_lists_each_runs_qc(study):
    """The run's _desc-qc.json (written beside its tables) reaches the wide table: passed, failed checks, measures."""
    import pandas as pd

    import numpy as np

    from qsmprep.qsm.offsets import remove_offset_residual
    from qsmprep.qsm.phase_sign import choose_phase_sign
    from qsmprep.qsm.slab import remove_slab_trend

    bids, out = study
    roi = next(out.glob("sub-01/anat/*_desc-dgm_stats.tsv"))
    # the steps' records as the app's functions write them (a run with the sign forced, an offset, a slab)
    g = np.meshgrid(*[np.arange(24) - 11.5] * 3, indexing="ij")
    ball = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 100
    field = np.where(ball, 0.01 * np.sin(g[0] / 2.0), 0).astype(np.float32)
    _, sign_record = choose_phase_sign(field, ball, ball.astype(np.float32), (1, 1, 1), (0, 0, 1), "-1")
    _, offset_record = remove_offset_residual(field + np.where(ball, 1e-4 * g[0] ** 2, 0).astype(np.float32), ball,
                                              ball, (1, 1, 1), order=2)
    cut = ball[:, :, 8:16]
    _, slab_record = remove_slab_trend(np.where(cut, 0.001 * g[2][:, :, 8:16], 0).astype(np.float32), cut,
                                       np.where(cut, 20.0 + g[0][:, :, 8:16], 0).astype(np.float32), (1, 1, 1))
    qc = {"passed": False, "failed": ["lowfreq_share"], "warnings": ["QC: ..."],
          "measures": {"mask_kept": 0.9, "lowfreq_share": 0.5, "chi_range": 0.3, "sign_evidence": 1},
          "steps": {"phase_sign": sign_record, "offset_residual": offset_record, "slab_trend": slab_record}}
    roi.with_name(roi.name.replace("_desc-dgm_stats.tsv", "_desc-qc.json")).write_text(json.dumps(qc))
    run_group(bids, out)
    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    row = wide[wide.participant_id == "sub-01"].iloc[0]
    assert (row.qc_passed, row.qc_failed, row.lowfreq_share, row.phase_sign) == ("False", "lowfreq_share", "0.5", "-1")
    assert row.offset_order == str(offset_record["order"]) == "2"
    assert float(row.slab_trend_ppm) == pytest.approx(0.007, abs=1e-6)  # 0.001 ppm per slice over 7 slices
    assert set(wide[wide.participant_id != "sub-01"].qc_passed) == {"n/a"}
    side = json.loads((out / "group" / "group_desc-dgm_wide.json").read_text())
    assert "qc_passed" in side and side["chi_range"]["Units"] == "ppm"


def test_runs_that_differ_only_in_rec_are_kept_apart(tmp_path):
    """Two runs of one participant that differ only in ``rec-``: two rows, the reconstruction as a column (the
    group level used to refuse them as 'the same run')."""
    import pandas as pd

    bids, out = tmp_path / "bids", tmp_path / "out"
    bids.mkdir()
    for rec, offset in (("a", 0.0), ("b", 0.05)):
        dseg = np.zeros((8, 8, 8), np.int16)
        chi = np.zeros((8, 8, 8), np.float32)
        for lab in DGM_LABELS:
            sl = slice(4 * (lab.index - 1), 4 * lab.index)
            dseg.reshape(-1)[sl] = lab.index
            chi.reshape(-1)[sl] = offset + lab.index / 1000.0
        df = roi_table(chi, dseg, participant_id="sub-01", reconstruction=rec)
        write_roi_table(df, out / "sub-01" / "anat" / f"sub-01_rec-{rec}_desc-dgm_stats.tsv")
    run_group(bids, out)
    wide = pd.read_csv(out / "group" / "group_desc-dgm_wide.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert list(wide.reconstruction) == ["a", "b"] and set(wide.participant_id) == {"sub-01"}
    assert float(wide.caudate_L.iloc[1]) - float(wide.caudate_L.iloc[0]) == pytest.approx(0.05)
