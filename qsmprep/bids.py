"""BIDS input: find the multi-echo GRE runs with pybids and check them before anything runs.

:func:`collect_runs` turns a BIDS dataset into a list of :class:`QsmRun` (one per
subject/session/acquisition/reconstruction/run and suffix), reading ``EchoTime`` (s)
and ``MagneticFieldStrength`` (T) with sidecar inheritance, and checks every
problem that would otherwise crash the graph hours later: missing magnitude or
phase for an echo, missing or malformed metadata, mag/phase grids that differ,
NaNs.  Each problem raises :class:`InputError` whose message is ONE sentence
naming the file and the fix (templates in :mod:`qsmprep.messages`).

Two input forms are accepted:

* one 3-D file per echo and part (``sub-01_echo-1_part-mag_MEGRE.nii.gz`` ...);
* one 4-D echo stack per part (``sub-01_part-mag_MEGRE.nii.gz``, echoes along the
  4th axis) with ``EchoTime`` a list in s.

``T2starw`` images with ``part-mag``/``part-phase`` are single-echo runs.  Nothing
here writes anywhere: the input dataset is never modified.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qsmprep import messages as msg

#: Suffixes qsmprep processes (multi-echo and single-echo GRE).
SUFFIXES = ("MEGRE", "T2starw")
#: Entities that keep runs apart and are kept in output names, in BIDS order.
RUN_ENTITIES = ("subject", "session", "acquisition", "reconstruction", "run")
_ENTITY_KEYS = {"subject": "sub", "session": "ses", "acquisition": "acq", "reconstruction": "rec", "run": "run"}
#: Other datatypes are never indexed (faster on large datasets).
_IGNORE_DATATYPES = re.compile(
    r"/sub-[^/]+/(ses-[^/]+/)?(func|dwi|fmap|perf|eeg|meg|ieeg|beh|pet|micr|nirs|motion)/"
)
_AFFINE_ATOL_MM = 1e-3


class InputError(ValueError):
    """A problem with the input dataset or the command line, found before anything runs.

    ``str(err)`` is one sentence that names the file and the fix.
    """


@dataclass(frozen=True)
class QsmRun:
    """One GRE acquisition to process: files, echo times and geometry.

    Attributes
    ----------
    entities : dict
        ``subject`` plus ``session``/``acquisition``/``reconstruction``/``run`` when present.
    suffix : str
        ``"MEGRE"`` or ``"T2starw"``.
    magnitude, phase : tuple of Path
        One 3-D file per echo (sorted by echo time), or a single 4-D echo stack.
    echo_times_s : tuple of float
        Echo times in seconds, ascending.
    b0_t : float
        Main field strength in tesla.
    shape : tuple of int
        3-D grid shape (without the echo axis).
    voxel_size : tuple of float
        Voxel edge lengths in mm.
    affine : tuple of tuple of float
        The magnitude's 4x4 NIfTI affine.
    phase_units : str
        ``"rad"`` when the phase lies within [-pi, pi] (+1 %), else ``"scanner"``
        (integer scanner units; rescaled by
        :func:`qsmprep.qsm.echoes.scale_phase_to_radians` in the graph).
    """

    entities: dict
    suffix: str
    magnitude: tuple
    phase: tuple
    echo_times_s: tuple
    b0_t: float
    shape: tuple
    voxel_size: tuple
    affine: tuple
    phase_units: str = "rad"
    t1w: Path | None = None
    """A T1w image of the same subject and session, used as an intermediate for registration."""

    @property
    def subject(self) -> str:
        return self.entities["subject"]

    @property
    def session(self) -> str | None:
        return self.entities.get("session")

    @property
    def n_echoes(self) -> int:
        return len(self.echo_times_s)

    @property
    def is_stack(self) -> bool:
        """True when the echoes come as one 4-D file per part."""
        return len(self.magnitude) == 1 and self.n_echoes > 1

    @property
    def prefix(self) -> str:
        """BIDS name prefix of the outputs, e.g. ``sub-01_ses-1_acq-fast_run-2``."""
        return "_".join(f"{_ENTITY_KEYS[k]}-{self.entities[k]}" for k in RUN_ENTITIES if self.entities.get(k))

    @property
    def anat_dir(self) -> str:
        """Relative output folder of this run, e.g. ``sub-01/ses-1/anat``."""
        parts = [f"sub-{self.subject}"]
        if self.session:
            parts.append(f"ses-{self.session}")
        return "/".join(parts + ["anat"])

    @property
    def b0_dir(self) -> np.ndarray:
        """Unit B0 vector in array axes (from the affine; never assumed along z)."""
        from qsmprep.qsm.geometry import b0_direction_from_affine

        return b0_direction_from_affine(np.asarray(self.affine))

    @property
    def obliquity_deg(self) -> float:
        """Angle between B0 and the third array axis, in degrees."""
        from qsmprep.qsm.geometry import obliquity_deg

        return obliquity_deg(self.b0_dir)

    def volume_gb(self, n_volumes: int = 1) -> float:
        """Size in GB of ``n_volumes`` float32 volumes on this run's grid."""
        return float(np.prod(self.shape)) * 4 * n_volumes / 1e9

    def describe(self) -> str:
        """A few lines for ``--dry-run`` and the log."""
        te_ms = ", ".join(f"{te * 1e3:.2f}" for te in self.echo_times_s)
        b0 = ", ".join(f"{v:+.3f}" for v in self.b0_dir)
        vs = " x ".join(f"{v:.3g}" for v in self.voxel_size)
        sh = " x ".join(str(v) for v in self.shape)
        files = "4-D echo stack" if self.is_stack else f"{len(self.magnitude)} file(s) per part"
        return (
            f"{self.prefix} ({self.suffix}, {files})\n"
            f"    echoes: {self.n_echoes}  TE (ms): {te_ms}\n"
            f"    B0: {self.b0_t:g} T  direction (array axes): ({b0})  obliquity: {self.obliquity_deg:.1f} deg\n"
            f"    grid: {sh} voxels of {vs} mm  phase units: {self.phase_units}"
        )


# --------------------------------------------------------------------------- paths


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
    except ValueError:
        return False
    return True


def check_output_dir(bids_dir, out_dir, work_dir=None) -> None:
    """Refuse an output (or work) folder inside the input dataset, or one that cannot be written.

    Creates nothing.  Raises :class:`InputError`.
    """
    bids = Path(bids_dir).resolve()
    out = Path(out_dir).resolve()
    suggestion = bids.parent / f"{bids.name}-derivatives" / "qsmprep"
    if out == bids:
        raise InputError(msg.OUT_EQUALS_BIDS.format(out=out, suggestion=suggestion))
    if _is_within(out, bids):
        raise InputError(msg.OUT_INSIDE_BIDS.format(out=out, bids=bids, suggestion=suggestion))
    if work_dir is not None and _is_within(Path(work_dir).resolve(), bids):
        raise InputError(msg.WORK_INSIDE_BIDS.format(work=Path(work_dir).resolve(), bids=bids))
    if out.exists():
        if not out.is_dir():
            raise InputError(msg.OUT_NOT_WRITABLE.format(out=out, why="it is a file, not a folder"))
        if not os.access(out, os.W_OK | os.X_OK):
            raise InputError(msg.OUT_NOT_WRITABLE.format(out=out, why="no write permission"))
        return
    ancestor = out.parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(msg.OUT_NOT_WRITABLE.format(out=out, why=f"{ancestor} is a file, not a folder"))
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputError(msg.OUT_NOT_WRITABLE.format(out=out, why=f"no write permission in {ancestor}"))


# --------------------------------------------------------------------------- discovery


def _sidecar(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def _swap_part(path: Path, part: str) -> Path:
    return path.with_name(re.sub(r"_part-(mag|phase)_", f"_part-{part}_", path.name))


def load_layout(bids_dir):
    """Index ``bids_dir`` with pybids (anat only, no validation, in memory; nothing is written)."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(msg.BIDS_DIR_MISSING.format(path=bids_dir))
    if not (bids_dir / "dataset_description.json").exists():
        raise InputError(msg.BIDS_NO_DESCRIPTION.format(path=bids_dir))
    ignore = ["code", "derivatives", "sourcedata", "stimuli", "models", re.compile(r"/\."), _IGNORE_DATATYPES]
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
    return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)


def _strip(labels, prefix):
    if not labels:
        return None
    return [str(lab)[len(prefix):] if str(lab).startswith(prefix) else str(lab) for lab in labels]


def _get_float(meta, key, unit, path, *, allow_list=False):
    value = meta.get(key)
    sidecar = _sidecar(path)
    if value is None:
        raise InputError(msg.MISSING_METADATA.format(key=key, unit=unit, path=path, sidecar=sidecar))
    values = value if (allow_list and isinstance(value, (list, tuple))) else [value]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise InputError(
            msg.BAD_METADATA.format(key=key, value=value, path=path, why=f"expected a number in {unit}", sidecar=sidecar)
        ) from None
    if any(not np.isfinite(v) or v <= 0 for v in out):
        raise InputError(
            msg.BAD_METADATA.format(key=key, value=value, path=path, why=f"must be a positive number in {unit}", sidecar=sidecar)
        )
    if key == "EchoTime" and any(v > 1.0 for v in out):
        raise InputError(
            msg.BAD_METADATA.format(key=key, value=value, path=path, why="BIDS echo times are in seconds, not ms", sidecar=sidecar)
        )
    return out if (allow_list and isinstance(value, (list, tuple))) else out[0]


def _check_image(path: Path, reference: tuple | None):
    """Load ``path``; check dimensions, finiteness and grid. Returns (img, data, (shape3, affine))."""
    import nibabel as nb

    try:
        img = nb.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types
        raise InputError(msg.UNREADABLE_IMAGE.format(path=path, why=str(exc).rstrip("."))) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim not in (3, 4):
        raise InputError(msg.NOT_3D.format(path=path, ndim=data.ndim))
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(msg.NAN_VALUES.format(path=path, n=n_bad))
    grid = (tuple(int(s) for s in data.shape[:3]), np.asarray(img.affine, dtype=float))
    if reference is not None:
        ref_path, (ref_shape, ref_affine) = reference
        if grid[0] != ref_shape:
            raise InputError(
                msg.GRID_MISMATCH.format(path=path, what=f"shape {grid[0]} vs {ref_shape}", reference=ref_path)
            )
        if not np.allclose(grid[1], ref_affine, atol=_AFFINE_ATOL_MM):
            raise InputError(msg.GRID_MISMATCH.format(path=path, what="affine differs", reference=ref_path))
    return img, data, grid


def _build_run(layout, key, files) -> QsmRun:
    """Pair magnitude and phase files of one run, read metadata and check the images."""
    entities, suffix = dict(key[0]), key[1]
    mags = {f.entities.get("echo"): Path(f.path) for f in files if f.entities.get("part") == "mag"}
    phases = {f.entities.get("echo"): Path(f.path) for f in files if f.entities.get("part") == "phase"}
    for echo, path in sorted(mags.items(), key=lambda kv: str(kv[0])):
        if echo not in phases:
            raise InputError(msg.MISSING_PHASE.format(path=path, expected=_swap_part(path, "phase").name))
    for echo, path in sorted(phases.items(), key=lambda kv: str(kv[0])):
        if echo not in mags:
            raise InputError(msg.MISSING_MAGNITUDE.format(path=path, expected=_swap_part(path, "mag").name))

    echoes = []  # (te, mag, phase)
    b0 = None
    reference = None
    phase_max = 0.0
    stack = None
    for echo in sorted(mags, key=lambda e: (e is None, int(e) if e is not None else 0)):
        mag, pha = mags[echo], phases[echo]
        meta = layout.get_metadata(str(mag))
        meta_ph = layout.get_metadata(str(pha))
        te_meta, te_path = (meta, mag) if "EchoTime" in meta else (meta_ph, pha) if "EchoTime" in meta_ph else (meta, mag)
        te = _get_float(te_meta, "EchoTime", "s", te_path, allow_list=True)
        b0_meta, b0_path = (meta, mag) if "MagneticFieldStrength" in meta else (meta_ph, pha) if "MagneticFieldStrength" in meta_ph else (meta, mag)
        b0_here = _get_float(b0_meta, "MagneticFieldStrength", "T", b0_path)
        if b0 is None:
            b0 = b0_here
        _, mag_data, grid = _check_image(mag, reference)
        if reference is None:
            reference = (mag, grid)
        _, pha_data, _ = _check_image(pha, reference)
        if mag_data.shape != pha_data.shape:
            raise InputError(
                msg.GRID_MISMATCH.format(path=pha, what=f"shape {pha_data.shape} vs {mag_data.shape}", reference=mag)
            )
        phase_max = max(phase_max, float(np.max(np.abs(pha_data))) if pha_data.size else 0.0)
        n_vol = mag_data.shape[3] if mag_data.ndim == 4 else 1
        tes = te if isinstance(te, list) else [te]
        if n_vol > 1 or isinstance(te, list):
            if len(mags) > 1:
                raise InputError(msg.NOT_3D.format(path=mag, ndim=mag_data.ndim))
            if len(tes) != n_vol:
                raise InputError(msg.ECHO_COUNT_MISMATCH.format(path=mag, n_vol=n_vol, n_te=len(tes)))
            stack = (mag, pha)
        echoes.extend((t, mag, pha) for t in tes)
        del mag_data, pha_data

    tes = [e[0] for e in echoes]
    if len(set(tes)) != len(tes):
        dup = next(t for t in tes if tes.count(t) > 1)
        raise InputError(msg.DUPLICATE_ECHO_TIME.format(path=echoes[0][1], te=dup))
    if stack is not None:
        magnitude, phase = (stack[0],), (stack[1],)
        order = np.argsort(tes)
        if list(order) != list(range(len(tes))):
            raise InputError(
                msg.BAD_METADATA.format(
                    key="EchoTime", value=tes, path=stack[0], why="echo times of a 4-D stack must be ascending",
                    sidecar=_sidecar(stack[0]),
                )
            )
    else:
        echoes.sort(key=lambda e: e[0])
        magnitude, phase = tuple(e[1] for e in echoes), tuple(e[2] for e in echoes)
        tes = [e[0] for e in echoes]

    shape, affine = reference[1]
    from qsmprep.qsm.geometry import voxel_sizes

    return QsmRun(
        entities=entities,
        suffix=suffix,
        magnitude=magnitude,
        phase=phase,
        echo_times_s=tuple(tes),
        b0_t=float(b0),
        shape=shape,
        voxel_size=voxel_sizes(affine),
        affine=tuple(tuple(float(v) for v in row) for row in affine),
        phase_units="rad" if phase_max <= np.pi * 1.01 else "scanner",
    )


def collect_runs(bids_dir, participant_label=None, session_label=None, layout=None) -> list[QsmRun]:
    """Find and check every GRE run to process.

    Parameters
    ----------
    bids_dir : path
        Root of the BIDS dataset (read only).
    participant_label, session_label : list of str, optional
        Labels with or without the ``sub-``/``ses-`` prefix; default all.
    layout : bids.BIDSLayout, optional
        A layout already built by :func:`load_layout`.

    Returns
    -------
    list of QsmRun, sorted by subject, session, acquisition, run.

    Raises
    ------
    InputError
        One sentence naming the file and the fix, for the first problem found.
    """
    bids_dir = Path(bids_dir)
    layout = layout or load_layout(bids_dir)
    participant_label = _strip(participant_label, "sub-")
    session_label = _strip(session_label, "ses-")

    all_files = layout.get(
        suffix=list(SUFFIXES), part=["mag", "phase"], extension=[".nii", ".nii.gz"], datatype="anat",
    )
    subjects = sorted({f.entities["subject"] for f in all_files} | set(layout.get_subjects()))
    if participant_label:
        unknown = [lab for lab in participant_label if lab not in subjects]
        if unknown:
            raise InputError(
                msg.BIDS_UNKNOWN_PARTICIPANT.format(
                    labels=", ".join(unknown), path=bids_dir, available=", ".join(subjects) or "none"
                )
            )
    files = [f for f in all_files if not participant_label or f.entities["subject"] in participant_label]
    if session_label:
        sessions = sorted({str(f.entities.get("session")) for f in files if f.entities.get("session")})
        unknown = [lab for lab in session_label if lab not in sessions]
        if unknown:
            raise InputError(
                msg.BIDS_UNKNOWN_SESSION.format(labels=", ".join(unknown), path=bids_dir, available=", ".join(sessions) or "none")
            )
        files = [f for f in files if str(f.entities.get("session")) in session_label]
    if not files:
        where = bids_dir
        if participant_label and len(participant_label) == 1:
            where = bids_dir / f"sub-{participant_label[0]}"
        raise InputError(msg.BIDS_EMPTY.format(path=where))

    groups: dict = {}
    for f in files:
        ents = tuple((k, str(f.entities[k])) for k in RUN_ENTITIES if f.entities.get(k) is not None)
        groups.setdefault((ents, f.entities["suffix"]), []).append(f)
    runs = [_build_run(layout, key, groups[key]) for key in sorted(groups)]
    return [replace(r, t1w=find_t1w(layout, r.subject, r.entities.get("session"))) for r in runs]


def find_t1w(layout, subject: str, session: str | None = None) -> Path | None:
    """The first ``T1w`` image of ``subject`` in ``session`` (or without sessions), if any."""
    query = dict(subject=subject, suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"])
    from bids.layout import Query

    query["session"] = session if session else Query.NONE
    found = sorted(f.path for f in layout.get(**query))
    return Path(found[0]) if found else None
