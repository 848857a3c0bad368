"""Precompute held-out NSIDL validation heads (qsmprep.sim) as .npz for training on the device.

    .venv/bin/python benchmarks/gpu/make_val_heads.py --out .nsidl_val

Each head: ``qsmprep.sim.phantom.make_head`` (seeds 9001-9004, never used by the benchmark,
which uses 7001+), cropped to the brain bounding box + 3 voxels; the true local field
``f = M (D * (chi M))`` demeaned in M (ppm, oblique B0), magnitude weight
``M0 exp(-TE R2*)`` at TE = 20 ms normalised to its 99th percentile, phase noise at SNR 100,
s = rad_per_ppm(3 T, 20 ms).  Keys: chi, field, mask, weight, voxel_size, b0_dir, s.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

HEADS = [  # (seed, voxel size mm, B0 tilt deg about x, about y)
    (9001, (1.5, 1.5, 1.5), 0.0, 0.0),
    (9002, (1.5, 1.5, 2.0), 12.0, -8.0),
    (9003, (2.0, 2.0, 2.0), -20.0, 5.0),
    (9004, (1.6, 1.6, 1.6), 5.0, 15.0),
]


def b0_tilted(ax_deg: float, ay_deg: float) -> np.ndarray:
    a, b = np.radians(ax_deg), np.radians(ay_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    v = ry @ rx @ np.array([0.0, 0.0, 1.0])
    return v / np.linalg.norm(v)


def local_head(seed, vs, b0, snr=100.0, te=0.02, b0_t=3.0, margin=3):
    """Cropped head dict from qsmprep.sim with the true local field and a noisy version."""
    from qsmprep.qsm.constants import rad_per_ppm
    from qsmprep.qsm.dipole import forward_field
    from qsmprep.sim.phantom import make_head

    h = make_head(voxel_size=vs, seed=seed, background=False)
    m = h.brain_mask
    idx = np.nonzero(m)
    bb = tuple(slice(max(0, i.min() - margin), min(n, i.max() + margin + 1)) for i, n in zip(idx, m.shape))
    m = m[bb]
    chi = (h.chi[bb] * m).astype(np.float32)
    f = forward_field(chi, vs, b0) * m
    f = (f - f[m].mean()) * m
    mag = (h.m0[bb] * np.exp(-te * h.r2star[bb])).astype(np.float32)
    w = np.clip(mag / np.percentile(mag[m], 99), 0, 1) * m
    s = rad_per_ppm(b0_t, te)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal(m.shape).astype(np.float32) / (snr * np.maximum(w, 0.05)) / s
    return {"chi": chi, "field": ((f + noise) * m).astype(np.float32), "field_true": f.astype(np.float32),
            "mask": m.astype(np.uint8), "weight": w.astype(np.float32), "voxel_size": np.array(vs),
            "b0_dir": np.asarray(b0), "s": np.float64(s), "labels": h.labels[bb]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=".nsidl_val")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed, vs, tx, ty in HEADS:
        t = time.time()
        d = local_head(seed, vs, b0_tilted(tx, ty))
        d.pop("field_true"); d.pop("labels")
        np.savez_compressed(out / f"head_{seed}.npz", **d)
        print(seed, vs, d["chi"].shape, f"{time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    main()
