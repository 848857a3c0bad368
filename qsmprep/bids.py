"""BIDS input: find the multi-echo GRE runs with pybids and check them before anything runs.

:func:`collect_runs` turns a BIDS dataset into a list of :class:`QsmRun` (one per
subject/session/acquisition/reconstruction/run and suffix), reading ``EchoTime`` (s)
and ``MagneticFieldStrength`` (T) with sidecar inheritance, and checks every
problem that would otherwise crash the graph hours later: missing magnitude or
phase for an echo, missing or malformed metadata (field strength outside
:data:`qsmprep.qsm.constants.B0_RANGE_T`), mag/phase grids that differ, NaNs,
image headers that cannot be right (zero-length or too short axes, a singular
affine, a declared size the file cannot hold: found before the data are read),
images without signal, phase in units that cannot be told (unwrapped or rescaled
phase; degrees and radians in [0, 2pi) are converted), and images whose voxel-to-world
transforms leave the B0 direction unknown.  Before pybids indexes the dataset,
:func:`check_dataset_files` parses every JSON and TSV file it would index.  Each
problem raises :class:`InputError` whose message is ONE sentence naming the file
and the fix (templates in :mod:`qsmprep.messages`).

Two input forms are accepted:

* one 3-D file per echo and part (``sub-01_echo-1_part-mag_MEGRE.nii.gz`` ...);
* one 4-D echo stack per part (``sub-01_part-mag_MEGRE.nii.gz``, echoes along the
  4th axis) with ``EchoTime`` a list in s.

``T2starw`` images with ``part-mag``/``part-phase`` are single-echo runs.  Complex data stored
as ``part-real``/``part-imag`` (GE) are accepted in both forms too (a run with both pairs uses
magnitude and phase).  The B0 direction comes from the scanner-based transform of the header
(:func:`qsmprep.qsm.geometry.scanner_affine`: the sform when its code is scanner, else the qform).
Nothing here writes anywhere: the input dataset is never modified.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from qsmprep import messages as msg
from qsmprep.qsm.echoes import PHASE_DEG_LIMIT, PHASE_RAD_LIMIT  # classify_phase_range's limits (rad, degrees)

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
#: Top-level folders pybids is told to skip (with dot folders and :data:`_IGNORE_DATATYPES`).
_IGNORE_TOP = ("code", "derivatives", "sourcedata", "stimuli", "models")

#: Fewest voxels accepted along each spatial axis (a single slice, a 2-D image or a thin slab is
#: refused before the graph).  Where the brain fills a slab, the default chain erodes each side:
#: the brain mask by max(2 mm, voxel) and iSMV by its radius, 2 voxels along the coarsest axis,
#: so at 1 mm (the usual QSM resolution) 2 * (2 + 2) + 1 = 9 slices are the fewest that leave a
#: voxel to invert (measured with the test phantom: 9 run, 8 fail in background removal; at 4 mm
#: 7 run).  Finer voxels need more, and there background removal refuses with its own message.
MIN_AXIS_VOXELS = 9

#: Sidecar ``Units`` values read as degrees / radians (lower case).
DEGREE_UNITS = ("deg", "degree", "degrees")
RADIAN_UNITS = ("rad", "radian", "radians")
#: Complex parts qsmprep reads, as (first, second) part entity: magnitude/phase or real/imaginary.
PART_PAIRS = {"mag-phase": ("mag", "phase"), "real-imag": ("real", "imag")}

# Messages of the checks added for issue #14 (one sentence each; candidates for qsmprep.messages).
PHASE_UNITS_CONFLICT = (
    "The phase of {path} ranges from {lo:.4g} to {hi:.4g} but its sidecar says Units {declared!r}; "
    "correct the sidecar's Units (rad, deg) or the image so that they agree."
)
NO_SCANNER_TRANSFORM = (
    "{path} has {why}, so the direction of B0 in the image is unknown; write the scanner "
    "transform into the header (qform_code or sform_code 1, as dcm2niix does) and rerun."
)
MISSING_PART = (
    "No part-{want} image matches {path}; add {expected} (same entities, part-{want}) or remove the part-{have} image."
)
PART_NO_SIGNAL = (
    "{path} holds no signal (every voxel{where} is {value:g}); check that it is the {part} part of this run "
    "and re-export it from the scanner data."
)
#: A gzip stream cannot be more than 1032 times smaller than its data (DEFLATE's best case:
#: a 258-byte match coded in 2 bits), so a ``.nii.gz`` declaring more cannot hold its image.
MAX_DEFLATE_RATIO = 1032


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
        ``"rad"`` (within [-pi, pi] + 1 %, or [0, 2pi)), ``"scanner"`` (integer scanner units)
        or ``"deg"``: converted by :func:`qsmprep.qsm.echoes.scale_phase_to_radians` in the
        graph.  ``"rad"`` for ``real-imag`` runs (the phase is computed from the parts).
    parts : str
        ``"mag-phase"``, or ``"real-imag"`` for complex data stored as real and imaginary
        parts (GE): then ``magnitude`` holds the ``part-real`` files and ``phase`` the
        ``part-imag`` files, and the graph computes magnitude and phase from them.
    b0_affine : tuple of tuple of float
        The scanner-based 4x4 transform the B0 direction is read from (the sform, or the qform
        when the sform is not scanner-based); ``b0_source`` says which.
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
    parts: str = "mag-phase"
    b0_affine: tuple | None = None
    b0_source: str = "sform"
    reordered: bool = False
    """True when the echo files' ``echo-`` indices do not follow their echo times (they are read in TE order)."""
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
        """Unit B0 vector in array axes (from the scanner-based transform; never assumed along z)."""
        from qsmprep.qsm.geometry import b0_direction_from_affine

        return b0_direction_from_affine(np.asarray(self.b0_affine if self.b0_affine is not None else self.affine))

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
        if self.parts != "mag-phase":
            files += f", {self.parts} parts"
        return (
            f"{self.prefix} ({self.suffix}, {files})\n"
            f"    echoes: {self.n_echoes}  TE (ms): {te_ms}\n"
            f"    B0: {self.b0_t:g} T  direction (array axes): ({b0})  obliquity: {self.obliquity_deg:.1f} deg"
            + (f"  (from the {self.b0_source}: the sform is not scanner-based)" if self.b0_source == "qform" else "") + "\n"
            f"    grid: {sh} voxels of {vs} mm  phase units: {self.phase_units}"
            + ("\n    echo files ordered by EchoTime, not by their echo- index" if self.reordered else "")
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


# --------------------------------------------------------------------------- dataset files


def _indexed_files(bids_dir: Path, extensions=(".json", ".tsv")):
    """Files under ``bids_dir`` that pybids would index (same ignore rules as :func:`load_layout`).

    Yields paths in a stable order.  Paths are matched the way pybids matches them: ``"/"`` plus
    the path relative to the root (folders with a trailing ``"/"``).
    """
    bids_dir = Path(bids_dir)
    for root, dirs, names in os.walk(bids_dir):
        rel_root = Path(root).relative_to(bids_dir).as_posix()
        rel_root = "" if rel_root == "." else rel_root + "/"

        def _ignored(rel: str) -> bool:
            if "/." in "/" + rel:
                return True
            if any(("/" + rel).startswith(f"/{top}") for top in _IGNORE_TOP):
                return True
            return bool(_IGNORE_DATATYPES.search("/" + rel))

        dirs[:] = sorted(d for d in dirs if not _ignored(rel_root + d + "/"))
        for name in sorted(names):
            if name.endswith(extensions) and not _ignored(rel_root + name):
                yield Path(root) / name


def _check_json(path: Path) -> None:
    import json

    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(msg.JSON_INVALID.format(path=path, why="it is not UTF-8 text")) from None
    except OSError as exc:
        raise InputError(msg.JSON_INVALID.format(path=path, why=f"it cannot be read: {exc.strerror or exc}")) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        why = "the file is empty" if not text.strip() else f"{exc.msg} at line {exc.lineno} column {exc.colno}"
        raise InputError(msg.JSON_INVALID.format(path=path, why=why)) from None
    if not isinstance(value, dict):
        raise InputError(msg.JSON_INVALID.format(path=path, why=f"it holds a {type(value).__name__}, not an object"))


def _check_tsv(path: Path, participants: bool = False) -> None:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(msg.TSV_INVALID.format(path=path, why=f"it cannot be read: {exc.strerror or exc}")) from None
    try:
        if b"\x00" in raw:
            raise UnicodeDecodeError("utf-8", raw, 0, 1, "NUL byte")
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(msg.TSV_INVALID.format(path=path, why="it is binary, not UTF-8 text")) from None
    lines = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise InputError(msg.TSV_INVALID.format(path=path, why="the file is empty, without even a header row"))
    header = lines[0][1].split("\t")
    for lineno, line in lines[1:]:
        n = len(line.split("\t"))
        if n != len(header):
            why = f"line {lineno} has {n} column(s) but the header has {len(header)}"
            raise InputError(msg.TSV_INVALID.format(path=path, why=why))
    if participants and "participant_id" not in [h.strip() for h in header]:
        shown = ", ".join(h.strip() for h in header[:6]) + (", ..." if len(header) > 6 else "")
        raise InputError(msg.PARTICIPANTS_NO_ID.format(path=path, header=shown))


def check_dataset_files(bids_dir) -> None:
    """Parse every JSON and TSV file that pybids would index; raise :class:`InputError` on the first bad one.

    pybids reads the JSON sidecars of every indexed image (of every subject, whatever
    ``--participant-label`` says) and fails with a long traceback on one that does not
    parse, so this runs first and names the file.  Checked: each ``.json`` is UTF-8 text
    holding one JSON object; each ``.tsv`` (``participants.tsv``, ``*_sessions.tsv``,
    ``*_scans.tsv``, ...) is non-empty UTF-8 text whose rows have as many tab-separated
    columns as its header row (blank lines are skipped); ``participants.tsv`` at the root
    has a ``participant_id`` column.  The folders pybids skips (``code``, ``derivatives``,
    ``sourcedata``, ``stimuli``, ``models``, dot folders, non-anatomical datatypes) are not
    read.  Reads only these small text files; writes nothing.
    """
    bids_dir = Path(bids_dir)
    for path in _indexed_files(bids_dir):
        if path.name.endswith(".json"):
            _check_json(path)
        else:
            _check_tsv(path, participants=path.parent == bids_dir and path.name == "participants.tsv")


# --------------------------------------------------------------------------- discovery


def _sidecar(path: Path) -> Path:
    name = path.name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return path.with_name(name[: -len(ext)] + ".json")
    return path.with_suffix(".json")


def _swap_part(path: Path, part: str) -> Path:
    return path.with_name(re.sub(r"_part-(mag|phase|real|imag)_", f"_part-{part}_", path.name))


def load_layout(bids_dir):
    """Index ``bids_dir`` with pybids (anat only, no validation, in memory; nothing is written)."""
    from bids import BIDSLayout
    from bids.layout import BIDSLayoutIndexer

    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(msg.BIDS_DIR_MISSING.format(path=bids_dir))
    if not (bids_dir / "dataset_description.json").exists():
        raise InputError(msg.BIDS_NO_DESCRIPTION.format(path=bids_dir))
    check_dataset_files(bids_dir)
    ignore = [*_IGNORE_TOP, re.compile(r"/\."), _IGNORE_DATATYPES]
    indexer = BIDSLayoutIndexer(validate=False, ignore=ignore)
    return BIDSLayout(str(bids_dir), validate=False, indexer=indexer)


def _strip(labels, prefix):
    if not labels:
        return None
    return [str(lab)[len(prefix):] if str(lab).startswith(prefix) else str(lab) for lab in labels]


def _defining_sidecar(path: Path, key: str) -> Path:
    """The JSON sidecar that gives ``key`` to ``path`` under BIDS inheritance (for error messages).

    Looks from ``path``'s folder up to the dataset root (the first folder with a
    ``dataset_description.json``) for ``*.json`` files with the same suffix whose entities are a
    subset of ``path``'s, most specific first, and returns the first that holds ``key``;
    ``path``'s own sidecar when none does.
    """
    import json

    def _parts(name: str):
        stem = name.split(".")[0].split("_")
        return stem[-1], {p for p in stem[:-1] if "-" in p}

    suffix, ents = _parts(path.name)
    folder = path.parent
    while True:
        candidates = []
        for cand in folder.glob(f"*{suffix}.json"):
            c_suffix, c_ents = _parts(cand.name)
            if c_suffix == suffix and c_ents <= ents:
                candidates.append((len(c_ents), cand))
        for _, cand in sorted(candidates, key=lambda c: (-c[0], c[1].name)):
            try:
                if key in json.loads(cand.read_text(encoding="utf-8")):
                    return cand
            except (OSError, ValueError, TypeError):
                continue
        if (folder / "dataset_description.json").exists() or folder.parent == folder:
            return _sidecar(path)
        folder = folder.parent


def _get_float(meta, key, unit, path, *, allow_list=False):
    value = meta.get(key)
    if value is None:
        raise InputError(msg.MISSING_METADATA.format(key=key, unit=unit, path=path, sidecar=_sidecar(path)))

    def _bad(why):  # names the sidecar that sets the value (looked up only on error)
        return InputError(
            msg.BAD_METADATA.format(key=key, value=value, path=path, why=why, sidecar=_defining_sidecar(path, key))
        )

    values = value if (allow_list and isinstance(value, (list, tuple))) else [value]
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError):
        raise _bad(f"expected a number in {unit}") from None
    if any(not np.isfinite(v) or v <= 0 for v in out):
        raise _bad(f"must be a positive number in {unit}")
    if key == "EchoTime" and any(v > 1.0 for v in out):
        raise _bad("BIDS echo times are in seconds, not ms")
    if key == "MagneticFieldStrength":
        from qsmprep.qsm.constants import check_field_strength

        for v in out:
            why = check_field_strength(v)
            if why:
                raise _bad(f"{v:g} {why}")
    return out if (allow_list and isinstance(value, (list, tuple))) else out[0]


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def _gzip_holds(path: Path, need: int) -> tuple[int, str | None]:
    """Decompress ``path`` in 1 MB chunks until ``need`` bytes: (bytes found, error or None)."""
    import gzip
    import zlib

    n = 0
    try:
        with gzip.open(str(path), "rb") as fh:
            while n < need:
                chunk = fh.read(min(1 << 20, need - n))
                if not chunk:
                    break
                n += len(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        return n, str(exc) or type(exc).__name__
    return n, None


def check_declared_size(path, img) -> None:
    """Refuse a NIfTI whose header declares more data than the file can hold, before reading it.

    ``declared = vox_offset + prod(shape) * bytes per voxel``.  ``.nii``: the file must be at
    least that long.  ``.nii.gz``: (1) DEFLATE cannot compress better than
    :data:`MAX_DEFLATE_RATIO` : 1, so ``declared`` must not exceed that times the file size
    (this alone refuses a 28 kB file declaring 1000 x 1000 x 500 voxels at once); (2) the gzip
    trailer's ISIZE (uncompressed size modulo 2**32 of the last member) must agree: at least
    ``declared`` when that is below 4 GiB, else equal to it modulo 2**32.  Only when (2) disagrees
    (a truncated file, or a legitimate multi-member gzip) is the stream decompressed, in 1 MB
    chunks and without keeping the data, to count what it really holds.  Raises :class:`InputError`.
    """
    path = Path(path)
    hdr = img.header
    shape = tuple(int(n) for n in img.shape)
    itemsize = int(hdr.get_data_dtype().itemsize)
    n_vox = 1
    for n in shape:
        n_vox *= n
    declared = int(hdr.get_data_offset()) + n_vox * itemsize
    size = path.stat().st_size
    holds = None
    if path.name.endswith(".gz"):
        if declared > MAX_DEFLATE_RATIO * size:
            holds = f"a {_fmt_bytes(size)} gzip stream, which decompresses to at most {_fmt_bytes(MAX_DEFLATE_RATIO * size)}"
        else:
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                isize = int.from_bytes(fh.read(4), "little")
            consistent = isize >= declared if declared < 2**32 else isize == declared % 2**32
            if not consistent:
                found, error = _gzip_holds(path, declared)
                if found < declared:
                    holds = f"only {_fmt_bytes(found)} once decompressed" + (f" ({error})" if error else "")
    elif size < declared:
        holds = f"only {_fmt_bytes(size)}"
    if holds is not None:
        raise InputError(
            msg.IMAGE_SIZE_MISMATCH.format(
                path=path, shape=" x ".join(str(n) for n in shape), dtype=hdr.get_data_dtype(),
                declared=f"{_fmt_bytes(declared)} with the header", holds=holds,
            )
        )


def check_header(path, img) -> tuple[tuple, np.ndarray]:
    """Check what the header of ``img`` declares, before any voxel is read.

    Refuses (:class:`InputError`): a zero-length axis; anything but a 3-D image or a 4-D echo
    stack (a trailing axis of length 1 is dropped); fewer than :data:`MIN_AXIS_VOXELS` voxels
    along a spatial axis; a non-finite or singular affine (a zero voxel size or collinear axes,
    which leave the voxel size and the B0 direction undefined) or a sheared one (two voxel axes more than
    :data:`MAX_SHEAR_DEG` from perpendicular); a declared size the file cannot
    hold (:func:`check_declared_size`).  Returns ``(shape3, affine)``.
    """
    shape = tuple(int(n) for n in img.shape)
    if any(n == 0 for n in shape):
        raise InputError(msg.IMAGE_EMPTY_AXIS.format(path=path, shape=shape))
    ndim = 3 if len(shape) == 4 and shape[3] == 1 else len(shape)
    if ndim not in (3, 4):
        raise InputError(msg.NOT_3D.format(path=path, ndim=ndim))
    for axis, n in enumerate(shape[:3]):
        if n < MIN_AXIS_VOXELS:
            raise InputError(
                msg.AXIS_TOO_SHORT.format(path=path, n=n, axis=axis, shape=shape, minimum=MIN_AXIS_VOXELS)
            )
    affine = np.asarray(img.affine, dtype=float)
    why = None
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        why = "it holds NaN or infinite values"
    else:
        edges = np.linalg.norm(affine[:3, :3], axis=0)
        if np.any(edges < 1e-6):
            why = f"voxel size {tuple(round(float(e), 6) for e in edges)} mm has a zero"
        elif abs(np.linalg.det(affine[:3, :3])) < 1e-6 * float(np.prod(edges)):
            why = "its voxel axes are collinear, determinant 0"
        else:
            axes = affine[:3, :3] / edges
            for i, j in ((0, 1), (0, 2), (1, 2)):
                angle = float(np.degrees(np.arccos(np.clip(axes[:, i] @ axes[:, j], -1.0, 1.0))))
                if abs(angle - 90.0) > MAX_SHEAR_DEG:
                    why = f"its voxel axes {i} and {j} meet at {angle:.1f} degrees, a sheared grid"
                    break
    if why:
        raise InputError(msg.BAD_AFFINE.format(path=path, why=why))
    check_declared_size(path, img)
    return shape[:3], affine


def _check_image(path: Path, reference: tuple | None):
    """Load ``path``; check the header (before reading data), finiteness and grid.

    Returns ``(img, data, (shape3, affine))``.
    """
    import nibabel as nb

    try:
        img = nb.load(str(path))
    except Exception as exc:  # nibabel raises many types
        why = str(exc).rstrip(".") or type(exc).__name__
        raise InputError(msg.UNREADABLE_IMAGE.format(path=path, why=why)) from None
    grid = check_header(path, img)
    if reference is not None:
        ref_path, (ref_shape, ref_affine) = reference
        if grid[0] != ref_shape:
            raise InputError(
                msg.GRID_MISMATCH.format(path=path, what=f"shape {grid[0]} vs {ref_shape}", reference=ref_path)
            )
        if not np.allclose(grid[1], ref_affine, atol=_AFFINE_ATOL_MM):
            raise InputError(msg.GRID_MISMATCH.format(path=path, what="affine differs", reference=ref_path))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types (and MemoryError has no message)
        why = str(exc).rstrip(".") or type(exc).__name__
        raise InputError(msg.UNREADABLE_IMAGE.format(path=path, why=why)) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if np.issubdtype(data.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(data)))
        if n_bad:
            raise InputError(msg.NAN_VALUES.format(path=path, n=n_bad))
    return img, data, grid


def _volume_ranges(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-volume (min, max) of a 3-D image or 4-D stack, as float64 arrays (no copy of the data)."""
    axes = (0, 1, 2)
    lo = np.atleast_1d(np.min(data, axis=axes)).astype(np.float64)
    hi = np.atleast_1d(np.max(data, axis=axes)).astype(np.float64)
    return lo, hi


def _check_not_constant(path: Path, data: np.ndarray, template: str) -> tuple[np.ndarray, np.ndarray]:
    """Refuse an image (or a volume of a 4-D stack) whose voxels all hold one value; return its ranges."""
    lo, hi = _volume_ranges(data)
    for k in range(lo.size):
        if lo[k] == hi[k]:
            where = f" of volume {k + 1}" if data.ndim == 4 else ""
            raise InputError(template.format(path=path, where=where, value=lo[k]))
    return lo, hi


def _is_integer_valued(data: np.ndarray) -> bool:
    """True for integer data, or float data whose values (a strided sample, as float32) are whole."""
    if np.issubdtype(data.dtype, np.integer):
        return True
    flat = data.reshape(-1, order="A") if data.flags.c_contiguous or data.flags.f_contiguous else data.ravel()
    sample = flat[:: max(1, flat.size // 200_000)].astype(np.float32).astype(np.float64)
    return bool(np.all(np.abs(sample - np.round(sample)) < 1e-3))


def phase_units(lo: float, hi: float, integer_valued: bool, declared: str | None = None) -> str:
    """Units of a run's phase from the range of all its echoes (and the sidecar's ``Units``), else why not.

    Returns ``"rad"``, ``"scanner"`` or ``"deg"``, the units the graph converts
    (:func:`qsmprep.qsm.echoes.scale_phase_to_radians` with this ``units``), or the reason to
    refuse the run: ``"unknown"``, ``"conflict"``, ``"partial_turn"`` (integer codes covering only part of
    a scanner turn) or ``"over_pi"`` (phase divided by pi: values filling [-1, 1]; a sidecar's ``rad``
    wins unless both ends lie within 1e-3 of +-1).

    Without a ``declared`` unit, or with one that names neither radians nor degrees (e.g. BIDS's
    ``"arbitrary"``), the range decides: :func:`qsmprep.qsm.echoes.classify_phase_range` (rad:
    within +-pi + 1 % or [0, 2pi); scanner: integer codes spanning a turn; deg: within +-181.8
    reaching beyond +-160, or non-integer 0..360; anything else ``"unknown"``: unwrapped or
    rescaled phase).  A wrapped phase covers (nearly) a whole turn, which makes these ranges tell
    the units apart; what they cannot tell is refused.

    ``declared`` (the sidecar's ``Units``, case-insensitive): ``deg``/``degree``/``degrees`` makes
    any range within +-181.8 (or 0..363.6) degrees, except one that also fits radians (within
    +-pi + 1 %), which is a ``"conflict"``; ``rad``/``radian(s)`` with a range that looks like
    degrees is a ``"conflict"`` too (integer scanner codes are accepted whatever the sidecar says:
    the codes cannot be radians).
    """
    from qsmprep.qsm.echoes import classify_phase_range

    kind = classify_phase_range(lo, hi, integer_valued)
    unit = str(declared).strip().lower() if declared is not None else ""
    if kind == "over_pi":  # phase over pi; a sidecar's rad wins unless both ends are within 1e-3 of +-1
        return "rad" if unit in RADIAN_UNITS and not (lo <= -0.999 and hi >= 0.999) else kind
    if unit in DEGREE_UNITS:
        m = max(abs(lo), abs(hi))
        if m <= PHASE_RAD_LIMIT:
            return "conflict"
        if m <= PHASE_DEG_LIMIT or (lo >= -0.01 * 360.0 and hi <= 2 * PHASE_DEG_LIMIT):
            return "deg"
        return "conflict"
    if unit in RADIAN_UNITS and kind == "deg":
        return "conflict"
    return kind


_PHASE_UNITS_MESSAGES = {"unknown": msg.PHASE_UNITS_UNKNOWN, "conflict": PHASE_UNITS_CONFLICT,
                         "over_pi": msg.PHASE_OVER_PI, "partial_turn": msg.PHASE_PARTIAL_TURN}

#: Largest |correlation| between a magnitude and its phase (bright voxels) before the phase is taken for a
#: copy of a magnitude image: genuine phase scores -0.16..0.21 on the bundled examples and the robustness
#: matrix's heads (both simulators), a copied magnitude 1.
PHASE_MAGNITUDE_MAX_CORRELATION = 0.9
#: Two sidecars agree on an echo time within this (s) or 0.01 %, on a field strength within 5 % (a Siemens
#: "3 T" scanner reports 2.89 T).
ECHO_TIME_ATOL_S, FIELD_STRENGTH_RTOL = 1e-6, 0.05
#: Largest deviation (degrees) of the angle between two voxel axes from 90 degrees: scanner grids are
#: orthogonal; a sheared one leaves the voxel size and the B0 direction ill-defined.
MAX_SHEAR_DEG = 0.5


def magnitude_phase_correlation(magnitude: np.ndarray, phase: np.ndarray) -> float:
    """Pearson correlation of ``phase`` with ``magnitude`` over the bright voxels (magnitude above 0.2 of its
    99th percentile; a strided sample of about 200 000 voxels per volume), NaN when fewer than 100 are bright.
    A wrapped phase does not follow the magnitude (about 0); a magnitude image stored as the phase does (1)."""
    # the same strided view of both (no copy of the whole images, whatever their memory layout)
    step = max(1, int(round((np.prod(np.shape(magnitude)[:3]) / 200_000) ** (1.0 / 3.0))))
    view = (slice(None, None, step),) * 3
    mag = np.asarray(magnitude[view], dtype=np.float64).reshape(-1)
    pha = np.asarray(phase[view], dtype=np.float64).reshape(-1)
    bright = mag > 0.2 * np.percentile(mag, 99)
    if bright.sum() < 100 or np.ptp(pha[bright]) == 0 or np.ptp(mag[bright]) == 0:
        return float("nan")
    return float(np.corrcoef(mag[bright], pha[bright])[0, 1])


def _same_echo_times(a, b) -> bool:
    a, b = np.atleast_1d(np.asarray(a, float)), np.atleast_1d(np.asarray(b, float))
    return a.shape == b.shape and bool(np.all(np.abs(a - b) <= np.maximum(ECHO_TIME_ATOL_S, 1e-4 * np.abs(a))))


def b0_transform(path, img) -> tuple[np.ndarray, str]:
    """``(scanner-based 4x4 transform, "sform" or "qform")`` of a NIfTI image; :class:`InputError` if none.

    :func:`qsmprep.qsm.geometry.scanner_affine` on the header's coded sform and qform: a sform
    aligned to a template (code 2-5) is passed over for a scanner qform; neither code set refuses.
    """
    from qsmprep.qsm.geometry import scanner_affine

    hdr = img.header
    try:
        sform, scode = hdr.get_sform(coded=True)
        qform, qcode = hdr.get_qform(coded=True)
    except AttributeError:  # not a NIfTI header (e.g. Analyze): no codes
        sform, scode, qform, qcode = None, 0, None, 0
    try:
        return scanner_affine(sform, int(scode or 0), qform, int(qcode or 0))
    except ValueError as exc:
        raise InputError(NO_SCANNER_TRANSFORM.format(path=path, why=str(exc))) from None


def _build_run(layout, key, files) -> QsmRun:
    """Pair the two parts (magnitude and phase, or real and imaginary) of one run, read metadata and check the images."""
    entities, suffix = dict(key[0]), key[1]
    present = {f.entities.get("part") for f in files}
    parts = "mag-phase" if present & {"mag", "phase"} else "real-imag"
    first, second = PART_PAIRS[parts]
    mags = {f.entities.get("echo"): Path(f.path) for f in files if f.entities.get("part") == first}
    phases = {f.entities.get("echo"): Path(f.path) for f in files if f.entities.get("part") == second}
    for echo, path in sorted(mags.items(), key=lambda kv: str(kv[0])):
        if echo not in phases:
            expected = _swap_part(path, second).name
            raise InputError(msg.MISSING_PHASE.format(path=path, expected=expected) if parts == "mag-phase"
                             else MISSING_PART.format(path=path, want=second, have=first, expected=expected))
    for echo, path in sorted(phases.items(), key=lambda kv: str(kv[0])):
        if echo not in mags:
            expected = _swap_part(path, first).name
            raise InputError(msg.MISSING_MAGNITUDE.format(path=path, expected=expected) if parts == "mag-phase"
                             else MISSING_PART.format(path=path, want=first, have=second, expected=expected))
    declared_units = None
    b0_affine = None

    echoes = []  # (te, mag, phase)
    b0 = None
    reference = None
    phase_lo, phase_hi, phase_int, phase_extreme = np.inf, -np.inf, True, (0.0, None)
    stack = None
    for echo in sorted(mags, key=lambda e: (e is None, int(e) if e is not None else 0)):
        mag, pha = mags[echo], phases[echo]
        meta = layout.get_metadata(str(mag))
        meta_ph = layout.get_metadata(str(pha))
        te_meta, te_path = (meta, mag) if "EchoTime" in meta else (meta_ph, pha) if "EchoTime" in meta_ph else (meta, mag)
        te = _get_float(te_meta, "EchoTime", "s", te_path, allow_list=True)
        b0_meta, b0_path = (meta, mag) if "MagneticFieldStrength" in meta else (meta_ph, pha) if "MagneticFieldStrength" in meta_ph else (meta, mag)
        b0_here = _get_float(b0_meta, "MagneticFieldStrength", "T", b0_path)
        b0_seen = [(b0_here, b0_path)]
        if "MagneticFieldStrength" in meta and "MagneticFieldStrength" in meta_ph:
            b0_seen.append((_get_float(meta_ph, "MagneticFieldStrength", "T", pha), pha))
        if b0 is None:
            b0, b0_first = b0_here, b0_path
        for value, where in b0_seen:
            if abs(value - b0) > FIELD_STRENGTH_RTOL * b0:
                raise InputError(msg.FIELD_STRENGTH_CONFLICT.format(
                    path=where, b0=value, reference=b0_first, b0_ref=b0,
                    sidecar=_defining_sidecar(where, "MagneticFieldStrength"),
                    sidecar_ref=_defining_sidecar(b0_first, "MagneticFieldStrength")))
        mag_img, mag_data, grid = _check_image(mag, reference)
        if reference is None:
            reference = (mag, grid)
            b0_affine = b0_transform(mag, mag_img)
        if declared_units is None and meta_ph.get("Units") is not None:
            declared_units = str(meta_ph.get("Units"))
        _, pha_data, _ = _check_image(pha, reference)
        if mag_data.ndim != pha_data.ndim:
            raise InputError(msg.PART_LAYOUT_MISMATCH.format(path=pha, ndim=pha_data.ndim, shape=pha_data.shape,
                                                             reference=mag, ref_ndim=mag_data.ndim))
        if mag_data.shape != pha_data.shape:
            raise InputError(
                msg.GRID_MISMATCH.format(path=pha, what=f"shape {pha_data.shape} vs {mag_data.shape}", reference=mag)
            )
        if parts == "mag-phase":
            _check_not_constant(mag, mag_data, msg.MAG_NO_SIGNAL)
            lo, hi = _check_not_constant(pha, pha_data, msg.PHASE_CONSTANT)
            r = magnitude_phase_correlation(mag_data, pha_data)
            if abs(r) > PHASE_MAGNITUDE_MAX_CORRELATION:
                raise InputError(msg.PHASE_LOOKS_LIKE_MAGNITUDE.format(path=pha, reference=mag, r=r))
        else:
            _check_not_constant(mag, mag_data, PART_NO_SIGNAL.replace("{part}", "real"))
            lo, hi = _check_not_constant(pha, pha_data, PART_NO_SIGNAL.replace("{part}", "imaginary"))
        phase_lo, phase_hi = min(phase_lo, float(lo.min())), max(phase_hi, float(hi.max()))
        phase_int = phase_int and _is_integer_valued(pha_data)
        m = max(abs(float(lo.min())), abs(float(hi.max())))
        if m > phase_extreme[0]:
            phase_extreme = (m, pha)
        n_vol = mag_data.shape[3] if mag_data.ndim == 4 else 1
        tes = te if isinstance(te, list) else [te]
        if n_vol > 1 or isinstance(te, list):
            if len(mags) > 1:
                raise InputError(msg.NOT_3D.format(path=mag, ndim=mag_data.ndim))
            if len(tes) != n_vol:
                raise InputError(msg.ECHO_COUNT_MISMATCH.format(path=mag, n_vol=n_vol, n_te=len(tes)))
            stack = (mag, pha)
        if "EchoTime" in meta and "EchoTime" in meta_ph:
            te_ph = _get_float(meta_ph, "EchoTime", "s", pha, allow_list=True)
            if not _same_echo_times(te, te_ph):
                raise InputError(msg.ECHO_TIME_CONFLICT.format(
                    mag=mag, phase=pha, te_mag=te, te_phase=te_ph, sidecar_mag=_defining_sidecar(mag, "EchoTime"),
                    sidecar_phase=_defining_sidecar(pha, "EchoTime")))
        echoes.extend((t, mag, pha) for t in tes)
        del mag_data, pha_data

    tes = [e[0] for e in echoes]
    if len(set(tes)) != len(tes):
        dup = next(t for t in tes if tes.count(t) > 1)
        raise InputError(msg.DUPLICATE_ECHO_TIME.format(path=echoes[0][1], te=dup))
    reordered = False
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
        reordered = [e[0] for e in echoes] != sorted(e[0] for e in echoes)
        echoes.sort(key=lambda e: e[0])
        magnitude, phase = tuple(e[1] for e in echoes), tuple(e[2] for e in echoes)
        tes = [e[0] for e in echoes]

    units = phase_units(phase_lo, phase_hi, phase_int, declared_units) if parts == "mag-phase" else "rad"
    if units not in ("rad", "scanner", "deg"):
        raise InputError(_PHASE_UNITS_MESSAGES[units].format(path=phase_extreme[1], lo=phase_lo, hi=phase_hi,
                                                             declared=declared_units))

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
        phase_units=units,
        parts=parts,
        b0_affine=tuple(tuple(float(v) for v in row) for row in b0_affine[0]),
        b0_source=b0_affine[1],
        reordered=reordered,
    )


#: Queries of a ``--bids-filter-file`` (fMRIPrep's format: query name -> pybids entity filters).
FILTER_QUERIES = {"megre": "MEGRE", "t2starw": "T2starw", "t1w": "T1w"}


def _matches(entities: dict, filters: dict | None) -> bool:
    """Whether a file's pybids ``entities`` pass ``filters`` (entity -> value, list of values, or None = absent)."""
    for key, want in (filters or {}).items():
        have = entities.get(key)
        if want is None:
            if have is not None:
                return False
            continue
        wants = want if isinstance(want, (list, tuple)) else [want]
        if have is None or str(have) not in {str(w) for w in wants}:
            return False
    return True


def check_filters(bids_filters: dict | None) -> dict:
    """The ``--bids-filter-file`` queries, checked: unknown query names raise :class:`InputError`."""
    filters = dict(bids_filters or {})
    unknown = sorted(set(filters) - set(FILTER_QUERIES))
    if unknown:
        raise InputError(f"The BIDS filter file names the unknown quer{'ies' if len(unknown) > 1 else 'y'} "
                         f"{', '.join(unknown)}; use {', '.join(FILTER_QUERIES)} in --bids-filter-file.")
    return filters


def collect_runs(bids_dir, participant_label=None, session_label=None, layout=None, bids_filters=None) -> list[QsmRun]:
    """Find and check every GRE run to process.

    Parameters
    ----------
    bids_dir : path
        Root of the BIDS dataset (read only).
    participant_label, session_label : list of str, optional
        Labels with or without the ``sub-``/``ses-`` prefix; default all.
    layout : bids.BIDSLayout, optional
        A layout already built by :func:`load_layout`.
    bids_filters : dict, optional
        ``--bids-filter-file`` queries (``megre``, ``t2starw``, ``t1w``): pybids entity filters that
        the files of that suffix must pass, e.g. ``{"megre": {"acquisition": "fast"}}``.

    Returns
    -------
    list of QsmRun, sorted by subject, session, acquisition, run.

    Raises
    ------
    InputError
        One sentence naming the file and the fix, for the first problem found.
    """
    bids_dir = Path(bids_dir)
    filters = check_filters(bids_filters)
    layout = layout or load_layout(bids_dir)
    participant_label = _strip(participant_label, "sub-")
    session_label = _strip(session_label, "ses-")

    all_files = layout.get(
        suffix=list(SUFFIXES), part=["mag", "phase", "real", "imag"], extension=[".nii", ".nii.gz"], datatype="anat",
    )
    by_suffix = {v: filters.get(k) for k, v in FILTER_QUERIES.items()}
    all_files = [f for f in all_files if _matches(f.entities, by_suffix.get(f.entities.get("suffix")))]
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
    return [replace(r, t1w=find_t1w(layout, r.subject, r.entities.get("session"), filters.get("t1w"))) for r in runs]


def find_t1w(layout, subject: str, session: str | None = None, filters: dict | None = None) -> Path | None:
    """The first ``T1w`` image of ``subject`` in ``session`` (or without sessions) passing ``filters``, if any."""
    query = dict(subject=subject, suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"])
    from bids.layout import Query

    query["session"] = session if session else Query.NONE
    found = sorted(f.path for f in layout.get(**query) if _matches(f.entities, filters))
    return Path(found[0]) if found else None
