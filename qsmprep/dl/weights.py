"""Shipped NSIDL weights: location, sha256 check, loading.

The weights live in ``qsmprep/data/nsidl/`` (trained by ``qsmprep-train`` and
``benchmarks/chain_finetune.py``, see ``MODEL_CARD.md`` there).  Each use of the network runs its
own shipped file (:data:`WEIGHTS_FOR`); :data:`SHIPPED_SHA256` pins every shipped file, and a
mismatch (a corrupted or swapped file) is an error, never silently accepted.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "nsidl"
#: sha256 of every shipped weights file in :data:`DATA_DIR` (updated whenever weights are shipped).
SHIPPED_SHA256 = {
    "nsidl_v3.pt": "6e80e589e9b5da04979c0afb720461ee4594afe899d2213dfcc2ad06f581ccbe",
    "nsidl_v2.pt": "4638eb1bfcea8ad08d8643bc714220c151cbae2983642f573f6bb830ba265a78",
}
#: The shipped weights of each use (MODEL_CARD.md): ``chain``, the network inside the app's chain
#: (``qsmprep.dl.restore.invert_nsidl_chain``: v3, trained through the chain's final fit);
#: ``robust`` and ``strong``, the stand-alone data fits on a local field
#: (``qsmprep.dl.inference.DATA_FIT``: v2, which v3 does not beat there).
WEIGHTS_FOR = {"chain": "nsidl_v3.pt", "robust": "nsidl_v2.pt", "strong": "nsidl_v2.pt"}
#: The use of the app's default (the chain).
DEFAULT_USE = "chain"
WEIGHTS_NAME = WEIGHTS_FOR[DEFAULT_USE]
EXPECTED_SHA256 = SHIPPED_SHA256[WEIGHTS_NAME]


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def default_weights_path(use: str = DEFAULT_USE) -> Path:
    """Path of the shipped weights of ``use`` (a :data:`WEIGHTS_FOR` key); ``QSMPREP_NSIDL_WEIGHTS``
    overrides it for every use."""
    if use not in WEIGHTS_FOR:
        raise ValueError(f"NSIDL weights use must be one of {sorted(WEIGHTS_FOR)}, got {use!r}.")
    env = os.environ.get("QSMPREP_NSIDL_WEIGHTS")
    return Path(env) if env else DATA_DIR / WEIGHTS_FOR[use]


def pinned_sha256(path: str | os.PathLike) -> str | None:
    """The pinned sha256 when ``path`` is a shipped file (in :data:`DATA_DIR`), else None."""
    p = Path(path).resolve()
    return SHIPPED_SHA256.get(p.name) if p.parent == DATA_DIR else None


def weights_info(path: str | os.PathLike | None = None, use: str = DEFAULT_USE) -> dict:
    """``dict(name, sha256, path)`` of the weights that :func:`load_model` would use (``path``, else
    :func:`default_weights_path` of ``use``)."""
    p = Path(path) if path else default_weights_path(use)
    if not p.is_file():
        raise FileNotFoundError(f"NSIDL weights {p} are missing; reinstall qsmprep or set QSMPREP_NSIDL_WEIGHTS to a weights file.")
    return {"name": p.name, "sha256": sha256_file(p), "path": str(p)}


def load_model(path: str | os.PathLike | None = None, device="cpu", expected_sha256: str | None = None,
               use: str = DEFAULT_USE):
    """Load NSIDL weights (``path``, else the shipped weights of ``use``) into a fresh model (eval
    mode) on ``device``.

    The file's sha256 must equal ``expected_sha256`` (default: :func:`pinned_sha256` for a shipped
    file; no check for another file unless given).  Loaded with ``torch.load(..., weights_only=True)``.
    Returns ``(model, info)``.
    """
    import torch

    from qsmprep.dl.model import build_model

    info = weights_info(path, use)
    want = expected_sha256 or pinned_sha256(info["path"])
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
