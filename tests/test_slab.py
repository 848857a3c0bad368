"""Known-answer tests for qsmprep.qsm.slab: a slab's chi trend along its cut axis, from R2* classes."""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.qsm import slab

TE = (0.004, 0.010, 0.016, 0.022)


def _ball(n=40, r=16.0):
    g = np.meshgrid(*[np.arange(n) - (n - 1) / 2] * 3, indexing="ij")
    return g, (g[0] ** 2 + g[1] ** 2 + (g[2] / 1.2) ** 2) <= r ** 2


def test_cut_axis_known_answers():
    _, ball = _ball()
    vs = (2.0, 2.0, 2.0)
    head = np.pad(ball, 8)  # a whole head 16 mm or more from every face
    assert slab.cut_axis(head, vs) is None
    assert slab.cut_axis(ball[:, :, 12:28], vs) == 2  # a slab about the middle: both faces cut
    assert slab.cut_axis(ball[14:26], vs) == 0
    assert slab.cut_axis(np.pad(ball[:, :, :26], 8)[8:-8, 8:-8, 8:], vs) is None  # one face cut (the top missing)
    assert slab.cut_axis(np.zeros((8, 8, 8), bool), vs) is None
    # a slab whose outermost slices lost their signal still is one (within 8 mm of each face)
    dropped = np.pad(ball[:, :, 12:28], ((0, 0), (0, 0), (2, 2)))
    assert slab.cut_axis(dropped, vs) == 2 and slab.cut_axis(dropped, vs, band_mm=2.0) is None


def test_r2star_loglinear_known_answer_and_receive_bias():
    rng = np.random.default_rng(0)
    r2 = rng.uniform(10, 60, (6, 7, 8)).astype(np.float32)
    bias = rng.uniform(0.5, 2.0, r2.shape)  # a receive-coil bias multiplies every echo alike
    mag = 800.0 * bias[..., None] * np.exp(-np.multiply.outer(r2, TE))
    out = slab.r2star_loglinear(mag, TE)
    assert out.dtype == np.float32 and np.allclose(out, r2, rtol=1e-4)
    mask = np.zeros(r2.shape, bool)
    mask[2:4] = True
    assert np.all(slab.r2star_loglinear(mag, TE, mask)[~mask] == 0)
    with pytest.raises(ValueError, match="one volume per echo time"):
        slab.r2star_loglinear(mag[..., :1], TE[:1])


def _slab_case(b_true=4e-4):
    """Two tissues (R2* 15 and 35 1/s, chi -0.02 and +0.05 ppm) whose share changes along z, and a chi error that
    grows linearly along z (b_true ppm per mm): the slab a chain leaves."""
    g, ball = _ball()
    m = ball[:, :, 10:30]
    z = g[2][:, :, 10:30]
    deep = (g[0][:, :, 10:30] ** 2 + g[1][:, :, 10:30] ** 2) < (9.0 - 0.3 * z) ** 2  # more of tissue 2 at the bottom
    r2 = np.where(deep, 35.0, 15.0).astype(np.float32)
    truth = np.where(m, np.where(deep, 0.05, -0.02), 0).astype(np.float32)
    vs = (1.0, 1.0, 2.0)
    x = np.arange(m.shape[2])[None, None, :] * vs[2]
    chi = np.where(m, truth + b_true * x, 0).astype(np.float32)
    return chi, truth, m, r2, vs


def test_slab_trend_recovers_the_error_not_the_anatomy():
    chi, truth, m, r2, vs = _slab_case()
    assert slab.slab_trend(chi, m, r2, 2, vs) == pytest.approx(4e-4, rel=1e-6)
    assert slab.slab_trend(truth, m, r2, 2, vs) == pytest.approx(0.0, abs=1e-9)  # the truth's trend is composition
    # the plain trend of chi over the mask would also take the tissue shares' trend for an error
    x = np.broadcast_to(np.arange(m.shape[2])[None, None, :] * 2.0, m.shape)[m]
    assert abs(np.polyfit(x, truth[m], 1)[0]) > 5e-4


def test_remove_slab_trend_known_answer_and_whole_head_untouched():
    chi, truth, m, r2, vs = _slab_case()
    out, rec = slab.remove_slab_trend(chi, m, r2, vs)
    assert rec["applied"] and rec["axis"] == 2 and rec["trend_ppm_per_mm"] == pytest.approx(4e-4, rel=1e-5)
    assert "estimated from 16 R2* classes and removed (+0.0152 ppm" in rec["message"]  # the report's note
    assert out[m].mean() == pytest.approx(chi[m].mean(), abs=1e-6)  # chi's mean is kept
    err = (out - out[m].mean()) - (truth - truth[m].mean())
    assert np.abs(err[m]).max() < 1e-5 and np.all(out[~m] == 0)
    # a whole head (no cut axis), or one echo (no R2*): the same array back
    head = np.pad(_ball()[1], 8)
    whole = np.where(head, 0.01, 0).astype(np.float32)
    same, rec = slab.remove_slab_trend(whole, head, np.full(head.shape, 20.0, np.float32), vs)
    assert same is whole and not rec["applied"] and rec["reason"] == "no cut axis"
    same, rec = slab.remove_slab_trend(chi, m, None, vs)
    assert same is chi and not rec["applied"]
    # a classical inversion's chi mask is eroded away from the cut faces: the brain mask decides, chi's mask is fitted
    eroded = m.copy()
    eroded[:, :, :3] = eroded[:, :, -3:] = False
    assert slab.cut_axis(eroded, (1.0, 1.0, 1.0), band_mm=2.0) is None
    out, rec = slab.remove_slab_trend(chi, eroded, r2, vs, brain_mask=m)
    assert rec["applied"] and rec["trend_ppm_per_mm"] == pytest.approx(4e-4, rel=1e-5) and np.all(out[~eroded] == 0)


def test_graph_slab_trend_node_for_multi_echo_only():
    from qsmprep.workflows.qsm import init_qsm_wf

    me = init_qsm_wf(echo_times_s=list(TE), b0_t=3.0)
    edges = {(u.name, v.name, src, dst) for u, v, d in me._graph.edges(data=True) for src, dst in d["connect"]}
    assert ("inversion", "slab_trend", "out_chi", "in_chi") in edges
    assert ("load_echoes", "slab_trend", "out_magnitude", "in_magnitude") in edges
    assert ("slab_trend", "reference", "out_chi", "in_chi") in edges
    assert ("slab_trend", "qc_records", "out_record", "in2") in edges
    assert ("brain_mask", "slab_trend", "out_mask", "in_brain_mask") in edges
    off = {n.name for n in init_qsm_wf(echo_times_s=list(TE), b0_t=3.0, slab_trend="off")._get_all_nodes()}
    assert "slab_trend" not in off  # --slab-trend off
    se = init_qsm_wf(echo_times_s=[0.02], b0_t=3.0)
    names = {n.name for n in se._get_all_nodes()}
    edges = {(u.name, v.name, src, dst) for u, v, d in se._graph.edges(data=True) for src, dst in d["connect"]}
    assert "slab_trend" not in names and ("inversion", "reference", "out_chi", "in_chi") in edges


def test_slab_trend_node_on_a_slab_with_an_eroded_chi_mask(tmp_path):
    """The node (what the graph runs): the echoes' magnitudes -> R2*, the brain mask reaching the cut faces, chi on a
    mask eroded away from them (a classical inversion's) -> the trend removed and recorded."""
    import json

    import nibabel as nb
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import SlabTrend

    chi, truth, m, r2, vs = _slab_case()
    eroded = m.copy()
    eroded[:, :, :4] = eroded[:, :, -4:] = False
    chi = np.where(eroded, chi, 0).astype(np.float32)
    mag = (1000.0 * np.exp(-np.multiply.outer(np.where(m, r2, 20.0), TE))).astype(np.float32)
    aff = np.diag([*vs, 1.0])

    def save(a, name):
        nb.save(nb.Nifti1Image(np.asarray(a), aff), str(tmp_path / name))
        return str(tmp_path / name)

    node = pe.Node(SlabTrend(in_chi=save(chi, "chi.nii.gz"), in_mask=save(eroded.astype(np.uint8), "m.nii.gz"),
                             in_brain_mask=save(m.astype(np.uint8), "b.nii.gz"), in_magnitude=save(mag, "mag.nii.gz"),
                             echo_times=list(TE)), name="slab", base_dir=str(tmp_path))
    res = node.run()
    rec = json.loads(open(res.outputs.out_record).read())
    assert rec["applied"] and rec["axis"] == 2 and rec["trend_ppm_per_mm"] == pytest.approx(4e-4, rel=1e-4)
    out = np.asarray(nb.load(res.outputs.out_chi).dataobj)
    err = (out - out[eroded].mean()) - (truth - truth[eroded].mean())
    assert np.abs(err[eroded]).max() < 1e-5
