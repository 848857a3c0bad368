"""Which build of qsmprep is running: a fingerprint of the installed package's files.

Nipype's cache keys on each node's inputs, not on the code that the node runs.  A work folder kept from
an older qsmprep would hand a newer one the older results (the version string alone does not change
between development builds), so the top workflow's name carries this fingerprint
(:func:`qsmprep.workflows.base.top_name`), as fMRIPrep's carries its version.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

#: Suffixes left out of the fingerprint: byte-code and editor leftovers, which do not change what runs.
_SKIP_SUFFIXES = (".pyc", ".pyo", ".swp", "~")


def package_fingerprint(root: str | Path | None = None, length: int = 8) -> str:
    """Hex digest (``length`` characters) of the files under ``root`` (default: the installed ``qsmprep``
    package: its sources, the shipped weights and the bundled data): SHA-256 over each file's path relative
    to ``root`` and its bytes, in sorted order.  Any edited source or replaced weight file changes it; the
    package's location on disk does not."""
    if root is None:
        return _installed_fingerprint(length)
    return _fingerprint(Path(root), length)


@lru_cache(maxsize=None)
def _installed_fingerprint(length: int) -> str:
    return _fingerprint(Path(__file__).resolve().parents[1], length)


def _fingerprint(root: Path, length: int) -> str:
    if not root.is_dir():
        raise FileNotFoundError(f"no package folder at {root}")
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root)
        if "__pycache__" in rel.parts or path.name.endswith(_SKIP_SUFFIXES):
            continue
        h.update(rel.as_posix().encode() + b"\0")
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()[: int(length)]
