"""Group level: gather every run's DGM ROI table into study-wide tables, statistics and a report.

``qsmprep bids_dir out_dir group`` calls :func:`run_group`, which reads
``out_dir/sub-*/[ses-*/]anat/*_desc-dgm_stats.tsv`` (written at participant level, each with a
JSON sidecar describing its columns) and writes, in ``out_dir/group/``:

* ``group_desc-dgm_stats.tsv`` (+ ``.json``): long format, one row per run x region, joined
  with the columns of ``bids_dir/participants.tsv`` when present;
* ``group_desc-dgm_wide.tsv`` (+ ``.json``): one row per run found, with its ``source`` table
  and ``status`` (``ok``/``partial``/``no-data``), one column per structure x hemisphere
  (mean chi, ppm), joined with ``participants.tsv``;
* ``group_desc-dgm_chi.png``: each structure's mean chi across runs.

With ``group_by`` (a categorical column of ``participants.tsv``) and/or ``covariate`` (a
numeric one), also (maths in :mod:`qsmprep.group_stats`; sessions and runs of a participant
are averaged first, so each participant counts once):

* ``group_desc-participantmeans_stats.tsv`` (+ ``.json``): one row per participant x region;
* ``group_desc-groupmeans_stats.tsv`` / ``group_desc-groupeffects_stats.tsv`` (+ ``.json``):
  group means with 95 % CIs; differences against the reference level, Hedges' g, ANOVA;
* ``group_desc-covariatefit_stats.tsv`` (+ ``.json``): slope of chi against the covariate;
* ``group_desc-groupmeans_chi.png`` / ``group_desc-covariatefit_chi.png``: one panel per
  structure;
* ``group_desc-dgm_report.html``: a self-contained report (figures embedded).

Safety: every per-run table is validated against its sidecar, and ``participants.tsv``
(+ ``.json``) and the chosen columns are checked, before anything is written; any problem
raises :class:`GroupInputError` (a ``ValueError``) whose message is one sentence naming the
file and the fix.  The outputs are written into a hidden staging folder and swapped in as a
set: either every file of ``group/`` is from this run or ``group/`` is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

RUN_KEYS = ("participant_id", "session_id", "acquisition", "reconstruction", "run")
#: Columns a per-run ROI table (and its sidecar) must have.
REQUIRED_COLUMNS = ("participant_id", "structure", "hemisphere", "mean_ppm")
#: Columns parsed as numbers even when the sidecar gives them no ``Units``.
NUMERIC_COLUMNS = ("label", "voxel_count")
#: ``status`` of a run in the wide table.
STATUS_LEVELS = {
    "ok": "Every region of the run has a mean chi.",
    "partial": "Some regions have no mean chi (n/a: no voxel inside the brain mask).",
    "no-data": "No region has a mean chi (all n/a); the run adds nothing to the statistics.",
}
GROUP_DIR = "group"
OUTPUT_PREFIX = "group_"
_MAX_SHOWN = 40


class GroupInputError(ValueError):
    """An input of the group level cannot be used; ``str(exc)`` is one sentence naming the file and the fix.

    ``path`` is the offending file (or None).  Nothing under ``out_dir/group`` was changed.
    """

    def __init__(self, message: str, path=None):
        super().__init__(message)
        self.path = None if path is None else Path(path)


class NoParticipantOutputsError(GroupInputError):
    """No participant-level ROI tables were found (run the participant level first)."""


def _labels(participant_label) -> set[str] | None:
    if not participant_label:
        return None
    if isinstance(participant_label, str):
        participant_label = [participant_label]
    return {f"sub-{p[4:] if p.startswith('sub-') else p}" for p in participant_label}


def find_roi_tables(out_dir, participant_label=None) -> list[Path]:
    """Sorted paths of every ``*_desc-dgm_stats.tsv`` under ``out_dir`` (optionally some subjects)."""
    from qsmprep.naming import find_all

    out_dir = Path(out_dir)
    keep = _labels(participant_label)
    files = find_all(out_dir, "roi_tsv")  # the naming table the participant level writes with
    if keep is not None:
        files = [f for f in files if f.relative_to(out_dir).parts[0] in keep]
    return files


# ----------------------------------------------------------------------------- strict reading
def _show(value, width: int = 24) -> str:
    """A cell value quoted for a message, shortened and without sentence breaks."""
    text = str(value).replace("\n", " ")
    text = text if len(text) <= width else text[: width - 3] + "..."
    return repr(text).replace(". ", ".\u00a0")


def _list(items, n: int = 6) -> str:
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (f" and {len(items) - n} more" if len(items) > n else "")


def _failer(path: Path, fix: str):
    """``fail(problem, where=path)``: the :class:`GroupInputError` "<where> <problem>; <fix>." to raise."""

    def fail(problem: str, where: Path = path) -> GroupInputError:
        return GroupInputError(f"{where} {problem}; {fix}.", where)

    return fail


def read_tsv_strict(path, *, fix: str, complete: bool = False) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and rows of a tab-separated text file, refusing anything that is not one.

    Returns ``(header, [(line_number, fields), ...])`` (blank lines skipped, ``\\r`` removed,
    a UTF-8 byte-order mark allowed).  Raises :class:`GroupInputError` ("<path> <problem>;
    <fix>.") when the file cannot be read, is empty, is binary (a NUL byte or not UTF-8), has
    an empty or repeated column name, no data row, or a row with another number of fields than
    the header.  With ``complete`` (files written by qsmprep, which always end in a newline) a
    file whose last line has no final newline is refused as truncated.
    """
    path = Path(path)
    fail = _failer(path, fix)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    if not raw.strip():
        raise fail("is empty")
    if b"\x00" in raw:
        raise fail("is not a text file (it holds binary data)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise fail("is not a text file (it is not UTF-8 text)") from None
    ends_newline = text.endswith("\n")
    lines = text.split("\n")
    if ends_newline:
        lines = lines[:-1]
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    first = next((i for i, ln in enumerate(lines) if ln.strip()), None)
    if first is None:
        raise fail("is empty")
    header = lines[first].split("\t")
    for j, name in enumerate(header):
        if not name.strip():
            raise fail(f"has an empty column name (column {j + 1} of its header line)")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise fail(f"repeats the column name(s) {_list(dupes)} in its header")
    rows = []
    last = len(lines)
    for i in range(first + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            if i + 1 == last and not ends_newline and len(fields) < len(header):
                raise fail(f"ends inside line {i + 1} ({len(fields)} of {len(header)} columns), so it "
                           "looks truncated")
            raise fail(f"is ragged: line {i + 1} has {len(fields)} tab-separated fields where the header "
                       f"has {len(header)}")
        rows.append((i + 1, fields))
    if not rows:
        raise fail("has a header line but no data rows")
    if complete and not ends_newline:
        raise fail(f"ends inside line {last} (no final newline), so it looks truncated")
    return header, rows


def _sidecar_of(tsv: Path) -> Path:
    return tsv.with_name(tsv.name[: -len(".tsv")] + ".json")


def read_json_object(path, *, fix: str) -> dict:
    """A JSON file that must hold an object; :class:`GroupInputError` naming the file otherwise."""
    path = Path(path)
    fail = _failer(path, fix)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        where = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        raise fail(f"is not valid JSON{where}") from None
    if not isinstance(data, dict):
        raise fail(f"holds a JSON {type(data).__name__}, not an object of column descriptions")
    return data


def _float_or_nan(text: str) -> float | None:
    """``n/a`` -> NaN, a number -> float, anything else (including '') -> None."""
    t = text.strip()
    if t == "n/a":
        return math.nan
    try:
        return float(t)
    except ValueError:
        return None


def read_roi_table(path, out_dir=None):
    """Read one participant-level ``*_desc-dgm_stats.tsv``, validated against its JSON sidecar.

    The sidecar (``*_desc-dgm_stats.json``) is the schema: every column it describes (entries
    that are objects) must be in the TSV and vice versa; it must describe
    :data:`REQUIRED_COLUMNS`; ``mean_ppm`` must be in ppm.  Columns with ``Units`` (and
    ``label``, ``voxel_count``) hold numbers or ``n/a`` in every row; ``structure`` and
    ``hemisphere`` take only their sidecar ``Levels``, every structure x hemisphere of those
    Levels appears once (a missing one means a truncated file); ``participant_id`` and
    ``session_id`` match the file's folder.  Returns a DataFrame (identifiers and text as
    ``str`` with 'n/a', numbers as float with NaN); raises :class:`GroupInputError` naming the
    file and the fix otherwise.
    """
    import numpy as np
    import pandas as pd

    path = Path(path)
    rel, sub, ses = _run_location(path, out_dir)
    fix = (f"rerun the participant level for {sub} to rewrite it (or delete the run's outputs to "
           "leave it out)")
    fail = _failer(path, fix)
    side, schema = _read_roi_sidecar(path, fix)
    header, rows = read_tsv_strict(path, fix=fix, complete=True)
    _check_roi_columns(header, schema, _sidecar_of(path).name, fail)
    df = pd.DataFrame(_parse_roi_cells(header, rows, schema, fail), columns=header)
    _check_roi_regions(df, schema, fail)
    _check_roi_run(df, sub, ses, fail)
    if "reference_region" not in df.columns:
        df["reference_region"] = "n/a"
    df["mean_ppm"] = df["mean_ppm"].astype(float)
    df.attrs.update(source=str(rel), status=_status(np.asarray(df["mean_ppm"], float)),
                    sidecar={k: v for k, v in side.items() if not isinstance(v, dict)})
    return df


def _run_location(path: Path, out_dir) -> tuple[Path, str, str]:
    """``(path relative to out_dir, 'sub-<l>', 'ses-<s>' or 'n/a')`` of a per-run table, from its folders."""
    rel = path.relative_to(out_dir) if out_dir is not None else path
    parts = rel.parts
    sub = next((p for p in parts if p.startswith("sub-")), None) or path.name.split("_")[0]
    ses = next((p for p in parts[:-1] if p.startswith("ses-")), "n/a")
    return rel, sub, ses


def _read_roi_sidecar(path: Path, fix: str) -> tuple[dict, dict]:
    """The ROI table's JSON sidecar and its schema (the entries that are objects: column descriptions).

    Refused: no sidecar, not a JSON object, :data:`REQUIRED_COLUMNS` not all described, or
    ``mean_ppm`` in other units than ppm.
    """
    fail = _failer(path, fix)
    side_path = _sidecar_of(path)
    if not side_path.exists():
        raise fail(f"has no JSON sidecar ({side_path.name}), so its columns cannot be checked")
    side = read_json_object(side_path, fix=fix)
    schema = {k: v for k, v in side.items() if isinstance(v, dict)}
    missing = [c for c in REQUIRED_COLUMNS if c not in schema]
    if missing:
        raise fail(f"does not describe the column(s) {_list(missing)} that every ROI table needs",
                   side_path)
    units = schema["mean_ppm"].get("Units", "ppm")
    if units != "ppm":
        raise fail(f"gives mean_ppm in {_show(units)}, not ppm", side_path)
    return side, schema


def _check_roi_columns(header, schema, side_name: str, fail):
    """The TSV's columns are exactly those its sidecar describes."""
    lacking = [c for c in schema if c not in header]
    if lacking:
        raise fail(f"lacks the column(s) {_list(lacking)} described by its sidecar {side_name} "
                   f"(its header is {_show(chr(9).join(header), 60)})")
    extra = [c for c in header if c not in schema]
    if extra:
        raise fail(f"has the column(s) {_list(extra)} that its sidecar {side_name} does not describe")


def _parse_roi_cells(header, rows, schema, fail) -> dict[str, list]:
    """Column -> values: floats (NaN for n/a) in the numeric columns, stripped non-empty text elsewhere."""
    numeric = [c for c in header if "Units" in schema[c] or c in NUMERIC_COLUMNS]
    data = {c: [] for c in header}
    for line_no, fields in rows:
        for c, v in zip(header, fields):
            if c in numeric:
                x = _float_or_nan(v)
                if x is None:
                    what = "an empty cell" if not v.strip() else _show(v)
                    raise fail(f"has {what} in column {c} on line {line_no} where a number or n/a is expected")
                data[c].append(x)
            else:
                v = v.strip()
                if not v:
                    raise fail(f"has an empty cell in column {c} on line {line_no} (write n/a for a "
                               "missing value)")
                data[c].append(v)
    return data


def _check_roi_regions(df, schema, fail):
    """Structures and hemispheres from the sidecar's ``Levels``, each region once, none missing."""
    for c in ("structure", "hemisphere"):
        levels = schema[c].get("Levels")
        if isinstance(levels, dict) and levels:
            bad = sorted(set(df[c]) - set(levels))
            if bad:
                raise fail(f"has the {c} value(s) {_list(map(_show, bad))} that its sidecar does not list")
    regions = list(zip(df["structure"], df["hemisphere"]))
    dup = sorted({r for r in regions if regions.count(r) > 1})
    if dup:
        raise fail(f"has more than one row for {_list(' '.join(r) for r in dup)}")
    s_lv, h_lv = schema["structure"].get("Levels"), schema["hemisphere"].get("Levels")
    if isinstance(s_lv, dict) and isinstance(h_lv, dict) and s_lv and h_lv:
        absent = [f"{s} {h}" for s in s_lv for h in h_lv if (s, h) not in set(regions)]
        if absent:
            raise fail(f"has no row for {_list(absent)} (its sidecar lists {len(s_lv)} structures x "
                       f"{len(h_lv)} hemispheres), so it looks truncated")


def fill_run_keys(df):
    """``df`` with every absent :data:`RUN_KEYS` column added as 'n/a' (in place; returned): tables written before a
    key existed (e.g. ``reconstruction``), or without it."""
    for c in RUN_KEYS:
        if c not in df.columns:
            df[c] = "n/a"
    return df


def _check_roi_run(df, sub: str, ses: str, fail):
    """Every row is of one run, of the participant and session of the file's folder (fills absent
    :data:`RUN_KEYS` columns with 'n/a', in place)."""
    fill_run_keys(df)
    idents = df[list(RUN_KEYS)].drop_duplicates()
    if len(idents) > 1:
        raise fail(f"mixes rows of {len(idents)} runs (different {_list(c for c in RUN_KEYS if idents[c].nunique() > 1)})")
    wrong = sorted(set(df["participant_id"]) - {sub})
    if wrong:
        raise fail(f"holds rows of {_list(wrong)} although it lies in the folder of {sub}")
    wrong = sorted(set(df["session_id"]) - {ses})
    if wrong:
        raise fail(f"holds rows of session {_list(wrong)} although it lies in the folder of "
                   f"{ses if ses != 'n/a' else 'no session'}")


def _status(means) -> str:
    import numpy as np

    finite = np.isfinite(means)
    return "ok" if finite.all() else ("no-data" if not finite.any() else "partial")


def collect_long(tables, out_dir=None):
    """Validate (:func:`read_roi_table`) and concatenate per-run ROI tables into one long DataFrame.

    Also refuses two tables describing the same run (same participant, session, acquisition,
    reconstruction, run: :data:`RUN_KEYS`) and runs with different reference regions (their chi values are not comparable).
    ``attrs["runs"]`` lists ``(run keys..., source, status)`` per table, in ``tables`` order.
    """
    import pandas as pd

    frames, runs, seen, refs = [], [], {}, {}
    for path in tables:
        df = read_roi_table(path, out_dir)
        for _, key in df[list(RUN_KEYS)].drop_duplicates().iterrows():
            key = tuple(key)
            if key in seen:
                raise GroupInputError(
                    f"{path} and {seen[key]} describe the same run ({', '.join(key)}); delete the stale "
                    "one (or rerun the participant level for that participant).", path)
            seen[key] = path
        for ref in set(df["reference_region"]) - {"n/a"}:
            refs.setdefault(ref, path)
        if len(refs) > 1:
            (r1, p1), (r2, p2) = list(refs.items())[:2]
            raise GroupInputError(
                f"{p2} uses the reference region {_show(r2)} but {p1} uses {_show(r1)}, so their chi "
                "values are not comparable; rerun the participant level for the participants whose runs "
                "use the other reference so that every run has the same one.", p2)
        keys = tuple(df[list(RUN_KEYS)].iloc[0])
        runs.append(dict(zip(RUN_KEYS, keys), source=df.attrs["source"], status=df.attrs["status"]))
        frames.append(df)
    long_df = pd.concat(frames, ignore_index=True)
    long_df.attrs = {"runs": runs}
    return long_df


PARTICIPANTS_FIX = ("fix it (a tab-separated table with a participant_id header column and one row per "
                    "participant, n/a for missing values) or remove it")


def read_participants(bids_dir):
    """``bids_dir/participants.tsv`` as a DataFrame of strings (NaN for ``n/a``), or None if absent.

    ``participant_id`` gets the ``sub-`` prefix.  Refuses (:class:`GroupInputError`, naming the
    file) an unreadable, empty, binary or ragged file, one without ``participant_id``, and
    empty or repeated participant labels.
    """
    import numpy as np
    import pandas as pd

    path = Path(bids_dir) / "participants.tsv"
    if not path.exists():
        return None
    header, rows = read_tsv_strict(path, fix=PARTICIPANTS_FIX)
    if "participant_id" not in header:
        raise GroupInputError(f"{path} has no participant_id column (its header is "
                              f"{_show(chr(9).join(header), 60)}); add it (BIDS requires it) or remove "
                              "the file.", path)
    df = pd.DataFrame([f for _, f in rows], columns=header, dtype=object)
    df = df.apply(lambda col: col.str.strip()).replace({"n/a": np.nan})
    ids = []
    for (line_no, _), pid in zip(rows, df["participant_id"]):
        if not isinstance(pid, str) or not pid:
            raise GroupInputError(f"{path} has no participant label on line {line_no}; {PARTICIPANTS_FIX}.",
                                  path)
        ids.append(pid if pid.startswith("sub-") else f"sub-{pid}")
    df["participant_id"] = ids
    dup = sorted({p for p in ids if ids.count(p) > 1})
    if dup:
        raise GroupInputError(f"{path} lists {_list(dup)} more than once; keep one row per participant.",
                              path)
    return df


def read_participants_json(bids_dir) -> dict:
    """``bids_dir/participants.json`` (column descriptions), ``{}`` if absent; refused if malformed."""
    path = Path(bids_dir) / "participants.json"
    if not path.exists():
        return {}
    return read_json_object(path, fix="fix the JSON (an object with one entry per participants.tsv "
                                      "column) or remove the file")


def long_to_wide(long_df, value: str = "mean_ppm"):
    """One row per run (``RUN_KEYS``; an absent one is 'n/a'), one column ``<structure>_<hemisphere>`` of ``value``."""
    df = fill_run_keys(long_df.copy())
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


def _participant_sidecar(meta: dict, columns) -> dict:
    return {c: meta.get(c) if isinstance(meta.get(c), dict) else
            {"Description": f"Copied from participants.tsv ({c})."} for c in columns}


# ----------------------------------------------------------------------------- statistics design
def _levels_in_order(values, meta_levels) -> list[str]:
    present = list(dict.fromkeys(values))
    first = [lv for lv in (meta_levels or {}) if lv in present] if isinstance(meta_levels, dict) else []

    def key(v):
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    return first + sorted((v for v in present if v not in first), key=key)


def check_group_by(participants, column: str, with_outputs, *, path, meta=None) -> dict:
    """Validate ``--group-by column``; return the grouping of the participants with outputs.

    The column must exist and, among the participants with outputs (``with_outputs``), have
    at least 2 levels with at least 2 participants each.  Returns ``groups`` (participant ->
    level, for those with a value), ``levels`` (order: participants.json ``Levels``, then
    sorted), ``usable`` (levels with >= 2 participants), ``reference`` (the first usable
    level), ``counts`` and ``missing`` (participants with outputs but no value).
    """
    from qsmprep.group_stats import MIN_PER_GROUP

    _check_column(participants, column, path, "--group-by")
    col = participants.set_index("participant_id")[column]
    groups, missing = {}, []
    for pid in with_outputs:
        v = col.get(pid)
        if isinstance(v, str) and v:
            groups[pid] = v
        else:
            missing.append(pid)
    levels = _levels_in_order(groups.values(), (meta or {}).get(column, {}).get("Levels")
                              if isinstance((meta or {}).get(column), dict) else None)
    counts = {lv: sum(1 for g in groups.values() if g == lv) for lv in levels}
    usable = [lv for lv in levels if counts[lv] >= MIN_PER_GROUP]
    if len(usable) < 2:
        shown = _list(f"{lv} {n}" for lv, n in counts.items()) or "none"
        raise GroupInputError(
            f"{path} column {column} has fewer than 2 groups with at least {MIN_PER_GROUP} participants "
            f"among the {len(with_outputs)} participant(s) with outputs (participants per value: {shown}); "
            "choose a categorical column with at least two such groups for --group-by (a numeric one "
            "goes to --covariate), or fill in the column.", path)
    return {"groups": groups, "levels": levels, "usable": usable, "reference": usable[0],
            "counts": counts, "missing": missing}


def check_covariate(participants, column: str, with_outputs, *, path, meta=None) -> dict:
    """Validate ``--covariate column``: numeric, with enough finite values among participants with outputs.

    Every non-``n/a`` value must be a number; at least :data:`qsmprep.group_stats.MIN_FIT`
    participants with outputs need a finite value, not all equal.  Returns ``values``
    (participant -> float), ``units`` (participants.json ``Units`` or '') and ``missing``.
    """
    from qsmprep.group_stats import MIN_FIT

    _check_column(participants, column, path, "--covariate")
    col = participants.set_index("participant_id")[column]
    for pid, v in col.items():
        if isinstance(v, str) and _float_or_nan(v) is None:
            raise GroupInputError(
                f"{path} column {column} is not numeric ({_show(v)} for {pid}); choose a numeric column "
                "for --covariate (a categorical one goes to --group-by) or correct the value.", path)
    values, missing = {}, []
    for pid in with_outputs:
        v = col.get(pid)
        x = _float_or_nan(v) if isinstance(v, str) else math.nan
        if x is not None and math.isfinite(x):
            values[pid] = x
        else:
            missing.append(pid)
    if len(values) < MIN_FIT or len(set(values.values())) < 2:
        raise GroupInputError(
            f"{path} column {column} has {len(values)} participant(s) with outputs and a finite value"
            f"{' (all equal)' if len(values) >= MIN_FIT else ''}, but a linear fit needs at least {MIN_FIT} "
            "with different values; fill in the column or choose another for --covariate.", path)
    m = (meta or {}).get(column)
    units = str(m.get("Units", "")) if isinstance(m, dict) else ""
    return {"values": values, "units": units, "missing": missing}


def _check_column(participants, column, path, option):
    if participants is None:
        raise GroupInputError(
            f"{path} does not exist, so {option} {column} has no values; add participants.tsv with a "
            f"{column} column or drop {option}.", path)
    if column not in participants.columns or column == "participant_id":
        cols = [c for c in participants.columns if c != "participant_id"]
        raise GroupInputError(
            f"{path} has no column {column} (its columns: {_list(cols, 12) or 'none'}); fix {option} or "
            "add the column.", path)


# ----------------------------------------------------------------------------- writing as a set
def _recover_and_clean(out_dir: Path, final: Path):
    """Under the group lock: restore ``group/`` from an interrupted swap, drop stale staging folders."""
    olds = sorted(out_dir.glob(".group.*.old"), key=lambda p: p.stat().st_mtime)
    if olds and not final.exists():
        os.rename(olds.pop(), final)
    for p in olds + list(out_dir.glob(".group.*.tmp")):
        shutil.rmtree(p, ignore_errors=True)


def _swap_in(stage: Path, final: Path):
    """Make ``stage`` the new ``final`` folder; keep files of ``final`` that are not group outputs."""
    if final.is_dir():
        for entry in final.iterdir():
            if entry.name.startswith(OUTPUT_PREFIX) or (stage / entry.name).exists():
                continue  # our outputs are replaced as a set (stale ones from other options go)
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, stage / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, stage / entry.name, follow_symlinks=False)
        old = final.parent / f"{stage.name[:-len('.tmp')]}.old"
        os.rename(final, old)
        try:
            os.rename(stage, final)
        except BaseException:
            os.rename(old, final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(stage, final)


@contextlib.contextmanager
def staged_group_dir(out_dir):
    """Yield an empty hidden folder in ``out_dir``; on success it replaces ``out_dir/group`` as a whole.

    Serialised between concurrent group runs by a lock on ``out_dir/group.lock``.  On an
    exception the staging folder is removed and ``group/`` is untouched.
    """
    from qsmprep.utils.atomic import _umask, file_lock

    out_dir = Path(out_dir)
    final = out_dir / GROUP_DIR
    if final.exists() and not final.is_dir():
        raise GroupInputError(f"{final} is a file, not a folder; move it away so that the group level "
                              "can write its outputs there.", final)
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(final):
        _recover_and_clean(out_dir, final)
        stage = Path(tempfile.mkdtemp(prefix=".group.", suffix=".tmp", dir=out_dir))
        os.chmod(stage, 0o777 & ~_umask())
        try:
            yield stage
            _swap_in(stage, final)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def _write_tsv(path, df):
    from qsmprep.utils.atomic import write_text

    return write_text(path, df.to_csv(sep="\t", index=False, na_rep="n/a", float_format="%.6g"))


# ----------------------------------------------------------------------------- main entry
def run_group(bids_dir, out_dir, participant_label=None, *, group_by: str | None = None,
              covariate: str | None = None) -> list[Path]:
    """Build the group-level tables (and, with ``group_by``/``covariate``, statistics); return the paths.

    Parameters
    ----------
    bids_dir : the input BIDS dataset (for ``participants.tsv``/``.json``).
    out_dir : the qsmprep derivatives folder holding the participant-level outputs.
    participant_label : optional label(s) (with or without ``sub-``) restricting the runs.
    group_by : optional categorical column of ``participants.tsv``: group means with 95 % CIs,
        differences against the reference level (Welch), Hedges' g, one-way ANOVA.
    covariate : optional numeric column: linear fit of chi against it (slope in ppm per unit).

    Everything is read and validated first; the outputs are then written into a staging folder
    and swapped in as ``out_dir/group`` as a set (stale ``group_*`` files of an earlier run
    with other options go; other files in ``group/`` are kept).  Returns the paths written,
    under ``out_dir/group``.

    Raises :class:`NoParticipantOutputsError` when no participant ROI table is found and
    :class:`GroupInputError` (both ``ValueError``; message: one sentence naming the file and
    the fix) for an unusable ROI table, sidecar, ``participants.tsv``/``.json`` or column.
    """
    out_dir = Path(out_dir)
    bids_dir = Path(bids_dir)
    tables = find_roi_tables(out_dir, participant_label)
    if not tables:
        who = f" for participant(s) {sorted(_labels(participant_label))}" if participant_label else ""
        raise NoParticipantOutputsError(
            f"No participant outputs (sub-*/[ses-*/]anat/*_desc-dgm_stats.tsv) found in {out_dir}{who}; "
            f"run the participant level first ('qsmprep {bids_dir} {out_dir} participant', "
            "without --skip-atlas).", out_dir)

    # ---- 1. read and validate everything (nothing is written before this returns)
    study = _read_study(tables, bids_dir, out_dir, group_by=group_by, covariate=covariate)
    # ---- 2. compute every table in memory
    long_j, wide_j, pcols, region_cols = _joined_tables(study)
    stats = _compute_stats(study) if (group_by or covariate) else None
    # ---- 3. write the set
    with staged_group_dir(out_dir) as stage:
        out = _StagedWriter(stage, out_dir / GROUP_DIR)
        _write_study_tables(out, study, long_j, wide_j, pcols, region_cols)
        _write_overview_png(out, study, long_j)
        if stats is not None:
            _write_stats(out, study, stats)
    return out.written


@dataclass
class _Study:
    """What the group level read and validated before writing anything."""

    long_df: pd.DataFrame  # collect_long: one row per run and region
    runs: list[dict]  # long_df.attrs["runs"]: run keys, source and status per table
    participants: pd.DataFrame | None  # read_participants (None without participants.tsv)
    pmeta: dict  # read_participants_json
    with_outputs: list[str]  # participant_id of every participant with a table, in table order
    group_by: str | None = None
    covariate: str | None = None
    design_g: dict | None = None  # check_group_by
    design_c: dict | None = None  # check_covariate
    out_dir: Path | None = None  # the derivatives folder (the runs' sources are relative to it)

    @property
    def n_part(self) -> int:
        return len(self.with_outputs)

    @property
    def counts(self) -> dict[str, int]:
        """Runs per :data:`STATUS_LEVELS` level."""
        return {s: sum(r["status"] == s for r in self.runs) for s in STATUS_LEVELS}


class _StagedWriter:
    """Writes group outputs into the staging folder and lists their final paths (``out_dir/group/<name>``)."""

    def __init__(self, stage: Path, final: Path):
        self.stage, self.final, self.written = stage, final, []

    def put(self, name: str, writer, *args, **kwargs) -> Path:
        """``writer(stage / name, *args, **kwargs)``; returns the staged path (for the report to embed)."""
        writer(self.stage / name, *args, **kwargs)
        self.written.append(self.final / name)
        return self.stage / name


def _read_study(tables, bids_dir: Path, out_dir: Path, *, group_by, covariate) -> _Study:
    """Validate every per-run table, ``participants.tsv``/``.json`` and the chosen columns
    (:class:`GroupInputError` on the first problem)."""
    long_df = collect_long(tables, out_dir)
    runs = long_df.attrs["runs"]
    participants = read_participants(bids_dir)
    pmeta = read_participants_json(bids_dir)
    ppath = bids_dir / "participants.tsv"
    with_outputs = list(dict.fromkeys(long_df["participant_id"]))
    design_g = (check_group_by(participants, group_by, with_outputs, path=ppath, meta=pmeta)
                if group_by else None)
    design_c = (check_covariate(participants, covariate, with_outputs, path=ppath, meta=pmeta)
                if covariate else None)
    return _Study(long_df, runs, participants, pmeta, with_outputs, group_by, covariate, design_g, design_c,
                  out_dir=Path(out_dir))


def _joined_tables(study: _Study):
    """``(long, wide, participant columns, region columns)``: the long and wide tables joined with
    ``participants.tsv``; the wide one with each run's source and status, in its final column order."""
    long_df, participants = study.long_df, study.participants
    wide = long_to_wide(long_df)
    wide = wide.merge(_runs_frame(study.runs), on=list(RUN_KEYS), how="left")
    qc = qc_frame(study.out_dir, wide["source"])
    for col in QC_COLUMNS:
        wide[col] = qc[col].to_numpy()
    long_j = join_participants(long_df, participants)
    wide_j = join_participants(wide, participants)
    pcols = [c for c in (participants.columns if participants is not None else [])
             if c != "participant_id" and c not in long_df.columns and c not in ("source", "status")]
    region_cols = [c for c in wide.columns if c not in RUN_KEYS and c not in ("source", "status", *QC_COLUMNS)]
    wide_j = wide_j[list(RUN_KEYS) + ["source", "status", *QC_COLUMNS] + pcols + region_cols]
    return long_j, wide_j, pcols, region_cols


def _write_study_tables(out: _StagedWriter, study: _Study, long_j, wide_j, pcols, region_cols):
    """The long and wide tables and their sidecars."""
    from qsmprep.atlas.rois import ROI_COLUMNS
    from qsmprep.utils.atomic import write_json

    out.put("group_desc-dgm_stats.tsv", _write_tsv, long_j)
    out.put("group_desc-dgm_stats.json", write_json, {
        "Description": "Deep-gray-matter susceptibility statistics of every run (long format: one "
                       "row per run and region), gathered from the participant-level "
                       "*_desc-dgm_stats.tsv tables after validating each against its sidecar.",
        "Sources": [r["source"] for r in study.runs],
        **{c: ROI_COLUMNS[c] for c in study.long_df.columns if c in ROI_COLUMNS},
        **_participant_sidecar(study.pmeta, pcols),
    })
    out.put("group_desc-dgm_wide.tsv", _write_tsv, wide_j)
    out.put("group_desc-dgm_wide.json", write_json, {
        "Description": "Mean susceptibility per deep-gray-matter region, one row per run found "
                       "(every run found is listed, with its status).",
        **{c: ROI_COLUMNS[c] for c in RUN_KEYS},
        "source": {"Description": "The participant-level ROI table of the run, relative to the "
                                  "derivatives folder."},
        "status": {"Description": "Whether the run's table has a mean chi for its regions.",
                   "Levels": STATUS_LEVELS},
        **QC_SIDECAR,
        **{c: {"Description": f"Mean chi in {c.rsplit('_', 1)[0].replace('_', ' ')} "
                              f"({'left' if c.endswith('_L') else 'right'}).", "Units": "ppm"}
           for c in region_cols},
        **_participant_sidecar(study.pmeta, pcols),
    })


def _write_overview_png(out: _StagedWriter, study: _Study, long_j):
    """Each structure's mean chi across runs, coloured by ``group_by`` (or a ``group`` column)."""
    from qsmprep.reports.figures import group_png

    hue = study.group_by or ("group" if "group" in long_j.columns else None)
    fig_df = long_j
    if hue in long_j.columns:  # group_png needs a text level per row
        fig_df = long_j.assign(**{hue: long_j[hue].astype(object).where(long_j[hue].notna(), "n/a")
                                  .astype(str)})
    out.put("group_desc-dgm_chi.png", group_png, fig_df, hue=hue,
            title=f"Mean chi per structure ({study.n_part} participants, {len(study.runs)} runs)")


REPEATED_MEASURES = ("Sessions and runs of one participant are repeated measures: for each region the "
                     "participant's finite run means (mean_ppm) were averaged with equal weight per run, "
                     "so each participant counts once (n = participants); 'bilateral' is the mean of left "
                     "and right per run (where both exist), averaged over runs the same way.")
#: Sidecar entries of the region columns of every statistics table.
_REGION_SIDECAR = {
    "structure": {"Description": "Deep-gray-matter structure (see group_desc-dgm_stats.json)."},
    "hemisphere": {"Description": "Hemisphere.", "Levels": {
        "L": "left", "R": "right", "bilateral": "mean of left and right (per run, then per participant)"}},
}


def _compute_stats(study: _Study) -> dict:
    from qsmprep import group_stats as gs

    g, c = study.design_g, study.design_c
    pm = gs.participant_means(study.long_df)
    out = {"pm": pm}
    if g:
        out["desc"] = gs.group_descriptives(pm, g["groups"], g["levels"])
        out["effects"] = gs.group_effects(pm, g["groups"], g["levels"], g["reference"])
        pm[study.group_by] = pm["participant_id"].map(g["groups"])
    if c:
        out["fits"] = gs.covariate_fits(pm, c["values"], study.covariate)
        if study.covariate not in pm.columns:
            pm[study.covariate] = pm["participant_id"].map(c["values"])
    return out


def _write_stats(out: _StagedWriter, study: _Study, stats: dict):
    """The statistics tables with their sidecars and figures, then the HTML report."""
    from qsmprep.group_stats import CONFIDENCE

    conf = f"{round(CONFIDENCE * 100)} %"
    common = {"RepeatedMeasures": REPEATED_MEASURES, "Confidence": CONFIDENCE,
              "Source": "group_desc-dgm_stats.tsv (column mean_ppm)",
              "ParticipantsWithOutputs": study.n_part, "Runs": len(study.runs)}
    _write_participant_means(out, study, stats["pm"], common)
    sections = []
    if study.design_g:
        sections.append(_write_group_stats(out, study, stats, common, conf))
    if study.design_c:
        sections.append(_write_covariate_stats(out, study, stats, common, conf))
    _write_group_report(out, study, sections, conf)


def _write_participant_means(out: _StagedWriter, study: _Study, pm, common: dict):
    from qsmprep.utils.atomic import write_json

    group_by, covariate = study.group_by, study.covariate
    out.put("group_desc-participantmeans_stats.tsv", _write_tsv, pm)
    side = {"Description": "Mean chi per participant and region after averaging the participant's "
                           "sessions and runs (the input of every group statistic).", **common, **_REGION_SIDECAR,
            "participant_id": {"Description": "Participant label with the 'sub-' prefix."},
            "mean_ppm": {"Description": "Mean over the participant's runs of the region's mean chi.",
                         "Units": "ppm"},
            "n_runs": {"Description": "Number of runs (with a value) averaged."},
            "n_sessions": {"Description": "Number of distinct sessions among those runs."}}
    if study.design_g:
        side[group_by] = _participant_sidecar(study.pmeta, [group_by])[group_by]
    if study.design_c and covariate != group_by:
        side[covariate] = _participant_sidecar(study.pmeta, [covariate])[covariate]
    out.put("group_desc-participantmeans_stats.json", write_json, side)


def _write_group_stats(out: _StagedWriter, study: _Study, stats: dict, common: dict, conf: str) -> dict:
    """Group means and contrasts (tables, sidecars, figure); returns the report section."""
    from qsmprep.reports import group as rep
    from qsmprep.utils.atomic import write_json

    g, group_by = study.design_g, study.group_by
    small = [lv for lv in g["levels"] if lv not in g["usable"]]
    head = {**common, "GroupBy": group_by, "GroupLevels": g["levels"], "ReferenceLevel": g["reference"],
            "ParticipantsPerLevel": g["counts"], "ParticipantsWithoutValue": g["missing"],
            "LevelsWithoutContrast": small}
    out.put("group_desc-groupmeans_stats.tsv", _write_tsv, stats["desc"])
    out.put("group_desc-groupmeans_stats.json", write_json, _groupmeans_sidecar(group_by, conf, head))
    out.put("group_desc-groupeffects_stats.tsv", _write_tsv, stats["effects"])
    out.put("group_desc-groupeffects_stats.json", write_json,
            _groupeffects_sidecar(group_by, g["reference"], conf, head))
    fig = out.put("group_desc-groupmeans_chi.png", rep.group_means_png, stats["pm"], stats["desc"], by=group_by,
                  levels=g["levels"], title=f"Mean chi per participant by {group_by} (bars: mean, {conf} CI)")
    return rep.section(
        f"Groups: {group_by}",
        text=(f"Reference level: {g['reference']}; participants per level: "
              + ", ".join(f"{k} {v}" for k, v in g["counts"].items())
              + (f"; without a value (left out): {_list(g['missing'], 10)}" if g["missing"] else "")
              + (f"; levels with fewer than 2 participants (no contrast): {', '.join(small)}" if small else "")
              + "."),
        image=fig,
        tables=[("Group means (ppm)", stats["desc"]),
                ("Contrasts against the reference (difference in ppm; effect sizes unitless)",
                 stats["effects"][["structure", "hemisphere", "contrast", "n_level", "n_reference",
                                   "difference_ppm", "ci_low_ppm", "ci_high_ppm", "p", "p_fdr",
                                   "hedges_g", "hedges_g_ci_low", "hedges_g_ci_high", "anova_p",
                                   "omega_squared"]])])


def _groupmeans_sidecar(group_by: str, conf: str, head: dict) -> dict:
    return {
        "Description": f"Mean chi per region and level of participants.tsv column '{group_by}', "
                       f"with t-based {conf} confidence intervals over participants.",
        **head, **_REGION_SIDECAR,
        "level": {"Description": f"Value of '{group_by}'."},
        "n": {"Description": "Participants with a value in the region."},
        "mean_ppm": {"Description": "Mean of the participant means.", "Units": "ppm"},
        "sd_ppm": {"Description": "Standard deviation (ddof=1) of the participant means.", "Units": "ppm"},
        "sem_ppm": {"Description": "Standard error of the mean (sd / sqrt(n)).", "Units": "ppm"},
        "ci_low_ppm": {"Description": f"Lower bound of the {conf} CI (mean - t * sem, n-1 df).",
                       "Units": "ppm"},
        "ci_high_ppm": {"Description": f"Upper bound of the {conf} CI.", "Units": "ppm"},
    }


def _groupeffects_sidecar(group_by: str, ref: str, conf: str, head: dict) -> dict:
    return {
        "Description": f"Each level of '{group_by}' with at least 2 participants against the reference "
                       f"level '{ref}' per region: Welch difference of means, Cohen's d and Hedges' g; "
                       "and a one-way ANOVA over those levels.",
        **head, **_REGION_SIDECAR,
        "MultipleComparisons": "p_fdr: Benjamini-Hochberg over all rows of the same contrast "
                               "(every region, and the bilateral means); anova_p_fdr: the same over regions.",
        "contrast": {"Description": "'<level> - <reference>'."},
        "level": {"Description": "Compared level."}, "reference": {"Description": "Reference level."},
        "n_level": {"Description": "Participants of the level with a value."},
        "n_reference": {"Description": "Participants of the reference with a value."},
        "difference_ppm": {"Description": "Mean(level) - mean(reference).", "Units": "ppm"},
        "ci_low_ppm": {"Description": f"Lower bound of the Welch {conf} CI of the difference.",
                       "Units": "ppm"},
        "ci_high_ppm": {"Description": f"Upper bound of the Welch {conf} CI.", "Units": "ppm"},
        "t": {"Description": "Welch t statistic."},
        "df": {"Description": "Welch-Satterthwaite degrees of freedom."},
        "p": {"Description": "Two-sided p-value of the Welch t-test (uncorrected)."},
        "p_fdr": {"Description": "Benjamini-Hochberg adjusted p (see MultipleComparisons)."},
        "cohens_d": {"Description": "Difference / pooled SD (unitless)."},
        "hedges_g": {"Description": "Cohen's d times the exact small-sample factor J (unitless)."},
        "hedges_g_ci_low": {"Description": f"Lower bound of the {conf} CI of g (normal approximation, "
                                           "Hedges & Olkin 1985)."},
        "hedges_g_ci_high": {"Description": f"Upper bound of the {conf} CI of g."},
        "anova_F": {"Description": "One-way ANOVA F over the levels with at least 2 participants."},
        "anova_df_between": {"Description": "Numerator degrees of freedom (levels - 1)."},
        "anova_df_within": {"Description": "Denominator degrees of freedom (participants - levels)."},
        "anova_p": {"Description": "p-value of the ANOVA (uncorrected)."},
        "anova_p_fdr": {"Description": "Benjamini-Hochberg adjusted ANOVA p over regions."},
        "eta_squared": {"Description": "SS_between / SS_total (unitless)."},
        "omega_squared": {"Description": "(SS_between - (k-1) MS_within) / (SS_total + MS_within), "
                                         "less biased than eta squared (unitless)."},
    }


def _write_covariate_stats(out: _StagedWriter, study: _Study, stats: dict, common: dict, conf: str) -> dict:
    """The linear fits against the covariate (table, sidecar, figure); returns the report section."""
    from qsmprep.reports import group as rep
    from qsmprep.utils.atomic import write_json

    c, covariate = study.design_c, study.covariate
    per = f"ppm per {c['units']}" if c["units"] else f"ppm per unit of {covariate}"
    out.put("group_desc-covariatefit_stats.tsv", _write_tsv, stats["fits"])
    out.put("group_desc-covariatefit_stats.json", write_json, _covariatefit_sidecar(covariate, c, per, conf, common))
    fig = out.put("group_desc-covariatefit_chi.png", rep.covariate_png, stats["pm"], stats["fits"],
                  covariate=covariate, units=c["units"], hue=study.group_by if study.design_g else None,
                  title=f"Mean chi per participant against {covariate} (line: least squares)")
    return rep.section(
        f"Covariate: {covariate}" + (f" ({c['units']})" if c["units"] else ""),
        text=(f"Slope in {per}; {len(c['values'])} participants with a value"
              + (f"; without a value (left out): {_list(c['missing'], 10)}" if c["missing"] else "")
              + "."),
        image=fig,
        tables=[(f"Linear fits (slope in {per})",
                 stats["fits"][["structure", "hemisphere", "n", "slope_ppm_per_unit",
                                "slope_ci_low_ppm_per_unit", "slope_ci_high_ppm_per_unit", "r", "p",
                                "p_fdr"]])])


def _covariatefit_sidecar(covariate: str, c: dict, per: str, conf: str, common: dict) -> dict:
    return {
        "Description": f"Least-squares line of the participant means of chi against participants.tsv "
                       f"column '{covariate}' per region (slope with t-based {conf} CI, n-2 df).",
        **common, **_REGION_SIDECAR, "Covariate": covariate, "CovariateUnits": c["units"] or "n/a",
        "ParticipantsWithoutValue": c["missing"],
        "MultipleComparisons": "p_fdr: Benjamini-Hochberg over all rows (regions).",
        "covariate": {"Description": "Name of the participants.tsv column."},
        "n": {"Description": "Participants with both a chi value and a finite covariate."},
        "slope_ppm_per_unit": {"Description": "Slope.", "Units": per},
        "slope_se_ppm_per_unit": {"Description": "Standard error of the slope.", "Units": per},
        "slope_ci_low_ppm_per_unit": {"Description": f"Lower bound of the {conf} CI of the slope.",
                                      "Units": per},
        "slope_ci_high_ppm_per_unit": {"Description": f"Upper bound of the {conf} CI.", "Units": per},
        "intercept_ppm": {"Description": f"Fitted chi at {covariate} = 0.", "Units": "ppm"},
        "r": {"Description": "Pearson correlation."}, "r_squared": {"Description": "r squared."},
        "p": {"Description": "Two-sided p-value of slope = 0 (uncorrected)."},
        "p_fdr": {"Description": "Benjamini-Hochberg adjusted p over regions."},
    }


def _write_group_report(out: _StagedWriter, study: _Study, sections: list, conf: str):
    """``group_desc-dgm_report.html``: an overview, the statistics ``sections`` and the runs found."""
    from qsmprep.reports import group as rep

    runs_found = rep.section("Runs found", text="Every participant-level ROI table found, with its status "
                             "(no-data runs add nothing to the statistics).",
                             tables=[("Runs", _runs_frame(study.runs))])
    overview = rep.section("Overview", image=out.stage / "group_desc-dgm_chi.png", facts=[
        ("Participants with outputs", str(study.n_part)), ("Runs", f"{len(study.runs)} ("
         + ", ".join(f"{v} {k}" for k, v in study.counts.items() if v) + ")"),
        ("Repeated measures", REPEATED_MEASURES),
        ("Confidence intervals", f"{conf}, t-based; p-values two-sided with Benjamini-Hochberg adjustment"),
    ])
    out.put("group_desc-dgm_report.html", rep.build_group_html, [overview] + sections + [runs_found],
            title="qsmprep group report: deep-gray-matter susceptibility")


#: Quality-control columns of the wide table, from each run's ``_desc-qc.json`` (``qsmprep.qsm.qc``).
QC_COLUMNS = ("qc_passed", "qc_failed", "mask_kept", "lowfreq_share", "echo_disagreement", "chi_range",
              "sign_evidence", "tail_skewness", "edge_coverage", "field_noise_share", "phase_sign", "offset_order",
              "slab_trend_ppm")
#: Where the steps' columns come from in a ``_desc-qc.json``: column -> (step record, key in it).
QC_STEP_KEYS = {"phase_sign": ("phase_sign", "sign"), "offset_order": ("offset_residual", "order"),
                "slab_trend_ppm": ("slab_trend", "trend_ppm_across")}
QC_SIDECAR = {
    "qc_passed": {"Description": "Whether every quality-control check of the run passed (n/a: no QC file).",
                  "Levels": {"True": "passed", "False": "a check failed: see qc_failed and the report"}},
    "qc_failed": {"Description": "The failed quality-control checks, comma-separated."},
    "mask_kept": {"Description": "Final mask / brain mask (share of the brain with a chi value)."},
    "lowfreq_share": {"Description": "Share of the local field explained by a degree-2 polynomial."},
    "echo_disagreement": {"Description": "Share of brain voxels where an echo misses the fitted phase line."},
    "chi_range": {"Description": "99.5th minus 0.5th percentile of chi in the final mask.", "Units": "ppm"},
    "sign_evidence": {"Description": "Sign the map's veins and iron-rich tissue show (+1 paramagnetic, 0 unclear)."},
    "tail_skewness": {"Description": "Quantile skewness of chi in the final mask (positive: a paramagnetic tail of "
                                     "veins and iron-rich nuclei; below the QC limit: they probably came out too low)."},
    "edge_coverage": {"Description": "Partial coverage: largest brain-mask cross-section within 8 mm of an image face "
                                     "over the largest cross-section (0: whole brain in the field of view)."},
    "field_noise_share": {"Description": "The local field's noise per voxel over its interquartile range in the final "
                                         "mask (above the QC limit, one for multi-echo data and a higher one for a "
                                         "single echo: SNR too low for an accurate map)."},
    "phase_sign": {"Description": "Phase sign applied to the input (--phase-sign)."},
    "offset_order": {"Description": "Degree of the single-echo offset residual removed (0: none; n/a: several echoes)."},
    "slab_trend_ppm": {"Description": "Multi-echo partial coverage (a slab): the chi trend along the cut axis removed, "
                                      "from one cut face to the other (n/a: a whole brain, or one echo).", "Units": "ppm"},
}


def qc_frame(out_dir, sources):
    """The :data:`QC_COLUMNS` of each run (its ROI table's ``source``), from the ``_desc-qc.json`` beside it."""
    import json

    import pandas as pd

    from qsmprep.naming import OUTPUTS

    rows = []
    tail_roi, tail_qc = OUTPUTS["roi_tsv"].tail, OUTPUTS["qc"].tail
    for src in sources:
        row = dict.fromkeys(QC_COLUMNS)
        path = Path(out_dir) / str(src)
        qc_path = path.with_name(path.name[: -len(tail_roi)] + tail_qc) if str(src).endswith(tail_roi) else None
        if qc_path is not None and qc_path.is_file():
            try:
                qc = json.loads(qc_path.read_text())
            except ValueError:
                qc = {}
            meas, steps = qc.get("measures") or {}, qc.get("steps") or {}
            row.update({k: meas.get(k) for k in QC_COLUMNS if k in meas})
            row["qc_passed"] = qc.get("passed")
            row["qc_failed"] = ",".join(qc.get("failed") or []) or None
            for column, (step, key) in QC_STEP_KEYS.items():
                record = steps.get(step)
                if isinstance(record, dict) and key in record:
                    row[column] = record[key]
        rows.append(row)
    return pd.DataFrame(rows, columns=list(QC_COLUMNS))


def _runs_frame(runs):
    import pandas as pd

    return pd.DataFrame(runs, columns=list(RUN_KEYS) + ["source", "status"])
