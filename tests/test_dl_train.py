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
