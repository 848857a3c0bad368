"""Known answers for the CPU fine-tuning path on the chain's own inputs (``benchmarks/chain_finetune.py``)."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import chain_finetune as cf  # noqa: E402
import honest_heads as hh  # noqa: E402


@pytest.fixture(scope="module")
def sample():
    spec = cf.train_spec(1003)
    case = hh.make_sim(spec, 3.0)
    case["spec"] = spec
    return case, cf.capture(case)


def test_train_spec_is_a_pure_function_of_the_seed():
    a, b = cf.train_spec(1005), cf.train_spec(1005)
    assert a == b and a.generator == "sim" and a.role == "train"
    assert {len(cf.train_spec(s).te_s) for s in range(1000, 1040)} >= {1, 4, 5}
    for s in range(1000, 1040):
        sp = cf.train_spec(s)
        assert abs(np.linalg.norm(sp.b0_dir) - 1) < 1e-9 and sp.b0_dir[2] >= np.cos(np.radians(25.0)) - 1e-9


def test_capture_is_what_the_network_sees_in_the_app(sample, tmp_path):
    """The captured sample, run through ``forward``, gives the network's chi in the app's chain exactly
    (same crop, same pre-steps, same k-space step); and it survives the .npz round trip."""
    import torch

    from qsmprep.dl import inference
    from qsmprep.dl.weights import load_model

    case, d = sample
    assert d["field"].shape == d["mask"].shape == d["weight"].shape == d["chi"].shape
    assert d["pre_solver"] == "nesterov" and d["n_pre"] == 10 and d["dc_threshold"] == inference.DC_THRESHOLD
    p = tmp_path / "s.npz"
    cf.save_sample(d, p)
    d2 = cf.load_sample(p)
    assert d2["padded"] == d["padded"] and d2["s"] == d["s"] and d2["voxel_size"] == d["voxel_size"]
    model, _ = load_model(None, "cpu")
    with torch.no_grad():
        mine = cf.forward(model.eval(), d2, torch.device("cpu"))[0, 0].numpy()
    # the app's network call on the same inputs, padded by the crop margin (invert_nsidl crops it
    # back); s = rad_per_ppm(b0_t, 1 s) is linear in b0_t
    from qsmprep.qsm.constants import rad_per_ppm

    pad = lambda a: np.pad(a, 4)
    app = inference.invert_nsidl(pad(d["field"]), pad(d["mask"]) > 0, d["voxel_size"], d["b0_dir"],
                                 weight=pad(d["weight"]), b0_t=d["s"] / rad_per_ppm(1.0, 1.0), te_s=1.0,
                                 device="cpu", data_fit="robust", weights="chain", margin=4)[4:-4, 4:-4, 4:-4]
    assert np.abs(app).max() > 0.01
    assert np.abs(mine - app).max() < 1e-3 * np.abs(app).max()


def test_truth_is_on_the_same_crop(sample):
    """The captured truth is the head's chi on the network's crop: the network's mask lies inside the
    true brain, and the crop holds all of the true chi inside that mask."""
    case, d = sample
    m = d["mask"] > 0
    assert np.abs(d["chi"][m]).sum() > 0
    assert np.count_nonzero(d["chi"][m]) > 0.9 * m.sum()


def test_train_step_fits_the_sample(sample):
    """Steps on one chain sample lower its loss and its NRMSE; the unrolled step sizes stay when frozen
    (so the network-off ablation is the shipped one's)."""
    import torch

    from qsmprep.dl.weights import load_model

    _, d = sample
    dev = torch.device("cpu")
    torch.manual_seed(0)
    model, _ = load_model(None, "cpu")
    model.train()
    model.step_logit.requires_grad_(False)
    a0 = model.step_sizes().detach().clone()
    before = cf.score(model.eval(), [d], dev)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-4)
    losses = [cf.train_step(model, opt, d, dev) for _ in range(6)]
    after = cf.score(model.eval(), [d], dev)
    assert all(v is not None for v in losses) and losses[-1] < losses[0]
    assert after["nrmse"] < before["nrmse"]
    assert torch.equal(model.step_sizes(), a0)


@pytest.fixture(scope="module")
def fit_sample():
    spec = cf.train_spec(1003)
    case = hh.make_sim(spec, 3.0)
    case["spec"] = spec
    return case, cf.capture(case, with_fit=True)


def test_capture_with_fit_is_the_chain_up_to_its_final_fit(fit_sample, tmp_path):
    """With ``with_fit`` the sample also holds the final fit's inputs; with the shipped network, ``through_fit`` is
    the app's final fit from the app's start (smv_tv, numpy, with the fit's captured TV-weight map) to float32
    rounding, and the sample survives the .npz round trip."""
    import torch

    from qsmprep.dl.weights import load_model
    from qsmprep.qsm.smvfit import smv_tv

    case, d = fit_sample
    p = tmp_path / "s.npz"
    cf.save_sample(d, p)
    d = cf.load_sample(p)
    assert d["fit_n_iter"] > 0 and 1 < d["fit_relax"] < 2 and d["fit_lam"] > 0
    assert d["chi_full"].shape == d["brain"].shape == d["fit_total"].shape
    bb = tuple(slice(int(a), int(b)) for a, b in d["bb"])
    # the network's own voxels of the start are the network's chi
    own = d["mask"] > 0
    assert np.allclose(d["fit_start"][bb][own], d["net_placed"][bb][own], atol=1e-6)
    ref = smv_tv(d["fit_total"], d["fit_mask"], d["voxel_size"], d["b0_dir"], chi_prior=d["fit_start"],
                 weight=d["fit_weight"] if d["fit_weighted"] else None, radii_mm=tuple(d["fit_radii"]),
                 lam=d["fit_lam"], n_iter=d["fit_n_iter"], support=d["fit_support"], support_mu=d["fit_support_mu"],
                 relax=d["fit_relax"], tv_free=d["fit_tv_free"] if d["fit_tv_free"].any() else None,
                 tv_weight=d["fit_tv_weight"])
    assert np.any(d["fit_tv_weight"] != 1)  # the app's edge-weighted TV map (restore.FINAL_EDGE_TV), as captured
    model, _ = load_model(None, "cpu")
    with torch.no_grad():
        chi, loss = cf.through_fit(model.eval(), d, torch.device("cpu"))
    assert np.abs(ref).max() > 0.01
    assert np.abs(chi.numpy() - ref).max() < 2e-3 * np.abs(ref).max()
    assert 0 < float(loss) < 1


def test_train_step_through_fit_lowers_the_loss_after_the_fit(fit_sample):
    """Steps with the loss after the final fit lower that loss on the sample (the gradient reaches the network
    through the fit's iterations)."""
    import torch

    from qsmprep.dl.weights import load_model

    _, d = fit_sample
    dev = torch.device("cpu")
    torch.manual_seed(0)
    model, _ = load_model(None, "cpu")
    model.train()
    model.step_logit.requires_grad_(False)
    before = cf.score_through_fit(model.eval(), [d], dev)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-5)
    losses = [cf.train_step_through_fit(model, opt, d, dev) for _ in range(4)]
    after = cf.score_through_fit(model.eval(), [d], dev)
    assert all(v is not None for v in losses)
    assert after["loss"] < before["loss"]


def test_lazy_training_reads_samples_when_drawn_and_trains_the_same(fit_sample, tmp_path, monkeypatch):
    """``--train --lazy`` (training samples read when drawn, for a CPU's memory) trains as holding them all does:
    the same draws and updates, so the same training loss and validation score after a step (to the float
    rounding of CPU convolutions), and weights that moved from the start."""
    import json

    import torch

    _, d = fit_sample
    monkeypatch.setattr(cf, "SAMPLES", tmp_path / "samples")
    for name in ("train-1003_3mm_fit.npz", "train-1004_3mm_fit.npz", "val-x_3mm_fit.npz"):
        cf.save_sample(d, cf.SAMPLES / name)
    logs, weights = {}, {}
    for lazy in (False, True):
        out = tmp_path / f"run{int(lazy)}"
        argv = ["--train", "--through-fit", "--voxel", "3", "--val-glob", "val-*_3mm_fit.npz", "--out", str(out),
                "--max-steps", "1", "--val-every", "1", "--accum", "1", "--lr", "1e-4"] + (["--lazy"] if lazy else [])
        assert cf.main(argv) == 0
        logs[lazy] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        weights[lazy] = torch.load(out / "step1.pt", weights_only=True)["state_dict"]
    (s0, eager), (_, lazy) = logs[False], logs[True]  # each log: step 0's validation, then step 1's
    assert s0["n_train"] == 2 and eager["step"] == lazy["step"] == 1
    assert abs(eager["loss"] - lazy["loss"]) <= 1e-4 * eager["loss"] and abs(eager["xsim"] - lazy["xsim"]) <= 1e-4
    from qsmprep.dl.weights import load_model

    start = load_model(None, "cpu")[0].state_dict()  # what --train starts from without --init
    assert any(not torch.equal(weights[True][k], start[k].float()) for k in start)


def test_update_accumulates_the_mean_gradient_over_its_samples():
    # a toy model whose loss has a known gradient: w * x - y squared, d/dw = 2 x (w x - y); one SGD step of 0.1
    # on two samples must move w by the mean of their gradients, and skip the step when a loss is not finite
    import torch

    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    samples = [{"x": 1.0, "y": 0.0}, {"x": 0.5, "y": 1.0}]

    def loss_of(m, d, dev):
        return (m(torch.tensor([[d["x"]]])) - d["y"]).pow(2).sum()

    loss = cf._update(model, opt, samples, "cpu", loss_of)
    grads = [2 * 1.0 * (1.0 - 0.0), 2 * 0.5 * (0.5 - 1.0)]  # 2.0 and -0.5: mean 0.75, clipped to norm 0.5
    mean_grad = np.mean(grads)
    clipped = mean_grad * min(1.0, 0.5 / abs(mean_grad))
    assert loss == pytest.approx(np.mean([1.0, 0.25]))
    assert float(model.weight.detach()) == pytest.approx(1.0 - 0.1 * clipped)
    before = float(model.weight.detach())
    assert cf._update(model, opt, samples + [{"x": float("nan"), "y": 0.0}], "cpu", loss_of) is None
    assert float(model.weight.detach()) == before


def test_final_fit_recorded_records_then_runs_returns_start_or_stops():
    """benchmarks/_common.final_fit_recorded: the fit's arguments are recorded; "run" gives smv_tv's own chi,
    "start" the start unchanged, "stop" raises ChainStopped; smv_tv is restored after the block either way."""
    from _common import ChainStopped, final_fit_recorded

    from qsmprep.qsm import smvfit

    orig = smvfit.smv_tv
    n = 20
    z, y, x = np.mgrid[:n, :n, :n] - n / 2
    mask = (x ** 2 + y ** 2 + z ** 2) < 8 ** 2
    tot = np.where(mask, 0.01 * z / n, 0).astype(np.float32)
    start = np.where(mask, 0.02, 0).astype(np.float32)
    args = (tot, mask, (1.0, 1.0, 1.0), (0.0, 0.0, 1.0))
    kw = dict(chi_prior=start, radii_mm=(2.0,), n_iter=3)
    ref = orig(*args, **kw)
    with final_fit_recorded("run") as got:
        out = smvfit.smv_tv(*args, **kw)
    assert np.array_equal(out, ref) and got["result"] is out and got["args"][1] is mask
    assert got["kwargs"]["chi_prior"] is start and got["kwargs"]["n_iter"] == 3
    with final_fit_recorded("start") as got:
        out = smvfit.smv_tv(*args, **kw)
    assert np.array_equal(out, start) and not np.array_equal(ref, start) and "result" not in got
    with pytest.raises(ChainStopped), final_fit_recorded("stop") as got:
        smvfit.smv_tv(*args, **kw)
    assert got["kwargs"]["radii_mm"] == (2.0,)
    assert smvfit.smv_tv is orig
    with pytest.raises(ValueError), final_fit_recorded("later"):
        pass


def test_seed_range_takes_a_range_or_one_seed():
    """``--make`` / ``--make-heldout``: ``"a-b"`` with both ends, or one seed (the device script's dry run passes one)."""
    assert list(cf.seed_range("1000-1003")) == [1000, 1001, 1002, 1003]
    assert list(cf.seed_range("1900")) == [1900]
    with pytest.raises(ValueError):
        cf.seed_range("x")
