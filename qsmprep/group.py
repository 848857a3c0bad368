"""Group level: gather every run's DGM ROI table into study-wide tables and a figure.

``qsmprep bids_dir out_dir group`` calls :func:`run_group`, which reads
``out_dir/sub-*/[ses-*/]anat/*_desc-dgm_stats.tsv`` (written at participant level) and writes,
in ``out_dir/group/``:

* ``group_desc-dgm_stats.tsv`` (+ ``.json``): long format, one row per run x region, joined
  with the columns of ``bids_dir/participants.tsv`` when present;
* ``group_desc-dgm_wide.tsv`` (+ ``.json``): one row per run, one column per structure x
  hemisphere (mean chi, ppm), joined with ``participants.tsv``;
* ``group_desc-dgm_chi.png``: each structure's mean chi across runs.
"""

from __future__ import annotations

import os
from pathlib import Path

RUN_KEYS = ("participant_id", "session_id", "acquisition", "run")
STATS_GLOBS = ("sub-*/anat/*_desc-dgm_stats.tsv", "sub-*/ses-*/anat/*_desc-dgm_stats.tsv")


class NoParticipantOutputsError(ValueError):
    """No participant-level ROI tables were found (run the participant level first)."""


def _labels(participant_label) -> set[str] | None:
    if not participant_label:
        return None
    if isinstance(participant_label, str):
        participant_label = [participant_label]
    return {f"sub-{p[4:] if p.startswith('sub-') else p}" for p in participant_label}


def find_roi_tables(out_dir, participant_label=None) -> list[Path]:
    """Sorted paths of every ``*_desc-dgm_stats.tsv`` under ``out_dir`` (optionally some subjects)."""
    out_dir = Path(out_dir)
    keep = _labels(participant_label)
    files = sorted({p for g in STATS_GLOBS for p in out_dir.glob(g)})
    if keep is not None:
        files = [f for f in files if f.relative_to(out_dir).parts[0] in keep]
    return files


def read_participants(bids_dir):
    """``bids_dir/participants.tsv`` as a DataFrame (``participant_id`` with ``sub-``), or None."""
    import pandas as pd

    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return None
    df = pd.read_csv(path, sep="\t", dtype={"participant_id": str}, na_values=["n/a"],
                     keep_default_na=True)
    if "participant_id" not in df.columns:
        raise ValueError(f"{path} has no 'participant_id' column; add it (BIDS requires it) "
                         "or remove the file.")
    df["participant_id"] = [p if str(p).startswith("sub-") else f"sub-{p}" for p in df["participant_id"]]
    return df.drop_duplicates("participant_id")


def collect_long(tables):
    """Concatenate per-run ROI tables (paths) into one long DataFrame (identifiers as strings)."""
    import pandas as pd

    frames = []
    for path in tables:
        df = pd.read_csv(path, sep="\t", dtype={k: str for k in RUN_KEYS}, na_values=["n/a"],
                         keep_default_na=False)
        for k in RUN_KEYS:
            if k not in df.columns:
                df[k] = "n/a"
            df[k] = df[k].fillna("n/a").astype(str)
        df["reference_region"] = df.get("reference_region", "n/a")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def long_to_wide(long_df, value: str = "mean_ppm"):
    """One row per run (``RUN_KEYS``), one column ``<structure>_<hemisphere>`` of ``value``."""
    df = long_df.copy()
    df["region"] = df["structure"].astype(str) + "_" + df["hemisphere"].astype(str)
    order = list(dict.fromkeys(df["region"]))
    wide = (df.groupby(list(RUN_KEYS) + ["region"], sort=False, dropna=False)[value].first()
            .unstack("region"))
    wide = wide.reindex(columns=order).reset_index()
    wide.columns.name = None
    return wide


def join_participants(df, participants):
    """Left-join participant columns (age, sex, group, ...) on ``participant_id``."""
    if participants is None:
        return df
    extra = [c for c in participants.columns if c == "participant_id" or c not in df.columns]
    out = df.merge(participants[extra], on="participant_id", how="left")
    cols = list(RUN_KEYS) + [c for c in extra if c != "participant_id"]
    return out[cols + [c for c in out.columns if c not in cols]]


def _participant_sidecar(bids_dir, columns) -> dict:
    import json

    path = Path(bids_dir) / "participants.json"
    meta = {}
    if path.exists():
        try:
            meta = json.loads(path.read_text())
        except ValueError:
            meta = {}
    return {c: meta.get(c, {"Description": f"Copied from participants.tsv ({c})."}) for c in columns}


def _write_tsv(df, path):
    from qsmprep.utils.atomic import write_text

    return write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))


def run_group(bids_dir, out_dir, participant_label=None) -> list[Path]:
    """Build the group-level study tables and figure; return the paths written.

    Raises :class:`NoParticipantOutputsError` when ``out_dir`` holds no participant ROI tables.
    """
    from qsmprep.atlas.rois import ROI_COLUMNS
    from qsmprep.reports.figures import group_png
    from qsmprep.utils.atomic import write_json

    out_dir = Path(out_dir)
    tables = find_roi_tables(out_dir, participant_label)
    if not tables:
        who = f" for participant(s) {sorted(_labels(participant_label))}" if participant_label else ""
        raise NoParticipantOutputsError(
            f"No participant outputs (sub-*/[ses-*/]anat/*_desc-dgm_stats.tsv) found in {out_dir}{who}; "
            f"run the participant level first ('qsmprep {bids_dir} {out_dir} participant', "
            "without --skip-atlas)."
        )
    long_df = collect_long(tables)
    participants = read_participants(bids_dir)
    wide = long_to_wide(long_df)
    long_j = join_participants(long_df, participants)
    wide_j = join_participants(wide, participants)
    pcols = [c for c in (participants.columns if participants is not None else [])
             if c != "participant_id" and c not in long_df.columns]

    gdir = out_dir / "group"
    written = []
    long_tsv = gdir / "group_desc-dgm_stats.tsv"
    written.append(_write_tsv(long_j, long_tsv))
    written.append(write_json(long_tsv.with_suffix(".json"), {
        "Description": "Deep-gray-matter susceptibility statistics of every run (long format: one "
                       "row per run and region), gathered from the participant-level "
                       "*_desc-dgm_stats.tsv tables.",
        "Sources": [os.path.relpath(t, out_dir) for t in tables],
        **{c: ROI_COLUMNS[c] for c in long_df.columns if c in ROI_COLUMNS},
        **_participant_sidecar(bids_dir, pcols),
    }))
    wide_tsv = gdir / "group_desc-dgm_wide.tsv"
    written.append(_write_tsv(wide_j, wide_tsv))
    region_cols = [c for c in wide.columns if c not in RUN_KEYS]
    written.append(write_json(wide_tsv.with_suffix(".json"), {
        "Description": "Mean susceptibility per deep-gray-matter region, one row per run.",
        **{c: ROI_COLUMNS[c] for c in RUN_KEYS},
        **{c: {"Description": f"Mean chi in {c.rsplit('_', 1)[0].replace('_', ' ')} "
                              f"({'left' if c.endswith('_L') else 'right'}).", "Units": "ppm"}
           for c in region_cols},
        **_participant_sidecar(bids_dir, pcols),
    }))
    hue = "group" if "group" in long_j.columns else None
    n_part = long_df["participant_id"].nunique()
    written.append(group_png(gdir / "group_desc-dgm_chi.png", long_j, hue=hue,
                             title=f"Mean chi per structure ({n_part} participants, {len(tables)} runs)"))
    return written
