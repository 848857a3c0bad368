"""Training command: a few CPU steps, checkpoint/resume, exported weights load."""

import json

import pytest

import torch
import yaml

from qsmprep.dl import metrics, train, train_cli, validation


@pytest.fixture
def tiny_cfg(tmp_path):
    cfg = {"seed": 5, "device": "cpu", "model": {"n_iter": 2, "widths": [4, 8, 8]},
           "data": {"batch_size": 1, "max_voxels": 6000}, "budget": {"max_steps": 2, "max_minutes": 5},
           "val": {"dir": None}, "ckpt_every": 1, "log_every": 1}
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_train_resume_and_export(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    assert train_cli.main(["--config", str(tiny_cfg), "--out", str(out)]) == 0
    s1 = json.loads((out / "summary.json").read_text())
    assert s1["steps"] == 2 and len(s1["sha256"]) == 64
    assert train_cli.main(["--config", str(tiny_cfg), "--out", str(out), "--resume", "--max-steps", "3"]) == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["steps"] == 3
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["event"] == "train"] == [1, 2, 3]
    from qsmprep.dl.weights import load_model

    model, info = load_model(out / "nsidl.pt", expected_sha256=s2["sha256"])
    assert info["meta"]["steps"] == 3 and model.n_iter == 2


def test_config_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train.load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {bogus_key: 1}\nbudget: {max_steps: 1}\ndevice: cpu\n")
    with pytest.raises(ValueError, match="Unknown data keys"):
        train.train(train.load_config(bad), tmp_path / "o")
    with pytest.raises(RuntimeError if not torch.cuda.is_available() else AssertionError, match="no CUDA GPU"):
        if not torch.cuda.is_available():
            train.pick_device("cuda")
        else:
            raise AssertionError("no CUDA GPU")


def test_nrmse_and_loss_known_values():
    mask = torch.ones(1, 1, 4, 4, 4)
    t = torch.zeros(1, 1, 4, 4, 4)
    t[..., :2] = 1.0
    assert metrics.nrmse_demeaned(t + 3.0, t, mask) == pytest.approx(0.0, abs=1e-5)  # offset-invariant
    assert metrics.nrmse_demeaned(2 * t, t, mask) == pytest.approx(100.0, rel=1e-5)
    loss, parts = metrics.loss_terms([t + 0.5], t, mask, grad_weight=0.0, deep_weight=0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_xsim_matches_qsm_ci():
    """The torch XSIM (loss and validation) is qsm-ci's XSIM on demeaned, masked maps."""
    import numpy as np
    import qsm_ci.qsm_eval as qe
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    shape = (20, 22, 18)
    truth = gaussian_filter(rng.normal(0, 0.3, shape), 1.5).astype(np.float32)
    recon = (0.8 * truth + gaussian_filter(rng.normal(0, 0.05, shape), 1.0)).astype(np.float32)
    mask = np.zeros(shape, bool)
    mask[3:17, 4:19, 2:15] = True

    def dm(x):
        return np.where(mask, x - x[mask].mean(), 0.0)

    ref = qe.xsim(dm(recon), dm(truth), mask)
    t = lambda a: torch.as_tensor(np.asarray(a, np.float32))[None, None]  # noqa: E731
    got = float(metrics.xsim_t(t(recon), t(truth), t(mask))[0])
    assert got == pytest.approx(ref, abs=1e-4)
    assert 0.3 < ref < 0.99  # a case that discriminates
    assert float(metrics.xsim_t(t(truth), t(truth), t(mask))[0]) == pytest.approx(1.0, abs=1e-5)
    # as a loss term: zero for a perfect prediction, positive for the blurred one, and differentiable
    p = t(recon).requires_grad_(True)
    loss, parts = metrics.loss_terms([p], t(truth), t(mask), grad_weight=0.0, deep_weight=0.0, xsim_weight=1.0)
    assert parts["xsim"] == pytest.approx(ref, abs=1e-4)
    loss.backward()
    assert torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
    perfect, _ = metrics.loss_terms([t(truth)], t(truth), t(mask), grad_weight=0.0, deep_weight=0.0, xsim_weight=1.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-5)


def test_ema_and_best_state_export(tmp_path):
    """With validation heads and EMA, the summary records XSIM and the exported state is the best one."""
    import numpy as np
    from qsmprep.qsm.dipole import forward_field

    rng = np.random.default_rng(1)
    shape = (16, 18, 14)
    chi = np.zeros(shape, np.float32)
    chi[5:11, 6:12, 4:10] = 0.1
    chi += rng.normal(0, 0.01, shape).astype(np.float32)
    mask = np.zeros(shape, np.float32)
    mask[2:14, 2:16, 2:12] = 1
    field = (forward_field(chi * mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)) * mask).astype(np.float32)
    vdir = tmp_path / "val"
    vdir.mkdir()
    np.savez(vdir / "head_1.npz", chi=chi, field=field, mask=mask, weight=mask, voxel_size=np.ones(3),
             b0_dir=np.array([0.0, 0.0, 1.0]), s=np.float32(16.0))
    cfg = {"seed": 5, "device": "cpu", "model": {"n_iter": 2, "widths": [4, 8, 8]},
           "data": {"batch_size": 1, "max_voxels": 6000}, "budget": {"max_steps": 4, "max_minutes": 5},
           "val": {"dir": str(vdir), "every": 2}, "ckpt_every": 2, "log_every": 1, "ema_decay": 0.5,
           "loss": {"xsim_weight": 1.0}, "optim": {"lr": 1e-2, "warmup": 1}}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "run"
    assert train_cli.main(["--config", str(p), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    vals = {r["step"]: r for r in recs if r["event"] == "val"}
    assert set(vals) >= {0, 2, 4} and all(0 < v["val_xsim"] <= 1 for v in vals.values())
    assert "xsim" in next(r for r in recs if r["event"] == "train")
    best = max(vals.values(), key=lambda r: r["val_score"])
    assert s["best_step"] == best["step"] and s["val_xsim"] == pytest.approx(best["val_xsim"])
    assert "ema" in torch.load(out / "ckpt.pt", weights_only=True)


def test_presets_train_and_validate_as_inference_runs(tmp_path):
    """Training with inference presets: each step draws one (deterministically), the loss sees the
    k-space step, and validation scores every preset (selection on their mean)."""
    import numpy as np
    from qsmprep.dl import physics
    from qsmprep.dl.inference import DC_WIDTH
    from qsmprep.dl.model import NSIDL
    from qsmprep.qsm.dipole import forward_field

    presets = validation.check_presets([{"name": "strong", "pre_solver": "cg", "n_pre": 3, "dc_threshold": 0.1, "p": 3},
                                   {"name": "robust", "n_pre": 2, "dc_threshold": 0.2, "p": 1}])
    assert [p["p"] for p in presets] == [0.75, 0.25] and presets[1]["pre_solver"] == "nesterov"
    with pytest.raises(ValueError, match=r"presets\[0\]"):
        validation.check_presets([{"pre_solvr": "cg"}])
    with pytest.raises(ValueError, match="pre_solver"):
        validation.check_presets([{"pre_solver": "lsqr"}])
    draws = [train._draw_preset(presets, 7, k)["name"] for k in range(400)]
    assert draws == [train._draw_preset(presets, 7, k)["name"] for k in range(400)]  # pure function of (seed, step)
    assert 0.65 < draws.count("strong") / 400 < 0.85
    assert train._draw_preset([], 7, 0) is None

    rng = np.random.default_rng(3)
    shape, vs, b0 = (16, 18, 14), (1.0, 1.0, 1.0), (0.0, 0.0, 1.0)
    chi = (rng.normal(0, 0.05, shape)).astype(np.float32)
    mask = np.zeros(shape, np.float32)
    mask[2:14, 2:16, 2:12] = 1
    field = (forward_field(chi * mask, vs, b0) * mask).astype(np.float32)
    t = lambda a: torch.as_tensor(a)[None, None]
    padded = physics.fast_padded_shape(shape, 1.5)
    kern = physics.dipole_kernel_t(padded, vs, b0)[None, None]
    model = NSIDL(n_iter=2, widths=(4, 8, 8))
    args = (t(field), t(mask), t(mask), torch.tensor([16.0]), kern, padded)
    with torch.no_grad():
        assert torch.equal(validation.run_preset(model, *args, None), model(*args))
        got = validation.run_preset(model, *args, presets[0], return_all=True)
        raw = model(*args, return_all=True, n_pre=3, pre_solver="cg")
        want = physics.kspace_consistency_t(raw[-1], t(field), kern, padded, 0.1, DC_WIDTH) * t(mask)
    assert len(got) == 2 and torch.equal(got[0], raw[0]) and torch.allclose(got[-1], want, atol=1e-6)
    assert not torch.allclose(got[-1], raw[-1], atol=1e-4)  # the k-space step changed the estimate
    ext = validation.check_presets([{"name": "strong-ext", "pre_solver": "cg", "n_pre": 3, "dc_threshold": 0.1, "dc_extrapolate": True}])[0]
    assert presets[0]["dc_extrapolate"] is False and ext["dc_extrapolate"] is True
    with torch.no_grad():
        got_ext = validation.run_preset(model, *args, ext)
        chi_c, fe, _, _ = physics.extrapolate_field_t(raw[-1] * t(mask), t(field), t(mask), kern, padded, t(mask))
        want_ext = physics.kspace_consistency_t(chi_c, fe, kern, padded, 0.1, DC_WIDTH) * t(mask)
    assert torch.allclose(got_ext, want_ext, atol=1e-6) and not torch.allclose(got_ext, got[-1], atol=1e-4)

    vdir = tmp_path / "val"
    vdir.mkdir()
    np.savez(vdir / "head_1.npz", chi=chi, field=field, mask=mask, weight=mask, voxel_size=np.ones(3),
             b0_dir=np.array(b0), s=np.float32(16.0))
    cfg = {"seed": 5, "device": "cpu", "model": {"n_iter": 2, "widths": [4, 8, 8]},
           "data": {"batch_size": 1, "max_voxels": 6000}, "budget": {"max_steps": 2, "max_minutes": 5},
           "val": {"dir": str(vdir), "every": 2}, "ckpt_every": 2, "log_every": 1,
           "presets": [{"name": "strong", "pre_solver": "cg", "n_pre": 3, "dc_threshold": 0.1},
                       {"name": "robust", "n_pre": 2, "dc_threshold": 0.2}]}
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert train_cli.main(["--config", str(p), "--out", str(tmp_path / "run")]) == 0
    recs = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    v0 = next(r for r in recs if r["event"] == "val")
    assert v0["val_score"] == pytest.approx((v0["strong_val_score"] + v0["robust_val_score"]) / 2)
    assert v0["strong_val_xsim"] != v0["robust_val_xsim"] and "val_nrmse_tkd" in v0
