"""Shared fixtures: tiny synthetic multi-echo GRE BIDS datasets made with the dipole forward model.

``make_bids(root, ...)`` writes a 32^3, 4 mm dataset whose phase is the forward field
of a few susceptibility ellipsoids (``qsmprep.qsm.dipole.forward_field``) plus an
echo-independent offset, wrapped; magnitude ``M0 exp(-TE R2*)`` inside a head
ellipsoid.  ``EchoTime`` sits in each echo's sidecars and ``MagneticFieldStrength``
in a top-level ``MEGRE.json`` (so sidecar inheritance is exercised).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

TES_S = (0.006, 0.012, 0.018)
B0_T = 3.0


def _rotation_x(deg: float) -> np.ndarray:
    t = np.deg2rad(deg)
    return np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])


def make_affine(voxel_mm=4.0, shape=(32, 32, 32), oblique_deg=0.0) -> np.ndarray:
    aff = np.eye(4)
    aff[:3, :3] = _rotation_x(oblique_deg) @ np.diag([voxel_mm] * 3)
    aff[:3, 3] = -aff[:3, :3] @ (np.array(shape) / 2.0)
    return aff


def simulate(shape=(32, 32, 32), voxel_mm=4.0, tes=TES_S, b0_t=B0_T, oblique_deg=0.0, seed=0):
    """``(mag4d, phase4d_rad, chi_ppm, brain, affine)`` of a small phantom head."""
    from qsmprep.qsm.constants import hz_per_ppm
    from qsmprep.qsm.dipole import forward_field
    from qsmprep.qsm.geometry import b0_direction_from_affine

    rng = np.random.default_rng(seed)
    aff = make_affine(voxel_mm, shape, oblique_deg)
    grid = np.stack(np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * voxel_mm for n in shape], indexing="ij"), -1)

    def ellipsoid(center, radii):
        return (((grid - np.array(center)) / np.array(radii)) ** 2).sum(-1) <= 1.0

    head = ellipsoid((0, 0, 0), (52, 58, 50))
    brain = ellipsoid((0, 0, 0), (44, 50, 42))
    chi = np.zeros(shape, np.float32)
    chi[head & ~brain] = -0.05
    chi[ellipsoid((-14, 6, 0), (6, 9, 8))] = 0.12
    chi[ellipsoid((14, 6, 0), (6, 9, 8))] = 0.12
    chi[ellipsoid((0, -18, 10), (16, 8, 6))] = -0.03
    field_hz = forward_field(chi, (voxel_mm,) * 3, b0_direction_from_affine(aff)) * hz_per_ppm(b0_t)
    offset = 0.4 + 0.002 * grid[..., 0]
    m0 = np.where(brain, 1000.0, np.where(head, 40.0, 0.0))  # dark skull: the mask is the brain
    mags, phases = [], []
    for te in tes:
        mag = m0 * np.exp(-te * 30.0) + rng.normal(0, 5.0, shape)
        ph = offset + 2 * np.pi * field_hz * te + rng.normal(0, 0.01, shape)
        mags.append(np.abs(mag))
        phases.append(np.angle(np.exp(1j * ph)))
    return (np.stack(mags, -1).astype(np.float32), np.stack(phases, -1).astype(np.float32), chi, brain, aff)


def _save(arr, aff, path: Path, dtype=np.float32):
    import nibabel as nb

    path.parent.mkdir(parents=True, exist_ok=True)
    img = nb.Nifti1Image(np.asarray(arr, dtype=dtype), aff)
    img.header.set_xyzt_units("mm", "sec")
    nb.save(img, str(path))


def _json(path: Path, data: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))


def make_bids(
    root,
    subjects=("01",),
    sessions=(None,),
    runs=(None,),
    n_echoes=3,
    stack=False,
    suffix="MEGRE",
    scanner_units=False,
    oblique_deg=0.0,
    acq=None,
) -> Path:
    """Write a synthetic BIDS dataset under ``root``; returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _json(root / "dataset_description.json", {"Name": "qsmprep test", "BIDSVersion": "1.10.0"})
    _json(root / f"{suffix}.json", {"MagneticFieldStrength": B0_T})
    tes = TES_S[:n_echoes]
    mag4, ph4, _, _, aff = simulate(tes=tes, oblique_deg=oblique_deg)
    if scanner_units:  # 12-bit codes, with a scanner's uniformly random phase where there is no signal
        noise = np.random.default_rng(1).uniform(-np.pi, np.pi, ph4.shape)
        ph4 = np.round(np.where(mag4 < 20.0, noise, ph4) / np.pi * 2048.0).clip(-2048, 2047)
    for sub in subjects:
        for ses in sessions:
            for run in runs:
                ents = [f"sub-{sub}"] + ([f"ses-{ses}"] if ses else []) + ([f"acq-{acq}"] if acq else []) + (
                    [f"run-{run}"] if run else [])
                folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "anat"
                stem = "_".join(ents)
                dtype_ph = np.int16 if scanner_units else np.float32
                if stack:
                    for part, arr, dt in (("mag", mag4, np.float32), ("phase", ph4, dtype_ph)):
                        _save(arr, aff, folder / f"{stem}_part-{part}_{suffix}.nii.gz", dt)
                        _json(folder / f"{stem}_part-{part}_{suffix}.json", {"EchoTime": list(tes)})
                    continue
                for e, te in enumerate(tes, 1):
                    echo = f"_echo-{e}" if n_echoes > 1 else ""
                    for part, arr, dt in (("mag", mag4, np.float32), ("phase", ph4, dtype_ph)):
                        name = f"{stem}{echo}_part-{part}_{suffix}"
                        _save(arr[..., e - 1], aff, folder / f"{name}.nii.gz", dt)
                        meta = {"EchoTime": te}
                        if part == "phase":
                            meta["Units"] = "arbitrary" if scanner_units else "rad"
                        _json(folder / f"{name}.json", meta)
    return root


def tree_digest(root) -> dict:
    """``{relative path: sha256}`` of every file under ``root`` (to prove it is unmodified)."""
    root = Path(root)
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def make_read_only(root) -> None:
    """``chmod -R a-w``."""
    for path in [Path(root), *Path(root).rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(root) -> None:
    for path in [Path(root), *Path(root).rglob("*")]:
        path.chmod(path.stat().st_mode | stat.S_IWUSR)


@pytest.fixture(scope="session")
def bids_template(tmp_path_factory) -> Path:
    """A 2-subject multi-echo dataset, built once per session (copy it before changing it)."""
    return make_bids(tmp_path_factory.mktemp("template") / "ds", subjects=("01", "02"))


@pytest.fixture
def bids_copy(bids_template, tmp_path) -> Path:
    """A writable copy of :func:`bids_template`."""
    dst = tmp_path / "bids"
    shutil.copytree(bids_template, dst)
    return dst


@pytest.fixture
def readonly_bids(bids_copy):
    """The copy made read-only (``chmod -R a-w``); restored afterwards so tmp can be cleaned."""
    make_read_only(bids_copy)
    yield bids_copy
    make_writable(bids_copy)
