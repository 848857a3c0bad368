"""The build fingerprint (:mod:`qsmprep.utils.build`) and the top workflow's name that carries it."""

from __future__ import annotations

import re
import shutil

import pytest

from qsmprep.utils.build import package_fingerprint


def _tree(root):
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "w.pt").write_bytes(b"\x00weights\x01")
    return root


def test_fingerprint_follows_the_files_not_their_place(tmp_path):
    a = _tree(tmp_path / "a")
    fp = package_fingerprint(a)
    assert re.fullmatch(r"[0-9a-f]{8}", fp)
    # the same files elsewhere: the same build
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert package_fingerprint(b) == fp
    # byte code and caches do not count
    (b / "__pycache__").mkdir()
    (b / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"junk")
    (b / "a.pyc").write_bytes(b"junk")
    assert package_fingerprint(b) == fp
    # an edited source, replaced weights, a renamed or an added file: another build
    (b / "a.py").write_text("x = 2\n")
    assert package_fingerprint(b) != fp
    (b / "a.py").write_text("x = 1\n")
    assert package_fingerprint(b) == fp
    (b / "sub" / "w.pt").write_bytes(b"\x00weights\x02")
    assert package_fingerprint(b) != fp
    (b / "sub" / "w.pt").write_bytes(b"\x00weights\x01")
    (b / "sub" / "w.pt").rename(b / "sub" / "v.pt")
    assert package_fingerprint(b) != fp
    (b / "sub" / "v.pt").rename(b / "sub" / "w.pt")
    (b / "new.txt").write_text("")
    assert package_fingerprint(b) != fp
    assert len(package_fingerprint(a, length=16)) == 16
    with pytest.raises(FileNotFoundError):
        package_fingerprint(tmp_path / "missing")


def test_top_name_names_version_and_build(monkeypatch):
    from qsmprep import __version__
    from qsmprep.workflows.base import top_name

    name = top_name()
    assert re.fullmatch(r"qsmprep_[A-Za-z0-9_]+_[0-9a-f]{8}_wf", name)
    assert __version__.replace(".", "_") in name and package_fingerprint() in name
    assert top_name() == name  # the same build: the same folder (a rerun resumes)
    monkeypatch.setattr("qsmprep.utils.build.package_fingerprint", lambda *a, **k: "feedbeef")
    assert top_name() != name and top_name().endswith("feedbeef_wf")


def test_other_builds_lists_the_other_top_folders(tmp_path):
    from qsmprep.cli.execute import other_builds

    assert other_builds(tmp_path / "none", "qsmprep_0_1_0_aaaaaaaa_wf") == []
    for name in ("qsmprep_wf", "qsmprep_0_1_0_aaaaaaaa_wf", "qsmprep_0_1_0_bbbbbbbb_wf", "crash"):
        (tmp_path / name).mkdir()
    (tmp_path / "qsmprep_graph.dot").write_text("")
    got = [p.name for p in other_builds(tmp_path, "qsmprep_0_1_0_aaaaaaaa_wf")]
    assert got == ["qsmprep_0_1_0_bbbbbbbb_wf", "qsmprep_wf"]
