"""Nipype graphs: construction over the option combinations (nothing runs), resources, GPU wiring,
the thin interfaces on tiny volumes, and one small end-to-end run of the whole command."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from conftest import make_bids, make_read_only, make_writable, simulate, tree_digest

from qsmprep.bids import collect_runs
from qsmprep.config import Config
from qsmprep.workflows.base import init_qsmprep_wf
from qsmprep.workflows.qsm import init_qsm_wf, node_mem_gb

DATA = Path(__file__).parent / "data"


def _config(bids, tmp_path, **workflow):
    cfg = Config()
    cfg.execution.bids_dir = bids
    cfg.execution.output_dir = tmp_path / "out"
    cfg.execution.work_dir = tmp_path / "work"
    for key, val in workflow.items():
        section = "nipype" if key in ("device", "use_gpu", "nprocs", "omp_nthreads") else "workflow"
        setattr(getattr(cfg, section), key, val)
    return cfg


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphs")
    return {
        "multi": make_bids(root / "multi", subjects=("01", "02")),
        "single": make_bids(root / "single", n_echoes=1, suffix="T2starw"),
        "sessions": make_bids(root / "sessions", sessions=("a", "b"), runs=("1", "2")),
        "stack": make_bids(root / "stack", stack=True),
    }


@functools.lru_cache(maxsize=None)
def _runs(bids):
    return collect_runs(bids)


@pytest.mark.parametrize("inversion", ["nsidl", "tkd", "cgl2", "ndi"])
@pytest.mark.parametrize("unwrapping", ["romeo", "laplacian"])
@pytest.mark.parametrize("skip_atlas", [True, False])
@pytest.mark.parametrize("kind", ["multi", "single", "sessions", "stack"])
def test_graph_builds(kind, inversion, unwrapping, skip_atlas, datasets, tmp_path):
    bids = datasets[kind]
    runs = _runs(bids)
    cfg = _config(bids, tmp_path, inversion=inversion, unwrapping=unwrapping, skip_atlas=skip_atlas, device="cpu")
    wf = init_qsmprep_wf(cfg, runs)
    names = wf.list_node_names()
    n_runs = len(runs)
    assert sum(n.endswith(".inversion") for n in names) == n_runs
    assert sum(n.endswith(".ds_chi") for n in names) == n_runs
    assert any(".atlas_" in n for n in names) == (not skip_atlas)
    # one report per subject, after every data sink of the subject
    subjects = {r.subject for r in runs}
    assert sum(n.endswith(".report") for n in names) == len(subjects)
    if kind == "sessions":
        assert {n.split(".")[1] for n in names if n.endswith(".inversion")} == {
            "qsm_ses_a_run_1_wf", "qsm_ses_a_run_2_wf", "qsm_ses_b_run_1_wf", "qsm_ses_b_run_2_wf"}
    if kind == "multi":
        assert {n.split(".")[0] for n in names} == {"sub_01_wf", "sub_02_wf"}
    # building runs nothing and writes nothing
    assert not cfg.execution.work_dir.exists() and not cfg.execution.output_dir.exists()


def _nodes(wf):
    return {n.fullname: n for n in wf._get_all_nodes()}


def test_qsm_node_settings(datasets, tmp_path):
    bids = datasets["multi"]
    (run,) = collect_runs(bids, participant_label=["01"])
    wf = init_qsm_wf(echo_times_s=run.echo_times_s, b0_t=run.b0_t, inversion="nsidl", unwrapping="laplacian",
                     device="cuda", use_gpu=True, omp_nthreads=3, volume_gb=0.045)  # a 1 mm head
    nodes = {n.name: n for n in wf._get_all_nodes()}
    inv = nodes["inversion"]
    assert inv.inputs.use_gpu is True and inv.inputs.device == "cuda" and inv.inputs.num_threads == 3
    assert inv.is_gpu_node() and inv.n_procs == 3
    assert inv.plugin_args["sbatch_args"] == " --gres=gpu:1"  # leading space: SLURMGraph appends it
    assert inv.inputs.te_s == pytest.approx(0.012) and inv.inputs.b0_t == 3.0
    assert nodes["unwrap"].inputs.method == "laplacian" and nodes["fit_field"].inputs.demean_echoes
    assert nodes["unwrap"].inputs.echo_times == pytest.approx([0.006, 0.012, 0.018])
    # the brain mask sees the phase (incoherent-phase voxels are left out), and every later step
    # uses that mask; V-SHARP's eroded mask feeds the inversion and the referencing
    edges = {(u.name, v.name, src, dst) for u, v, d in wf._graph.edges(data=True) for src, dst in d["connect"]}
    assert ("load_echoes", "brain_mask", "out_phase", "in_phase") in edges
    for node in ("unwrap", "fit_field", "background"):
        assert ("brain_mask", node, "out_mask", "in_mask") in edges
    assert ("background", "inversion", "out_mask", "in_mask") in edges
    # NSIDL's chain fit sees the total field and the brain mask; chi's own mask feeds the referencing
    assert ("phase_sign", "inversion", "out_total", "in_total") in edges
    assert ("brain_mask", "inversion", "out_mask", "in_brain_mask") in edges
    assert ("load_echoes", "inversion", "out_combined", "in_magnitude") in edges  # surface voids (long echoes)
    assert ("inversion", "reference", "out_mask", "in_mask") in edges
    # every node declares memory; the nsidl node the most
    mems = {name: n.mem_gb for name, n in nodes.items() if name not in ("inputnode", "outputnode")}
    assert all(m >= 0.2 for m in mems.values()) and max(mems, key=mems.get) == "inversion"


def test_use_gpu_excluded_from_hash(datasets):
    """The device must not invalidate the cache: use_gpu/device/num_threads are nohash."""
    from qsmprep.interfaces.qsm import DipoleInversion

    a, b = DipoleInversion(method="nsidl"), DipoleInversion(method="nsidl", use_gpu=True, device="cuda", num_threads=4)
    assert a.inputs.get_hashval()[1] == b.inputs.get_hashval()[1]
    assert a.inputs.get_hashval()[1] != DipoleInversion(method="tkd").inputs.get_hashval()[1]


def test_cpu_run_has_no_gpu_slot(datasets):
    (run,) = collect_runs(datasets["single"])
    wf = init_qsm_wf(echo_times_s=run.echo_times_s, b0_t=run.b0_t, inversion="tkd", use_gpu=True)
    inv = {n.name: n for n in wf._get_all_nodes()}["inversion"]
    assert not inv.is_gpu_node() and not inv.plugin_args


def test_mem_scales_with_data():
    small = node_mem_gb("unwrap", 0.1, 4)
    big = node_mem_gb("unwrap", 1.0, 4)
    assert big == pytest.approx(10 * small)
    assert node_mem_gb("unwrap", 1.0, 8) > big
    assert node_mem_gb("inversion", 1.0, 1, "nsidl") > node_mem_gb("inversion", 1.0, 1, "tkd")


def test_unknown_method_rejected():
    with pytest.raises(ValueError, match="Unknown inversion"):
        init_qsm_wf(echo_times_s=[0.01], b0_t=3.0, inversion="medi")
    with pytest.raises(ValueError, match="Unknown background removal"):
        init_qsm_wf(echo_times_s=[0.01], b0_t=3.0, background_removal="sharp")


def test_every_workflow_setting_is_a_factory_keyword(datasets, tmp_path):
    """Config.workflow_kwargs() feeds init_single_subject_wf, which takes no catch-all **kwargs: a
    setting declared in WorkflowSettings that no factory takes fails loudly, never silently."""
    import inspect
    from dataclasses import fields

    from qsmprep.config import WorkflowSettings
    from qsmprep.workflows.base import init_single_subject_wf

    params = inspect.signature(init_single_subject_wf).parameters
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())
    assert {f.name for f in fields(WorkflowSettings)} <= set(params)
    cfg = _config(datasets["single"], tmp_path)
    assert set(cfg.workflow_kwargs()) <= set(params)


# --------------------------------------------------------------------------- interfaces


def _write(arr, aff, path):
    import nibabel as nb

    nb.save(nb.Nifti1Image(np.asarray(arr), aff), str(path))
    return str(path)


def test_load_echoes_scales_scanner_phase(tmp_path):
    """Integer phase (-2048..2047 codes = -pi..pi) comes out in rad; echoes stack in the given order."""
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.io import LoadEchoes

    rng = np.random.default_rng(1)
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    true = rng.uniform(-np.pi, np.pi, (5, 5, 5, 2)).astype(np.float32)
    codes = np.round(true / np.pi * 2048).clip(-2048, 2047).astype(np.int16)
    codes[0, 0, 0, 0], codes[0, 0, 1, 0] = -2048, 2047  # full range, as a scanner writes it
    mags = [_write(np.full((5, 5, 5), e + 1.0, np.float32), aff, tmp_path / f"m{e}.nii.gz") for e in range(2)]
    phs = [_write(codes[..., e], aff, tmp_path / f"p{e}.nii.gz") for e in range(2)]
    node = pe.Node(LoadEchoes(in_magnitude=mags, in_phase=phs), name="load", base_dir=str(tmp_path))
    res = node.run()
    import nibabel as nb

    phase = nb.load(res.outputs.out_phase).get_fdata()
    mag = nb.load(res.outputs.out_magnitude).get_fdata()
    rss = nb.load(res.outputs.out_combined).get_fdata()
    assert phase.shape == (5, 5, 5, 2) and mag[..., 1].mean() == 2.0
    assert np.allclose(rss, np.sqrt(5.0))
    err = np.angle(np.exp(1j * (phase - codes * np.pi / 2048)))
    assert np.abs(err).max() < 1e-4


def test_inversion_interface_matches_function(tmp_path):
    """DipoleInversion(tkd) == qsmprep.qsm.inversion.tkd on the same arrays, with the affine's geometry."""
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import DipoleInversion
    from qsmprep.qsm.dipole import forward_field
    from qsmprep.qsm.geometry import b0_direction_from_affine
    from qsmprep.qsm.inversion import tkd

    aff = np.diag([1.0, 1.5, 2.0, 1.0])
    aff[:3, :3] = np.array([[1, 0, 0], [0, 0.94, -0.34], [0, 0.34, 0.94]]) @ aff[:3, :3]
    chi = np.zeros((16, 16, 16), np.float32)
    chi[6:10, 6:10, 6:10] = 0.1
    mask = np.zeros_like(chi, dtype=np.uint8)
    mask[2:14, 2:14, 2:14] = 1
    vs = (1.0, np.linalg.norm(aff[:3, 1]), np.linalg.norm(aff[:3, 2]))
    b0 = b0_direction_from_affine(aff)
    field = forward_field(chi, vs, b0) * mask
    node = pe.Node(DipoleInversion(method="tkd", in_field=_write(field.astype(np.float32), aff, tmp_path / "f.nii.gz"),
                                   in_mask=_write(mask, aff, tmp_path / "m.nii.gz")), name="inv", base_dir=str(tmp_path))
    res = node.run()
    import json

    import nibabel as nb

    got = nb.load(res.outputs.out_chi).get_fdata()
    want = tkd(field.astype(np.float32), mask.astype(bool), vs, b0) * mask
    assert np.allclose(got, want, atol=1e-6)
    meta = json.loads(Path(res.outputs.out_meta).read_text())
    assert meta["EstimationAlgorithm"].startswith("TKD") and meta["Device"] == "cpu"
    assert meta["B0Direction"] == pytest.approx(list(b0), abs=1e-6)


def test_nsidl_node_records_device_and_weights(tmp_path, monkeypatch):
    """The nsidl branch passes b0_t, te_s, weight and the resolved device, and records them."""
    import json

    from nipype.pipeline import engine as pe

    import qsmprep.dl.inference as inference
    import qsmprep.dl.weights as weights
    import qsmprep.interfaces.qsm as iq

    seen = {}

    def fake_invert(local, mask, voxel_size, b0_dir, weight=None, b0_t=3.0, te_s=0.02, device="auto",
                    weights_path=None, data_fit=None, dc_threshold="preset"):
        seen.update(b0_t=b0_t, te_s=te_s, device=device, weight=weight is not None, voxel_size=tuple(voxel_size),
                    data_fit=data_fit, dc_threshold=dc_threshold)
        return 2.0 * local

    monkeypatch.setattr(inference, "invert_nsidl", fake_invert)
    monkeypatch.setattr(weights, "weights_info", lambda path=None, use="chain": {"name": "w.pt", "sha256": "ab" * 32, "path": "/x/w.pt"})
    aff = np.diag([1.0, 1.0, 2.0, 1.0])
    local = np.random.default_rng(0).normal(0, 0.01, (8, 8, 8)).astype(np.float32)
    mask = np.ones((8, 8, 8), np.uint8)
    node = pe.Node(iq.DipoleInversion(method="nsidl", b0_t=7.0, te_s=0.015, device="cpu",
                                      in_field=_write(local, aff, tmp_path / "f.nii.gz"),
                                      in_mask=_write(mask, aff, tmp_path / "m.nii.gz"),
                                      in_weight=_write(mask.astype(np.float32), aff, tmp_path / "w.nii.gz")),
                   name="inv", base_dir=str(tmp_path))
    res = node.run()
    # the app's node runs the robust data-fit preset (its fields come from background removal)
    assert seen == {"b0_t": 7.0, "te_s": 0.015, "device": "cpu", "weight": True, "voxel_size": (1.0, 1.0, 2.0),
                    "data_fit": "robust", "dc_threshold": inference.DC_THRESHOLD}
    meta = json.loads(Path(res.outputs.out_meta).read_text())
    assert meta["DataFit"]["Preset"] == "robust" and meta["KSpaceDataConsistency"]["DipoleKernelThreshold"] == 0.2
    assert meta["WeightsSHA256"] == "ab" * 32 and meta["Device"] == "cpu" and meta["EstimationAlgorithm"].startswith("NSIDL")
    assert meta["InversionMethod"] == "nsidl" and meta["MagneticFieldStrength"] == 7.0 and meta["ReferenceEchoTime"] == 0.015
    import nibabel as nb

    assert np.allclose(nb.load(res.outputs.out_chi).get_fdata(), 2.0 * local, atol=1e-7)


def test_brain_mask_interface_uses_phase(tmp_path):
    """With ``in_phase`` the interface gives exactly ``brain_mask(mag, phase=phase)``: a block of
    random phase inside the brain is left out; without it the block stays in."""
    import nibabel as nb
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import BrainMask
    from qsmprep.qsm.masking import brain_mask

    mag, phase, _, brain, aff = simulate(seed=3)
    noisy = np.zeros(brain.shape, bool)
    noisy[12:18, 14:20, 12:18] = True
    phase[noisy] = np.random.default_rng(3).uniform(-np.pi, np.pi, (int(noisy.sum()), phase.shape[-1]))
    fm, fp = _write(mag, aff, tmp_path / "mag.nii.gz"), _write(phase, aff, tmp_path / "ph.nii.gz")
    with_phase = pe.Node(BrainMask(in_magnitude=fm, in_phase=fp), name="bm_p", base_dir=str(tmp_path)).run()
    without = pe.Node(BrainMask(in_magnitude=fm), name="bm", base_dir=str(tmp_path)).run()
    mp = nb.load(with_phase.outputs.out_mask).get_fdata() > 0
    m0 = nb.load(without.outputs.out_mask).get_fdata() > 0
    assert np.array_equal(mp, brain_mask(mag, voxel_size=(4.0, 4.0, 4.0), phase=phase))
    inner = np.zeros_like(noisy)
    inner[13:17, 15:19, 13:17] = True
    assert m0[inner].all() and not mp[inner].any()


def test_background_interface_converts_hz_to_ppm(tmp_path):
    """A uniform 127.7 Hz field at 3 T is 1 ppm of background: background removal takes it out (local ~ 0)."""
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import BackgroundRemoval
    from qsmprep.qsm.background import remove_background
    from qsmprep.qsm.constants import hz_per_ppm

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    grid = np.indices((24, 24, 24)).astype(np.float32)
    field_hz = (hz_per_ppm(3.0) * (1.0 + 0.01 * grid[0])).astype(np.float32)  # harmonic: linear ramp
    mask = (((grid - 11.5) ** 2).sum(0) < 10**2).astype(np.uint8)
    node = pe.Node(BackgroundRemoval(b0_t=3.0, in_field=_write(field_hz, aff, tmp_path / "f.nii.gz"),
                          in_mask=_write(mask, aff, tmp_path / "m.nii.gz")), name="vs", base_dir=str(tmp_path))
    res = node.run()
    import nibabel as nb

    local = nb.load(res.outputs.out_field).get_fdata()
    eroded = nb.load(res.outputs.out_mask).get_fdata() > 0
    want, want_mask = remove_background(field_hz / hz_per_ppm(3.0), mask.astype(bool), voxel_size=(2.0, 2.0, 2.0))
    assert np.array_equal(eroded, want_mask) and np.allclose(local, want, atol=1e-6)
    assert np.abs(local[eroded]).max() < 1e-3


# --------------------------------------------------------------------------- end to end

def _assert_valid_bids(out_dir) -> None:
    """``bids-validator-deno out_dir``: zero errors (the test fails, never skips, without the validator)."""
    from qsmprep.bids_validator import validate

    result = validate(out_dir)
    assert result.ok, result.summary()


def check_generated_files(out_dir, expected_file) -> None:
    """Compare the output tree with a committed list (qsiprep's check_generated_files)."""
    found = {str(p.relative_to(out_dir)) for p in Path(out_dir).rglob("*") if p.is_file()}
    found = {f for f in found if "/log/" not in f}
    expected = {line.strip() for line in Path(expected_file).read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    assert not (expected - found), f"Expected but not found: {sorted(expected - found)}"
    assert not (found - expected), f"Found but not expected: {sorted(found - expected)}"


@pytest.mark.slow
def test_end_to_end_participant(tmp_path, capsys):
    """Two subjects (one with two sessions), 3 echoes, 32^3 at 4 mm, TKD, no atlas; input read-only.

    Checks the output tree against tests/data/expected_outputs_skip_atlas.txt, the sidecars, the
    saved config, that chi correlates with the simulated truth, and that a rerun resumes.
    """
    import json

    import nibabel as nb

    from qsmprep.cli.run import main

    bids = make_bids(tmp_path / "bids", subjects=("01",))
    make_bids(bids, subjects=("02",), sessions=("a", "b"))
    make_read_only(bids)
    before = tree_digest(bids)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = [str(bids), str(out), "participant", "-w", str(work), "--inversion", "tkd", "--skip-atlas",
            "--nprocs", "2", "--omp-nthreads", "1", "--device", "cpu"]
    try:
        code = main(argv)
    finally:
        make_writable(bids)
    assert code == 0, capsys.readouterr().err[-3000:]
    assert tree_digest(bids) == before
    check_generated_files(out, DATA / "expected_outputs_skip_atlas.txt")

    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["GeneratedBy"][0]["Name"] == "qsmprep"
    side = json.loads((out / "sub-01/anat/sub-01_Chimap.json").read_text())
    assert side["Units"] == "ppm" and side["EstimationAlgorithm"].startswith("TKD")
    assert side["Device"] == "cpu" and "ReferenceRegion" in side and side["SoftwareVersion"]
    assert side["EchoTime"] == pytest.approx([0.006, 0.012, 0.018]) and side["MagneticFieldStrength"] == 3.0
    assert json.loads((out / "sub-01/fmap/sub-01_desc-total_fieldmap.json").read_text())["Units"] == "Hz"
    assert json.loads((out / "sub-01/fmap/sub-01_desc-local_fieldmap.json").read_text())["Units"] == "ppm"
    assert side["SkullStripped"] is True and side["Sources"] and side["InversionMethod"] == "tkd"
    logs = list((out / "sub-02" / "log").glob("*/qsmprep.toml"))
    assert len(logs) == 1 and 'inversion = "tkd"' in logs[0].read_text()
    log_text = (logs[0].parent / "qsmprep.log").read_text()
    assert "qsmprep finished successfully" in log_text and "ds_chi finished" in log_text

    # chi follows the simulated truth inside the final mask
    _, _, chi_true, _, _ = simulate()
    chi = nb.load(str(out / "sub-01/anat/sub-01_Chimap.nii.gz")).get_fdata()
    mask = nb.load(str(out / "sub-01/anat/sub-01_desc-brain_mask.nii.gz")).get_fdata() > 0
    assert mask.sum() > 1000 and abs(chi[mask].mean()) < 1e-4
    corr = np.corrcoef(chi[mask], chi_true[mask] - chi_true[mask].mean())[0, 1]
    assert corr > 0.6, corr

    # the derivatives pass the official BIDS validator with zero errors
    _assert_valid_bids(out)

    # rerun: cached nodes are reused and deleted outputs come back
    (out / "sub-01/anat/sub-01_Chimap.nii.gz").unlink()
    assert main(argv) == 0
    assert (out / "sub-01/anat/sub-01_Chimap.nii.gz").exists()


@pytest.mark.slow
def test_end_to_end_with_atlas(tmp_path, capsys):
    """One subject, 3 echoes, 32^3 at 4 mm, TKD, ``--sloppy`` registration: the atlas outputs are written
    with the run's entities (tests/data/expected_outputs_atlas.txt) and the ROI table names the reference."""
    from qsmprep.cli.run import main

    bids = make_bids(tmp_path / "bids", subjects=("01",))
    out = tmp_path / "out"
    code = main([str(bids), str(out), "participant", "-w", str(tmp_path / "work"), "--inversion", "tkd", "--sloppy",
                 "--nprocs", "2", "--omp-nthreads", "1", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err[-3000:]
    check_generated_files(out, DATA / "expected_outputs_atlas.txt")
    header, *rows = (out / "sub-01/anat/sub-01_desc-dgm_stats.tsv").read_text().splitlines()
    assert "mean_ppm" in header.split("\t") and len(rows) >= 1
    _assert_valid_bids(out)
    # the group level keeps the dataset valid (group/ is in .bidsignore)
    assert main([str(bids), str(out), "group"]) == 0
    _assert_valid_bids(out)


@pytest.mark.slow
def test_end_to_end_single_echo_with_t1w_is_valid_bids(tmp_path, capsys):
    """A single-echo (T2starw) dataset with a T1w of the same subject: the derivatives pass the validator."""
    import shutil

    from qsmprep.cli.run import main

    bids = make_bids(tmp_path / "bids", subjects=("01",), n_echoes=1, suffix="T2starw")
    anat = bids / "sub-01" / "anat"
    shutil.copyfile(anat / "sub-01_part-mag_T2starw.nii.gz", anat / "sub-01_T1w.nii.gz")
    (runs,) = [collect_runs(bids)]
    assert runs[0].t1w is not None
    out = tmp_path / "out"
    work = tmp_path / "work"
    code = main([str(bids), str(out), "participant", "-w", str(work), "--inversion", "tkd",
                 "--skip-atlas", "--nprocs", "2", "--omp-nthreads", "1", "--device", "cpu", "--write-graph",
                 "--clean-workdir", "--stop-on-first-crash"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert (out / "sub-01/anat/sub-01_Chimap.nii.gz").is_file() and (out / "sub-01/fmap/sub-01_magnitude.nii.gz").is_file()
    _assert_valid_bids(out)
    # --write-graph drew the graph; --clean-workdir removed the node folders after the success
    assert (work / "qsmprep_graph.dot").is_file() and "inversion" in (work / "qsmprep_graph.dot").read_text()
    assert (work / "qsmprep_graph.svg").is_file()
    assert not list(work.glob("qsmprep_*wf"))
    # --reports-only rebuilds the report and the methods text from the outputs on disk
    (out / "sub-01.html").unlink()
    (out / "logs" / "CITATION.md").unlink()
    assert main([str(bids), str(out), "participant", "--reports-only"]) == 0
    assert "Methods" in (out / "sub-01.html").read_text() and (out / "logs" / "CITATION.md").is_file()


def test_t1w_reaches_the_atlas_workflow(datasets, tmp_path):
    """A same-session T1w is handed to the registration (magnitude -> T1w -> MNI)."""
    import dataclasses

    bids = datasets["multi"]
    runs = _runs(bids)
    t1w = tmp_path / "sub-01_T1w.nii.gz"
    t1w.write_bytes(b"")
    runs = [dataclasses.replace(r, t1w=t1w) if r.subject == "01" else r for r in runs]
    cfg = _config(bids, tmp_path, inversion="tkd", unwrapping="romeo", skip_atlas=False, device="cpu")
    wf = init_qsmprep_wf(cfg, runs)
    t1ws = {}
    for sub_name in ("sub_01_wf", "sub_02_wf"):
        sub_wf = wf.get_node(sub_name)
        atlas = [n for n in sub_wf._graph.nodes() if n.name.startswith("atlas_")][0]
        t1ws[sub_name] = atlas.get_node("inputnode").inputs.t1w
    assert t1ws["sub_01_wf"] == str(t1w)
    from nipype.interfaces.base import isdefined

    assert not isdefined(t1ws["sub_02_wf"])


@pytest.mark.parametrize("method", ["ismv", "vsharp"])
def test_background_removal_option_reaches_node_and_sidecars(method, datasets, tmp_path):
    """--background-removal picks the method of the background node and is recorded in the sidecars."""
    from qsmprep.methods import BACKGROUND_REMOVALS
    from qsmprep.workflows.base import run_metadata

    bids = datasets["single"]
    runs = _runs(bids)
    cfg = _config(bids, tmp_path, inversion="tkd", unwrapping="romeo", skip_atlas=True, device="cpu")
    cfg.workflow.background_removal = method
    wf = init_qsmprep_wf(cfg, runs)
    nodes = [wf.get_node(n) for n in wf.list_node_names() if n.endswith(".background")]
    assert nodes and all(n.inputs.method == method for n in nodes)
    meta = run_metadata(runs[0], unwrapping="romeo", inversion="tkd", background_removal=method)
    assert meta["BackgroundFieldRemoval"] == BACKGROUND_REMOVALS[method].description


def test_master_seed_seeds_registration(datasets, tmp_path):
    """config.seeds.master (--random-seed) is the seed of every registration node."""
    bids = datasets["sessions"]
    cfg = _config(bids, tmp_path, device="cpu")
    cfg.seeds.master = 1234
    regs = [n for n in init_qsmprep_wf(cfg, _runs(bids))._get_all_nodes() if n.name == "register"]
    assert len(regs) == 4 and all(n.inputs.seed == 1234 for n in regs)
    cfg.seeds.master = 99
    assert {n.inputs.seed for n in init_qsmprep_wf(cfg, _runs(bids))._get_all_nodes() if n.name == "register"} == {99}


def test_stop_on_first_crash_reaches_nipype(datasets, tmp_path):
    from qsmprep.cli.execute import build_workflow

    bids = datasets["single"]
    cfg = _config(bids, tmp_path, inversion="tkd", skip_atlas=True, device="cpu")
    assert build_workflow(cfg, _runs(bids)).config["execution"]["stop_on_first_crash"] is False
    cfg.nipype.stop_on_first_crash = True
    assert build_workflow(cfg, _runs(bids)).config["execution"]["stop_on_first_crash"] is True


def test_offset_residual_node_records_a_message_for_the_report(tmp_path):
    """The single-echo offset step says in its record (the report's QC note) what it removed: the degree and the
    share of the local field it explained."""
    import json

    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.qsm import OffsetResidual

    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    g = np.indices((32, 32, 32)).astype(np.float32) - 15.5
    brain = ((g ** 2).sum(0) < 14 ** 2).astype(np.uint8)
    local = np.where(brain, 2e-4 * (g[0] ** 2 + 0.5 * g[1] ** 2), 0).astype(np.float32)
    node = pe.Node(OffsetResidual(in_field=_write(local, aff, tmp_path / "l.nii.gz"),
                                  in_mask=_write(brain, aff, tmp_path / "m.nii.gz"),
                                  in_brain_mask=_write(brain, aff, tmp_path / "b.nii.gz"), order="2"),
                   name="off", base_dir=str(tmp_path))
    rec = json.loads(open(node.run().outputs.out_record).read())
    assert rec["order"] == 2 and rec["explained"] > 0.05
    assert rec["message"] == ("Single echo: the receive-phase offset's residual was fitted out of the local field with "
                              f"a degree-2 polynomial (it explained {rec['explained']:.0%} of it).")
