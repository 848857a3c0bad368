"""Run the official BIDS validator (``bids-validator-deno``) offline and read its verdict.

    from qsmprep.bids_validator import validate
    result = validate("/data/ds")           # ValidationResult
    if not result.ok:
        raise SystemExit(result.summary())  # one paragraph, close to the validator's own summary
    for line in result.lines("warning"):    # one line per kind of warning, for the log
        log.warning(line)

The validator is the JavaScript bundle of the ``bids-validator-deno`` wheel, run by the ``deno``
wheel it depends on; both are installed with qsmprep, so nothing is downloaded (the schema is in
the bundle).  It is run as a subprocess with ``--format json --outfile <tmp>``; exit status 0
means no errors, 16 means errors were found, anything else is a crash (:class:`ValidatorError`).

What the validator looks at (3.0.x): every file of the dataset except dotfiles, ``.bidsignore``
matches, and, for file-level checks, the top-level ``sourcedata/``, ``code/`` and ``derivatives/``
folders (derivatives are validated only with ``recursive=True``).  Those folders are still
*listed* when the file tree is read; ``prune=True`` skips them (and ``stimuli/``, ``log/``,
``doc/``) at read time, which saves time when they hold many files, but then references into them
(``stim_file`` -> ``stimuli/``) cannot be checked.

Only ``subprocess``, ``json`` and the standard library are imported, so importing this module
stays cheap (``qsmprep --help``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

EXECUTABLE = "bids-validator-deno"
#: Exit status of the validator when it found errors (0: none).
EXIT_ERRORS = 16
#: Default time limit (s).  The validator reads every file's header once: about 1 s per thousand
#: files on a local disk, far more on a slow network file system.
DEFAULT_TIMEOUT_S = 1800.0

NOT_INSTALLED = (
    "The BIDS validator '{name}' was not found (looked in {where} and on PATH); install it with "
    "'pip install bids-validator-deno' (it is a qsmprep dependency) or skip input validation."
)
TIMED_OUT = (
    "The BIDS validator did not finish within {timeout:g} s on {path}; skip input validation or "
    "run it yourself with '{name} {path}'."
)
CRASHED = (
    "The BIDS validator stopped with exit status {rc} on {path} without a result ({detail}); run "
    "'{name} {path}' to see its full output."
)
NOT_A_FOLDER = "The folder {path} does not exist; give the path to a BIDS dataset folder."


class ValidatorError(RuntimeError):
    """The validator could not give a verdict (not installed, timed out, crashed)."""


class ValidatorNotFound(ValidatorError):
    """``bids-validator-deno`` is not installed."""


@dataclass(frozen=True)
class Issue:
    """One issue as the validator reports it (``--format json``).

    ``location`` is dataset-relative with a leading ``/`` (``/sub-01/anat/...``), or None for
    dataset-level issues; ``files`` is ``location`` plus the files it ``affects``.
    """

    code: str
    severity: str  # "error", "warning" (or "ignore" through a config file)
    sub_code: str | None = None
    location: str | None = None
    message: str | None = None  # the issue's own detail (issueMessage)
    affects: tuple[str, ...] = ()
    rule: str | None = None
    suggestion: str | None = None
    line: int | None = None

    @classmethod
    def from_json(cls, d: dict) -> "Issue":
        aff = d.get("affects") or ()
        if isinstance(aff, str):
            aff = (aff,)
        return cls(code=str(d.get("code")), severity=str(d.get("severity", "error")),
                   sub_code=d.get("subCode") or None, location=d.get("location") or None,
                   message=d.get("issueMessage") or None, affects=tuple(str(a) for a in aff),
                   rule=d.get("rule") or None, suggestion=d.get("suggestion") or None, line=d.get("line"))

    @property
    def kind(self) -> str:
        """``CODE`` or ``CODE SubCode`` (the validator groups its text output by this)."""
        return f"{self.code} {self.sub_code}" if self.sub_code else self.code

    @property
    def files(self) -> tuple[str, ...]:
        out = [self.location] if self.location else []
        return tuple(out + [a for a in self.affects if a not in out])


@dataclass
class ValidationResult:
    """The validator's verdict on one dataset."""

    path: Path
    issues: list[Issue]
    code_messages: dict[str, str] = field(default_factory=dict)
    dataset_summary: dict = field(default_factory=dict)  # the JSON "summary" block
    returncode: int = 0
    command: tuple[str, ...] = ()
    derivatives: dict[str, "ValidationResult"] = field(default_factory=dict)  # recursive=True only

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """No errors here (nor, with ``recursive=True``, in any derivative dataset)."""
        return not self.errors and all(d.ok for d in self.derivatives.values())

    @property
    def codes(self) -> set[str]:
        """Codes of the errors (``{"NOT_INCLUDED", ...}``)."""
        return {i.code for i in self.errors}

    def by_kind(self, severity: str = "error") -> dict[str, list[Issue]]:
        """``{"CODE SubCode": [issues]}`` for one severity, in order of first appearance."""
        out: dict[str, list[Issue]] = {}
        for i in self.issues:
            if i.severity == severity:
                out.setdefault(i.kind, []).append(i)
        return out

    def files(self, severity: str = "error") -> list[str]:
        """Every file named by an issue of ``severity`` (sorted, without duplicates)."""
        return sorted({f for i in self.issues if i.severity == severity for f in i.files})

    def lines(self, severity: str = "error", max_files: int = 3) -> list[str]:
        """One line per kind of issue: ``[ERROR] CODE SubCode: reason (N files: a, b, c, ...)``."""
        out = []
        for kind, issues in self.by_kind(severity).items():
            files = sorted({f for i in issues for f in i.files})
            reason = _first_sentence(self.code_messages.get(issues[0].code, ""))
            shown = ", ".join(files[:max_files]) + (", ..." if len(files) > max_files else "")
            where = f" ({len(files)} file{'s' * (len(files) != 1)}: {shown})" if files else ""
            detail = ""
            if issues[0].message and not files:
                detail = " - " + " ".join(issues[0].message.split())[:200]
            out.append(f"[{severity.upper()}] {kind}: {reason}{detail}{where}")
        return out

    def summary(self, max_kinds: int = 8, max_files: int = 3) -> str:
        """One paragraph: counts, then each kind of error with a few of its files.

        Close to the end of the validator's text output, for an error message; warnings are
        only counted (use :meth:`lines` for them).
        """
        s = self.dataset_summary
        size = f", {s['size'] / 1e6:.1f} MB" if isinstance(s.get("size"), (int, float)) else ""
        nfiles = f"{s['totalFiles']} files{size}, " if "totalFiles" in s else ""
        subs = f"{len(s.get('subjects') or [])} subjects"
        schema = f", schema {s['schemaVersion']}" if s.get("schemaVersion") else ""
        kinds = self.by_kind("error")
        head = (f"The BIDS validator ({EXECUTABLE} {validator_version()}{schema}) found "
                f"{len(self.errors)} error{'s' * (len(self.errors) != 1)} of {len(kinds)} kind"
                f"{'s' * (len(kinds) != 1)} and {len(self.warnings)} warning"
                f"{'s' * (len(self.warnings) != 1)} in {self.path} ({nfiles}{subs})")
        body = self.lines("error", max_files=max_files)
        if len(body) > max_kinds:
            body = body[:max_kinds] + [f"... and {len(body) - max_kinds} more kinds of error"]
        text = head + (": " + "; ".join(b.removeprefix("[ERROR] ") for b in body) if body else "")
        bad = [f"derivatives{k.rstrip('/')}" for k, d in self.derivatives.items() if not d.ok]
        if bad:
            text += f"; derivative datasets with errors: {', '.join(bad)}"
        return text + "."


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    cut = text.find(". ")
    return (text[:cut] if cut > 0 else text).rstrip(".")


# ----------------------------------------------------------------------------- locating it
def find_validator(executable: str | os.PathLike | None = None) -> str:
    """Path of the ``bids-validator-deno`` command: ``executable`` if given, else the one next to
    ``sys.executable`` (the virtual environment's ``bin/``, even when it is not on PATH), else
    PATH.  Raises :class:`ValidatorNotFound` (one sentence) when there is none."""
    if executable is not None:
        found = shutil.which(str(executable))
        if found:
            return found
        raise ValidatorNotFound(NOT_INSTALLED.format(name=executable, where=Path(executable).parent))
    bindir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    for name in (EXECUTABLE, EXECUTABLE + ".exe"):
        cand = bindir / name
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(EXECUTABLE)
    if found:
        return found
    raise ValidatorNotFound(NOT_INSTALLED.format(name=EXECUTABLE, where=bindir))


def validator_version() -> str:
    """Version of the installed ``bids-validator-deno`` package ('unknown' if not found).

    (The bundle's ``--version`` runs ``git describe`` in its install folder, which is wrong
    whenever that folder sits inside another git checkout.)"""
    try:
        from importlib.metadata import version

        return version("bids-validator-deno")
    except Exception:  # noqa: BLE001 - only for messages
        return "unknown"


# ----------------------------------------------------------------------------- running it
def _subject_filters(root: Path, subjects: Iterable[str]) -> list[dict]:
    keep = {s.removeprefix("sub-") for s in subjects}
    others = sorted(p.name for p in root.glob("sub-*") if p.is_dir() and p.name.removeprefix("sub-") not in keep)
    # location globs without a leading "/" are matched gitignore-style by the validator
    return [{"location": f"{name}/**"} for name in others]


def validate(
    path: str | os.PathLike,
    *,
    ignore_warnings: bool = False,
    participant_label: Sequence[str] | None = None,
    ignore: Sequence[dict] = (),
    recursive: bool = False,
    prune: bool = False,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    executable: str | os.PathLike | None = None,
) -> ValidationResult:
    """Validate the BIDS dataset at ``path`` with the official validator.

    Parameters
    ----------
    ignore_warnings
        ``--ignoreWarnings``: warnings are not reported (smaller output on large datasets).
    participant_label
        When given, issues located in *other* subjects' folders are dropped (fMRIPrep does the
        same), so an unrelated subject cannot stop the run; dataset-level issues stay.
    ignore
        Extra issue filters, the validator's config format: ``{"code": ..., "subCode": ...,
        "location": glob}`` (a location without a leading ``/`` is a gitignore-style glob).
    recursive
        ``-r``: also validate each ``derivatives/<name>/`` that has a dataset_description.json;
        their results are in :attr:`ValidationResult.derivatives` and count for ``ok``.  In
        3.0.2 a derivative's own ``.bidsignore`` is not read in this mode (dotfiles below the
        root are pruned) and ``ignore`` filters do not reach it: validate a derivative dataset
        by its own path instead.
    prune
        ``--prune``: do not even list ``sourcedata/``, ``derivatives/``, ``code/``, ``stimuli/``,
        ``log/`` and ``doc/`` (faster with many files there; see the module docstring).
    timeout_s
        Wall-clock limit; None for none.
    executable
        The validator command (default: :func:`find_validator`).

    Raises :class:`ValidatorNotFound` or :class:`ValidatorError` when there is no verdict; a
    dataset with errors is *not* an exception (``result.ok`` is False).
    """
    root = Path(path).absolute()
    if not root.is_dir():
        raise ValidatorError(NOT_A_FOLDER.format(path=root))
    exe = find_validator(executable)
    filters = [dict(f) for f in ignore]
    if participant_label:
        filters += _subject_filters(root, participant_label)
    with tempfile.TemporaryDirectory(prefix="qsmprep-bids-validator-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = _command(exe, root, out, filters, ignore_warnings=ignore_warnings, recursive=recursive, prune=prune)
        proc = _run(cmd, root, exe, timeout_s=timeout_s, cwd=tmp)
        text = out.read_text() if out.is_file() else ""
    result = parse_result(_verdict(proc, text, root), root)
    result.returncode = proc.returncode
    result.command = tuple(cmd)
    return result


def _command(exe: str, root: Path, out: Path, filters: list[dict], *, ignore_warnings: bool, recursive: bool,
             prune: bool) -> list[str]:
    """The validator's command line, writing its JSON to ``out``; ``filters`` go to a config file beside it."""
    cmd = [exe, "--format", "json", "--outfile", str(out), "--no-color"]
    if ignore_warnings:
        cmd.append("--ignoreWarnings")
    if recursive:
        cmd.append("--recursive")
    if prune:
        cmd.append("--prune")
    if filters:
        cfg = out.parent / "config.json"
        cfg.write_text(json.dumps({"ignore": filters}))
        cmd += ["--config", str(cfg)]
    cmd.append(str(root))
    return cmd


def _run(cmd: list[str], root: Path, exe: str, *, timeout_s: float | None, cwd: str) -> subprocess.CompletedProcess:
    """Run the validator (in ``cwd``, a neutral folder: the bundle runs git for its version string)."""
    env = dict(os.environ, NO_COLOR="1", DENO_NO_UPDATE_CHECK="1", DENO_NO_PROMPT="1")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=cwd, env=env,
                              stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ValidatorError(TIMED_OUT.format(timeout=timeout_s, path=root, name=EXECUTABLE)) from exc
    except OSError as exc:  # not executable, broken shebang, ...
        raise ValidatorNotFound(NOT_INSTALLED.format(name=exe, where=Path(exe).parent) + f" ({exc})") from exc


def _verdict(proc: subprocess.CompletedProcess, text: str, root: Path) -> dict:
    """The validator's JSON output; :class:`ValidatorError` when it crashed or wrote none."""
    if proc.returncode not in (0, EXIT_ERRORS) or not text.strip():
        tail = " ".join((proc.stderr or proc.stdout or "no output").split())[-300:]
        raise ValidatorError(CRASHED.format(rc=proc.returncode, path=root, detail=tail, name=EXECUTABLE))
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidatorError(CRASHED.format(rc=proc.returncode, path=root, name=EXECUTABLE,
                                            detail=f"unreadable JSON: {exc}")) from exc


def parse_result(data: dict, path: str | os.PathLike) -> ValidationResult:
    """Build a :class:`ValidationResult` from the validator's ``--format json`` output (3.0.x:
    ``{"issues": {"issues": [...], "codeMessages": {...}}, "summary": {...},
    "derivativesSummary": {"/derivatives/x/": {...same...}}}``)."""
    block = data.get("issues") or {}
    if isinstance(block, list):  # tolerate a flat list
        block = {"issues": block}
    issues = [Issue.from_json(d) for d in block.get("issues") or [] if isinstance(d, dict)]
    messages = {str(k): str(v) for k, v in (block.get("codeMessages") or {}).items()}
    derivs = {}
    for name, sub in (data.get("derivativesSummary") or {}).items():
        derivs[name] = parse_result(sub, Path(path) / name.strip("/"))
    return ValidationResult(path=Path(path), issues=issues, code_messages=messages,
                            dataset_summary=data.get("summary") or {}, derivatives=derivs)
