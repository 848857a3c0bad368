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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same extension); rename on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
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


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_nifti(img, path: str | os.PathLike) -> Path:
    """Save a nibabel image to ``path`` atomically (format from the extension)."""
    import nibabel as nb

    with atomic_path(path) as tmp:
        nb.save(img, str(tmp))
    return Path(path)


def copy_file(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    return Path(dst)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive advisory lock on ``<path>.lock`` for the duration of the block."""
    lock = Path(str(path) + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def locked_json_update(path: str | os.PathLike, update: Callable[[dict], dict]) -> dict:
    """Read JSON at ``path`` (``{}`` if absent), apply ``update``, write back atomically, under a lock."""
    path = Path(path)
    with file_lock(path):
        data = json.loads(path.read_text()) if path.exists() else {}
        data = update(data)
        write_json(path, data)
    return data
