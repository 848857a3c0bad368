"""Command line: options, the bad-input matrix (one sentence, file named, exit != 0, nothing written),
``--dry-run``, ``--help`` speed, config round trip and the ``invert`` dispatch."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import make_bids, make_read_only, make_writable, tree_digest

from qsmprep import messages as msg
from qsmprep.cli.parser import parse_args, read_plugin_file
from qsmprep.cli.run import main
from qsmprep.config import Config

REPO = Path(__file__).resolve().parents[1]


def _one_sentence(text: str) -> bool:
    """One line, ends with a full stop, no sentence break inside (paths are fine)."""
    return "\n" not in text.strip() and text.strip().endswith(".") and not re.search(r"[.;!?]\s+[A-Z]", text)


def _run_error(capsys, argv):
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    line = err.splitlines()[-1] if err else ""
    assert line.startswith("qsmprep: error: "), err
    return code, line[len("qsmprep: error: "):]


# --------------------------------------------------------------------------- bad inputs


def _drop_phase(bids):
    victim = bids / "sub-01/anat/sub-01_echo-2_part-phase_MEGRE.nii.gz"
    victim.unlink()
    return "sub-01_echo-2_part-mag_MEGRE.nii.gz"


def _drop_mag(bids):
    (bids / "sub-01/anat/sub-01_echo-3_part-mag_MEGRE.nii.gz").unlink()
    return "sub-01_echo-3_part-phase_MEGRE.nii.gz"


def _drop_echo_time(bids):
    for part in ("mag", "phase"):
        side = bids / f"sub-01/anat/sub-01_echo-2_part-{part}_MEGRE.json"
        side.write_text(json.dumps({"Units": "rad"} if part == "phase" else {}))
    return "sub-01_echo-2_part-mag_MEGRE"


def _drop_field_strength(bids):
    (bids / "MEGRE.json").unlink()
    return "sub-01_echo-1_part-mag_MEGRE"


def _grid_mismatch(bids):
    import nibabel as nb

    path = bids / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"
    img = nb.load(str(path))
    nb.save(nb.Nifti1Image(np.zeros((30, 32, 32), np.float32), img.affine), str(path))
    return "sub-01_echo-1_part-phase_MEGRE.nii.gz"


def _shifted_affine(bids):
    import nibabel as nb

    path = bids / "sub-02/anat/sub-02_echo-3_part-phase_MEGRE.nii.gz"
    img = nb.load(str(path))
    aff = img.affine.copy()
    aff[0, 3] += 2.0
    nb.save(nb.Nifti1Image(np.asarray(img.dataobj), aff), str(path))
    return "sub-02_echo-3_part-phase_MEGRE.nii.gz"


def _nan(bids):
    import nibabel as nb

    path = bids / "sub-02/anat/sub-02_echo-1_part-mag_MEGRE.nii.gz"
    img = nb.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[3, 4, 5] = np.nan
    nb.save(nb.Nifti1Image(data, img.affine), str(path))
    return "sub-02_echo-1_part-mag_MEGRE.nii.gz"


def _empty(bids):
    import shutil

    for sub in ("sub-01", "sub-02"):
        shutil.rmtree(bids / sub)
    return str(bids.name)


def _te_in_ms(bids):
    side = bids / "sub-01/anat/sub-01_echo-1_part-mag_MEGRE.json"
    side.write_text(json.dumps({"EchoTime": 6.0}))
    return "sub-01_echo-1_part-mag_MEGRE"


def _zero_magnitude(bids):
    import nibabel as nb

    path = bids / "sub-01/anat/sub-01_echo-2_part-mag_MEGRE.nii.gz"
    img = nb.load(str(path))
    nb.save(nb.Nifti1Image(np.zeros(img.shape, np.float32), img.affine), str(path))
    return "sub-01_echo-2_part-mag_MEGRE.nii.gz"


def _single_slice(bids):
    import nibabel as nb

    for part in ("mag", "phase"):
        for e in (1, 2, 3):
            path = bids / f"sub-02/anat/sub-02_echo-{e}_part-{part}_MEGRE.nii.gz"
            img = nb.load(str(path))
            nb.save(nb.Nifti1Image(np.asarray(img.dataobj)[:, :, 10:11], img.affine), str(path))
    return "sub-02_echo-1_part-mag_MEGRE.nii.gz"


def _huge_header(bids):
    import gzip
    import struct

    path = bids / "sub-01/anat/sub-01_echo-1_part-phase_MEGRE.nii.gz"
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[40:56] = struct.pack("<8h", 3, 1000, 1000, 500, 1, 1, 1, 1)  # dim[]: a 1000 x 1000 x 500 image
    path.write_bytes(gzip.compress(bytes(raw)))
    return "sub-01_echo-1_part-phase_MEGRE.nii.gz"


def _bad_json(bids):
    (bids / "sub-02/anat/sub-02_echo-2_part-phase_MEGRE.json").write_text('{"EchoTime": 0.012,')
    return "sub-02_echo-2_part-phase_MEGRE.json"


def _field_strength_in_mhz(bids):
    (bids / "MEGRE.json").write_text(json.dumps({"MagneticFieldStrength": 127.7}))
    return "MEGRE.json"


BAD_INPUTS = {
    "zero_magnitude": (_zero_magnitude, "magnitude"),
    "single_slice": (_single_slice, "slice"),
    "huge_declared_image": (_huge_header, "declares"),
    "bad_json_sidecar": (_bad_json, "JSON"),
    "field_strength_not_tesla": (_field_strength_in_mhz, "MagneticFieldStrength"),
    "missing_phase": (_drop_phase, "phase"),
    "missing_magnitude": (_drop_mag, "magnitude"),
    "missing_echotime": (_drop_echo_time, "EchoTime"),
    "missing_field_strength": (_drop_field_strength, "MagneticFieldStrength"),
    "grid_shape_differs": (_grid_mismatch, "grid"),
    "grid_affine_differs": (_shifted_affine, "grid"),
    "nan_values": (_nan, "NaN"),
    "empty_dataset": (_empty, "No multi-echo"),
    "echo_time_in_ms": (_te_in_ms, "seconds"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_fails_early(case, bids_copy, tmp_path, capsys):
    damage, keyword = BAD_INPUTS[case]
    named = damage(bids_copy)
    before = tree_digest(bids_copy)
    make_read_only(bids_copy)
    out = tmp_path / "out"
    try:
        code, text = _run_error(capsys, [bids_copy, out, "participant", "-w", tmp_path / "work", "--skip-atlas"])
    finally:
        make_writable(bids_copy)
    assert code == msg.EXIT_INPUT_ERROR
    assert named in text, text
    assert keyword in text, text
    assert _one_sentence(text), text
    assert not out.exists() and not (tmp_path / "work").exists()
    assert tree_digest(bids_copy) == before


def test_unknown_participant(readonly_bids, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _run_error(capsys, [readonly_bids, out, "participant", "--participant-label", "sub-07"])
    assert code == msg.EXIT_INPUT_ERROR
    assert "07" in text and str(readonly_bids) in text and "available: 01, 02" in text
    assert _one_sentence(text) and not out.exists()


def test_unknown_session(readonly_bids, tmp_path, capsys):
    out = tmp_path / "out"
    code, text = _run_error(capsys, [readonly_bids, out, "participant", "--session-label", "pre"])
    assert code == msg.EXIT_INPUT_ERROR and "pre" in text and _one_sentence(text) and not out.exists()


def test_out_dir_inside_bids(readonly_bids, tmp_path, capsys):
    out = readonly_bids / "derivatives" / "qsmprep"
    code, text = _run_error(capsys, [readonly_bids, out, "participant"])
    assert code == msg.EXIT_INPUT_ERROR
    assert str(out) in text and "inside the input dataset" in text and _one_sentence(text)
    assert not out.exists()


def test_out_dir_equals_bids(readonly_bids, tmp_path, capsys):
    code, text = _run_error(capsys, [readonly_bids, readonly_bids, "participant"])
    assert code == msg.EXIT_INPUT_ERROR and str(readonly_bids) in text and _one_sentence(text)


def test_out_dir_not_writable(readonly_bids, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    out = blocker / "out"
    code, text = _run_error(capsys, [readonly_bids, out, "participant"])
    assert code == msg.EXIT_INPUT_ERROR
    assert str(out) in text and "cannot be created or written" in text and _one_sentence(text)


def test_work_dir_inside_bids(readonly_bids, tmp_path, capsys):
    code, text = _run_error(capsys, [readonly_bids, tmp_path / "out", "participant", "-w", readonly_bids / "work"])
    assert code == msg.EXIT_INPUT_ERROR and "work folder" in text and not (tmp_path / "out").exists()


def test_missing_bids_dir(tmp_path, capsys):
    code, text = _run_error(capsys, [tmp_path / "nope", tmp_path / "out", "participant"])
    assert code == msg.EXIT_INPUT_ERROR and "nope" in text and _one_sentence(text)


def test_cuda_without_gpu_fails_at_start(readonly_bids, tmp_path, capsys, monkeypatch):
    import qsmprep.utils.gpu as gpu

    monkeypatch.setattr(gpu, "cuda_status", lambda: (False, "no CUDA device in this test"))
    code, text = _run_error(capsys, [readonly_bids, tmp_path / "out", "participant", "--device", "cuda"])
    assert code == msg.EXIT_CANNOT_EXECUTE
    assert "--device cuda" in text and "--device cpu" in text and _one_sentence(text)
    assert not (tmp_path / "out").exists()


def test_cuda_real_check_matches_torch(readonly_bids, tmp_path, capsys):
    """Without the monkeypatch: on a machine without a GPU, --device cuda must fail (never fall back)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    code, _ = _run_error(capsys, [readonly_bids, tmp_path / "out", "participant", "--device", "cuda", "--dry-run"])
    assert code == msg.EXIT_CANNOT_EXECUTE


def test_missing_nsidl_weights(readonly_bids, tmp_path, capsys, monkeypatch):
    missing = tmp_path / "no_such_weights.pt"
    monkeypatch.setenv("QSMPREP_NSIDL_WEIGHTS", str(missing))
    code, text = _run_error(capsys, [readonly_bids, tmp_path / "out", "participant", "--device", "cpu"])
    assert code == msg.EXIT_INPUT_ERROR
    assert str(missing) in text and "--inversion tkd" in text and _one_sentence(text)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- options


def test_parse_defaults_and_labels(tmp_path):
    cfg = parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--participant-label", "sub-01", "02", "01"])
    assert cfg.execution.participant_label == ["01", "02"]
    assert cfg.workflow.inversion == "nsidl" and cfg.workflow.unwrapping == "romeo"
    assert cfg.nipype.device == "auto" and cfg.nipype.plugin == "MultiProc"
    assert cfg.execution.work_dir == Path.cwd() / "work"
    assert cfg.nipype.resolved_omp_nthreads() == max(1, min(cfg.nipype.nprocs - 1, 8))


def test_parse_all_options(tmp_path):
    cfg = parse_args([
        str(tmp_path), str(tmp_path / "o"), "participant", "--session-label", "ses-a", "-w", str(tmp_path / "w"),
        "--nprocs", "4", "--omp-nthreads", "2", "--mem-gb", "6.5", "--device", "cpu", "--inversion", "cgl2",
        "--unwrapping", "laplacian", "--skip-atlas", "--atlas-precise", "--dry-run", "-vv",
        "--background-removal", "vsharp",
    ])
    assert cfg.execution.session_label == ["a"] and cfg.execution.work_dir == tmp_path / "w"
    assert (cfg.nipype.nprocs, cfg.nipype.omp_nthreads, cfg.nipype.mem_gb) == (4, 2, 6.5)
    assert cfg.workflow.inversion == "cgl2" and cfg.workflow.unwrapping == "laplacian"
    assert cfg.workflow.background_removal == "vsharp"
    assert parse_args([str(tmp_path), str(tmp_path / "o"), "participant"]).workflow.background_removal == "ismv"
    assert cfg.workflow.skip_atlas and cfg.workflow.atlas_precise and cfg.execution.dry_run
    assert cfg.execution.verbosity == 2
    plugin = cfg.get_plugin()
    assert plugin == {"plugin": "MultiProc",
                      "plugin_args": {"n_procs": 4, "memory_gb": 6.5, "raise_insufficient": False,
                                      "mp_context": "forkserver"}}


@pytest.mark.parametrize("argv", [
    ["--inversion", "medi"], ["--device", "tpu"], ["--nprocs", "0"], ["--unwrapping", "prelude"],
    ["--nprocs", "2", "--omp-nthreads", "3"], ["--sloppy", "--atlas-precise"],
])
def test_bad_options_exit_2(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path), str(tmp_path / "o"), "participant", *argv])
    assert exc.value.code == 2


@pytest.mark.parametrize("plugin", ["Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE"])
def test_use_plugin_file(plugin, tmp_path):
    path = tmp_path / "plugin.yml"
    path.write_text(f"plugin: {plugin}\nplugin_args:\n  sbatch_args: '--time=1:00:00'\n  n_procs: 3\n")
    cfg = parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--use-plugin", str(path)])
    assert cfg.nipype.plugin == plugin
    got = cfg.get_plugin()
    assert got["plugin"] == plugin and got["plugin_args"]["sbatch_args"] == "--time=1:00:00"
    if plugin == "MultiProc":
        assert got["plugin_args"]["n_procs"] == 3 and cfg.nipype.nprocs == 3


def test_gpu_slot_in_multiproc_args():
    cfg = Config()
    cfg.nipype.use_gpu = True
    assert cfg.get_plugin()["plugin_args"]["n_gpu_procs"] == 1


@pytest.mark.parametrize("text,why", [("plugin: Condor\n", "unknown plugin"), ("- a\n", "no 'plugin' key"),
                                      ("plugin: Linear\nplugin_args: [1]\n", "not a mapping")])
def test_bad_plugin_file(text, why, tmp_path, capsys):
    path = tmp_path / "p.yml"
    path.write_text(text)
    with pytest.raises(ValueError, match=why):
        read_plugin_file(path)
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--use-plugin", str(path)])
    assert exc.value.code == 2 and str(path) in capsys.readouterr().err


def test_config_toml_round_trip(tmp_path):
    plugin = tmp_path / "p.yml"
    plugin.write_text("plugin: SLURM\nplugin_args: {sbatch_args: '-p gpu --mem=8G', max_jobs: 4}\n")
    cfg = parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--participant-label", "01",
                      "--inversion", "ndi", "--unwrapping", "laplacian", "--use-plugin", str(plugin),
                      "--device", "cpu", "--skip-atlas"])
    toml = tmp_path / "qsmprep.toml"
    toml.write_text(cfg.to_toml())
    back = Config.from_toml(toml)
    assert back.to_dict() == cfg.to_dict()
    # reuse: the saved choices become defaults, options given on the command line win
    again = parse_args([str(tmp_path), str(tmp_path / "o2"), "participant", "--config-file", str(toml),
                        "--inversion", "tkd"])
    assert again.workflow.inversion == "tkd" and again.workflow.unwrapping == "laplacian"
    assert again.execution.participant_label == ["01"] and again.workflow.skip_atlas
    assert again.nipype.plugin == "SLURM" and again.nipype.plugin_args["max_jobs"] == 4


def test_bad_config_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("this is = = not toml")
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--config-file", str(bad)])
    assert exc.value.code == 2 and str(bad) in capsys.readouterr().err


def test_version(capsys):
    from qsmprep import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and __version__ in capsys.readouterr().out


def test_help_is_fast_and_lazy():
    """``qsmprep --help`` imports none of torch, nipype, bids, ants, nilearn."""
    code = (
        "import sys, runpy\n"
        "sys.argv = ['qsmprep', '--help']\n"
        "try:\n    runpy.run_module('qsmprep', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'nipype', 'bids', 'ants', 'nilearn', 'nibabel') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert "usage: qsmprep" in res.stdout
    assert "HEAVY []" in res.stdout, res.stdout[-300:]


def test_invert_dispatch(monkeypatch):
    import types

    seen = {}
    fake = types.ModuleType("qsmprep.cli.invert")
    fake.main = lambda argv: seen.setdefault("argv", argv) and 0
    monkeypatch.setitem(sys.modules, "qsmprep.cli.invert", fake)
    assert main(["invert", "--in", "x.nii.gz"]) == 0
    assert seen["argv"] == ["--in", "x.nii.gz"]


# --------------------------------------------------------------------------- dry run


def test_dry_run_prints_plan(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids", subjects=("01",), sessions=("a", "b"), oblique_deg=20.0)
    make_read_only(bids)
    out = tmp_path / "out"
    try:
        code = main([str(bids), str(out), "participant", "--dry-run", "--inversion", "tkd", "--skip-atlas",
                     "-w", str(tmp_path / "work")])
    finally:
        make_writable(bids)
    text = capsys.readouterr().out
    assert code == 0
    assert "sub-01_ses-a" in text and "sub-01_ses-b" in text
    assert "TE (ms): 6.00, 12.00, 18.00" in text
    assert "B0: 3 T" in text and "obliquity: 20.0 deg" in text
    assert "direction (array axes): (+0.000, +0.342, +0.940)" in text  # R_x(20 deg)^-1 z
    # the steps come from the graph: every node in execution order, with its method and resources
    steps = text.split("Steps (")[1]
    order = [steps.index(n) for n in ("load_echoes --", "brain_mask --", "unwrap --", "fit_field --", "background --",
                                      "inversion --", "reference --", "report --")]
    assert order == sorted(order), steps
    assert "ROMEO-style" in steps and "iSMV" in steps and "TKD (truncated k-space division)" in steps
    assert "register" not in steps and "derivative files written" in steps
    assert not out.exists() and not (tmp_path / "work").exists()


def test_dry_run_plan_follows_the_graph(tmp_path, capsys):
    """A method chosen on the command line appears in the plan through the graph's node (not a fixed list)."""
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    code = main([str(bids), str(tmp_path / "out"), "participant", "--dry-run", "--background-removal", "vsharp",
                 "--unwrapping", "laplacian", "--inversion", "ndi", "--sloppy", "-w", str(tmp_path / "w")])
    steps = capsys.readouterr().out.split("Steps (")[1]
    assert code == 0
    assert "V-SHARP" in steps and "Laplacian" in steps and "NDI (nonlinear dipole inversion" in steps
    assert "register --" in steps and "flavor testing" in steps and "roi_stats --" in steps


def test_group_without_outputs(tmp_path, capsys):
    code, text = _run_error(capsys, [tmp_path, tmp_path / "missing", "group"])
    assert code == msg.EXIT_INPUT_ERROR and "participant level first" in text


def test_group_dispatch(tmp_path, monkeypatch):
    import qsmprep.group as group

    seen = {}

    def fake_run_group(bids_dir, out_dir, participant_label=None, *, group_by=None, covariate=None):
        seen.update(bids=Path(bids_dir), out=Path(out_dir), labels=participant_label, group_by=group_by,
                    covariate=covariate)
        return [Path(out_dir) / "group" / "group_desc-dgm_stats.tsv"]

    monkeypatch.setattr(group, "run_group", fake_run_group)
    (tmp_path / "out").mkdir()
    assert main([str(tmp_path), str(tmp_path / "out"), "group", "--participant-label", "sub-01"]) == 0
    assert seen == {"bids": tmp_path, "out": tmp_path / "out", "labels": ["01"], "group_by": None, "covariate": None}
    assert main([str(tmp_path), str(tmp_path / "out"), "group", "--group-by", "group", "--covariate", "age"]) == 0
    assert seen["labels"] is None and (seen["group_by"], seen["covariate"]) == ("group", "age")

    def refuse(*args, **kwargs):
        raise group.GroupInputError("participants.tsv has no column 'grp'; pass one of: group, age.")

    monkeypatch.setattr(group, "run_group", refuse)
    assert main([str(tmp_path), str(tmp_path / "out"), "group", "--group-by", "grp"]) == msg.EXIT_INPUT_ERROR


def test_plugin_file_node_args_reach_the_inversion_node(tmp_path):
    """--use-plugin's node_plugin_args give the inversion node its GPU request (SLURMGraph)."""
    from qsmprep.cli.parser import read_plugin_file
    from qsmprep.config import Config
    from qsmprep.workflows.base import apply_node_plugin_args
    from nipype.pipeline import engine as pe
    from nipype.interfaces.utility import IdentityInterface

    f = tmp_path / "slurmgraph.yml"
    f.write_text("plugin: SLURMGraph\nplugin_args: {dont_resubmit_completed_jobs: true}\n"
                 "node_plugin_args:\n  inversion: {sbatch_args: '--gres=gpu:1'}\n")
    plugin = read_plugin_file(f)
    cfg = Config()
    cfg.nipype.plugin, cfg.nipype.plugin_args = plugin["plugin"], plugin["plugin_args"]
    assert "node_plugin_args" not in cfg.get_plugin()["plugin_args"]
    wf = pe.Workflow(name="qsm_single_wf")
    inv = pe.Node(IdentityInterface(fields=["x"]), name="inversion")
    other = pe.Node(IdentityInterface(fields=["x"]), name="mask")
    wf.connect(other, "x", inv, "x")
    changed = apply_node_plugin_args(wf, cfg.get_node_plugin_args())
    assert changed == ["qsm_single_wf.inversion"]
    assert inv.plugin_args["sbatch_args"] == " --gres=gpu:1"
    assert not other.plugin_args


def test_plugin_file_bad_node_args(tmp_path):
    from qsmprep.cli.parser import read_plugin_file

    f = tmp_path / "bad.yml"
    f.write_text("plugin: SLURMGraph\nnode_plugin_args: [inversion]\n")
    with pytest.raises(ValueError, match="node_plugin_args"):
        read_plugin_file(f)


def test_random_seed_reaches_registration(tmp_path, capsys):
    """--random-seed sets config.seeds.master and survives the saved config (test_workflows: it seeds ANTs)."""
    from qsmprep.config import SeedSettings

    base = [str(tmp_path), str(tmp_path / "o"), "participant"]
    assert parse_args(base).seeds.master == SeedSettings.master
    cfg = parse_args([*base, "--random-seed", "1234"])
    assert cfg.seeds.master == 1234
    toml = tmp_path / "qsmprep.toml"
    toml.write_text(cfg.to_toml())
    assert parse_args([*base, "--config-file", str(toml)]).seeds.master == 1234
    for bad in ("-1", "2147483648", "x"):
        with pytest.raises(SystemExit) as exc:
            parse_args([*base, "--random-seed", bad])
        assert exc.value.code == 2


# --------------------------------------------------------------------------- GPU requests


@pytest.mark.parametrize("plugin", ["SLURMGraph", "SLURM", "SGE"])
def test_cluster_gpu_request_follows_the_user_not_the_submit_host(plugin, tmp_path, monkeypatch):
    """Built on a host without a GPU, ``--device cuda`` with a cluster plugin still asks the scheduler for a
    GPU for the inversion node (``--gres=gpu:1``), and does not fail at start; ``auto`` asks for none."""
    import qsmprep.utils.gpu as gpu
    from qsmprep.cli.execute import build_workflow
    from qsmprep.cli.prepare import check_gpu_request

    monkeypatch.setattr(gpu, "cuda_status", lambda: (False, "GPU-less submit host"))
    bids = make_bids(tmp_path / "bids", subjects=("01",))
    plugin_file = tmp_path / "plugin.yml"
    plugin_file.write_text(f"plugin: {plugin}\nplugin_args: {{sbatch_args: '--time=1:00:00'}}\n")
    base = [str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / "w"), "--use-plugin", str(plugin_file),
            "--skip-atlas"]
    from qsmprep.bids import collect_runs

    runs = collect_runs(bids)
    for device, wants_gpu in (("cuda", True), ("auto", False), ("cpu", False)):
        cfg = parse_args([*base, "--device", device])
        check_gpu_request(cfg)  # never raises for a cluster plugin
        assert cfg.nipype.use_gpu is wants_gpu
        inv = [n for n in build_workflow(cfg, runs)._get_all_nodes() if n.name == "inversion"]
        assert inv and all(("--gres=gpu:1" in (n.plugin_args or {}).get("sbatch_args", "")) is wants_gpu for n in inv)
        assert all(n.inputs.use_gpu is wants_gpu for n in inv)
    # a classical inversion never reserves a GPU
    cfg = parse_args([*base, "--device", "cuda", "--inversion", "tkd"])
    check_gpu_request(cfg)
    assert cfg.nipype.use_gpu is False
    # on this machine (MultiProc) the same request needs a GPU here: exit 126 before anything is written
    cfg = parse_args([str(bids), str(tmp_path / "out"), "participant", "--device", "cuda"])
    with pytest.raises(gpu.DeviceUnavailableError, match="--device cuda"):
        check_gpu_request(cfg)


# --------------------------------------------------------------------------- BIDS validation of the input


def test_input_the_validator_rejects_stops_the_run(tmp_path, capsys):
    """A dataset qsmprep could read but BIDS forbids (4-D MEGRE stacks: no echo entity) stops with the
    validator's own summary and exit 2, before anything is written; --skip-bids-validation lets it through."""
    bids = make_bids(tmp_path / "bids", stack=True)
    out = tmp_path / "out"
    code, text = _run_error(capsys, [bids, out, "participant", "--skip-atlas", "--inversion", "tkd", "-w",
                                     tmp_path / "w"])
    assert code == msg.EXIT_INPUT_ERROR
    assert "BIDS validator" in text and "error" in text and "--skip-bids-validation" in text
    assert not out.exists() and not (tmp_path / "w").exists()
    assert main([str(bids), str(out), "participant", "--skip-atlas", "--inversion", "tkd", "--dry-run",
                 "--skip-bids-validation"]) == 0
    assert not out.exists()


def test_valid_input_passes_and_warnings_go_to_the_log(tmp_path, capsys, caplog):
    bids = make_bids(tmp_path / "bids")
    import logging

    with caplog.at_level(logging.WARNING, logger="qsmprep"):
        assert main([str(bids), str(tmp_path / "out"), "participant", "--dry-run", "--skip-atlas"]) == 0
    assert any("BIDS validator" in r.getMessage() for r in caplog.records)  # e.g. README missing


def test_boilerplate_only_writes_the_methods_text(tmp_path, capsys):
    bids = make_bids(tmp_path / "bids")
    out = tmp_path / "out"
    assert main([str(bids), str(out), "participant", "--boilerplate-only", "--inversion", "tkd", "--skip-atlas"]) == 0
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["CITATION.bib", "CITATION.html", "CITATION.md"]
    text = (out / "logs" / "CITATION.md").read_text()
    assert "TKD" in text and "10.1002/mrm.22135" in text and "ANTs" not in text
    assert not list(out.glob("sub-*"))  # nothing else
    out2 = tmp_path / "out2"
    assert main([str(bids), str(out2), "participant", "--boilerplate-only", "--md-only-boilerplate"]) == 0
    assert sorted(p.name for p in (out2 / "logs").iterdir()) == ["CITATION.md"]
    assert "10.21037/qims-2025-1851" in (out2 / "logs" / "CITATION.md").read_text()


# --------------------------------------------------------------------------- faults (issue #15)


def test_symlink_inside_out_dir_is_refused_and_never_followed(tmp_path, capsys):
    """A symlinked figures/ (or lock file) inside out_dir would be written through, outside out_dir: refused
    before anything is written, and the writers themselves never follow one."""
    from qsmprep.utils.atomic import LinkInOutputError, locked_json_update, write_text

    bids = make_bids(tmp_path / "bids")
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "sub-01").mkdir(parents=True)
    (out / "sub-01" / "figures").symlink_to(elsewhere, target_is_directory=True)
    code, text = _run_error(capsys, [bids, out, "participant", "--skip-atlas", "--inversion", "tkd", "--dry-run"])
    assert code == msg.EXIT_INPUT_ERROR and "symbolic link" in text and "figures" in text and _one_sentence(text)
    assert code == _run_error(capsys, [bids, out, "group"])[0] == msg.EXIT_INPUT_ERROR
    # the writers: a linked folder on the way, or a linked lock file, is refused at write time too
    with pytest.raises(LinkInOutputError):
        write_text(out / "sub-01" / "figures" / "x.png", "x", root=out)
    (out / "dataset_description.json.lock").symlink_to(elsewhere / "victim")
    with pytest.raises(LinkInOutputError):
        locked_json_update(out / "dataset_description.json", lambda d: d, root=out)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("work", ["work dir", "work;touch x"])
def test_cluster_plugin_refuses_unsafe_work_dir(work, tmp_path, capsys):
    """SLURM/SGE: Nipype puts the work folder unquoted on the sbatch command line: refuse spaces and ';'."""
    bids = make_bids(tmp_path / "bids")
    plugin = tmp_path / "slurm.yml"
    plugin.write_text("plugin: SLURM\nplugin_args: {sbatch_args: '-p x'}\n")
    code, text = _run_error(capsys, [bids, tmp_path / "out", "participant", "-w", tmp_path / work, "--use-plugin",
                                     plugin, "--skip-atlas", "--dry-run"])
    assert code == msg.EXIT_INPUT_ERROR and "SLURM" in text and "-w" in text and _one_sentence(text)
    # a local plugin has no shell in the way
    assert main([str(bids), str(tmp_path / "out"), "participant", "-w", str(tmp_path / work), "--skip-atlas",
                 "--dry-run"]) == 0


@pytest.mark.parametrize("args,why", [("{n_procs: abc}", "n_procs"), ("{n_procs: 0}", "n_procs"),
                                      ("{memory_gb: -1}", "memory_gb"), ("{n_gpu_procs: 1.5}", "n_gpu_procs")])
def test_plugin_file_bad_values(args, why, tmp_path, capsys):
    path = tmp_path / "p.yml"
    path.write_text(f"plugin: MultiProc\nplugin_args: {args}\n")
    with pytest.raises(SystemExit) as exc:
        parse_args([str(tmp_path), str(tmp_path / "o"), "participant", "--use-plugin", str(path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and str(path) in err and why in err


def test_readme_documents_every_option():
    """Every option declared in qsmprep/config.py (and the parser's own) has a row in the README's table."""
    from qsmprep.config import declared_options

    text = (REPO / "README.md").read_text()
    table = text.split("### Options", 1)[1].split("\n\n", 2)[2]
    flags = [f.metadata["flags"][-1 if f.metadata["flags"][0].startswith("-") and len(f.metadata["flags"][0]) == 2
                                   else 0] for _, f in declared_options()]
    missing = [flag for flag in [*flags, "--use-plugin", "--config-file", "--version"] if f"`{flag}" not in table
               and f", {flag}" not in table]
    assert not missing, f"options missing from the README table: {missing}"


def test_interrupt_is_one_sentence_and_exit_130(tmp_path, capsys, monkeypatch):
    """Ctrl-C (a KeyboardInterrupt reaching the command line) ends with one sentence and the shell's 130, not a
    traceback."""
    import qsmprep.cli.run as cli_run

    def interrupted(config):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_run, "run_participant", interrupted)
    bids = make_bids(tmp_path / "ds")
    code = main([str(bids), str(tmp_path / "out"), "participant"])
    text = capsys.readouterr().err.strip()
    assert code == msg.EXIT_INTERRUPTED == 130 and text.startswith("qsmprep: qsmprep was interrupted")
    assert _one_sentence(text.split(": ", 1)[1]) and "rerun the same command" in text
