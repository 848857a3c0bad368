"""Known-answer tests for the simulation phantoms (qsmprep.sim); coarse 3-4 mm grids keep them fast."""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.qsm.constants import rad_per_ppm
from qsmprep.qsm.dipole import forward_field, padded_shape, pad_to, crop_to, sphere_field_analytic
from qsmprep.qsm.geometry import b0_direction_from_affine, voxel_sizes
from qsmprep.sim import forward as fw
from qsmprep.sim import phantom as ph

VS = (4.0, 4.0, 4.0)


@pytest.fixture(scope="module")
def head():
    return ph.make_head(voxel_size=VS, seed=7)


@pytest.fixture(scope="module")
def head3():
    return ph.make_head(voxel_size=(3.0, 3.0, 3.0), seed=7)


def _centroid_world(labels, affine, idx):
    ijk = np.argwhere(labels == idx).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def _smv_residual(field, mask, voxel_size, radius_mm):
    """RMS of (f - SMV_r f) over the mask eroded by r: zero for a harmonic f (mean-value property)."""
    shp = padded_shape(field.shape, 1.5)
    g = np.meshgrid(*[np.fft.fftfreq(n) * n * d for n, d in zip(shp, voxel_size)], indexing="ij")
    sphere = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2 <= radius_mm**2).astype(np.float64)
    sphere /= sphere.sum()
    s_k = np.fft.rfftn(sphere)

    def smv(x):
        return crop_to(np.fft.irfftn(np.fft.rfftn(pad_to(x.astype(np.float64), shp)) * s_k, s=shp, axes=(0, 1, 2)), x.shape)

    eroded = smv(mask.astype(np.float64)) > 0.999
    res = field - smv(field)
    return float(np.sqrt(np.mean(res[eroded] ** 2))), eroded


# ----------------------------------------------------------------------------- phantom
def test_labels_exist_for_each_dgm_structure_on_the_correct_side(head3):
    counts = head3.label_counts()
    for i in ph.DGM_INDICES:
        assert counts[ph.LABELS[i]] > 0, f"no voxel for {ph.LABELS[i]}"
    # RAS: left structures have a smaller world x than their right partners.
    for left in range(1, 13, 2):
        xl = _centroid_world(head3.labels, head3.affine, left)[0]
        xr = _centroid_world(head3.labels, head3.affine, left + 1)[0]
        assert xl < xr - 5.0, (ph.LABELS[left], xl, xr)
    # The pallidum lies medial to the putamen on both sides.
    for pal, put in ((5, 3), (6, 4)):
        assert abs(_centroid_world(head3.labels, head3.affine, pal)[0]) < abs(
            _centroid_world(head3.labels, head3.affine, put)[0])


def test_brain_mask_is_labels_1_to_18_and_background_sources_exist(head):
    assert np.array_equal(head.brain_mask, (head.labels >= 1) & (head.labels <= 18))
    c = head.label_counts()
    for name in ("bone", "sinus_air", "soft_tissue", "background_air", "gm", "wm", "csf"):
        assert c[name] > 0, name
    # Air far from the head is +9.4 ppm; the air is tapered to 0 at the grid faces; bone about -2.
    assert abs(head.chi[0, 0, 0]) < 0.01 and abs(head.chi[-1, -1, -1]) < 0.01
    air = (head.labels == 0) & (ph._taper(head.shape) == 1)
    assert head.chi[air].max() == pytest.approx(9.4, abs=0.01) and np.median(head.chi[air]) > 8.5
    # bone is diamagnetic (on a 4 mm grid the skull lies within the 4-voxel fade next to the brain)
    assert -2.2 <= head.chi_values["bone"] <= -1.8 and head.chi[head.labels == 22].min() < -0.1
    # Inside the brain chi stays in the physiological range (lesions included).
    assert -1.0 < head.chi[head.brain_mask].min() and head.chi[head.brain_mask].max() < 1.5


def test_dgm_true_means_equal_the_drawn_values_without_texture():
    h = ph.make_head(voxel_size=VS, seed=3, texture_ppm=0.0)
    means = h.dgm_true_means()
    for name, m in means.items():
        assert m == pytest.approx(h.chi_values[name], abs=1e-6), name
    # drawn values respect the documented ranges
    for name, m in means.items():
        lo, hi = ph.CHI_RANGES_PPM[ph.structure_of(name)]
        assert lo - 0.0051 <= m <= hi + 0.0051


def test_same_seed_is_reproducible_and_seeds_differ(head):
    again = ph.make_head(voxel_size=VS, seed=7)
    assert np.array_equal(again.labels, head.labels)
    assert np.array_equal(again.chi, head.chi)
    other = ph.make_head(voxel_size=VS, seed=8)
    assert not np.allclose(other.xfm_to_mni, head.xfm_to_mni)
    # DGM overlap drops when the deformation changes (Dice of all DGM voxels).
    if other.shape == head.shape and np.allclose(other.affine, head.affine):
        a, b = (head.labels >= 1) & (head.labels <= 12), (other.labels >= 1) & (other.labels <= 12)
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        assert dice < 0.9
    d7 = {k: v for k, v in head.chi_values.items()}
    assert any(abs(other.chi_values[k] - d7[k]) > 1e-4 for k in ("caudate_L", "wm", "bone"))


def test_undeformed_head_keeps_mni_positions():
    h = ph.make_head(voxel_size=VS, seed=1, deform=False, lesions=False, veins=False)
    assert np.allclose(h.xfm_to_mni, np.eye(4))
    # Red nuclei near MNI (+-4, -20, -8) mm in AAL3.
    for idx, sign in ((11, -1), (12, 1)):
        c = _centroid_world(h.labels, h.affine, idx)
        assert abs(c[0] - sign * 5) < 4 and abs(c[1] + 20) < 5 and abs(c[2] + 8) < 6, c


def test_same_seed_is_the_same_subject_at_other_voxel_sizes(head, head3):
    for idx in (3, 4, 7, 8):  # putamen, thalamus: big enough at 4 mm
        c4 = _centroid_world(head.labels, head.affine, idx)
        c3 = _centroid_world(head3.labels, head3.affine, idx)
        assert np.linalg.norm(c4 - c3) < 2.5, (ph.LABELS[idx], c4, c3)
    assert np.allclose(head.xfm_to_mni, head3.xfm_to_mni)


def test_anisotropic_voxels_and_explicit_shape():
    h = ph.make_head(shape=(48, 56, 40), voxel_size=(4.0, 4.0, 5.0), seed=2)
    assert h.shape == (48, 56, 40)
    assert voxel_sizes(h.affine) == pytest.approx((4.0, 4.0, 5.0))
    # head roughly centred: the brain does not touch the grid faces (except the brain stem,
    # which continues into the neck at the bottom)
    idx = np.argwhere(h.brain_mask)
    assert idx[:, :2].min() >= 1 and np.all(idx.max(axis=0) <= np.array(h.shape) - 2)


def test_natural_grid_sizes():
    h = ph.make_head(voxel_size=(3.0, 3.0, 3.0), seed=0)
    fov = np.array(h.shape) * 3.0
    assert np.all(fov <= np.array(ph.MAX_FOV_MM) + 1e-6)
    assert np.all(fov >= np.array([150, 180, 140]))
    # a few voxels of air on the sides
    assert not h.labels[0].any() and not h.labels[-1].any()


def test_labels_tsv_and_atlas_scheme_agree():
    rows = [r.split("\t") for r in ph.labels_tsv().strip().splitlines()]
    assert rows[0] == ["index", "name"]
    assert {int(i): n for i, n in rows[1:]} == ph.LABELS
    import qsmprep.atlas.labels as labels_mod
    for lab in labels_mod.DGM_LABELS:
        assert ph.LABELS[lab.index] == lab.name
        assert set(ph.DGM_AAL3[lab.index]) == set(lab.aal3)


# ----------------------------------------------------------------------------- forward
def test_local_field_is_the_forward_field_of_chi_in_the_brain(head):
    sim = fw.simulate_gre(head, background="grid", snr=None, seed=0)
    m = head.brain_mask
    ref = forward_field(np.where(m, head.chi, 0).astype(np.float32), VS, (0, 0, 1))
    ref = np.where(m, ref - ref[m].mean(), 0)
    assert np.allclose(sim["local_field_ppm"], ref, atol=1e-6)
    assert abs(sim["local_field_ppm"][m].mean()) < 1e-6
    assert np.all(sim["local_field_ppm"][~m] == 0)
    # total - local is harmonic inside the brain (sources only outside, shim harmonic):
    bg = sim["field_ppm"] - sim["local_field_ppm"]
    r_bg, eroded = _smv_residual(bg, m, VS, 8.0)
    r_loc, _ = _smv_residual(sim["local_field_ppm"], m, VS, 8.0)
    assert eroded.sum() > 100
    assert r_bg < 0.05 * r_loc, (r_bg, r_loc)


def test_fine_background_is_harmonic_in_the_brain_for_oblique_b0(head):
    """Regression: voxel-sharp skull next to the brain on a coarse grid gave a non-harmonic
    background field with oblique B0 (SMV residual 14 % of the local field at 4 mm, 7 % at 2 mm)."""
    b = (np.sin(0.3), 0.0, np.cos(0.3))
    m = head.brain_mask
    res = {}
    for mode in ("grid", "fine"):
        sim = fw.simulate_gre(head, te_s=(0.01,), b0_dir=b, snr=None, background=mode, shim=False)
        assert sim["background"] == mode
        r_bg, _ = _smv_residual(sim["field_ppm"] - sim["local_field_ppm"], m, VS, 8.0)
        r_loc, _ = _smv_residual(sim["local_field_ppm"], m, VS, 8.0)
        res[mode] = r_bg / r_loc
    assert res["fine"] < 0.06 and res["fine"] < 0.5 * res["grid"], res
    # the skull really is there in the fine background: a strong field inside the brain
    assert np.ptp((sim["field_ppm"] - sim["local_field_ppm"])[m]) > 1.0


def test_local_field_of_a_sphere_matches_the_analytic_answer():
    n, vs = 48, (1.0, 1.0, 1.0)
    g = np.meshgrid(*[np.arange(n) - 23.5] * 3, indexing="ij")
    r = np.sqrt(g[0] ** 2 + g[1] ** 2 + g[2] ** 2)
    mask = r < 20
    chi = np.where(r <= 5.0, 0.2, 0.0).astype(np.float32)
    flat = np.ones((n, n, n), np.float32)
    h = ph.Head(chi=chi, labels=mask.astype(np.int16) * 15, brain_mask=mask, m0=flat, r1=flat, r2star=flat * 20,
                affine=np.eye(4), voxel_size=vs, seed=0)
    sim = fw.simulate_gre(h, snr=None, phase_offset=False, shim=False, dephasing=False, te_s=(0.01,))
    ana = sphere_field_analytic((n, n, n), vs, (23.5, 23.5, 23.5), 5.0, 0.2)
    far = mask & (r > 9) & (r < 16)
    loc = sim["local_field_ppm"]
    # the local field is demeaned in the mask: compare after removing the mean offset
    off = (loc[far] - ana[far]).mean()
    assert np.abs(loc[far] - off - ana[far]).max() < 0.1 * np.abs(ana[far]).max()
    assert np.corrcoef(loc[far], ana[far])[0, 1] > 0.99


def test_phase_is_wrapped_and_follows_the_signal_model(head):
    te = (0.004, 0.012, 0.020)
    sim = fw.simulate_gre(head, background="grid", te_s=te, snr=None, seed=1, dephasing=False)
    ph4 = sim["phase"]
    assert ph4.shape == head.shape + (3,) and ph4.dtype == np.float32
    assert ph4.min() > -np.pi - 1e-6 and ph4.max() <= np.pi + 1e-6
    m = head.brain_mask
    # phase = wrap(phi0 + rad_per_ppm(B0, TE) * field) exactly, no noise
    for e, t in enumerate(te):
        model = sim["phase_offset_rad"] + rad_per_ppm(3.0, t) * sim["field_ppm"]
        err = np.angle(np.exp(1j * (ph4[..., e] - model)))
        assert np.abs(err[m]).max() < 1e-3
    # and it really wraps: the unwrapped model spans more than 2 pi in the brain at the last echo
    last = sim["phase_offset_rad"] + rad_per_ppm(3.0, te[-1]) * sim["field_ppm"]
    assert np.ptp(last[m]) > 2 * np.pi
    # magnitude decays as exp(-dTE R2*) (R2* at 3 T as stored in the head)
    ratio = sim["mag"][..., 1][m] / sim["mag"][..., 0][m]
    assert np.allclose(ratio, np.exp(-(te[1] - te[0]) * head.r2star[m]), rtol=1e-4)


def test_noise_has_the_requested_snr_and_is_seeded(head):
    a = fw.simulate_gre(head, background="grid", te_s=(0.005, 0.010), snr=50, seed=3)
    b = fw.simulate_gre(head, background="grid", te_s=(0.005, 0.010), snr=50, seed=3)
    c = fw.simulate_gre(head, background="grid", te_s=(0.005, 0.010), snr=50, seed=4)
    assert np.array_equal(a["mag"], b["mag"]) and not np.array_equal(a["mag"], c["mag"])
    clean = fw.simulate_gre(head, background="grid", te_s=(0.005, 0.010), snr=None, seed=3)
    m = head.brain_mask
    assert a["noise_sigma"] == pytest.approx(clean["mag"][..., 0][m].mean() / 50, rel=1e-3)
    # noise in air (no signal) is Rayleigh with mean sigma*sqrt(pi/2), same in both echoes
    air = (head.labels == 0) & (ph._taper(head.shape) == 1)
    for e in range(2):
        assert a["mag"][..., e][air].mean() == pytest.approx(a["noise_sigma"] * np.sqrt(np.pi / 2), rel=0.05)


def test_oblique_b0_is_recovered_from_the_affine(head):
    b = np.array([np.sin(np.radians(17.0)), 0.05, np.cos(np.radians(17.0))])
    b /= np.linalg.norm(b)
    sim = fw.simulate_gre(head, background="grid", b0_t=7.0, te_s=(0.015,), b0_dir=b, snr=None)
    got = b0_direction_from_affine(sim["affine"])
    assert abs(abs(got @ b) - 1.0) < 1e-9
    assert voxel_sizes(sim["affine"]) == pytest.approx(VS)
    assert np.allclose(sim["b0_dir"], b)
    # the field really is the oblique one
    ref = forward_field(head.chi, VS, b)
    assert np.corrcoef(fw.shim_field(ref, head.brain_mask, VS)[head.brain_mask],
                       sim["field_ppm"][head.brain_mask])[0, 1] > 0.9999
    # the grid centre stays put
    c = (np.array(head.shape) - 1) / 2
    assert np.allclose(sim["affine"][:3, :3] @ c + sim["affine"][:3, 3], head.affine[:3, :3] @ c + head.affine[:3, 3])
    # axial B0 keeps the affine unchanged
    assert np.allclose(fw.simulate_gre(head, background="grid", te_s=(0.01,), snr=None)["affine"], head.affine)


def test_rotation_between_and_harmonic_shim():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.standard_normal(3), rng.standard_normal(3)
        r = fw.rotation_between(a, b)
        assert np.allclose(r @ (a / np.linalg.norm(a)), b / np.linalg.norm(b))
        assert np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    assert np.allclose(fw.rotation_between((0, 0, 1), (0, 0, -1)) @ [0, 0, 1], [0, 0, -1])
    # every shim basis term has zero (discrete) Laplacian away from the edges
    basis = fw.harmonic_basis((12, 12, 12), (2.0, 2.0, 2.0), (5.5, 5.5, 5.5))
    for t in basis:
        lap = sum(np.diff(t, 2, axis=a)[tuple(slice(1, -1) if b != a else slice(None) for b in range(3))] for a in range(3))
        assert np.abs(lap).max() < 1e-10
    # the shim removes a pure harmonic field exactly
    mask = np.zeros((12, 12, 12), bool)
    mask[2:10, 2:10, 2:10] = True
    f = (3 * basis[4] - basis[8] + 0.5).astype(np.float32)
    assert np.abs(fw.shim_field(f, mask, (2.0, 2.0, 2.0))[mask]).max() < 1e-5


def test_qsm_forward_signal_matches_the_written_out_model():
    import qsm_forward  # noqa: F401
    rng = np.random.default_rng(1)
    f = rng.normal(0, 0.5, (6, 6, 6))
    m0, r1, r2 = rng.uniform(0.5, 1, (3, 6, 6, 6))
    r2 = r2 * 40
    a = fw.spgr_signal(f, 3.0, 0.02, 0.03, 15, 0.3, m0, r1, r2)
    b = fw.spgr_signal_reference(f, 3.0, 0.02, 0.03, 15, 0.3, m0, r1, r2)
    assert np.allclose(a, b, atol=1e-6)
    assert np.allclose(np.angle(b * np.exp(-1j * 0.3)), np.angle(np.exp(1j * rad_per_ppm(3.0, 0.02) * f)), atol=1e-5)


def test_dephasing_darkens_voxels_with_steep_field_gradients():
    x = np.zeros((8, 8, 8), np.float32)
    x[:] = np.arange(8)[:, None, None] * 25.0  # 25 Hz per voxel along the first axis
    att = fw.dephasing_factor(x, (1, 1, 1), 0.02)  # sinc(0.5)
    assert np.allclose(att[2:6], np.sinc(0.5), atol=1e-6)
    assert np.allclose(fw.dephasing_factor(np.zeros_like(x), (1, 1, 1), 0.02), 1.0)


# ----------------------------------------------------------------------------- bundled examples
EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "bids_examples"


def test_bundled_examples_load_with_pybids_and_inherit_metadata():
    import bids
    import nibabel as nb

    lay = bids.BIDSLayout(str(EXAMPLES / "ds-megre"), derivatives=False)
    assert sorted(lay.get_subjects()) == ["01", "02"] and sorted(lay.get_sessions()) == ["1", "2"]
    files = lay.get(suffix="MEGRE", extension=".nii.gz")
    assert len(files) == 2 * 4 * 2 + 2 * 3
    for f in files:
        md = lay.get_metadata(f.path)
        assert md["MagneticFieldStrength"] == 3.0 and 0 < md["EchoTime"] < 0.05
    # sub-01: int16 scanner units; sub-02: float radians
    p1 = nb.load(lay.get(subject="01", session="1", echo=4, part="phase", extension=".nii.gz")[0].path)
    p2 = nb.load(lay.get(subject="02", echo=3, part="phase", extension=".nii.gz")[0].path)
    assert p1.get_data_dtype() == np.int16 and np.asarray(p1.dataobj).max() > 3000
    assert p2.get_data_dtype() == np.float32 and np.abs(np.asarray(p2.dataobj)).max() <= np.pi + 1e-5
    assert lay.get_metadata(p2.get_filename())["Units"] == "rad"
    tsv = (EXAMPLES / "ds-megre" / "participants.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == ["participant_id", "age", "sex", "group"]

    t2 = bids.BIDSLayout(str(EXAMPLES / "ds-t2starw"), derivatives=False)
    mag = t2.get(suffix="T2starw", part="mag", extension=".nii.gz")[0]
    assert t2.get_metadata(mag.path)["MagneticFieldStrength"] == 7.0
    gt = EXAMPLES / "ds-t2starw" / "derivatives" / "groundtruth" / "sub-01" / "anat"
    sim = __import__("json").loads((gt / "sub-01_desc-simulation.json").read_text())
    b_file = b0_direction_from_affine(nb.load(mag.path).affine)
    assert abs(abs(b_file @ np.asarray(sim["B0Direction"])) - 1) < 1e-6
    assert 15 < np.degrees(np.arccos(abs(b_file[2]))) < 20


def test_bundled_groundtruth_is_consistent():
    import nibabel as nb

    gt = EXAMPLES / "ds-megre" / "derivatives" / "groundtruth" / "sub-02" / "anat"
    chi = nb.load(gt / "sub-02_Chimap.nii.gz")
    mask = np.asarray(nb.load(gt / "sub-02_desc-brain_mask.nii.gz").dataobj) > 0
    dseg = np.asarray(nb.load(gt / "sub-02_desc-phantom_dseg.nii.gz").dataobj).astype(np.int16)
    raw = EXAMPLES / "ds-megre" / "sub-02" / "anat" / "sub-02_echo-1_part-mag_MEGRE.nii.gz"
    assert np.allclose(chi.affine, nb.load(raw).affine) and chi.shape == nb.load(raw).shape
    assert np.array_equal(mask, (dseg >= 1) & (dseg <= 18))
    rows = [r.split("\t") for r in (gt / "sub-02_desc-dgmtruth_stats.tsv").read_text().strip().splitlines()[1:]]
    means = ph.label_means(np.asarray(chi.dataobj), dseg)
    assert len(rows) == 12
    for idx, name, m, n in rows:
        assert ph.LABELS[int(idx)] == name and int(n) > 0
        assert float(m) == pytest.approx(means[name], abs=2e-6)
    assert (dseg == 18).any() and (dseg == 17).any()  # sub-02 is the patient with lesions


def test_phase_offset_is_harmonic_for_single_echo_and_full_for_multi_echo(head):
    one = fw.simulate_gre(head, background="grid", te_s=(0.015,), snr=None, seed=5)
    multi = fw.simulate_gre(head, background="grid", te_s=(0.005, 0.010), snr=None, seed=5)

    def max_laplacian(p):
        return max(np.abs(np.diff(p.astype(np.float64), 2, axis=a)).max() for a in range(3))

    assert max_laplacian(one["phase_offset_rad"]) < 1e-5  # constant + ramp only
    assert max_laplacian(multi["phase_offset_rad"]) > 1e-3  # with qsm-forward's quadratic bowl
    none = fw.simulate_gre(head, background="grid", te_s=(0.015,), snr=None, phase_offset=False)
    assert np.all(none["phase_offset_rad"] == 0)
    with pytest.raises(ValueError):
        fw.simulate_gre(head, background="grid", te_s=(0.015,), phase_offset="bowl")
