"""Training command: a few CPU steps, checkpoint/resume, exported weights load."""

import json

import pytest

torch = pytest.importorskip("torch")
yaml = pytest.importorskip("yaml")

from qsmprep.dl import train


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
    assert train.main(["--config", str(tiny_cfg), "--out", str(out)]) == 0
    s1 = json.loads((out / "summary.json").read_text())
    assert s1["steps"] == 2 and len(s1["sha256"]) == 64
    assert train.main(["--config", str(tiny_cfg), "--out", str(out), "--resume", "--max-steps", "3"]) == 0
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
    assert train.nrmse_demeaned(t + 3.0, t, mask) == pytest.approx(0.0, abs=1e-5)  # offset-invariant
    assert train.nrmse_demeaned(2 * t, t, mask) == pytest.approx(100.0, rel=1e-5)
    loss, parts = train.loss_terms([t + 0.5], t, mask, grad_weight=0.0, deep_weight=0.0)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


def test_xsim_matches_qsm_ci():
    """The torch XSIM (loss and validation) is qsm-ci's XSIM on demeaned, masked maps."""
    np = pytest.importorskip("numpy")
    qe = pytest.importorskip("qsm_ci.qsm_eval")
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
    got = float(train.xsim_t(t(recon), t(truth), t(mask))[0])
    assert got == pytest.approx(ref, abs=1e-4)
    assert 0.3 < ref < 0.99  # a case that discriminates
    assert float(train.xsim_t(t(truth), t(truth), t(mask))[0]) == pytest.approx(1.0, abs=1e-5)
    # as a loss term: zero for a perfect prediction, positive for the blurred one, and differentiable
    p = t(recon).requires_grad_(True)
    loss, parts = train.loss_terms([p], t(truth), t(mask), grad_weight=0.0, deep_weight=0.0, xsim_weight=1.0)
    assert parts["xsim"] == pytest.approx(ref, abs=1e-4)
    loss.backward()
    assert torch.isfinite(p.grad).all() and float(p.grad.abs().sum()) > 0
    perfect, _ = train.loss_terms([t(truth)], t(truth), t(mask), grad_weight=0.0, deep_weight=0.0, xsim_weight=1.0)
    assert float(perfect) == pytest.approx(0.0, abs=1e-5)


def test_ema_and_best_state_export(tmp_path):
    """With validation heads and EMA, the summary records XSIM and the exported state is the best one."""
    np = pytest.importorskip("numpy")
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
    assert train.main(["--config", str(p), "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    recs = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    vals = {r["step"]: r for r in recs if r["event"] == "val"}
    assert set(vals) >= {0, 2, 4} and all(0 < v["val_xsim"] <= 1 for v in vals.values())
    assert "xsim" in next(r for r in recs if r["event"] == "train")
    best = max(vals.values(), key=lambda r: r["val_score"])
    assert s["best_step"] == best["step"] and s["val_xsim"] == pytest.approx(best["val_xsim"])
    assert "ema" in torch.load(out / "ckpt.pt", weights_only=True)
