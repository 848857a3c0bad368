"""Issue #14: the per-run QC flags a run that went wrong, with known answers for each measure."""

from __future__ import annotations

import numpy as np
import pytest
from test_acquisitions import _bowl, _chain, _head, _signal

from qsmprep.qsm import qc


def _measures(out, vs, te):
    extra = {}
    if len(te) > 1:
        extra = dict(phase_uw=out["uw"], field_hz=out["fit"].field_hz, offset_rad=out["fit"].offset_rad)
    return qc.measures(brain_mask=out["mask"], final_mask=out["eroded"], local_ppm=out["local"], chi_ppm=out["chi"],
                       magnitude=out["mag"], voxel_size=vs, te_s=te, **extra)


@pytest.fixture(scope="module")
def single_echo_offset_runs():
    chi, brain, m0 = _head()
    vs, te = (3.0, 3.0, 3.0), (0.020,)
    mag, ph = _signal(chi, brain, m0, vs, te, offset=_bowl(chi.shape, vs, brain))
    bad = _chain(mag, ph, vs, te, single_echo_offset="0")  # the chain of issue #14: the offset reaches chi
    good = _chain(mag, ph, vs, te)
    return bad, good, vs, te


def test_qc_flags_the_single_echo_offset_run(single_echo_offset_runs):
    """Issue #14: single echo + receive-phase offset finished with exit 0 and no warning; the QC flags it."""
    bad, good, vs, te = single_echo_offset_runs
    report = qc.assess(_measures(bad, vs, te))
    assert "lowfreq_share" in report["failed"] and not report["passed"]
    assert any("phase offset or background field is left" in w for w in report["warnings"])
    assert "lowfreq_share" not in qc.assess(_measures(good, vs, te))["failed"]


def test_qc_flags_a_wrong_phase_sign():
    chi, brain, m0 = _head()
    vs, te = (3.0, 3.0, 3.0), (0.005, 0.011, 0.017)
    mag, ph = _signal(chi, brain, m0, vs, te)
    wrong = _chain(mag, -ph, vs, te, phase_sign="1")  # other handedness, taken as stored
    right = _chain(mag, -ph, vs, te, phase_sign="auto")
    assert _measures(wrong, vs, te)["sign_evidence"] == -1
    assert "sign_evidence" in qc.assess(_measures(wrong, vs, te))["failed"]
    assert "sign_evidence" not in qc.assess(_measures(right, vs, te))["failed"]
    assert right["records"]["phase_sign"]["sign"] == -1


def test_echo_disagreement_known_answer():
    rng = np.random.default_rng(0)
    shape, te = (10, 10, 10), np.array([0.005, 0.010, 0.015])
    f = rng.normal(0, 20, shape)
    ph = (0.2 + 2 * np.pi * f[..., None] * te).astype(np.float32)
    mask = np.ones(shape, bool)
    assert qc.echo_disagreement(ph, f, np.full(shape, 0.2), te, mask) == 0.0
    bad = rng.random(shape) < 0.1
    ph[bad, 2] += 2 * np.pi  # one echo unwrapped one turn off in 10 % of the voxels
    assert abs(qc.echo_disagreement(ph, f, np.full(shape, 0.2), te, mask) - bad.mean()) < 1e-9
    assert qc.echo_disagreement(ph[..., :1], f, f, te[:1], mask) is None


def test_mask_kept_and_lowfreq_share_known_answers():
    m = np.zeros((20, 20, 20), bool)
    m[2:18, 2:18, 2:18] = True
    e = np.zeros_like(m)
    e[2:18, 2:18, 2:10] = True
    assert qc.mask_kept(e, m) == 0.5
    g = np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")
    assert qc.lowfreq_share(0.01 * g[0] ** 2, m, (1, 1, 1)) > 0.999  # a quadratic is all low-order
    noise = np.random.default_rng(1).normal(0, 1, m.shape)
    assert qc.lowfreq_share(noise, m, (1, 1, 1)) < 0.01


def test_dgm_contrast_sign_known_answer():
    chi = np.zeros((10, 10, 10), np.float32)
    labels = np.zeros(chi.shape, np.int16)
    labels[2:4, 2:4, 2:4] = 5
    chi[labels == 5] = 0.1
    names = {5: "pallidum_L", 9: "thalamus_L"}
    mask = np.ones(chi.shape, bool)
    assert qc.dgm_contrast(chi, labels, names, mask) > 0
    assert qc.dgm_contrast(-chi, labels, names, mask) < 0
    assert qc.dgm_contrast(chi, labels, {9: "thalamus_L"}, mask) is None


def test_assess_rule_and_messages():
    values = {"mask_kept": 0.5, "lowfreq_share": 0.01, "echo_disagreement": None, "chi_range": float("nan"),
              "sign_evidence": 1}
    report = qc.assess(values, {"mask_kept": ("min", 0.8), "lowfreq_share": ("max", 0.3), "echo_disagreement": ("max", 0.02),
                                "chi_range": ("max", 1.0), "sign_evidence": ("min", 0)})
    assert report["failed"] == ["mask_kept"] and not report["passed"]
    (line,) = report["warnings"]
    assert line.startswith("QC: only 50% of the brain mask") and line.endswith(".") and "\n" not in line
    assert qc.assess({"mask_kept": 0.95})["passed"]


def test_edge_coverage_known_answer_flags_a_slab():
    """A brain inside the field of view scores 0; the same brain cut to a slab touches two faces and is flagged."""
    g = np.meshgrid(*[np.arange(48) - 23.5] * 3, indexing="ij")
    brain = (g[0] / 15) ** 2 + (g[1] / 17) ** 2 + (g[2] / 14) ** 2 <= 1
    assert qc.edge_coverage(brain, (2.0, 2.0, 2.0)) == 0.0
    slab = brain[:, :, 18:30]  # 24 mm about the middle: its faces cut the brain near its widest
    val = qc.edge_coverage(slab, (2.0, 2.0, 2.0))
    assert val > 0.9
    report = qc.assess({"edge_coverage": val})
    assert report["failed"] == ["edge_coverage"] and "covers part of the brain" in report["warnings"][0]
    assert "does not measure chi's trend along the cut axis" in report["warnings"][0]  # what a user can still compare
    # one cut face (a field of view that misses the top of the head) counts too
    top_cut = brain[:, :, :34]
    assert qc.edge_coverage(top_cut, (2.0, 2.0, 2.0)) > 0.25
    assert qc.edge_coverage(np.zeros((4, 4, 4), bool)) == 0.0


def test_weak_paramagnetic_tail_is_flagged_known_answer():
    """A map whose iron-rich nuclei and veins came out too low has a short positive tail: the
    ``tail_skewness`` check (limit from the validation heads) flags it, a map with its tail passes."""
    from qsmprep.qsm.phase_sign import tail_skewness

    rng = np.random.default_rng(3)
    mask = np.ones((40, 40, 40), bool)
    tissue = rng.normal(0.0, 0.02, mask.shape)  # symmetric: quantile skewness 0 up to sampling
    assert abs(tail_skewness(tissue, mask)) < 0.02
    iron = np.zeros(mask.shape, bool)
    iron[:, :, :4] = True  # 10 % of the voxels iron-rich / venous
    good = np.where(iron, 0.15, tissue)
    weak = np.where(iron, 0.02, tissue)  # the same sources at about a seventh of their chi
    limit = qc.THRESHOLDS["tail_skewness"][1]
    assert tail_skewness(good, mask) > limit > tail_skewness(weak, mask)
    rep = qc.assess({"tail_skewness": tail_skewness(weak, mask), "sign_evidence": 1})
    assert rep["failed"] == ["tail_skewness"] and "paramagnetic tail is weak" in rep["warnings"][0]
    assert qc.assess({"tail_skewness": tail_skewness(good, mask), "sign_evidence": 1})["passed"]


def test_field_noise_share_known_answer_and_multi_echo_scope():
    """A linear field uniform on [-a, a] (interquartile range a, which the noise estimate cancels) plus white noise
    of sd sigma: the share is sigma / a.  The check flags a noisy multi-echo run, and a single echo at its own limit."""
    rng = np.random.default_rng(3)
    n, a = 40, 0.01
    ramp = np.broadcast_to(np.linspace(-a, a, n)[:, None, None], (n, n, n))
    mask = np.ones((n, n, n), bool)
    for sigma in (0.001, 0.0035):
        field = ramp + rng.normal(0, sigma, (n, n, n))
        assert qc.field_noise_share(field, mask) == pytest.approx(sigma / a, rel=0.05)
    limit = qc.THRESHOLDS["field_noise_share"][1]
    noisy = qc.field_noise_share(ramp + rng.normal(0, 0.0035, (n, n, n)), mask)
    assert noisy > limit > qc.field_noise_share(ramp + rng.normal(0, 0.001, (n, n, n)), mask)
    rep = qc.assess({"field_noise_share": noisy, "echoes": 4})
    assert rep["failed"] == ["field_noise_share"] and "SNR is low" in rep["warnings"][0]
    assert rep["thresholds"]["field_noise_share"]["applies_to"] == "multi-echo"
    # a single echo has its own, higher limit (it meets its lower target at more noise)
    single = qc.THRESHOLDS["field_noise_share_single_echo"]
    assert single[2:] == ("single-echo", "field_noise_share") and single[1] > limit
    assert noisy < single[1] and qc.assess({"field_noise_share": noisy, "echoes": 1})["passed"]
    noisier = qc.field_noise_share(ramp + rng.normal(0, 0.005, (n, n, n)), mask)
    rep = qc.assess({"field_noise_share": noisier, "echoes": 1})
    assert noisier > single[1] and rep["failed"] == ["field_noise_share"] and "SNR is low" in rep["warnings"][0]
    assert rep["thresholds"]["field_noise_share_single_echo"] == {"kind": "max", "limit": single[1],
                                                                  "applies_to": "single-echo",
                                                                  "measure": "field_noise_share"}
    assert qc.assess({"field_noise_share": noisier})["passed"]  # echo count unknown: not checked
    assert np.isnan(qc.field_noise_share(np.zeros((n, n, n)), mask))  # no range
    assert np.isnan(qc.field_noise_share(ramp, np.zeros((n, n, n), bool)))
