"""Atlas step: templates, DGM labels, registration to MNI on a simulated head, interfaces, workflow.

Registration here uses the ``testing`` parameters (2 mm template, coarse levels, a few seconds)
on 2 mm simulated heads from ``qsmprep.sim.phantom.make_head`` whose true labels are known.
The default (``fast``) parameters on a 1 mm head are in ``test_atlas_registration.py`` (slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.atlas import labels as L
from qsmprep.atlas import templates as T


# ----------------------------------------------------------------------------- templates / labels
def test_place_on_grid_known_shift():
    src = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    src_aff = np.eye(4)
    src_aff[:3, 3] = (-1, -2, 0)
    dst_aff = np.eye(4)
    dst_aff[:3, 3] = (-3, -2, 0)  # source origin is 2 voxels inside along x
    out = T.place_on_grid(src, src_aff, dst_aff, (5, 3, 4))
    assert out.shape == (5, 3, 4)
    np.testing.assert_array_equal(out[2:4], src)
    assert not out[:2].any() and not out[4:].any()
    half = src_aff.copy()
    half[0, 3] += 0.5
    with pytest.raises(ValueError, match="integer shift"):
        T.place_on_grid(src, half, dst_aff, (5, 3, 4))


def test_aal3_sits_on_the_template_grid():
    import nibabel as nb

    tpl = T.template_image(1)
    assert tpl.shape == (197, 233, 189)
    aal = T.aal3_on_template()
    assert aal.shape == tpl.shape
    raw = np.asarray(nb.load(str(T.aal3_files()[0])).dataobj)
    # AAL3 origin (-90, -126, -72) vs template (-98, -134, -72): shift (8, 8, 0) voxels.
    np.testing.assert_array_equal(aal[8:8 + 181, 8:8 + 217, 0:181], raw)


def test_aal3_to_dgm_mapping():
    a = np.array([0, 75, 76, 77, 78, 79, 80, 121, 150, 161, 163, 162, 164, 165, 166, 81, 1])
    np.testing.assert_array_equal(L.aal3_to_dgm(a), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 10, 10, 11, 12, 0, 0])


def test_dgm_template_dseg_anatomy():
    img = L.dgm_template_dseg()
    d = np.asarray(img.dataobj)
    assert d.dtype == np.int16 and set(np.unique(d)) == set(range(13))
    ijk = np.argwhere(d > 0)
    x = (img.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0]
    lab = d[tuple(ijk.T)]
    for dl in L.DGM_LABELS:  # left labels have x < 0 (RAS), right x > 0
        xs = x[lab == dl.index]
        assert (np.median(xs) < 0) == (dl.hemisphere == "L"), dl.name
    vol = {dl.name: int((d == dl.index).sum()) for dl in L.DGM_LABELS}  # mm^3 at 1 mm
    assert 3000 < vol["caudate_L"] < 9000 and 5000 < vol["thalamus_R"] < 15000
    assert 100 < vol["red_nucleus_L"] < 1000
    tab = L.dseg_table()
    assert list(tab["index"]) == list(range(1, 13)) and tab["name"].iloc[6] == "thalamus_L"


def test_dice_known_answer():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[:2] = True  # 32 voxels
    b[1:3] = True  # 32 voxels, 16 shared
    assert L.dice(a, b) == pytest.approx(0.5)
    assert L.dice(a, a) == 1.0 and L.dice(b & False, b & False) == 1.0
    p = np.zeros((4, 4, 4), np.int16)
    p[:2] = 1
    t = np.zeros_like(p)
    t[1:3] = 2
    t[:1] = 1
    assert L.dice_per_structure(p, t)["caudate"] == pytest.approx(2 * 32 / (32 + 48))


# ----------------------------------------------------------------------------- registration
def _magnitude(head, te_s=0.02):
    """GRE magnitude of a simulated head at one echo time: M0 exp(-TE R2*)."""
    return (head.m0 * np.exp(-te_s * head.r2star)).astype(np.float32)


@pytest.fixture(scope="module")
def head2mm():
    from qsmprep.sim.phantom import make_head

    return make_head(voxel_size=(2.0, 2.0, 2.0), seed=1)


@pytest.fixture(scope="module")
def registered(head2mm, tmp_path_factory):
    import nibabel as nb

    from qsmprep.atlas.registration import register_to_template, warp_labels_to_run

    h = head2mm
    mag = nb.Nifti1Image(_magnitude(h), h.affine)
    mask = nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine)
    out = tmp_path_factory.mktemp("reg")
    reg = register_to_template(mag, mask, out_dir=out, flavor="testing", num_threads=2)
    warped = np.asarray(warp_labels_to_run(mag, reg.from_mni).dataobj)
    return reg, warped, mag, mask


def test_registration_dice_on_simulated_head(head2mm, registered):
    reg, warped, _, _ = registered
    assert reg.to_mni.exists() and reg.from_mni.exists() and reg.flavor == "testing"
    assert warped.dtype == np.int16 and set(np.unique(warped)) <= set(range(13))
    d = L.dice_per_structure(warped, head2mm.labels)
    for s in ("caudate", "putamen", "thalamus"):
        assert d[s] >= 0.7, (s, d)


def test_roi_means_from_warped_labels_match_truth(head2mm, registered):
    """Given the true chi, ROI means over the warped (1-voxel eroded) labels are within 0.01 ppm."""
    from qsmprep.atlas.rois import roi_table

    _, warped, _, _ = registered
    h = head2mm
    truth = h.dgm_true_means()
    df = roi_table(h.chi, warped, h.voxel_size, mask=h.brain_mask, erode_voxels=1)
    for _, row in df.iterrows():
        if row.structure in ("caudate", "putamen", "pallidum", "thalamus"):
            assert abs(row.mean_ppm - truth[f"{row.structure}_{row.hemisphere}"]) < 0.01, row.structure


def test_chi_to_mni_lands_on_the_template(head2mm, registered):
    """The warped head's brain mask overlaps the template brain mask (Dice > 0.85)."""
    import nibabel as nb

    from qsmprep.atlas.registration import warp_to_template

    reg, _, _, _ = registered
    h = head2mm
    m = warp_to_template(nb.Nifti1Image(h.brain_mask.astype(np.float32), h.affine), reg.to_mni,
                         resolution_mm=2)
    tpl = np.asarray(T.template_brain_mask(2).dataobj) > 0
    assert m.shape == tpl.shape
    assert L.dice(np.asarray(m.dataobj) > 0.5, tpl) > 0.85


def test_registration_is_reproducible(registered, tmp_path):
    """Same seed -> the same labels.  With several ITK threads ANTs' threaded metric sums may move a
    handful of boundary voxels (bit-identity needs one thread: ``test_atlas_registration.py``)."""
    from qsmprep.atlas.registration import register_to_template, warp_labels_to_run

    _, warped, mag, mask = registered
    reg = register_to_template(mag, mask, out_dir=tmp_path, flavor="testing",
                               num_threads=2)
    again = np.asarray(warp_labels_to_run(mag, reg.from_mni).dataobj)
    assert np.mean(again != warped) < 1e-3


def test_unknown_flavor_and_bad_mask_errors(tmp_path):
    import nibabel as nb

    from qsmprep.atlas.registration import prepare_moving, register_to_template

    img = nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4))
    with pytest.raises(ValueError, match="Unknown registration flavor"):
        register_to_template(img, out_dir=tmp_path, flavor="sloppy")
    with pytest.raises(ValueError, match="Mask shape"):
        prepare_moving(img, nb.Nifti1Image(np.ones((4, 4, 5), np.uint8), np.eye(4)))
    four = nb.Nifti1Image(np.stack([np.full((4, 4, 4), 3.0), np.full((4, 4, 4), 4.0)], -1).astype(np.float32),
                          np.eye(4))
    np.testing.assert_allclose(np.asarray(prepare_moving(four).dataobj), 1.0)  # RSS 5, scaled by p99


# ----------------------------------------------------------------------------- workflow
def test_atlas_wf_graph():
    from qsmprep.workflows.atlas import init_atlas_wf

    wf = init_atlas_wf(precise=True, omp_nthreads=2, name="atlas_run1_wf")
    inp = wf.get_node("inputnode")
    out = wf.get_node("outputnode")
    assert {"magnitude", "chi", "mask", "source_file", "t1w"} <= set(inp.inputs.copyable_trait_names())
    assert set(out.inputs.copyable_trait_names()) >= {"dseg", "dseg_tsv", "chi_mni", "xfm_to_mni",
                                                      "xfm_from_mni", "roi_tsv", "roi_json"}
    reg = wf.get_node("register")
    assert reg.inputs.precise is True and reg.n_procs == 2 and reg.inputs.seed == 20260
    assert wf.name == "atlas_run1_wf"


def test_atlas_wf_runs(head2mm, tmp_path):
    import json

    import nibabel as nb

    from qsmprep.workflows.atlas import init_atlas_wf

    h = head2mm
    paths = {}
    for name, data, dt in (("mag", _magnitude(h), np.float32), ("chi", h.chi, np.float32),
                           ("mask", h.brain_mask, np.uint8)):
        paths[name] = str(tmp_path / f"{name}.nii.gz")
        nb.save(nb.Nifti1Image(np.asarray(data, dt), h.affine), paths[name])
    wf = init_atlas_wf(flavor="testing", reference_region="whole-brain mean")
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.magnitude = paths["mag"]
    wf.inputs.inputnode.chi = paths["chi"]
    wf.inputs.inputnode.mask = paths["mask"]
    wf.inputs.inputnode.source_file = "/bids/sub-01/ses-1/anat/sub-01_ses-1_run-2_echo-1_part-mag_MEGRE.nii.gz"
    graph = wf.run()
    res = {n.name: n.result.outputs for n in graph.nodes()}
    dseg = nb.load(res["warp_labels"].dseg)
    assert dseg.shape == h.shape and np.allclose(dseg.affine, h.affine)
    assert L.dice_per_structure(np.asarray(dseg.dataobj), h.labels)["thalamus"] > 0.7
    chi_mni = nb.load(res["warp_chi"].out_file)
    assert chi_mni.shape == (197, 233, 189)
    assert res["register"].xfm_to_mni.endswith(".h5") and res["register"].xfm_from_mni.endswith(".h5")
    lines = open(res["roi_stats"].roi_tsv).read().splitlines()
    assert len(lines) == 13 and lines[1].startswith("sub-01\tses-1\tn/a\tn/a\t2\tcaudate\tL\t1\t")
    assert "whole-brain mean" in lines[1]
    assert json.load(open(res["roi_stats"].roi_json))["mean_ppm"]["Units"] == "ppm"


def test_registration_through_t1w(head2mm, tmp_path):
    """Magnitude -> T1w (rigid) -> MNI: the T1w (R1 contrast, full head) sits at another pose."""
    import nibabel as nb

    from qsmprep.atlas.registration import register_to_template, warp_labels_to_run

    h = head2mm
    mag = nb.Nifti1Image(_magnitude(h), h.affine)
    mask = nb.Nifti1Image(h.brain_mask.astype(np.uint8), h.affine)
    t = np.deg2rad(6.0)
    rot = np.eye(4)
    rot[:3, :3] = [[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]]
    rot[:3, 3] = (4.0, -3.0, 5.0)
    t1w = nb.Nifti1Image((h.r1 * (h.m0 > 0)).astype(np.float32), rot @ h.affine)  # moved head
    reg = register_to_template(mag, mask, t1w=t1w, out_dir=tmp_path, flavor="testing", num_threads=2)
    assert reg.via_t1w and reg.to_mni.exists() and reg.from_mni.exists()
    warped = np.asarray(warp_labels_to_run(mag, reg.from_mni).dataobj)
    d = L.dice_per_structure(warped, h.labels)
    for s in ("caudate", "putamen", "thalamus"):
        assert d[s] >= 0.7, (s, d)
