"""Derivatives writing: names, sidecars, atomic copies, dataset_description under concurrency,
.bidsignore, saved configs, and the doctests of the naming helpers."""

from __future__ import annotations

import doctest
import json
import multiprocessing as mp

import numpy as np
import pytest

from qsmprep import __version__


def _nifti(path, data=None, suffix=".nii.gz"):
    import nibabel as nb

    data = np.arange(27, dtype=np.float32).reshape(3, 3, 3) if data is None else data
    nb.save(nb.Nifti1Image(data, np.eye(4)), str(path))
    return str(path)


@pytest.mark.parametrize("module", ["qsmprep.interfaces.io", "qsmprep.naming", "qsmprep.methods", "qsmprep.workflows.qsm"])
def test_doctests(module):
    import importlib

    res = doctest.testmod(importlib.import_module(module))
    assert res.attempted > 0 and res.failed == 0


def test_sink_writes_nifti_and_sidecar(tmp_path):
    from nipype.pipeline import engine as pe

    from qsmprep.interfaces.io import DerivativesSink

    src = _nifti(tmp_path / "chi.nii")  # uncompressed in, .nii.gz out
    meta_file = tmp_path / "inv.json"
    meta_file.write_text(json.dumps({"EstimationAlgorithm": "TKD", "Device": "cpu"}))
    out = tmp_path / "out"
    node = pe.Node(DerivativesSink(base_directory=str(out), in_file=src, out_path="sub-01/anat/sub-01_run-2_Chimap",
                                   meta_dict={"Units": "ppm"}, meta_file=str(meta_file),
                                   source_files=["sub-01/anat/sub-01_run-2_echo-1_part-mag_MEGRE.nii.gz"]),
                   name="sink", base_dir=str(tmp_path / "work"))
    res = node.run()
    nii = out / "sub-01/anat/sub-01_run-2_Chimap.nii.gz"
    assert res.outputs.out_file == str(nii) and nii.exists()
    import nibabel as nb

    assert np.array_equal(nb.load(str(nii)).get_fdata(), np.arange(27).reshape(3, 3, 3))
    side = json.loads((out / "sub-01/anat/sub-01_run-2_Chimap.json").read_text())
    assert side["Units"] == "ppm" and side["EstimationAlgorithm"] == "TKD" and side["Device"] == "cpu"
    assert side["SoftwareName"] == "qsmprep" and side["SoftwareVersion"] == __version__
    assert side["Sources"] == ["bids:raw:sub-01/anat/sub-01_run-2_echo-1_part-mag_MEGRE.nii.gz"]
    # no temporary files left behind
    assert sorted(p.name for p in nii.parent.iterdir()) == ["sub-01_run-2_Chimap.json", "sub-01_run-2_Chimap.nii.gz"]
    # always runs: a deleted output comes back on a cached rerun
    nii.unlink()
    node.run()
    assert nii.exists()


def test_sink_keeps_other_extensions(tmp_path):
    from qsmprep.interfaces.io import DerivativesSink

    for name in ("xfm.h5", "stats.tsv", "fig.png"):
        (tmp_path / name).write_text(name)
    out = tmp_path / "out"
    for name, stem in (("xfm.h5", "a_xfm"), ("stats.tsv", "a_stats"), ("fig.png", "a_fig")):
        DerivativesSink(base_directory=str(out), in_file=str(tmp_path / name), out_path=f"sub-01/anat/{stem}",
                        sidecar=False).run(cwd=str(tmp_path))
    assert sorted(p.name for p in (out / "sub-01/anat").iterdir()) == ["a_fig.png", "a_stats.tsv", "a_xfm.h5"]


def _update_description(args):
    out, bids = args
    from qsmprep.cli.prepare import write_dataset_description

    write_dataset_description(out, bids)
    return True


def test_dataset_description_concurrent(tmp_path):
    from qsmprep.cli.prepare import write_dataset_description

    out = tmp_path / "out"
    out.mkdir()
    (out / "dataset_description.json").write_text(json.dumps(
        {"Name": "mine", "GeneratedBy": [{"Name": "other-tool", "Version": "1"}]}))
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        assert all(pool.map(_update_description, [(str(out), str(tmp_path / "bids"))] * 8))
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["Name"] == "mine" and desc["DatasetType"] == "derivative"
    assert desc["GeneratedBy"][0] == {"Name": "qsmprep", "Version": __version__, "CodeURL": desc["GeneratedBy"][0]["CodeURL"]}
    assert [g["Name"] for g in desc["GeneratedBy"]] == ["qsmprep", "other-tool"]
    assert write_dataset_description(out, tmp_path / "bids") == desc  # idempotent


def test_bidsignore_and_configs(tmp_path):
    from qsmprep.cli.prepare import BIDSIGNORE, write_bidsignore, write_configs
    from qsmprep.config import Config

    out = tmp_path / "out"
    out.mkdir()
    (out / ".bidsignore").write_text("custom/\n")
    write_bidsignore(out)
    write_bidsignore(out)
    assert (out / ".bidsignore").read_text().splitlines() == ["custom/", *BIDSIGNORE]

    cfg = Config()
    cfg.execution.output_dir = out
    paths = write_configs(cfg, ["01", "02"])
    assert [p.relative_to(out).as_posix() for p in paths] == [
        f"sub-01/log/{cfg.execution.run_uuid}/qsmprep.toml", f"sub-02/log/{cfg.execution.run_uuid}/qsmprep.toml"]
    assert Config.from_toml(paths[0]).to_dict() == cfg.to_dict()


def test_load_echoes_names_the_files_when_grids_differ(tmp_path):
    """A magnitude/phase shape mismatch that reaches the graph names both files and the fix."""
    import nibabel as nb
    import numpy as np

    from qsmprep.interfaces.io import LoadEchoes

    mag, pha = tmp_path / "mag.nii.gz", tmp_path / "pha.nii.gz"
    nb.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)).to_filename(mag)
    nb.Nifti1Image(np.zeros((4, 4, 5), np.float32), np.eye(4)).to_filename(pha)
    iface = LoadEchoes(in_magnitude=[str(mag)], in_phase=[str(pha)])
    with pytest.raises(RuntimeError, match="mag.nii.gz.*pha.nii.gz.*same grid"):
        iface.run(cwd=str(tmp_path))
