"""Issue #14: acquisitions beyond the benchmark family, each with a known answer.

Single-echo phase offsets (what background removal leaves of them is removed), thick slices (iSMV on
anisotropic voxels keeps harmonic fields; radii in mm), vendor conventions (phase sign, degrees,
scanner integers, real/imaginary parts give the same chi as the canonical input), orientation (B0
from the scanner-based transform, refusal without one) and unequal echo spacing.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsmprep.qsm import background as bg
from qsmprep.qsm.constants import hz_per_ppm, rad_per_ppm
from qsmprep.qsm.dipole import forward_field


# --------------------------------------------------------------------------- a small head


def _head(shape=(56, 60, 52), vs=(3.0, 3.0, 3.0), seed=0):
    """``(chi_ppm, brain, m0)``: an ellipsoidal brain with iron-rich nuclei, paramagnetic veins,
    diamagnetic white matter, and a skull/air shell outside it."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[(np.arange(n) - n / 2 + 0.5) * v for n, v in zip(shape, vs)], indexing="ij")

    def ell(c, r):
        return sum(((x - ci) / ri) ** 2 for x, ci, ri in zip(g, c, r)) <= 1.0

    head = ell((0, 0, 0), (78, 84, 72))
    brain = ell((0, 0, 0), (66, 72, 60))
    chi = np.zeros(shape, np.float32)
    chi[head & ~brain] = -2.0  # bone
    chi[~head] = 9.4  # air
    chi[ell((0, 0, 0), (50, 56, 44))] = -0.03  # white matter
    for c in ((-18, 6, 0), (18, 6, 0)):
        chi[ell(c, (7, 10, 9))] = 0.15  # pallidum-like
    for c in ((-10, -14, -12), (10, -14, -12)):
        chi[ell(c, (4, 5, 4))] = 0.12  # nigra-like
    for _ in range(10):  # veins: short paramagnetic segments
        c = rng.uniform(-40, 40, 3)
        axis = rng.integers(0, 3)
        r = [3.0, 3.0, 3.0]
        r[axis] = 18.0
        chi[ell(c, r) & brain] = 0.35
    chi += np.where(brain, rng.normal(0, 0.004, shape), 0).astype(np.float32)
    m0 = np.where(brain, 1.0, np.where(head, 0.15, 0.0)).astype(np.float32)
    m0 = np.where(chi > 0.1, 0.45, m0)  # short T2*: veins and iron are dark
    return chi.astype(np.float32), brain, m0


def _bowl(shape, vs, brain, span_rad=np.pi):
    """qsm-forward's receive-phase offset model: an ellipsoidal bowl spanning ``span_rad`` over the brain."""
    c = np.argwhere(brain).mean(0)
    w = np.array([35.0, 40.0, 30.0]) / np.asarray(vs)
    g = np.meshgrid(*[np.arange(n) - ci for n, ci in zip(shape, c)], indexing="ij")
    t = sum((x / wi) ** 2 for x, wi in zip(g, w))
    return (-t / (t[brain].max() - t[brain].min()) * span_rad).astype(np.float32)


def _signal(chi, brain, m0, vs, te_s, b0_t=3.0, offset=None, snr=200.0, seed=1, b0_dir=(0, 0, 1)):
    """``(mag4d, phase4d)`` with the field of ``chi`` (harmonic background included) and ``offset``."""
    rng = np.random.default_rng(seed)
    field = forward_field(chi, vs, b0_dir)
    field = field - field[brain].mean()
    mags, phases = [], []
    for te in te_s:
        ph = rad_per_ppm(b0_t, te) * field + (0 if offset is None else offset)
        sig = m0 * np.exp(-te * 20.0) * np.exp(1j * ph)
        sig = sig + (rng.normal(0, 1, chi.shape) + 1j * rng.normal(0, 1, chi.shape)) * (m0[brain].mean() / snr)
        mags.append(np.abs(sig))
        phases.append(np.angle(sig))
    return np.stack(mags, -1).astype(np.float32), np.stack(phases, -1).astype(np.float32)


def _chain(mag, phase, vs, te_s, b0_t=3.0, b0_dir=(0, 0, 1), single_echo_offset="auto", phase_sign="1",
           parts="mag-phase", units="auto"):
    """The app's graph on arrays (``workflows.qsm.init_qsm_wf``, node for node), with TKD for speed."""
    from qsmprep.qsm.echoes import combine_magnitude, fit_field, magnitude_phase
    from qsmprep.qsm.inversion import tkd
    from qsmprep.qsm.masking import brain_mask
    from qsmprep.qsm.offsets import remove_offset_residual
    from qsmprep.qsm.phase_sign import choose_phase_sign
    from qsmprep.qsm.reference import reference_mean
    from qsmprep.qsm.unwrap import unwrap_echoes

    mag, phase = magnitude_phase(mag, phase, parts, units)
    if phase.ndim == 3:
        mag, phase = mag[..., None], phase[..., None]
    mask = brain_mask(mag, vs, phase=phase)
    uw = unwrap_echoes(phase, mag, te_s, mask, method="romeo", voxel_size=vs)
    fit = fit_field(uw, mag, te_s, mask)
    local, eroded = bg.remove_background(np.nan_to_num(fit.field_hz) / hz_per_ppm(b0_t), mask, vs)
    records = {}
    if len(te_s) == 1 and single_echo_offset != "0":
        order = single_echo_offset if single_echo_offset == "auto" else int(single_echo_offset)
        local, records["offset_residual"] = remove_offset_residual(local, eroded, mask, vs, order=order)
    sign, records["phase_sign"] = choose_phase_sign(local, eroded, combine_magnitude(mag), vs, b0_dir, phase_sign)
    local = np.float32(sign) * local
    chi, _ = reference_mean(tkd(local, eroded, vs, b0_dir), eroded)
    return dict(chi=np.where(eroded, chi, 0).astype(np.float32), local=local, eroded=eroded, mask=mask, records=records,
                uw=uw, fit=fit, mag=mag)


def _xsim_like(chi, truth, mask):
    """Pearson correlation of the mean-referenced maps in ``mask`` (a fast stand-in for XSIM)."""
    a = chi[mask] - chi[mask].mean()
    b = truth[mask] - truth[mask].mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def head():
    return _head()


# --------------------------------------------------------------------------- single-echo offset


def test_nonharmonic_basis_known_answers():
    from qsmprep.qsm.offsets import n_basis, nonharmonic_basis

    mask = np.ones((20, 20, 20), bool)
    assert [n_basis(k) for k in (0, 1, 2, 3, 4)] == [0, 0, 1, 4, 10]
    basis = nonharmonic_basis(mask.shape, (2.0, 2.0, 2.0), mask, 4)
    assert len(basis) == 10
    # r^2 in 100 mm units has Laplacian 6 / 100^2 per mm^2: constant, the non-harmonic direction
    r2 = basis[0].astype(np.float64)
    d2 = sum(np.diff(r2, 2, axis=a)[tuple(slice(1, -1) if b != a else slice(None) for b in range(3))] for a in range(3)) / 4.0
    assert np.allclose(d2, 6e-4, rtol=1e-3)


def test_single_echo_offset_residual_removed(head):
    """Issue #14: a smooth quadratic receive-phase offset (qsm-forward's model) on one echo left a bowl in the
    local field that the inversion turned into a wrong map; the residual is now fitted out exactly."""
    chi, brain, m0 = head
    vs, te = (3.0, 3.0, 3.0), (0.020,)
    mag, ph0 = _signal(chi, brain, m0, vs, te)
    _, ph1 = _signal(chi, brain, m0, vs, te, offset=_bowl(chi.shape, vs, brain))
    clean = _chain(mag, ph0, vs, te, single_echo_offset="0")
    bad = _chain(mag, ph1, vs, te, single_echo_offset="0")
    fixed = _chain(mag, ph1, vs, te)
    m = clean["eroded"] & fixed["eroded"]
    err_bad = np.abs(bad["local"] - clean["local"])[m].mean()
    err_fixed = np.abs(fixed["local"] - clean["local"])[m].mean()
    assert fixed["records"]["offset_residual"]["order"] == 2
    assert fixed["records"]["offset_residual"]["explained"] > 0.8  # the bowl dominated the local field
    assert err_fixed < 0.1 * err_bad
    truth = np.where(brain, chi, 0)
    assert _xsim_like(fixed["chi"], truth, m) > _xsim_like(bad["chi"], truth, m) + 0.2
    assert _xsim_like(fixed["chi"], truth, m) > _xsim_like(clean["chi"], truth, m) - 0.05  # as good as without an offset


def test_offset_residual_leaves_a_clean_field_alone(head):
    from qsmprep.qsm.offsets import remove_offset_residual

    chi, brain, m0 = head
    vs = (3.0, 3.0, 3.0)
    f = forward_field(chi, vs)
    local, em = bg.remove_background(f - f[brain].mean(), brain, vs)
    out, rec = remove_offset_residual(local, em, brain, vs)
    assert rec["order"] == 2 and rec["explained"] < 0.05
    assert np.abs(out - local)[em].max() < 0.2 * np.abs(local[em]).max()
    out0, rec0 = remove_offset_residual(local, em, brain, vs, order=0)
    assert rec0["order"] == 0 and np.array_equal(out0, np.where(em, local, 0))


def test_offset_model_makes_the_total_field_consistent(head):
    """Subtracting the fitted offset model from the total field gives, after background removal, the corrected
    local field (for steps that use the total field, and the single-echo total field map)."""
    from qsmprep.qsm.offsets import offset_model, remove_offset_residual

    chi, brain, _ = head
    vs = (3.0, 3.0, 3.0)
    f = forward_field(chi, vs)
    total = (f - f[brain].mean() + _bowl(chi.shape, vs, brain) / rad_per_ppm(3.0, 0.02)).astype(np.float32)
    local, em = bg.remove_background(total, brain, vs)
    fixed, rec = remove_offset_residual(local, em, brain, vs)
    again, em2 = bg.remove_background(total - offset_model(total.shape, vs, brain, rec), brain, vs)
    assert np.array_equal(em, em2)
    assert np.abs(again - fixed)[em].max() < 5e-3 * np.abs(local[em]).max()  # iSMV solved to CG tolerance 1e-4
    assert np.abs(again - fixed)[em].mean() < 1e-3 * np.abs(local[em]).max()


# --------------------------------------------------------------------------- thick slices


@pytest.mark.parametrize("vs", [(1.0, 1.0, 2.0), (1.0, 1.0, 3.0), (0.6, 0.6, 2.0)])
def test_sphere_kernel_moments_isotropic_on_thick_slices(vs):
    """Issue #14: on anisotropic voxels the discrete sphere's second moments differed between axes, so iSMV
    solved an anisotropic Laplace problem (local-field xSIM 0.17-0.39 on a 1x1x3 / 1x1x2 mm head)."""
    shape = (40, 40, 40)
    r = bg.ismv_radius_mm(vs)
    k = bg.sphere_kernel(shape, vs, r).astype(np.float64)
    idx = np.nonzero(k)
    mom = [float((k[idx] * (np.where(i > n // 2, i - n, i) * v) ** 2).sum()) for i, n, v in zip(idx, shape, vs)]
    assert np.isclose(k.sum(), 1.0, atol=1e-6)
    assert max(mom) - min(mom) < 1e-6 * max(mom)


def test_sphere_kernel_unchanged_on_isotropic_voxels():
    for vs, r in (((1.0,) * 3, 2.0), ((2.0,) * 3, 4.0), ((1.0,) * 3, 12.0)):
        a = bg.sphere_kernel((32, 32, 32), vs, r)
        b = bg.sphere_kernel((32, 32, 32), vs, r, isotropic_moments=False)
        assert np.array_equal(a, b)


def test_ismv_radius_in_mm_known_answers():
    assert bg.ismv_radius_mm((1, 1, 1)) == 2.0
    assert bg.ismv_radius_mm((2, 2, 2)) == 4.0
    assert bg.ismv_radius_mm((1, 1, 2)) == 2.0
    assert bg.ismv_radius_mm((1, 1, 3)) == 3.0
    assert bg.ismv_radius_mm((0.6, 0.6, 2.0)) == 2.0


@pytest.mark.parametrize("vs", [(1.0, 1.0, 3.0), (1.5, 1.5, 4.5)])
def test_ismv_removes_a_harmonic_field_on_thick_slices(vs):
    """A harmonic field (x^2 - z^2 plus a ramp) is all background: iSMV must leave ~0 of it, and keep most of the mask."""
    shape = (48, 48, 20)
    g = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, vs)], indexing="ij")
    mask = sum((x / r) ** 2 for x, r in zip(g, (30.0, 30.0, 24.0))) <= 1
    field = (1e-3 * (g[0] ** 2 - g[2] ** 2) + 0.01 * g[1]).astype(np.float32)
    local, em = bg.ismv(field, mask, vs)
    assert em.sum() > 0.5 * mask.sum()
    assert np.abs(local[em]).max() < 1e-3 * np.abs(field[mask]).max()
    old_local, old_em = bg.ismv(field, mask, vs, radius_mm=bg.ismv_radius_mm(vs))
    assert np.array_equal(old_em, em)


# --------------------------------------------------------------------------- conventions


def test_scale_phase_units_known_answers():
    from qsmprep.qsm.echoes import complex_to_magnitude_phase, magnitude_phase, scale_phase_to_radians, wrap_to_pi

    ph = np.linspace(-np.pi, np.pi, 101, dtype=np.float32)[1:-1].reshape(-1, 1, 1)
    assert np.allclose(scale_phase_to_radians(np.rad2deg(ph), "deg"), ph, atol=1e-6)
    assert np.allclose(scale_phase_to_radians(np.rad2deg(ph)), ph, atol=1e-6)  # auto: degrees
    assert np.allclose(wrap_to_pi(scale_phase_to_radians(np.mod(ph, 2 * np.pi)) - ph), 0, atol=1e-6)  # [0, 2pi)
    assert np.allclose(scale_phase_to_radians(np.mod(np.rad2deg(ph), 360.0)), ph, atol=1e-5)  # 0..360 degrees
    codes = np.round(ph / np.pi * 2048).astype(np.int16)
    assert np.allclose(scale_phase_to_radians(codes, "scanner"), codes * np.pi / 2048, atol=1e-6)
    mag, out = complex_to_magnitude_phase(3.0 * np.cos(ph), 3.0 * np.sin(ph))
    assert np.allclose(mag, 3.0, atol=1e-6) and np.allclose(out, ph, atol=1e-6)
    mag2, out2 = magnitude_phase(3.0 * np.cos(ph), 3.0 * np.sin(ph), "real-imag")
    assert np.array_equal(out2, out)
    with pytest.raises(ValueError, match="phase units"):
        scale_phase_to_radians(ph, "grad")


@pytest.fixture(scope="module")
def me_run(head):
    chi, brain, m0 = head
    vs, te = (3.0, 3.0, 3.0), (0.005, 0.011, 0.017)
    mag, ph = _signal(chi, brain, m0, vs, te, offset=0.7 + _bowl(chi.shape, vs, brain, 1.0))
    return mag, ph, vs, te


@pytest.mark.parametrize("convention", ["sign", "degrees", "scanner", "realimag"])
def test_conventions_give_the_canonical_chi(me_run, convention):
    """Issue #14: a phase of the other handedness (with --phase-sign auto), in degrees, in 12-bit scanner
    integers or as real/imaginary parts gives the chi of the canonical input within 1e-3 ppm."""
    mag, ph, vs, te = me_run
    if convention == "scanner":
        codes = np.round(ph / np.pi * 2048).clip(-2048, 2047)
        ph = (codes * np.pi / 2048).astype(np.float32)
    canon = _chain(mag, ph, vs, te, phase_sign="auto")
    assert canon["records"]["phase_sign"]["sign"] == 1 and canon["records"]["phase_sign"]["decided_by"] == "auto"
    kw = dict(phase_sign="auto")
    if convention == "sign":
        first, second = mag, -ph
    elif convention == "degrees":
        first, second = mag, np.rad2deg(ph).astype(np.float32)
        kw.update(units="deg")
    elif convention == "scanner":
        first, second = mag, codes.astype(np.int16)
        kw.update(units="scanner")
    else:
        first, second = (mag * np.cos(ph)).astype(np.float32), (mag * np.sin(ph)).astype(np.float32)
        kw.update(parts="real-imag")
    out = _chain(first, second, vs, te, **kw)
    assert out["records"]["phase_sign"]["sign"] == (-1 if convention == "sign" else 1)
    assert np.array_equal(out["eroded"], canon["eroded"])
    assert np.abs(out["chi"] - canon["chi"]).max() <= 1e-3


def test_phase_sign_requested_and_flagged(me_run):
    """--phase-sign -1 negates; a map with the wrong sign is reported as not paramagnetic."""
    mag, ph, vs, te = me_run
    wrong = _chain(mag, ph, vs, te, phase_sign="-1")
    rec = wrong["records"]["phase_sign"]
    assert rec["sign"] == -1 and rec["decided_by"] == "user" and not rec["consistent"]
    assert "does NOT look paramagnetic" in rec["message"]
    right = _chain(mag, -ph, vs, te, phase_sign="-1")
    assert right["records"]["phase_sign"]["consistent"]


def test_phase_sign_undecided_keeps_the_stored_phase():
    from qsmprep.qsm.phase_sign import choose_phase_sign

    rng = np.random.default_rng(3)
    mask = np.zeros((32, 32, 32), bool)
    mask[4:28, 4:28, 4:28] = True
    local = np.where(mask, rng.normal(0, 0.01, mask.shape), 0).astype(np.float32)  # symmetric: no evidence
    sign, rec = choose_phase_sign(local, mask, np.ones(mask.shape, np.float32), (2, 2, 2))
    assert sign == 1 and rec["decided_by"] in ("default", "auto")
    if rec["decided_by"] == "default":
        assert "could not tell" in rec["message"]


def test_unequal_echo_spacing_field_known_answer():
    from qsmprep.qsm.echoes import fit_field

    te = np.array([0.004, 0.009, 0.017, 0.028])
    f = np.full((6, 6, 6), 37.5, np.float32)
    ph = 0.3 + 2 * np.pi * f[..., None] * te
    fit = fit_field(ph.astype(np.float32), np.ones(ph.shape, np.float32), te)
    assert np.allclose(fit.field_hz, 37.5, atol=1e-3) and np.allclose(fit.offset_rad, 0.3, atol=1e-4)


def test_unequal_echo_spacing_chain(head):
    """Non-integer TE ratios with wraps: the chain's field is the true one (ROMEO's temporal unwrapping)."""
    chi, brain, m0 = head
    vs, te = (3.0, 3.0, 3.0), (0.004, 0.009, 0.017, 0.028)
    mag, ph = _signal(chi, brain, m0, vs, te)
    out = _chain(mag, ph, vs, te)
    f = forward_field(chi, vs)
    truth = np.where(out["mask"], f - f[out["mask"]].mean(), 0) * hz_per_ppm(3.0)
    got = np.where(out["mask"], out["fit"].field_hz - out["fit"].field_hz[out["mask"]].mean(), 0)
    assert np.median(np.abs(got - truth)[out["mask"]]) < 0.5  # Hz; a wrap error would be 1/(2 TE) >= 18 Hz


# --------------------------------------------------------------------------- orientation


def test_scanner_affine_known_answers():
    from qsmprep.qsm.geometry import b0_direction_from_affine, scanner_affine
    from qsmprep.sim.forward import oblique_affine

    q = oblique_affine(np.diag([1.0, 1.0, 2.0, 1.0]), (0.0, 0.5, np.sqrt(0.75)), (10, 10, 10))
    template = np.diag([1.0, 1.0, 2.0, 1.0])
    aff, src = scanner_affine(template, 4, q, 1)  # sform aligned to MNI, qform scanner
    assert src == "qform" and np.allclose(np.abs(b0_direction_from_affine(aff)), [0, 0.5, np.sqrt(0.75)], atol=1e-6)
    assert scanner_affine(q, 1, template, 1)[1] == "sform"
    assert scanner_affine(q, 2, None, 0)[1] == "sform"  # aligned: the best there is
    with pytest.raises(ValueError, match="neither"):
        scanner_affine(None, 0, None, 0)
    with pytest.raises(ValueError, match="MNI152"):
        scanner_affine(template, 4, None, 0)


def _write(path, data, sform=None, scode=0, qform=None, qcode=0):
    import nibabel as nb

    hdr = nb.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(np.float32)
    img = nb.Nifti1Image(np.asarray(data, np.float32), None, header=hdr)
    img.header.set_sform(sform, code=scode)
    img.header.set_qform(qform, code=qcode)
    nb.save(img, str(path))


def test_bids_b0_from_qform_when_sform_is_template(tmp_path):
    """Issue #14: an sform aligned to a template no longer hides the scanner's B0 (taken from the qform)."""
    import nibabel as nb
    from conftest import make_bids

    from qsmprep.bids import collect_runs
    from qsmprep.sim.forward import oblique_affine

    bids = make_bids(tmp_path / "ds")
    b0 = np.array([0.0, np.sin(np.deg2rad(25)), np.cos(np.deg2rad(25))])
    for path in sorted((bids / "sub-01" / "anat").glob("*.nii.gz")):
        img = nb.load(str(path))
        q = oblique_affine(img.affine, b0, img.shape[:3])
        _write(path, np.asarray(img.dataobj), sform=img.affine, scode=4, qform=q, qcode=1)
    (run,) = collect_runs(bids)
    assert run.b0_source == "qform"
    assert np.allclose(np.abs(run.b0_dir), b0, atol=1e-5)
    assert "from the qform" in run.describe()


def test_bids_refuses_neither_transform_code(tmp_path):
    import nibabel as nb
    from conftest import make_bids

    from qsmprep.bids import InputError, collect_runs

    bids = make_bids(tmp_path / "ds")
    for path in sorted((bids / "sub-01" / "anat").glob("*.nii.gz")):
        img = nb.load(str(path))
        _write(path, np.asarray(img.dataobj))
    with pytest.raises(InputError, match="neither a qform nor an sform code set") as err:
        collect_runs(bids)
    text = str(err.value)
    assert text.endswith(".") and "\n" not in text and "B0" in text


def test_bids_part_real_imag(tmp_path):
    """GE: complex data as part-real/part-imag are found and read as one run."""
    import nibabel as nb
    from conftest import make_bids

    from qsmprep.bids import collect_runs

    bids = make_bids(tmp_path / "ds")
    anat = bids / "sub-01" / "anat"
    for e in (1, 2, 3):
        mag_p = anat / f"sub-01_echo-{e}_part-mag_MEGRE.nii.gz"
        ph_p = anat / f"sub-01_echo-{e}_part-phase_MEGRE.nii.gz"
        mag, ph = nb.load(str(mag_p)), nb.load(str(ph_p))
        m, p = np.asarray(mag.dataobj), np.asarray(ph.dataobj)
        for part, arr in (("real", m * np.cos(p)), ("imag", m * np.sin(p))):
            nb.save(nb.Nifti1Image(arr.astype(np.float32), mag.affine), str(anat / f"sub-01_echo-{e}_part-{part}_MEGRE.nii.gz"))
            (anat / f"sub-01_echo-{e}_part-{part}_MEGRE.json").write_text(f'{{"EchoTime": {[0.006, 0.012, 0.018][e - 1]}}}')
        for p_ in (mag_p, ph_p):
            p_.unlink()
            p_.with_name(p_.name.replace(".nii.gz", ".json")).unlink()
    (run,) = collect_runs(bids)
    assert run.parts == "real-imag" and run.n_echoes == 3
    assert all("part-real" in str(p) for p in run.magnitude) and all("part-imag" in str(p) for p in run.phase)


# --------------------------------------------------------------------------- the graph


def test_graph_single_echo_offset_and_sign_nodes():
    from qsmprep.workflows.qsm import init_qsm_wf

    se = {n.name: n for n in init_qsm_wf(echo_times_s=[0.02], b0_t=3.0, phase_sign="-1")._get_all_nodes()}
    assert se["offset_residual"].inputs.order == "auto" and se["phase_sign"].inputs.phase_sign == "-1"
    assert "qc" in se
    off = {n.name for n in init_qsm_wf(echo_times_s=[0.02], b0_t=3.0, single_echo_offset="0")._get_all_nodes()}
    assert "offset_residual" not in off
    me = {n.name: n for n in init_qsm_wf(echo_times_s=[0.01, 0.02], b0_t=3.0, parts="real-imag",
                                           phase_units="deg")._get_all_nodes()}
    assert "offset_residual" not in me  # several echoes fit the offset
    assert me["load_echoes"].inputs.parts == "real-imag" and me["load_echoes"].inputs.phase_units == "deg"


def _run_qsm_wf(tmp_path, name, mags, phases, **kw):
    import json

    import nibabel as nb

    from qsmprep.workflows.qsm import init_qsm_wf

    wf = init_qsm_wf(echo_times_s=[0.006, 0.012, 0.018], b0_t=3.0, inversion="tkd", name=name, **kw)
    wf.base_dir = str(tmp_path / "work")
    wf.inputs.inputnode.magnitude = [str(p) for p in mags]
    wf.inputs.inputnode.phase = [str(p) for p in phases]
    wf.run()
    node_dir = tmp_path / "work" / name
    chi = np.asarray(nb.load(str(node_dir / "reference" / "chi.nii.gz")).dataobj)
    qc = json.loads((node_dir / "qc" / "qc.json").read_text())
    return chi, qc


def test_workflow_real_imag_and_flipped_sign_give_the_canonical_chi(tmp_path):
    """The Nipype graph end to end (TKD): part-real/part-imag input and a negated phase with
    --phase-sign auto give the canonical chi; the QC JSON records the sign it chose."""
    import nibabel as nb

    chi, brain, m0 = _head()
    mag, ph = _signal(chi, brain, m0, (3.0, 3.0, 3.0), (0.006, 0.012, 0.018), offset=_bowl(chi.shape, (3.0,) * 3, brain, 1.0))
    aff = np.diag([3.0, 3.0, 3.0, 1.0])
    paths = {}
    for key, arrs in (("canon", (mag, ph)), ("flip", (mag, -ph)), ("cplx", (mag * np.cos(ph), mag * np.sin(ph)))):
        for part, arr in zip(("a", "b"), arrs):
            p = tmp_path / f"{key}_{part}.nii.gz"
            nb.save(nb.Nifti1Image(np.asarray(arr, np.float32), aff), str(p))
            paths[key, part] = p
    canon, qc0 = _run_qsm_wf(tmp_path, "canon_wf", [paths["canon", "a"]], [paths["canon", "b"]])
    flip, qc1 = _run_qsm_wf(tmp_path, "flip_wf", [paths["flip", "a"]], [paths["flip", "b"]])
    cplx, _ = _run_qsm_wf(tmp_path, "cplx_wf", [paths["cplx", "a"]], [paths["cplx", "b"]], parts="real-imag")
    assert qc0["steps"]["phase_sign"]["sign"] == 1 and qc1["steps"]["phase_sign"]["sign"] == -1
    assert np.abs(flip - canon).max() <= 1e-3 and np.abs(cplx - canon).max() <= 1e-3
    assert set(qc0) >= {"measures", "thresholds", "failed", "warnings", "passed"}
