"""``qsmprep invert`` stage command (qsmprep.cli.invert.main): results, the sidecar vocabulary, the
same chi as the app's inversion node, and every input check (one sentence, exit status 2, nothing written)."""

import json
import re

import nibabel as nb
import numpy as np
import pytest
import torch

from qsmprep import messages as msg
from qsmprep.cli import invert
from qsmprep.methods import INVERSIONS
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


def _one_sentence(text: str) -> bool:
    text = text.strip()
    return "\n" not in text and text.endswith(".") and not re.search(r"[.;!?]\s+[A-Z]", text)


def _refused(capsys, argv, tmp_path, *, code=msg.EXIT_INPUT_ERROR):
    """Run ``argv``; it must fail with ``code`` in one sentence and write nothing new under tmp_path."""
    before = {p for p in tmp_path.rglob("*")}
    assert invert.main([str(a) for a in argv]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("qsmprep invert: error: ")
    text = err[len("qsmprep invert: error: "):]
    assert _one_sentence(text), text
    assert {p for p in tmp_path.rglob("*")} == before
    return text


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
    assert side["Units"] == "ppm" and side["InversionMethod"] == "tkd" and side["Device"] == "cpu"
    assert side["EstimationSoftwareVersion"] and side["EstimationAlgorithm"].startswith("TKD")


def test_nsidl_reads_b0_te_from_sidecar(tmp_path):
    fp, mp, chi, mask = _write_case(tmp_path, sidecar={"MagneticFieldStrength": 3, "EchoTime": [0.01, 0.02, 0.03]})
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--out", str(out), "--device", "cpu"]) == 0
    side = json.loads((tmp_path / "chi.json").read_text())
    assert side["InversionMethod"] == "nsidl" and side["Device"] == "cpu" and len(side["WeightsSHA256"]) == 64
    assert side["ReferenceEchoTime"] == pytest.approx(0.02) and side["MagneticFieldStrength"] == 3
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
    threshold = side2["KSpaceDataConsistency"]["DipoleKernelThreshold"]
    assert threshold == pytest.approx(kspace_threshold_for_noise(fit["FieldRelativeNoise"]), abs=1e-3)
    assert 0.05 <= threshold <= 0.1
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
    # --field-units says the same without a sidecar (and wins over one)
    (tmp_path / "field.json").unlink()
    out3 = tmp_path / "chi3.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--method", "tkd", "--b0", "3",
                        "--field-units", "hz", "--out", str(out3)]) == 0
    np.testing.assert_allclose(nb.load(out3).get_fdata(), nb.load(out).get_fdata(), atol=1e-7)
    assert json.loads((tmp_path / "chi3.json").read_text())["InputFieldUnits"] == "Hz"


@pytest.mark.parametrize("method", list(INVERSIONS))
def test_same_chi_as_the_app_node(method, tmp_path):
    """The app's inversion node and ``qsmprep invert`` give bit-identical chi on the same field, mask and
    weight (one dispatch: qsmprep.methods.invert), with the same sidecar vocabulary."""
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import DipoleInversion

    fp, mp, _, mask = _write_case(tmp_path, sidecar={"MagneticFieldStrength": 3.0, "EchoTime": [0.006, 0.012, 0.018]})
    rng = np.random.default_rng(1)
    weight = (mask * rng.uniform(0.5, 1.0, mask.shape)).astype(np.float32)
    wp = tmp_path / "weight.nii.gz"
    nb.save(nb.Nifti1Image(weight, nb.load(fp).affine), wp)
    node = pe.Node(DipoleInversion(method=method, in_field=str(fp), in_mask=str(mp), in_weight=str(wp), b0_t=3.0,
                                   te_s=0.012, device="cpu"), name="inv", base_dir=str(tmp_path / "work"))
    res = node.run()
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(fp), "--mask", str(mp), "--magnitude", str(wp), "--method", method,
                        "--device", "cpu", "--out", str(out)]) == 0
    app = np.asarray(nb.load(res.outputs.out_chi).dataobj)
    cli = np.asarray(nb.load(out).dataobj)
    assert app.dtype == cli.dtype == np.float32 and np.array_equal(app, cli)
    app_meta = json.loads(open(res.outputs.out_meta).read())
    cli_meta = json.loads((tmp_path / "chi.json").read_text())
    assert {k: v for k, v in app_meta.items() if k not in ("Device",)}.items() <= cli_meta.items()


def test_input_checks(tmp_path, capsys):
    fp, mp, _, _ = _write_case(tmp_path)
    out = tmp_path / "chi.nii.gz"
    base = ["--local-field", fp, "--mask", mp, "--out", out]
    # B0 / TE unknown or in the wrong unit
    assert "pass --b0 and --te" in _refused(capsys, [*base, "--method", "nsidl"], tmp_path)
    assert "not in seconds" in _refused(capsys, [*base, "--b0", "3", "--te", "20"], tmp_path)
    assert "0.1-12 T" in _refused(capsys, [*base, "--b0", "300", "--te", "0.02"], tmp_path)
    # missing and non-NIfTI files
    assert "does not exist" in _refused(capsys, ["--local-field", tmp_path / "nope.nii.gz", "--mask", mp,
                                                 "--method", "tkd", "--out", out], tmp_path)
    junk = tmp_path / "junk.nii.gz"
    junk.write_text("not an image")
    assert "cannot be read as a NIfTI image" in _refused(capsys, ["--local-field", junk, "--mask", mp, "--method", "tkd",
                                                                  "--out", out], tmp_path)
    # --out must not overwrite an input (nor its sidecar)
    text = _refused(capsys, ["--local-field", fp, "--mask", mp, "--method", "tkd", "--out", mp], tmp_path)
    assert "would overwrite the input" in text and str(mp) in text
    assert "must name a NIfTI file" in _refused(capsys, [*base[:4], "--out", tmp_path / "chi.txt", "--method", "tkd"],
                                                 tmp_path)


def test_grid_checks(tmp_path, capsys):
    """A mask on another grid -- other shape, or the same shape shifted by 20 mm -- is refused."""
    fp, mp, _, mask = _write_case(tmp_path)
    aff = nb.load(fp).affine.copy()
    shifted = aff.copy()
    shifted[:3, 3] += [20.0, 0.0, 0.0]
    sp = tmp_path / "mask_shifted.nii.gz"
    nb.save(nb.Nifti1Image(mask.astype(np.uint8), shifted), sp)
    out = tmp_path / "chi.nii.gz"
    text = _refused(capsys, ["--local-field", fp, "--mask", sp, "--method", "tkd", "--out", out], tmp_path)
    assert "another affine" in text and "20.0 mm" in text
    small = tmp_path / "mask_small.nii.gz"
    nb.save(nb.Nifti1Image(mask[:-2].astype(np.uint8), aff), small)
    assert "has shape" in _refused(capsys, ["--local-field", fp, "--mask", small, "--method", "tkd", "--out", out], tmp_path)


@pytest.mark.parametrize("scale,why", [(hz_per_ppm(3.0), "--field-units hz"), (300.0, "total field")])
def test_field_implausible_for_ppm_is_refused(scale, why, tmp_path, capsys):
    """A field in Hz (or a total field) labelled ppm would give a chi 128x too large: refused."""
    fp, mp, _, mask = _write_case(tmp_path)
    img = nb.load(fp)
    big = (np.asarray(img.dataobj) * scale).astype(np.float32)
    bp = tmp_path / "big.nii.gz"
    nb.save(nb.Nifti1Image(big, img.affine), bp)
    text = _refused(capsys, ["--local-field", bp, "--mask", mp, "--method", "tkd", "--out", tmp_path / "chi.nii.gz"],
                    tmp_path)
    assert why in text and str(bp) in text


def test_exit_codes(tmp_path, capsys):
    fp, mp, _, _ = _write_case(tmp_path)
    out = tmp_path / "chi.nii.gz"
    if not torch.cuda.is_available():
        text = _refused(capsys, ["--local-field", fp, "--mask", mp, "--b0", "3", "--te", "0.02", "--device", "cuda",
                                 "--out", out], tmp_path, code=msg.EXIT_CANNOT_EXECUTE)
        assert "no CUDA GPU" in text
    with pytest.raises(SystemExit) as exc:  # argparse: bad command line
        invert.main(["--local-field", str(fp), "--mask", str(mp), "--method", "medi", "--out", str(out)])
    assert exc.value.code == msg.EXIT_INPUT_ERROR


def test_help_lists_checks_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        invert.main(["--help"])
    text = capsys.readouterr().out
    for word in ("shape and affine", "not one of the inputs", "--field-units", "0.1-12 T", "exit status",
                 "126", "2 bad input"):
        assert word in text


def test_strong_preset_with_a_mask_without_interior_fails_cleanly(tmp_path, capsys):
    """strong needs the field's noise, estimated inside the mask: a sliver of a mask is a one-sentence error."""
    fp, mp, _, _ = _write_case(tmp_path)
    img = nb.load(mp)
    sliver = np.zeros(img.shape, np.uint8)
    sliver[10:20, 10:20, 14] = 1  # one slice thick: no interior voxels
    sp = tmp_path / "sliver.nii.gz"
    nb.save(nb.Nifti1Image(sliver, img.affine), sp)
    out = tmp_path / "chi.nii.gz"
    text = _refused(capsys, ["--local-field", fp, "--mask", sp, "--b0", "3", "--te", "0.02", "--device", "cpu",
                             "--nsidl-data-fit", "strong", "--out", out], tmp_path)
    assert str(sp) in text and "--nsidl-data-fit robust" in text


def test_chain_fit_same_chi_as_the_app_node(tmp_path):
    """With the total field and the brain mask, the app's node runs NSIDL's chain data fit (its default);
    qsmprep invert with --total-field / --brain-mask gives the same chi bit for bit, on the brain mask
    with its holes filled (a void cut out of the mask keeps a chi value)."""
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import DipoleInversion
    from qsmprep.qsm.background import remove_background

    fp, mp, chi, mask = _write_case(tmp_path, sidecar={"MagneticFieldStrength": 3.0, "EchoTime": [0.01, 0.02]})
    img = nb.load(fp)
    aff = img.affine
    brain = mask.copy()
    brain[15:17, 14:16, 13:15] = False  # a signal void
    total = np.asarray(img.dataobj, np.float32) + 0.05 * (np.indices(mask.shape)[0] / 30.0).astype(np.float32)
    total = np.where(brain, total, 0).astype(np.float32)
    local, eroded = remove_background(total, brain, (1.0, 1.0, 1.2))
    paths = {}
    for name, arr in (("local", local), ("eroded", eroded.astype(np.uint8)), ("brain", brain.astype(np.uint8)),
                      ("total_hz", total * np.float32(hz_per_ppm(3.0)))):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nb.save(nb.Nifti1Image(np.asarray(arr), aff), paths[name])
    (tmp_path / "total_hz.json").write_text(json.dumps({"Units": "Hz"}))
    (tmp_path / "local.json").write_text(json.dumps({"MagneticFieldStrength": 3.0, "EchoTime": 0.015}))
    node = pe.Node(DipoleInversion(method="nsidl", in_field=str(paths["local"]), in_mask=str(paths["eroded"]),
                                   in_total=str(paths["total_hz"]), in_brain_mask=str(paths["brain"]), b0_t=3.0,
                                   te_s=0.015, device="cpu"), name="inv", base_dir=str(tmp_path / "work"))
    res = node.run()
    out = tmp_path / "chi.nii.gz"
    assert invert.main(["--local-field", str(paths["local"]), "--mask", str(paths["eroded"]), "--total-field",
                        str(paths["total_hz"]), "--brain-mask", str(paths["brain"]), "--device", "cpu",
                        "--out", str(out)]) == 0
    app = np.asarray(nb.load(res.outputs.out_chi).dataobj)
    assert np.array_equal(app, np.asarray(nb.load(out).dataobj))
    chi_mask = np.asarray(nb.load(res.outputs.out_mask).dataobj) > 0
    assert chi_mask[15:17, 14:16, 13:15].all() and (chi_mask | ~brain).all()
    assert json.loads((tmp_path / "chi.json").read_text())["DataFit"]["Preset"] == "chain"
