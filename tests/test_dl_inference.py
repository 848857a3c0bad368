"""invert_nsidl: crop/pad/mask, devices, weights file handling, CPU/GPU agreement (gpu marker)."""

from pathlib import Path

import numpy as np
import pytest

import torch

from qsmprep.dl import inference, physics
from qsmprep.dl.model import NSIDL
from qsmprep.qsm.constants import rad_per_ppm
from qsmprep.qsm.dipole import forward_field

HAS_CUDA = torch.cuda.is_available()


def _case(shp=(40, 36, 32), vs=(1.2, 1.0, 1.5), b0=(0.1, -0.2, 0.97)):
    g = np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shp, vs)], indexing="ij")
    r = np.sqrt(g[0] ** 2 + (g[1] - 2) ** 2 + g[2] ** 2)
    mask = r < 14
    chi = (0.15 * (np.sqrt((g[0] - 3) ** 2 + g[1] ** 2 + g[2] ** 2) < 4) - 0.03 * (r < 14)).astype(np.float32) * mask
    f = forward_field(chi, vs, b0) * mask
    f = (f - f[mask].mean()) * mask
    return chi, f.astype(np.float32), mask, vs, b0


def _model(seed=0):
    torch.manual_seed(seed)
    m = NSIDL(n_iter=2, widths=(4, 8, 8))
    with torch.no_grad():  # make the CNN matter (the shipped init is an exact identity)
        m.prox.out.weight.normal_(0, 0.05)
    return m.eval()


def test_crop_pad_equals_uncropped_run():
    chi, f, mask, vs, b0 = _case()
    model = _model()
    out = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, margin=3, dc_threshold=None)
    assert out.dtype == np.float32 and out.shape == f.shape
    assert np.all(out[~mask] == 0)
    # same computation without cropping: equal up to the (tiny) effect of the crop on padding
    padded = physics.fast_padded_shape(f.shape, 1.5)
    k = physics.dipole_kernel_t(padded, vs, b0)[None, None]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    with torch.no_grad():
        ref = model(t(f), t(mask), t(mask), 16.05, k, padded)[0, 0].numpy()
    np.testing.assert_allclose(out, ref * mask, atol=2e-3)


def test_weight_is_normalised_in_the_crop_and_checked_before_it():
    """The magnitude weight is cropped with the field (its 99th percentile is taken inside the mask, so
    the crop changes nothing), and a weight on another grid fails in one sentence, even when it is
    larger than the mask's box (slicing alone would not notice)."""
    chi, f, mask, vs, b0 = _case()
    model = _model()
    w = np.where(mask, 1.0 + np.random.default_rng(2).random(mask.shape), 50.0).astype(np.float32)
    got = inference.invert_nsidl(f, mask, vs, b0, w, device="cpu", model=model)
    bb = inference.mask_bbox(mask, 4)
    wn = inference.normalise_weight(w, mask)  # the whole-volume normalisation, cropped by hand
    padded = physics.fast_padded_shape(f[bb].shape, 1.5)
    k = physics.dipole_kernel_t(padded, vs, b0)[None, None]
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    with torch.no_grad():
        ref = model(t(f[bb] * mask[bb]), t(mask[bb]), t(wn[bb]), 16.05, k, padded)
        ref = physics.kspace_consistency_t(ref, t(f[bb] * mask[bb]), k, padded, inference.DC_THRESHOLD, inference.DC_WIDTH)
    want = np.zeros_like(f)
    want[bb] = ref[0, 0].numpy()
    np.testing.assert_allclose(got, want * mask, atol=1e-5)
    with pytest.raises(ValueError, match="Weight shape"):
        inference.invert_nsidl(f, mask, vs, b0, np.ones(tuple(n + 2 for n in mask.shape), np.float32), device="cpu", model=model)


def test_kspace_consistency_step_lowers_error_on_clean_field():
    """The default final step (data back where |D| > 0.2) beats the bare network on a noise-free field."""
    chi, f, mask, vs, b0 = _case()
    model = _model()

    def err(out):
        p, t = out[mask] - out[mask].mean(), chi[mask] - chi[mask].mean()
        return np.linalg.norm(p - t) / np.linalg.norm(t)

    bare = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_threshold=None)
    dc = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model)
    assert inference.DC_THRESHOLD == 0.2 and np.all(dc[~mask] == 0)
    more = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_threshold=0.1)
    # on a clean field the data are right, so taking more of k-space from them helps more
    assert err(more) < err(dc) - 0.005 < err(bare) - 0.01, (err(more), err(dc), err(bare))


def test_untrained_model_improves_on_nothing_and_tracks_truth():
    chi, f, mask, vs, b0 = _case()
    model = NSIDL(n_iter=3, widths=(4, 8, 8)).eval()
    out = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model)
    p, t = out[mask] - out[mask].mean(), chi[mask] - chi[mask].mean()
    assert np.corrcoef(p, t)[0, 1] > 0.9


def test_weight_normalisation():
    mask = np.zeros((10, 10, 10), bool)
    mask[2:8, 2:8, 2:8] = True
    w = np.random.default_rng(0).uniform(0, 500, mask.shape).astype(np.float32)
    wn = inference.normalise_weight(w, mask)
    assert wn.max() == pytest.approx(1.0) and wn.min() == 0.0 and np.all(wn[~mask] == 0)
    assert np.array_equal(inference.normalise_weight(None, mask), mask.astype(np.float32))
    bb = inference.mask_bbox(mask, 1)  # cropping first gives the same numbers, cropped
    assert np.array_equal(inference.normalise_weight(w, mask, bb), wn[bb])
    assert np.array_equal(inference.normalise_weight(None, mask, bb), mask[bb].astype(np.float32))
    with pytest.raises(ValueError, match="Weight shape"):
        inference.normalise_weight(w[:9], mask, bb)


def test_errors_are_clear():
    chi, f, mask, vs, b0 = _case((16, 16, 16))
    with pytest.raises(ValueError, match="empty"):
        inference.invert_nsidl(f, np.zeros_like(mask), vs, b0, device="cpu", model=_model())
    with pytest.raises(ValueError, match="same shape"):
        inference.invert_nsidl(f[:-1], mask, vs, b0, device="cpu", model=_model())
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="no CUDA GPU"):
            inference.invert_nsidl(f, mask, vs, b0, device="cuda", model=_model())
    assert inference.resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")


def test_weights_roundtrip_and_sha_check(tmp_path, monkeypatch):
    from qsmprep.dl import weights
    from qsmprep.dl.train import export_weights

    model = _model(3)
    p = tmp_path / "w.pt"
    sha = export_weights(model, p, {"note": "test"})
    assert sha == weights.sha256_file(p) and len(sha) == 64
    loaded, info = weights.load_model(p, expected_sha256=sha)
    assert info["sha256"] == sha and info["config"]["n_iter"] == 2
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="corrupted or was replaced"):
        weights.load_model(p, expected_sha256="0" * 64)
    with pytest.raises(FileNotFoundError, match="QSMPREP_NSIDL_WEIGHTS"):
        weights.weights_info(tmp_path / "missing.pt")
    monkeypatch.setenv("QSMPREP_NSIDL_WEIGHTS", str(p))
    assert weights.weights_info()["sha256"] == sha


def test_shipped_weights_load_and_match_pinned_sha():
    """Every use's shipped file is present, pinned and loads; the chain runs v3, the stand-alone data fits v2."""
    from qsmprep.dl import weights

    info = weights.weights_info()
    assert info["name"] == weights.WEIGHTS_NAME == weights.WEIGHTS_FOR["chain"] == "nsidl_v3.pt"
    assert weights.EXPECTED_SHA256 == info["sha256"]
    assert weights.WEIGHTS_FOR["robust"] == weights.WEIGHTS_FOR["strong"] == "nsidl_v2.pt"
    assert set(weights.SHIPPED_SHA256) == set(weights.WEIGHTS_FOR.values()) == {
        p.name for p in weights.DATA_DIR.glob("*.pt")}
    for use, name in weights.WEIGHTS_FOR.items():
        p = weights.default_weights_path(use)
        assert p.name == name and p.stat().st_size < 20 * 2**20
        model, info = weights.load_model(use=use)
        assert info["sha256"] == weights.SHIPPED_SHA256[name] == weights.pinned_sha256(p) and model.n_iter >= 1
    with pytest.raises(ValueError, match="use must be one of"):
        weights.default_weights_path("fast")


def test_shipped_weights_pinned_by_name_and_env_override(tmp_path, monkeypatch):
    """A shipped name in the package's folder must have its pinned hash; QSMPREP_NSIDL_WEIGHTS serves every use."""
    from qsmprep.dl import weights
    from qsmprep.dl.train import export_weights

    monkeypatch.setattr(weights, "DATA_DIR", tmp_path)
    sha = export_weights(_model(3), tmp_path / "nsidl_v2.pt", {"note": "test"})
    assert weights.pinned_sha256(tmp_path / "nsidl_v2.pt") == weights.SHIPPED_SHA256["nsidl_v2.pt"] != sha
    assert weights.pinned_sha256(tmp_path / "other.pt") is None
    with pytest.raises(ValueError, match="corrupted or was replaced"):
        weights.load_model(use="robust")
    other = tmp_path / "sub" / "w.pt"
    other.parent.mkdir()
    export_weights(_model(3), other, {"note": "test"})
    monkeypatch.setenv("QSMPREP_NSIDL_WEIGHTS", str(other))
    assert {weights.weights_info(use=u)["path"] for u in weights.WEIGHTS_FOR} == {str(other)}
    assert weights.load_model(use="strong")[1]["path"] == str(other)


def test_each_data_fit_runs_its_shipped_weights(monkeypatch):
    """invert_nsidl loads the weights of its data fit (or of ``weights``); methods.invert records them."""
    from qsmprep import methods
    from qsmprep.dl import inference, weights

    loaded = []

    def fake_cached(path, device):
        loaded.append(Path(path).name)
        return _model(3), {}

    monkeypatch.setattr(inference, "_cached_model", fake_cached)
    chi, f, mask, vs, b0 = _case()
    for data_fit, use, name in ((None, None, "nsidl_v3.pt"), ("robust", None, "nsidl_v2.pt"),
                                ("strong", None, "nsidl_v2.pt"), ("robust", "chain", "nsidl_v3.pt")):
        inference.invert_nsidl(f, mask, vs, b0, device="cpu", data_fit=data_fit, weights=use)
        assert loaded[-1] == name, (data_fit, use)
    for fit in ("robust", "strong"):
        _, meta = methods.invert("nsidl", f, mask, vs, b0, b0_t=3.0, te_s=0.02, nsidl_data_fit=fit)
        assert loaded[-1] == meta["WeightsName"] == "nsidl_v2.pt"
        assert meta["WeightsSHA256"] == weights.SHIPPED_SHA256["nsidl_v2.pt"]
    loaded.clear()
    _, meta = methods.invert("nsidl", f * mask, mask, vs, b0, b0_t=3.0, te_s=0.02, total_ppm=f, brain_mask=mask)
    assert meta["DataFit"]["Preset"] == "chain" and meta["WeightsName"] == "nsidl_v3.pt"
    assert set(loaded) == {"nsidl_v3.pt"}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
@pytest.mark.parametrize("data_fit", [None, "robust", "strong"])
def test_cpu_gpu_agree(data_fit):
    chi, f, mask, vs, b0 = _case((64, 56, 48))
    model = _model(1)
    w = np.where(mask, 0.5 + 0.5 * np.random.default_rng(0).random(mask.shape), 0).astype(np.float32)
    c = inference.invert_nsidl(f, mask, vs, b0, w, device="cpu", model=model, data_fit=data_fit)
    g = inference.invert_nsidl(f, mask, vs, b0, w, device="cuda", model=model, data_fit=data_fit)
    assert np.abs(c - g).max() < inference.CPU_GPU_ATOL_PPM


def test_data_fit_presets_set_the_pre_solver_and_kspace_threshold():
    """``data_fit`` picks DATA_FIT's pre-solver and k-space threshold; None keeps the model's own."""
    chi, f, mask, vs, b0 = _case()
    model = _model()
    assert model.n_pre == 0
    # the network part of strong (its final TV fit: test_strong_final_tv_is_tv_started_from_the_network...)
    strong = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, data_fit="strong", final_tv=None)
    # the same by hand: the model configured like the preset
    cfg = inference.data_fit_settings("strong", f, mask)
    assert cfg["dc_threshold"] == inference.kspace_threshold_for_noise(cfg["relative_noise"])
    model.n_pre, model.pre_solver = cfg["n_pre"], cfg["pre_solver"]
    assert cfg["dc_extrapolate"] is True
    by_hand = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_threshold=cfg["dc_threshold"],
                                     dc_extrapolate=True)
    # the field extrapolation by hand: physics.extrapolate_field_t, then the k-space step
    bb = inference.mask_bbox(mask, 4)
    tt = lambda a: torch.as_tensor(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    fc, mc = tt(f[bb] * mask[bb]), tt(mask[bb])
    padded = physics.fast_padded_shape(fc.shape[-3:], 1.5)
    kern = physics.dipole_kernel_t(padded, vs, b0)[None, None]
    with torch.no_grad():
        net = model(fc, mc, mc, rad_per_ppm(3.0, 0.02), kern, padded, n_pre=cfg["n_pre"], pre_solver=cfg["pre_solver"])
        chi_c, fe, _, _ = physics.extrapolate_field_t(net * mc, fc, mc, kern, padded, mc)
        dc = physics.kspace_consistency_t(chi_c, fe, kern, padded, cfg["dc_threshold"], inference.DC_WIDTH) * mc
    plain = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_threshold=cfg["dc_threshold"],
                                   dc_extrapolate=False)
    model.n_pre, model.pre_solver = 0, "nesterov"
    np.testing.assert_allclose(strong, by_hand, atol=1e-6)
    np.testing.assert_allclose(strong[bb], dc[0, 0].numpy(), atol=1e-5)
    assert not np.allclose(strong, plain, atol=1e-4)  # the extrapolation changed the result
    with pytest.raises(ValueError, match="dc_extrapolate"):
        inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_extrapolate="yes")
    own = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model)  # n_pre 0, DC_THRESHOLD
    robust = inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, data_fit="robust")
    assert not np.allclose(own, robust, atol=1e-4)  # robust runs its 10 NDI pre-steps
    # (that strong beats robust on a clean field is a property of the trained weights:
    # tests/test_invert_cli.py checks it with the shipped ones)
    with pytest.raises(ValueError, match="robust"):
        inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, data_fit="sharp")
    with pytest.raises(ValueError, match="dc_threshold"):
        inference.invert_nsidl(f, mask, vs, b0, device="cpu", model=model, dc_threshold="auto")


def test_shipped_weights_config_is_the_robust_preset():
    """The app's default (robust) is what the shipped weights were validated with."""
    from qsmprep.dl.weights import load_model

    model, _ = load_model(None, device="cpu")
    rob = inference.DATA_FIT[inference.DEFAULT_DATA_FIT]
    assert (model.n_pre, model.pre_solver) == (rob["n_pre"], rob["pre_solver"])
    assert rob["dc_threshold"] == inference.DC_THRESHOLD


def test_app_dispatch_passes_and_records_the_data_fit_preset(monkeypatch):
    """methods.invert (the app's and qsmprep invert's dispatch) hands ``nsidl_data_fit`` to invert_nsidl
    and records the preset."""
    from qsmprep import methods
    from qsmprep.dl import weights

    seen = {}

    def fake_invert(local, mask, vs, b0, **kw):
        seen.update(kw)
        return np.zeros_like(local)

    monkeypatch.setattr(inference, "invert_nsidl", fake_invert)
    monkeypatch.setattr(weights, "weights_info", lambda path=None, use="chain": {"name": "w.pt", "sha256": "0" * 64, "path": "w.pt"})
    chi, f, mask, vs, b0 = _case()
    for preset in ("robust", "strong"):
        _, meta = methods.invert("nsidl", f, mask, vs, b0, b0_t=3.0, te_s=0.02, nsidl_data_fit=preset)
        cfg = inference.data_fit_settings(preset, f, mask)
        assert seen["data_fit"] == preset and seen["dc_threshold"] == cfg["dc_threshold"]
        assert meta["DataFit"]["Preset"] == preset and meta["DataFit"]["PreSolver"] == cfg["pre_solver"]
        assert meta["DataFit"]["PreSolverIterations"] == cfg["n_pre"]
        assert ("FieldRelativeNoise" in meta["DataFit"]) == (preset == "strong")
        assert meta["DataFit"]["FieldExtrapolation"] == (preset == "strong") == cfg["dc_extrapolate"]
        assert meta["KSpaceDataConsistency"]["DipoleKernelThreshold"] == cfg["dc_threshold"]
    _, meta = methods.invert("nsidl", f, mask, vs, b0, b0_t=3.0, te_s=0.02)
    assert meta["DataFit"]["Preset"] == "robust"
    with pytest.raises(ValueError, match="strong"):
        methods.invert("nsidl", f, mask, vs, b0, b0_t=3.0, te_s=0.02, nsidl_data_fit="weak")


def test_kspace_threshold_follows_the_field_noise():
    """strong: 0.05 for a noise-free field, 0.1 for a noisy one, linear between the knots, monotonic."""
    (r0, t0), (r1, t1) = inference.DC_NOISE_KNOTS
    assert inference.kspace_threshold_for_noise(0.0) == t0 == 0.05
    assert inference.kspace_threshold_for_noise(r0) == pytest.approx(t0)
    assert inference.kspace_threshold_for_noise((r0 + r1) / 2) == pytest.approx((t0 + t1) / 2)
    assert inference.kspace_threshold_for_noise(r1) == inference.kspace_threshold_for_noise(5.0) == t1 == 0.1
    assert inference.kspace_threshold_for_noise(float("inf")) == t1
    # a textured, brain-like field (smooth random sources, 1 mm): noise-free vs noisy
    from scipy import ndimage

    rng = np.random.default_rng(0)
    shp = (48, 48, 48)
    g = np.meshgrid(*[np.arange(n) - n / 2 for n in shp], indexing="ij")
    mask = (g[0] ** 2 + g[1] ** 2 + g[2] ** 2) < 20**2
    chi = ndimage.gaussian_filter(rng.standard_normal(shp), 3.0).astype(np.float32) * mask
    f = (forward_field(chi, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)) * mask).astype(np.float32)
    clean = inference.data_fit_settings("strong", f, mask)
    noisy_f = (f + rng.normal(0, 0.3 * f[mask].std(), shp).astype(np.float32)) * mask
    noisy = inference.data_fit_settings("strong", noisy_f, mask)
    assert clean["dc_threshold"] == t0 and noisy["dc_threshold"] == t1, (clean, noisy)
    assert inference.data_fit_settings("strong")["dc_threshold"] == "noise"  # unresolved without a field
    assert inference.data_fit_settings("robust", f, mask)["dc_threshold"] == inference.DC_THRESHOLD


def test_strong_final_tv_is_tv_started_from_the_network_and_moves_toward_the_truth():
    """``final_tv``: the weighted TV fit (qsm.tv.tv_admm) started from the network's chi, nothing else; the
    ``strong`` preset runs it (the record says so, ``robust`` does not) and on a sphere it lowers the error."""
    from qsmprep.qsm.tv import tv_admm

    chi, f, mask, vs, b0 = _case()
    model = _model(3)
    kw = dict(device="cpu", model=model, data_fit="strong")
    lam, n_iter = inference.DATA_FIT["strong"]["final_tv"]
    net = inference.invert_nsidl(f, mask, vs, b0, final_tv=None, **kw)
    out = inference.invert_nsidl(f, mask, vs, b0, **kw)
    ref = tv_admm(f, mask, vs, b0, weight=None, lam=lam, n_iter=n_iter, chi_prior=net)
    np.testing.assert_array_equal(out, ref)
    assert inference.DATA_FIT["robust"]["final_tv"] is None

    def err(x):
        d = (x - x[mask].mean()) - (chi - chi[mask].mean())
        return float(np.linalg.norm(d[mask]) / np.linalg.norm((chi - chi[mask].mean())[mask]))

    assert err(out) < err(net)
    rec = inference.data_fit_record(inference.data_fit_settings("strong"))
    assert rec["FinalTV"]["TVWeight"] == lam and rec["FinalTV"]["Iterations"] == n_iter
    assert "FinalTV" not in inference.data_fit_record(inference.data_fit_settings("robust"))
    with pytest.raises(ValueError, match="final_tv"):
        inference.invert_nsidl(f, mask, vs, b0, final_tv="yes", **kw)
