"""Known-answer tests for qsmprep.qsm.masking (brain mask from GRE magnitude)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from qsmprep.qsm import masking


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    return 2.0 * np.sum(a & b) / (a.sum() + b.sum())


def synthetic_head(n=64, voxel_mm=3.0, te_s=(0.005, 0.012, 0.019, 0.026), snr=40.0, seed=0):
    """Head-like volume: ellipsoidal brain (GM shell, WM, ventricles, a dark vein and an
    iron-rich dark nucleus), a 3 mm extra-cerebral CSF rim (not brain), dark skull shell
    (low M0, high R2*), bright scalp,
    Rician-noise air.  Returns (mag4d, true_brain_mask)."""
    rng = np.random.default_rng(seed)
    c = (np.arange(n) - n / 2 + 0.5) * voxel_mm
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    # brain radii (mm); 64 x 3 mm = 192 mm field of view
    a, b, cc = 66.0, 56.0, 52.0
    rho = np.sqrt((x / a) ** 2 + (y / b) ** 2 + (z / cc) ** 2)  # 1 on the brain surface
    r_eff = rho * 56.0  # approx mm from the centre
    brain = rho <= 1.0
    m0 = np.zeros(x.shape)
    r2s = np.full(x.shape, 1000.0)
    wm = rho < 0.8
    gm = brain & ~wm
    m0[gm], r2s[gm] = 0.85, 20.0
    m0[wm], r2s[wm] = 0.7, 25.0
    vent = ((x / 18) ** 2 + ((y - 5) / 8) ** 2 + (z / 10) ** 2) < 1
    m0[vent], r2s[vent] = 1.0, 5.0
    nucleus = (((np.abs(x) - 20) / 7) ** 2 + (y / 9) ** 2 + (z / 7) ** 2) < 1
    r2s[nucleus] = 60.0
    vein = (np.hypot(x - 10, z - 30) < 3) & brain
    m0[vein], r2s[vein] = 0.4, 80.0
    csf = (r_eff > 56.0) & (r_eff <= 59.0)  # extra-cerebral CSF, not brain (as in qsmprep.sim)
    m0[csf], r2s[csf] = 1.0, 5.0
    skull = (r_eff > 59.0) & (r_eff <= 65.0)
    m0[skull], r2s[skull] = 0.05, 300.0
    scalp = (r_eff > 65.0) & (r_eff <= 72.0)
    m0[scalp], r2s[scalp] = 0.8, 30.0
    # smooth receive-coil profile
    coil = 1.0 + 0.25 * x / 96.0 - 0.15 * z / 96.0
    te = np.asarray(te_s)
    sig = (m0 * coil)[..., None] * np.exp(-r2s[..., None] * te)
    sigma = 1.0 / snr
    noise = rng.normal(0, sigma, sig.shape) + 1j * rng.normal(0, sigma, sig.shape)
    mag = np.abs(sig + noise).astype(np.float32)
    return mag, brain


def test_ball_morphology_is_spherical():
    """Dilation reaches radius r along the diagonals too (not the cross-shaped r/sqrt(3))."""
    m = np.zeros((41, 41, 41), bool)
    m[20, 20, 20] = True
    d = masking.dilate_mm(m, 10.0, (1, 1, 1))
    # a ball of radius 10 has ~4/3 pi 10^3 = 4189 voxels
    assert abs(d.sum() - 4 / 3 * np.pi * 1000) / (4 / 3 * np.pi * 1000) < 0.03
    assert d[20 + 5, 20 + 5, 20 + 5]  # diagonal distance 8.66 mm < 10
    assert not d[20 + 6, 20 + 6, 20 + 6]  # 10.4 mm
    # anisotropic voxels: radius in mm
    d2 = masking.dilate_mm(m, 6.0, (1, 1, 2))
    assert d2[20, 20, 23] and not d2[20, 20, 24] and d2[20, 26, 20]
    # erosion of the ball gives back roughly the centre ball
    e = masking.erode_mm(d, 7.0, (1, 1, 1))
    assert e[20, 20, 20] and not e[20, 20, 20 + 4]


def test_otsu_two_classes():
    rng = np.random.default_rng(1)
    v = np.r_[rng.normal(0.1, 0.02, 5000), rng.normal(1.0, 0.05, 5000)]
    t = masking.otsu_threshold(v)
    assert 0.3 < t < 0.8


@pytest.mark.parametrize("seed", [0, 1])
def test_brain_mask_synthetic_head_dice(seed):
    mag, truth = synthetic_head(seed=seed)
    m = masking.brain_mask(mag, (3.0, 3.0, 3.0))
    assert m.dtype == bool and m.shape == truth.shape
    assert dice(m, truth) >= 0.95
    # the scalp must not be included
    c = (np.arange(64) - 32 + 0.5) * 3.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r_eff = np.sqrt((x / 66) ** 2 + (y / 56) ** 2 + (z / 52) ** 2) * 56
    assert not np.any(m & (r_eff > 66))


def test_brain_mask_3d_input_and_erosion():
    mag, truth = synthetic_head(seed=2)
    rss = np.sqrt((mag.astype(np.float64) ** 2).sum(-1))
    # a 3-D magnitude counts as one echo for the void limit (default_min_signal): compare at the same limit
    m3 = masking.brain_mask(rss, (3, 3, 3), min_signal=masking.VOID_MIN_SIGNAL_MULTI_ECHO)
    m4 = masking.brain_mask(mag, (3, 3, 3))
    assert np.array_equal(m3, m4)
    # without the final erosion: the intracranial mask (brain + extra-cerebral CSF)
    c = (np.arange(64) - 32 + 0.5) * 3.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    intracranial = np.sqrt((x / 66) ** 2 + (y / 56) ** 2 + (z / 52) ** 2) * 56 <= 59.0
    mi = masking.brain_mask(mag, (3, 3, 3), erode_radius_mm=0.0)
    assert dice(mi, intracranial) >= 0.95
    assert m4.sum() < mi.sum() and not np.any(m4 & ~mi)


def test_brain_is_split_from_neck_and_scalp():
    """A neck block touching the brain through a 'foramen' and scalp touching the neck: the
    watershed keeps only the brain."""
    mag, truth = synthetic_head(seed=4)
    c = (np.arange(64) - 32 + 0.5) * 3.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r_eff = np.sqrt((x / 66) ** 2 + (y / 56) ** 2 + (z / 52) ** 2) * 56
    neck = (np.hypot(x, y) < 45) & (z < -45) & (r_eff > 65)  # below the skull
    foramen = (np.hypot(x, y) < 12) & (z < -40) & (r_eff > 54)  # brain stem through the skull
    mag[neck] = 0.7  # bright soft tissue, all echoes
    mag[foramen] = 0.75
    brain_like = truth | (foramen & (r_eff <= 65))
    m = masking.brain_mask(mag, (3, 3, 3))
    assert not np.any(m & neck & (z < -80))
    assert dice(m, truth) >= 0.93 and dice(m, brain_like) >= 0.93


def test_brain_is_split_from_thick_soft_tissue_through_a_wide_skull_gap():
    """A 40 mm-radius brain joined to a 32 mm-thick block of soft tissue by a 12 mm-radius bridge (a wide gap in the
    skull): at the default split depth (masking.SPLIT_H_MM = 4 mm; 6 mm in session 26) the block is cut off, at
    the former 8 mm it is kept (it rises about 7 mm above the bridge: the robustness validation head 14's leak, benchmarks/RESULTS.md)."""
    n = (150, 90, 90)
    g = np.meshgrid(*[np.arange(k) - k / 2 + 0.5 for k in n], indexing="ij")
    ball = (g[0] + 30) ** 2 + g[1] ** 2 + g[2] ** 2 < 40 ** 2
    block = (g[0] > 20) & (g[0] < 52) & (np.abs(g[1]) < 40) & (np.abs(g[2]) < 40)
    bridge = (g[0] >= 5) & (g[0] <= 25) & (g[1] ** 2 + g[2] ** 2 < 12 ** 2)
    fg = ball | block | bridge
    assert masking.SPLIT_H_MM == 4.0 and masking.MERGE_RISE_MM == 18.0
    kept = masking.select_brain(fg, (1, 1, 1))
    assert np.all(kept[ball]) and (kept & block).sum() < 0.02 * block.sum()  # the bridge's stub, not the block
    assert (masking.select_brain(fg, (1, 1, 1), split_h_mm=8.0) & block).sum() > 0.9 * block.sum()


def test_joined_pieces_follow_passes_at_least_as_deep_as_asked():
    """Three slabs side by side: 1 and 2 touch where the depth is 5, 2 and 3 where it is 1."""
    lab = np.zeros((4, 15, 3), int)
    lab[:, :5], lab[:, 5:10], lab[:, 10:] = 1, 2, 3
    depth = np.ones(lab.shape)
    depth[:, 4:6] = 5.0
    assert masking.joined_pieces(lab, depth, 1, 4.0) == [1, 2]
    assert masking.joined_pieces(lab, depth, 1, 6.0) == [1]
    assert masking.joined_pieces(lab, depth, 3, 0.5) == [1, 2, 3]


def test_split_through_the_brain_is_merged_back_and_a_neck_is_not():
    """Two 40 mm balls 30 mm apart (hemispheres with a shallow midline groove: each top rises about 3 mm above the
    37 mm-deep pass between them) and a 32 mm block joined to one of them by a 12 mm-radius bridge.  At a 2 mm split
    depth the hemispheres come apart and one is lost; with the merge (the brain rises less than 18 mm above their pass)
    both are kept, while the block (the brain rises about 28 mm above the bridge) is still cut off."""
    n = (150, 130, 90)
    g = np.meshgrid(*[np.arange(k) - k / 2 + 0.5 for k in n], indexing="ij")
    left = (g[0] + 30) ** 2 + (g[1] + 15) ** 2 + g[2] ** 2 < 40 ** 2
    right = (g[0] + 30) ** 2 + (g[1] - 15.5) ** 2 + g[2] ** 2 < 40 ** 2  # a hair deeper: one deepest voxel
    block = (g[0] > 20) & (g[0] < 52) & (np.abs(g[1]) < 40) & (np.abs(g[2]) < 40)
    bridge = (g[0] >= 5) & (g[0] <= 25) & (g[1] ** 2 + g[2] ** 2 < 12 ** 2)
    brain = left | right
    fg = brain | block | bridge
    split = masking.select_brain(fg, (1, 1, 1), split_h_mm=2.0, merge_rise_mm=0)
    assert split[brain].mean() < 0.75  # one hemisphere lost
    merged = masking.select_brain(fg, (1, 1, 1), split_h_mm=2.0, merge_rise_mm=18.0)
    assert np.all(merged[brain]) and (merged & block).sum() < 0.02 * block.sum()


def test_brain_mask_phase_refinement_keeps_dice():
    mag, truth = synthetic_head(seed=3)
    rng = np.random.default_rng(3)
    # smooth phase inside tissue, random phase in air/skull (noise-dominated)
    c = np.arange(64)
    x = np.meshgrid(c, c, c, indexing="ij")[0]
    phase = np.where(mag[..., 0] > 0.2, 0.05 * x, rng.uniform(-np.pi, np.pi, x.shape))
    m = masking.brain_mask(mag, (3, 3, 3), phase=phase)
    assert dice(m, truth) >= 0.95


def test_brain_mask_rejects_empty():
    with pytest.raises(ValueError, match="threshold"):
        masking.brain_mask(np.zeros((8, 8, 8), np.float32), threshold=1.0)


# ----------------------------------------------------------------------------- simulated head
@functools.lru_cache(maxsize=1)
def simulated_head_3mm():
    """One 3 mm simulated head (qsmprep.sim), shared by test_masking/test_unwrap/test_echoes."""
    from qsmprep.sim.forward import simulate_gre
    from qsmprep.sim.phantom import make_head

    return simulate_gre(make_head(voxel_size=(3.0, 3.0, 3.0), seed=1), seed=1, snr=60.0)


def test_brain_mask_simulated_head_3mm():
    s = simulated_head_3mm()
    m = masking.brain_mask(s["mag"], s["voxel_size"])
    assert dice(m, s["brain_mask"]) >= 0.95


# ----------------------------------------------------------------------------- unreliable voxels
def _ball(n=32, r=12.0):
    c = np.arange(n) - n / 2 + 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    return np.sqrt(x**2 + y**2 + z**2) <= r, x


def test_remove_unreliable_drops_signal_voids_exactly():
    ball, _ = _ball()
    mag = np.where(ball, 100.0, 0.0).astype(np.float32)
    void = np.zeros(ball.shape, bool)
    void[14:18, 14:18, 14:18] = True  # a 4^3 haemorrhage core / air pocket inside the brain
    mag[void] = 20.0  # 0.2 x the median: below min_signal = 0.3
    mag[4:8, 14:18, 14:18] = 40.0  # outside the mask: ignored
    out = masking.remove_unreliable(ball, mag, (1, 1, 1))
    assert np.array_equal(out, ball & ~void)
    # 0.4 x the median is kept; min_signal=0 disables the rule
    mag[void] = 40.0
    assert np.array_equal(masking.remove_unreliable(ball, mag, (1, 1, 1)), ball)
    mag[void] = 0.0
    assert np.array_equal(masking.remove_unreliable(ball, mag, (1, 1, 1), min_signal=0.0), ball)


def test_remove_unreliable_drops_incoherent_phase_and_keeps_largest_part():
    ball, x = _ball()
    rng = np.random.default_rng(0)
    mag = np.where(ball, 1.0, 0.0).astype(np.float32)
    phase = (0.3 * x).astype(np.float32)  # smooth ramp, 0.3 rad/voxel: coherence ~0.96
    noisy = np.zeros(ball.shape, bool)
    noisy[10:22, 10:22, 4:10] = True
    phase[noisy] = rng.uniform(-np.pi, np.pi, int(noisy.sum()))
    out = masking.remove_unreliable(ball, mag, (1, 1, 1), phase=np.stack([phase, 2 * phase], -1))
    inner = np.zeros_like(noisy)
    inner[12:20, 12:20, 6:8] = True
    assert not np.any(out & inner)  # the incoherent block is gone
    from scipy import ndimage

    far = ball & (ndimage.distance_transform_edt(~noisy) > 3)
    assert np.all(out[far])  # coherent tissue is kept
    # a piece cut off by the removal is dropped too (largest component only)
    mag2 = np.where(ball, 1.0, 0.0).astype(np.float32)
    mag2[:, :, 10:12] = 0.05  # a dark slab cuts the ball into a small and a large part
    out2 = masking.remove_unreliable(ball, mag2, (1, 1, 1))
    big = ball.copy()
    big[:, :, :12] = False
    assert np.array_equal(out2, big)


def test_erode_mm_border_modes():
    """A cube touching the top of the array: ``background`` peels that face like any other,
    ``continue`` keeps it (a face cut by the field of view) and still peels the others."""
    m = np.zeros((20, 20, 20), bool)
    m[5:15, 5:15, 10:] = True
    bg = masking.erode_mm(m, 2.0, (1, 1, 1))
    cont = masking.erode_mm(m, 2.0, (1, 1, 1), border="continue")
    assert bg[:, :, 10:].sum() and not bg[:, :, 18:].any()  # 2 mm from the border: gone
    assert np.array_equal(np.argwhere(cont.any((0, 1)))[[0, -1], 0], [12, 19])  # the cut face stays
    assert np.array_equal(cont[:, :, 12:18], bg[:, :, 12:18])  # away from the border: identical
    assert np.array_equal(np.argwhere(cont.any((1, 2)))[[0, -1], 0], [7, 12])  # sides peeled by 2 voxels
    with pytest.raises(ValueError, match="border"):
        masking.erode_mm(m, 2.0, border="edge")


def test_brain_mask_keeps_the_cut_faces_of_a_slab():
    """Slab coverage: the brain mask of a 48 mm slab through the synthetic head equals the whole head's
    mask cropped to the slab away from the cut faces, and it reaches both cut faces (no erosion there)."""
    mag, truth = synthetic_head(seed=3)
    whole = masking.brain_mask(mag, (3.0, 3.0, 3.0))
    z0, z1 = 24, 40  # 16 slices of 3 mm through the centre
    slab = masking.brain_mask(mag[:, :, z0:z1], (3.0, 3.0, 3.0))
    inner = slice(2, -2)
    assert np.mean(slab[:, :, inner] == whole[:, :, z0:z1][:, :, inner]) > 0.995
    for k in (0, -1):  # the cut faces: about the brain's cross-section there, not eroded away
        face = slab[:, :, k].sum()
        assert face >= 0.9 * whole[:, :, z0:z1][:, :, k].sum() and face > 0.6 * truth[:, :, z0:z1][:, :, k].sum()


def test_coherence_threshold_follows_the_echo_count():
    """masking.default_coherence_threshold: 0.5 for multi-echo phase, 0.3 for a single echo.  A block of
    moderately incoherent phase (a checkerboard of +-1.1 rad on a ramp: local coherence 0.41-0.47) leaves
    a multi-echo mask and stays in a single-echo one; random phase (coherence ~0.1) leaves both."""
    ball, x = _ball()
    mag = np.where(ball, 1.0, 0.0).astype(np.float32)
    phase = (0.3 * x).astype(np.float32)
    block = np.zeros(ball.shape, bool)
    block[10:22, 10:22, 4:12] = True
    inner = np.zeros_like(block)
    inner[12:20, 12:20, 6:10] = True
    checker = (np.indices(ball.shape).sum(0) % 2 * 2 - 1).astype(np.float32)
    phase[block] += 1.1 * checker[block]
    coh = masking.phase_coherence(phase, (1, 1, 1), 1.5)[inner]
    assert 0.3 < coh.min() and coh.max() < 0.5  # the premise of the test
    assert masking.default_coherence_threshold(phase) == masking.COHERENCE_THRESHOLD_SINGLE_ECHO == 0.3
    assert masking.default_coherence_threshold(phase[..., None]) == 0.3  # a 4-D stack of one echo
    two = np.stack([phase, 2 * phase], -1)
    assert masking.default_coherence_threshold(two) == masking.COHERENCE_THRESHOLD_MULTI_ECHO == 0.5
    for single in (phase, phase[..., None]):
        assert np.all(masking.remove_unreliable(ball, mag, (1, 1, 1), phase=single)[inner])
    assert not np.any(masking.remove_unreliable(ball, mag, (1, 1, 1), phase=two) & inner)
    assert not np.any(masking.remove_unreliable(ball, mag, (1, 1, 1), phase=phase, coherence_threshold=0.5) & inner)
    noise = phase.copy()
    noise[block] = np.random.default_rng(1).uniform(-np.pi, np.pi, int(block.sum()))
    assert not np.any(masking.remove_unreliable(ball, mag, (1, 1, 1), phase=noise) & inner)
    # 0 disables the rule; the shape check holds with the rule off too
    assert np.array_equal(masking.remove_unreliable(ball, mag, (1, 1, 1), phase=noise, coherence_threshold=0), ball)
    with pytest.raises(ValueError, match="phase shape"):
        masking.remove_unreliable(ball, mag, (1, 1, 1), phase=phase[:-1], coherence_threshold=0)


def test_brain_mask_excludes_dark_skull_void_inside_the_outline():
    """A signal void inside the brain outline (e.g. a haemorrhage core or air) is filled by the
    hole filling, then removed again: its phase is noise."""
    mag, truth = synthetic_head(seed=5)
    c = (np.arange(64) - 32 + 0.5) * 3.0
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    void = np.sqrt((x - 25) ** 2 + y**2 + z**2) < 7.0
    mag[void] = np.abs(np.random.default_rng(5).normal(0, 0.025, mag[void].shape))
    m = masking.brain_mask(mag, (3, 3, 3))
    assert not np.any(m & void)
    assert masking.brain_mask(mag, (3, 3, 3), min_signal=0.0)[void].all()  # the old behaviour
    assert dice(m, truth & ~void) >= 0.95


def test_default_erosion_is_2mm_but_at_least_one_voxel():
    """``erode_radius_mm=None`` (default) erodes by max(DEFAULT_ERODE_MM = 2 mm, largest voxel edge)."""
    assert masking.DEFAULT_ERODE_MM == 2.0
    mag, _ = synthetic_head(seed=6)
    for vs, expect in (((3.0, 3.0, 3.0), 3.0), ((1.0, 1.0, 1.0), 2.0), ((1.0, 1.0, 2.5), 2.5)):
        m = masking.brain_mask(mag, vs)
        assert np.array_equal(m, masking.brain_mask(mag, vs, erode_radius_mm=expect)), vs
    # at 3 mm a 2 mm erosion would keep the outer voxel layer (extra-cerebral CSF): the default does not
    m3, m2 = masking.brain_mask(mag, (3, 3, 3)), masking.brain_mask(mag, (3, 3, 3), erode_radius_mm=2.0)
    assert m3.sum() < m2.sum() and not np.any(m3 & ~m2)


def _surface_scene(n=48):
    """A 1 mm ball brain (radius 16, magnitude 100) with a dark cortical vein (20: a void) running along its
    surface half inside it, a bright CSF layer (100) to radius 19, a skull shell at noise level (2) beyond,
    a haemorrhage core (20) enclosed by the brain and a second dark tube (20) in the scalp 8 mm out."""
    c = np.arange(n) - n / 2 + 0.5
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x ** 2 + y ** 2 + z ** 2)
    brain = r <= 16
    mag = np.full(brain.shape, 100.0, np.float32)
    mag[(r > 19) & (r <= 22)] = 2.0  # skull
    vein = (np.hypot(x, r - 16.5) <= 1.2) & (z > 0) & (r <= 17.2)
    mag[vein] = 20.0
    deep = (np.hypot(x, r - 24.5) <= 1.2) & (z > 0)
    mag[deep] = 20.0
    core = (np.sqrt((x - 4) ** 2 + y ** 2 + z ** 2) <= 2.5)
    mag[core] = 20.0
    mask = masking.remove_unreliable(brain, mag, (1, 1, 1))  # the vein's inner half and the core leave the mask
    return mag, mask, vein, deep, core, brain


def test_surface_voids_are_the_dark_voxels_next_to_the_mask_not_skull_or_hole():
    """Known answer: the returned voxels are exactly the vein's voxels outside the mask with its holes filled
    (within 2 mm of it): not the enclosed core (a hole, which chi's support fills anyway), not the skull at
    noise level, not the bright CSF, not the tube 8 mm out."""
    mag, mask, vein, deep, core, brain = _surface_scene()
    from scipy import ndimage

    filled = ndimage.binary_fill_holes(mask)
    assert core.any() and not (mask & core).any() and filled[core].all()  # the core is a hole
    out = masking.surface_voids(mag, mask, (1, 1, 1))
    expected = vein & ~filled
    assert expected.sum() > 50
    assert np.array_equal(out, expected)
    assert not (out & deep).any() and not (out & core).any()
    # a 4-D magnitude is combined by root-sum-of-squares first: the same voxels
    assert np.array_equal(masking.surface_voids(np.stack([mag, 0.5 * mag], -1), mask, (1, 1, 1)), out)
    # darker than the floor (0.1 x the median) is skull or air, not a void; deeper search reaches the far tube
    assert not masking.surface_voids(np.where(vein, 5.0, mag).astype(np.float32), mask, (1, 1, 1)).any()
    assert (masking.surface_voids(mag, mask, (1, 1, 1), depth_mm=9.0) & deep).any()


def test_chi_support_adds_surface_voids_only_with_long_echoes():
    """chi's support in the chain: the mask's holes filled, plus the surface voids at 7 T with a 15 ms echo
    (28 rad/ppm), not at 3 T with 20 ms or 7 T with a mean TE of 10 ms, nor without the magnitude."""
    from qsmprep.dl.restore import chi_support, support_mask

    mag, mask, vein, _, _, _ = _surface_scene()
    base = support_mask(mask)
    on = chi_support(mask, mag, (1, 1, 1), 7.0, 0.015)
    assert np.array_equal(on, base | masking.surface_voids(mag, mask, (1, 1, 1))) and (on & ~base).any()
    for b0, te in ((3.0, 0.020), (7.0, 0.010)):
        assert np.array_equal(chi_support(mask, mag, (1, 1, 1), b0, te), base)
    assert np.array_equal(chi_support(mask, None, (1, 1, 1), 7.0, 0.015), base)
    assert np.array_equal(chi_support(mask, mag, (1, 1, 1), 7.0, 0.015, surface_voids=False), base)
    assert np.array_equal(chi_support(mask, mag, (1, 1, 1), 3.0, 0.020, surface_voids=True), on)


def test_void_limit_is_lower_for_a_single_echo():
    """The void rule's magnitude limit (session 23): 0.3 of the median for multi-echo data, 0.2 for one echo, whose
    long echo darkens iron-rich nuclei with coherent phase.  A void at 0.25 x the median is cut from multi-echo data
    (4-D magnitude or phase) and kept in single-echo data; at 0.15 x it is cut from both; an explicit limit wins."""
    ball, _ = _ball()
    dark = np.zeros(ball.shape, bool)
    dark[14:18, 14:18, 14:18] = True
    one = np.where(ball, 100.0, 0.0).astype(np.float32)
    one[dark] = 25.0
    two = np.stack([one, 0.9 * one], axis=-1)  # two echoes: the same contrast
    assert masking.default_min_signal(one) == masking.VOID_MIN_SIGNAL_SINGLE_ECHO == 0.2
    assert masking.default_min_signal(two) == masking.VOID_MIN_SIGNAL_MULTI_ECHO == 0.3
    assert masking.default_min_signal(one, phase=np.zeros(ball.shape + (3,))) == 0.3  # the phase's echoes count
    assert masking.default_min_signal(one[..., None]) == 0.2  # 4-D with one echo
    assert np.array_equal(masking.remove_unreliable(ball, one, (1, 1, 1)), ball)
    assert np.array_equal(masking.remove_unreliable(ball, two, (1, 1, 1)), ball & ~dark)
    assert np.array_equal(masking.remove_unreliable(ball, one, (1, 1, 1), min_signal=0.3), ball & ~dark)
    one[dark] = 15.0
    assert np.array_equal(masking.remove_unreliable(ball, one, (1, 1, 1)), ball & ~dark)
