"""``qsmprep invert`` stage command (qsmprep.cli.invert.main)."""

import json

import numpy as np
import pytest

nb = pytest.importorskip("nibabel")
torch = pytest.importorskip("torch")

from qsmprep.cli import invert
from qsmprep.qsm.constants import hz_per_ppm
from qsmprep.qsm.dipole import forward_field
from qsmprep.qsm.geometry import b0_direction_from_affine


def _write_case(tmp_path, sidecar=None, units_hz=False, angle=0.2):
    shp, vs = (32, 30, 28), (1.0, 1.0, 1.2)
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot @ np.diag(vs)
    g = np.meshgrid(*[(np.arange(n) - n / 2) * d for n, d in zip(shp, vs)], indexing="ij")
    r = np.sqrt(sum(x**2 for x in g))
    mask = r < 12
    chi = (0.1 * (np.sqrt((g[0] - 2) ** 2 + g[1] ** 2 + g[2] ** 2) < 4)).astype(np.float32) * mask
    f = forward_field(chi, vs, b0_direction_from_affine(aff)) * mask
    f = ((f - f[mask].mean()) * mask).astype(np.float32)
    if units_hz:
        f = f * hz_per_ppm(3.0)
    fp, mp = tmp_path / "field.nii.gz", tmp_path / "mask.nii.gz"
    nb.save(nb.Nifti1Image(f, aff), fp)
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), aff), mp)
    if sidecar is not None:
        (tmp_path / "field.json").write_text(json.dumps(sidecar))
    return fp, mp, chi, mask


def test_tkd_writes_chi_and_sidecar(tmp_path):
    fp, mp, chi, mask = _write_case(tmp_path)
    out = tmp_path / "out" / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--method", "tkd", "--out", str(out)]) == 0
    img = nb.load(out)
    res = img.get_fdata().astype(np.float32)
    assert img.get_data_dtype() == np.float32 and np.allclose(img.affine, nb.load(fp).affine)
    assert np.all(res[~mask] == 0)
    assert np.corrcoef(res[mask], chi[mask])[0, 1] > 0.8
    side = json.loads((tmp_path / "out" / "chi.json").read_text())
    assert side["Units"] == "ppm" and side["Method"] == "tkd" and side["Device"] == "cpu"
    assert side["SoftwareVersion"]


def test_nsidl_reads_b0_te_from_sidecar(tmp_path):
    from qsmprep.dl.weights import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("no shipped NSIDL weights")
    fp, mp, chi, mask = _write_case(tmp_path, sidecar={"MagneticFieldStrength": 3, "EchoTime": [0.01, 0.02, 0.03]})
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--out", str(out), "--device", "cpu"]) == 0
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["Method"] == "nsidl" and side["Device"] == "cpu" and len(side["WeightsSha256"]) == 64
    assert side["EchoTimeReference"] == pytest.approx(0.02) and side["MagneticFieldStrength"] == 3
    res = nb.load(out).get_fdata()
    assert np.corrcoef(res[mask], chi[mask])[0, 1] > 0.8
    assert side["DataFit"]["Preset"] == "robust"
    # the strong preset on this clean (noise-free) field: recorded, and closer to the truth
    out2 = tmp_path / "chi_strong.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--out", str(out2), "--device", "cpu",
                        "--nsidl-data-fit", "strong"]) == 0
    side2 = json.loads((tmp_path / "chi_strong.json").read_text())
    from qsmprep.dl.inference import kspace_threshold_for_noise

    fit = side2["DataFit"]
    assert (fit["Preset"], fit["PreSolver"], fit["PreSolverIterations"]) == ("strong", "cg", 50)
    assert fit["KSpaceThreshold"] == pytest.approx(kspace_threshold_for_noise(fit["FieldRelativeNoise"]), abs=1e-3)
    assert 0.05 <= fit["KSpaceThreshold"] <= 0.1
    res2 = nb.load(out2).get_fdata()

    def err(x):
        p, t = x[mask] - x[mask].mean(), chi[mask] - chi[mask].mean()
        return np.linalg.norm(p - t) / np.linalg.norm(t)

    assert err(res2) < err(res), (err(res2), err(res))


def test_hz_field_is_converted(tmp_path):
    fp, mp, chi, mask = _write_case(tmp_path, sidecar={"Units": "Hz", "MagneticFieldStrength": 3.0}, units_hz=True)
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--method", "tkd", "--out", str(out)]) == 0
    ref = tmp_path / "ref"
    ref.mkdir()
    fp2, mp2, _, _ = _write_case(ref)
    invert.main(["--local-field", str(fp2), "--mask", str(mp2), "--method", "tkd", "--out", str(ref / "chi.nii.gz")])
    np.testing.assert_allclose(nb.load(out).get_fdata(), nb.load(ref / "chi.nii.gz").get_fdata(), atol=1e-5)


def test_clear_errors(tmp_path, capsys):
    fp, mp, _, _ = _write_case(tmp_path)
    out = str(tmp_path / "chi.nii.gz")
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--method", "ndi", "--out", out]) == 1
    assert "pass --b0 and --te" in capsys.readouterr().err
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--b0", "3", "--te", "20", "--out", out]) == 1
    assert "not in seconds" in capsys.readouterr().err
    assert invert.main(["--local-field", str(tmp_path / "nope.nii.gz"), "--mask", str(mp), "--method", "tkd", "--out", out]) == 1
    assert "does not exist" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--b0", "3", "--te", "0.02",
                            "--device", "cuda", "--out", out]) == 1
        assert "no CUDA GPU" in capsys.readouterr().err


def test_strong_preset_with_a_mask_without_interior_fails_cleanly(tmp_path, capsys):
    """strong needs the field's noise, estimated inside the mask: a sliver of a mask is a one-sentence error."""
    from qsmprep.dl.weights import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("no shipped NSIDL weights")
    fp, mp, _, _ = _write_case(tmp_path)
    img = nb.load(mp)
    sliver = np.zeros(img.shape, np.uint8)
    sliver[10:20, 10:20, 14] = 1  # one slice thick: no interior voxels
    sp = tmp_path / "sliver.nii.gz"
    nb.save(nb.Nifti1Image(sliver, img.affine), sp)
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(sp), "--b0", "3", "--te", "0.02", "--device", "cpu",
                        "--nsidl-data-fit", "strong", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(sp) in err and "--nsidl-data-fit robust" in err
    assert not out.exists() and not (tmp_path / "chi.json").exists()
