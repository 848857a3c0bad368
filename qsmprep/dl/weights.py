"""Shipped NSIDL weights: location, sha256 check, loading.

The weights live in ``qsmprep/data/nsidl/`` (trained by ``qsmprep-train``, see
``MODEL_CARD.md`` there).  ``EXPECTED_SHA256`` pins the shipped file; a mismatch
(a corrupted or swapped file) is an error, never silently accepted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

WEIGHTS_NAME = "nsidl_v3.pt"
DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "nsidl"
#: sha256 of the shipped ``nsidl_v3.pt`` (updated whenever new weights are shipped).
EXPECTED_SHA256 = "6e80e589e9b5da04979c0afb720461ee4594afe899d2213dfcc2ad06f581ccbe"


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path() -> Path:
    """Path of the shipped weights (may be overridden with ``QSMPREP_NSIDL_WEIGHTS``)."""
    env = os.environ.get("QSMPREP_NSIDL_WEIGHTS")
    return Path(env) if env else DATA_DIR / WEIGHTS_NAME


def weights_info(path: str | os.PathLike | None = None) -> dict:
    """``dict(name, sha256, path)`` of the weights that :func:`load_model` would use."""
    p = Path(path) if path else default_weights_path()
    if not p.is_file():
        raise FileNotFoundError(f"NSIDL weights {p} are missing; reinstall qsmprep or set QSMPREP_NSIDL_WEIGHTS to a weights file.")
    return {"name": p.name, "sha256": sha256_file(p), "path": str(p)}


def load_model(path: str | os.PathLike | None = None, device="cpu", expected_sha256: str | None = None):
    """Load NSIDL weights into a fresh model (eval mode) on ``device``.

    The file's sha256 must equal ``expected_sha256`` (default: ``EXPECTED_SHA256`` for the
    shipped file; no check for a user-supplied path unless given).  Loaded with
    ``torch.load(..., weights_only=True)``.  Returns ``(model, info)``.
    """
    import torch

    from qsmprep.dl.model import build_model

    info = weights_info(path)
    shipped = path is None and "QSMPREP_NSIDL_WEIGHTS" not in os.environ
    want = expected_sha256 or (EXPECTED_SHA256 if shipped else None)
    if want is not None and info["sha256"] != want:
        raise ValueError(
            f"NSIDL weights {info['path']} have sha256 {info['sha256'][:12]}..., expected {want[:12]}...; "
            "the file is corrupted or was replaced: reinstall qsmprep.")
    blob = torch.load(info["path"], map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "state_dict" not in blob or "config" not in blob:
        raise ValueError(f"{info['path']} is not an NSIDL weights file (no state_dict/config); export it with qsmprep.dl.train.export_weights.")
    model = build_model(blob["config"])
    model.load_state_dict(blob["state_dict"])
    model.eval().to(device)
    info = {**info, "config": blob["config"], "meta": blob.get("meta", {})}
    return model, info
