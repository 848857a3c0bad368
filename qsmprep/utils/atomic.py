"""Atomic, concurrency-safe output writing.

Every file qsmprep puts under ``out_dir`` goes through these helpers: data are
written to a hidden temporary file in the destination folder and then
``os.replace``-d onto the final name, so an interrupted run never leaves a
truncated file under its final name.  ``locked_json_update`` serialises
read-modify-write cycles on shared files such as ``dataset_description.json``
between concurrent participant jobs (POSIX advisory ``fcntl`` lock on a
sidecar ``.lock`` file, which also works on most cluster file systems).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

_EXTS = (".nii.gz", ".tsv.gz", ".json", ".tsv", ".nii", ".html", ".svg", ".png", ".txt", ".toml", ".yml", ".yaml", ".h5", ".mat", ".gz")


def _split_ext(name: str) -> tuple[str, str]:
    for ext in _EXTS:
        if name.endswith(ext):
            return name[: -len(ext)], ext
    stem, ext = os.path.splitext(name)
    return stem, ext


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class LinkInOutputError(OSError):
    """A symbolic link inside the output folder where qsmprep would write (it never writes through one)."""


LINK_IN_OUTPUT = ("{link} is a symbolic link inside the output folder {root}; qsmprep does not write through links "
                  "(they could point outside it): replace it with a real folder or file, or remove it.")


def ensure_no_links(path: str | os.PathLike, root: str | os.PathLike) -> None:
    """Raise :class:`LinkInOutputError` if ``path`` or a folder between ``root`` and it is a symbolic link.

    ``path`` must lie (lexically) inside ``root``; ``root`` itself may be a link (the user chose it).
    """
    root, path = Path(root).absolute(), Path(path).absolute()
    try:
        rel = path.relative_to(root)
    except ValueError:
        raise LinkInOutputError(f"{path} is outside the output folder {root}; qsmprep writes only inside it.") from None
    cur = root
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise LinkInOutputError(LINK_IN_OUTPUT.format(link=cur, root=root))


def find_links(root: str | os.PathLike) -> list[Path]:
    """Every symbolic link under ``root`` (not following them), sorted."""
    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for dirpath, dirnames, filenames in os.walk(root):  # os.walk does not follow links by default
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if p.is_symlink():
                found.append(p)
    return sorted(found)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename on success.

    On an exception the temporary file is removed and ``path`` is left untouched.  With ``root`` (the
    output folder), no folder between it and ``path`` may be a symbolic link (checked before
    writing): :class:`LinkInOutputError`.
    """
    path = Path(path)
    if root is not None:
        ensure_no_links(path, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, ext = _split_ext(path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=path.parent)
    os.close(fd)
    # mkstemp creates the file 0600; give the final file the usual 0666 & ~umask so that
    # derivatives on a shared (cluster) file system stay readable by the group.
    os.chmod(tmp, 0o666 & ~_umask())
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


#: The hidden temporary files of :func:`atomic_path` (``.<stem>.<8 random characters>.tmp<ext>``).
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\.[A-Za-z0-9.]+)?$")


def remove_stale_temporaries(folder: str | os.PathLike, before: float) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` under ``folder`` last modified before ``before``
    (a ``time.time()``): what a killed process (a scheduler's time limit, the out-of-memory killer) left half
    written.  A live writer's file is younger than the run that sweeps, so pass the sweeping run's start time.
    Links are not followed.  Returns the removed paths."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath) / name
            if _TEMPORARY.match(name) and not p.is_symlink():
                with contextlib.suppress(FileNotFoundError):
                    if p.stat().st_mtime < before:
                        p.unlink()
                        removed.append(p)
    return sorted(removed)


def write_text(path: str | os.PathLike, text: str, root: str | os.PathLike | None = None) -> Path:
    """Write ``text`` to ``path`` atomically (``root``: see :func:`atomic_path`)."""
    with atomic_path(path, root) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any, root: str | os.PathLike | None = None) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", root)


def save_nifti(img, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Save a nibabel image to ``path`` atomically (format from the extension)."""
    import nibabel as nb

    with atomic_path(path, root) as tmp:
        nb.save(img, str(tmp))
    return Path(path)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst, root) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock`` for the duration of the block.

    The lock file is opened without following a symbolic link (``O_NOFOLLOW``); with ``root``, no
    folder between it and the lock may be a link either.
    """
    lock = Path(str(path) + ".lock")
    if root is not None:
        ensure_no_links(lock, root)
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        if lock.is_symlink():
            raise LinkInOutputError(LINK_IN_OUTPUT.format(link=lock, root=root or lock.parent)) from None
        raise exc
    with os.fdopen(fd, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked_json_update(path: str | os.PathLike, update: Callable[[dict], dict],
                       root: str | os.PathLike | None = None) -> dict:
    """Read JSON at ``path`` (``{}`` if absent), apply ``update``, write back atomically, under a lock."""
    path = Path(path)
    with file_lock(path, root):
        data = json.loads(path.read_text()) if path.exists() else {}
        data = update(data)
        write_json(path, data, root)
    return data
