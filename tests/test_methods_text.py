"""Methods text (CITATION.md / .html / .bib): built from fake derivatives and from a Config alone."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from qsmprep.methods import BACKGROUND_REMOVALS, CITATIONS, INVERSIONS, UNWRAPPINGS
from qsmprep.reports import methods as M

SHA = "0123456789abcdef" * 4
NSIDL_DOI = "10.21037/qims-2025-1851"


def _fake_run(out, subject, prefix, *, inversion, unwrapping, background, atlas, tes=(0.004, 0.008, 0.012, 0.016),
              b0=3.0, voxel=(1.0, 1.0, 1.0), version="0.1.0"):
    """A run's QSM outputs as the app writes them: tiny NIfTIs and the sidecars (run_metadata + invert record)."""
    import nibabel as nb

    anat = out / f"sub-{subject}" / "anat"
    anat.mkdir(parents=True, exist_ok=True)
    aff = np.diag([*voxel, 1.0])
    common = {"SoftwareName": "qsmprep", "SoftwareVersion": version, "EchoTime": list(tes),
              "MagneticFieldStrength": b0, "B0Direction": [0.0, 0.0, 1.0], "InputPhaseUnits": "rad",
              "PhaseUnwrapping": UNWRAPPINGS[unwrapping].description,
              "BackgroundFieldRemoval": BACKGROUND_REMOVALS[background].description,
              "DipoleInversion": INVERSIONS[inversion].description}
    record = {"InversionMethod": inversion, "EstimationAlgorithm": INVERSIONS[inversion].description,
              "EstimationSoftwareName": "qsmprep", "EstimationSoftwareVersion": version, "Device": "cpu",
              "B0Direction": [0.0, 0.0, 1.0], "MagneticFieldStrength": b0, "ReferenceEchoTime": float(np.mean(tes))}
    if inversion == "nsidl":
        record.update(WeightsName="nsidl_s_v1.pt", WeightsSHA256=SHA, TorchVersion="9.9.9+test",
                      DataFit={"Preset": "robust", "PreSolver": "nesterov", "PreSolverIterations": 10,
                               "FieldExtrapolation": False},
                      KSpaceDataConsistency={"DipoleKernelThreshold": 0.2, "RampWidth": 0.1},
                      PhaseScaleRadPerPpm=1.0)
    for name, extra in (("_desc-brain_mask", {"Type": "Brain"}), ("_desc-total_fieldmap", {"Units": "Hz"}),
                        ("_desc-local_fieldmap", {"Units": "ppm"}),
                        ("_Chimap", {"Units": "ppm", **record,
                                     "ReferenceRegion": "whole-brain mean over the final brain mask"})):
        nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), aff), anat / f"{prefix}{name}.nii.gz")
        (anat / f"{prefix}{name}.json").write_text(json.dumps({**common, **extra}))
    if atlas:
        nb.save(nb.Nifti1Image(np.zeros((4, 4, 4), np.int16), aff), anat / f"{prefix}_desc-dgm_dseg.nii.gz")
        (anat / f"{prefix}_desc-dgm_stats.tsv").write_text("structure\tmean_ppm\ncaudate\t0.05\n")


def _config_file(out, subject, *, sloppy=False, precise=False, seed=1234, skip_atlas=False):
    log = out / f"sub-{subject}" / "log" / "20260102-030405_abcd1234"
    log.mkdir(parents=True, exist_ok=True)
    (log / "qsmprep.toml").write_text(
        f"[workflow]\nsloppy = {str(sloppy).lower()}\natlas_precise = {str(precise).lower()}\n"
        f"skip_atlas = {str(skip_atlas).lower()}\n\n[seeds]\nmaster = {seed}\n")


@pytest.fixture
def tree(tmp_path):
    """sub-01: nsidl + ismv + romeo with the atlas (precise registration);
    sub-02: tkd + vsharp + laplacian, no atlas."""
    out = tmp_path / "out"
    _fake_run(out, "01", "sub-01_run-1", inversion="nsidl", unwrapping="romeo", background="ismv", atlas=True,
              voxel=(1.0, 1.0, 2.0))
    _config_file(out, "01", precise=True, seed=1234)
    _fake_run(out, "02", "sub-02", inversion="tkd", unwrapping="laplacian", background="vsharp", atlas=False,
              tes=(0.005, 0.010, 0.015), b0=7.0)
    _config_file(out, "02", skip_atlas=True)
    return out


def _doi(key):
    return CITATIONS[key].doi


def test_nsidl_ismv_romeo_with_atlas(tree):
    info = M.methods_from_outputs(tree, "01")
    assert [r.prefix for r in info.runs] == ["sub-01_run-1"]
    run = info.runs[0]
    assert (run.unwrapping, run.background_removal, run.inversion, run.atlas) == ("romeo", "ismv", "nsidl", True)
    assert info.registration_flavors == ("precise",) and info.seeds == (1234,)
    md = M.methods_markdown(info)
    for needle in ("`sub-01_run-1`", "4 echoes (TE = 4, 8, 12, 16 ms)", "at 3 T", "1 × 1 × 2 mm",
                   UNWRAPPINGS["romeo"].description, BACKGROUND_REMOVALS["ismv"].description,
                   INVERSIONS["nsidl"].description, "nsidl_s_v1.pt", SHA, "*robust*",
                   "10 Nesterov-accelerated gradient steps", "|D| > 0.2", "(10 ms)", "PyTorch 9.9.9+test",
                   "the CPU", "127.73 Hz/ppm at 3 T", "whole-brain mean over the final brain mask",
                   "ANTs", "AAL3", "MNI152", "*precise* (1 mm template)", "random seed 1234",
                   "qsmprep 0.1.0", "nipype ", "numpy ", "antspyx ", "nilearn ", "torch 9.9.9+test",
                   NSIDL_DOI, _doi("romeo"), _doi("ismv"), _doi("ndi"), _doi("lpcnn"), _doi("ants"),
                   _doi("mni152"), _doi("aal3"), _doi("echofit"), _doi("pytorch")):
        assert needle in md, needle
    for absent in ("Laplacian", "V-SHARP", "TKD", _doi("tkd"), _doi("vsharp"), _doi("laplacian"), "will be",
                   "sub-02"):
        assert absent not in md, absent


def test_tkd_vsharp_laplacian_without_atlas(tree):
    info = M.methods_from_outputs(tree, "sub-02")
    assert not info.atlas and info.registration_flavors == ()
    md = M.methods_markdown(info)
    for needle in ("`sub-02`", "3 echoes (TE = 5, 10, 15 ms)", "at 7 T", "298.04 Hz/ppm at 7 T",
                   UNWRAPPINGS["laplacian"].description, BACKGROUND_REMOVALS["vsharp"].description,
                   "TKD (truncated k-space division)", "each echo demeaned before the echo fit",
                   _doi("tkd"), _doi("vsharp"), _doi("laplacian"), _doi("echofit")):
        assert needle in md, needle
    for absent in ("ANTs", "AAL3", "MNI152", "antspyx", "nilearn", "torch", "PyTorch", "NSIDL", NSIDL_DOI, SHA,
                   _doi("ants"), _doi("aal3"), _doi("mni152"), _doi("romeo"), _doi("ismv"), _doi("pytorch"),
                   "sub-01"):
        assert absent not in md, absent


def test_references_are_numbered_in_order_and_match_the_citations(tree):
    info = M.methods_from_outputs(tree, "01")
    md = M.methods_markdown(info)
    body, refs = md.split("## References")
    keys = M.cited_keys(info)
    ref_lines = [line for line in refs.splitlines() if re.match(r"\d+\. ", line)]
    assert len(ref_lines) == len(keys) == len(set(keys))
    for i, (line, key) in enumerate(zip(ref_lines, keys), 1):
        assert line.startswith(f"{i}. ") and CITATIONS[key].doi in line
    used = {int(n) for group in re.findall(r"\[(\d+(?:, \d+)*)\]", body) for n in group.split(", ")}
    assert used == set(range(1, len(keys) + 1))  # every reference is cited, none dangles
    first = [int(re.search(r"\[(\d+)", m).group(1)) for m in re.findall(r"\[\d+(?:, \d+)*\]", body)]
    assert first[0] == 1  # numbered by first use
    assert keys[0] == "nipype" and "nsidl" in keys


def test_whole_dataset_groups_methods(tree):
    """Two subjects with different methods: both groups are described, each with its references."""
    info = M.methods_from_outputs(tree)
    assert [r.prefix for r in info.runs] == ["sub-01_run-1", "sub-02"]
    md = M.methods_markdown(info)
    assert "Two gradient-echo runs of two participants were processed" in md
    assert md.count("For the run `sub-01_run-1`: ") == 3  # field, susceptibility, atlas
    assert md.count("For the run `sub-02`: ") == 2
    assert md.count("**Brain mask.**") == 1
    assert NSIDL_DOI in md and _doi("tkd") in md and "AAL3" in md


def test_html_and_bibtex(tree):
    info = M.methods_from_outputs(tree, "01")
    frag = M.methods_html(info, doi_links=False)
    assert frag.startswith('<div class="qsmprep-methods">') and "<html" not in frag
    assert NSIDL_DOI in frag and SHA in frag and "https://" not in frag
    assert re.search(r'<a href="#ref-1">1</a>', frag) and 'id="ref-1"' in frag
    page = M.methods_html(info, full_page=True)
    assert page.startswith("<!DOCTYPE html>") and f'href="https://doi.org/{NSIDL_DOI}"' in page
    bib = M.methods_bibtex(info)
    entries = re.findall(r"@(\w+)\{([^,\s]+),\n(.*?)\n\}\n", bib, flags=re.S)
    keys = [k for _, k, _ in entries]
    assert len(entries) == bib.count("@") == len(M.cited_keys(info))
    assert len(set(keys)) == len(keys) and all(k.startswith("qsmprep_") for k in keys)
    assert "qsmprep_nsidl" in keys and "qsmprep_tkd" not in keys
    nsidl = next(b for _, k, b in entries if k == "qsmprep_nsidl")
    assert f"doi = {{{NSIDL_DOI}}}" in nsidl and "author = {Guo, H. and Zhang, Z. and others}" in nsidl
    assert "year = {2026}" in nsidl and "journal = {Quant Imaging Med Surg}" in nsidl
    assert bib.count("{") == bib.count("}")


@pytest.mark.parametrize("key", sorted(CITATIONS))
def test_every_citation_makes_a_bibtex_entry(key):
    """Each reference parses into author/title/year (a new CITATIONS entry must keep the text form)."""
    entry = M.bibtex_entry(key)
    assert entry.startswith(("@article{qsmprep_" + key, "@inproceedings{qsmprep_" + key))
    for name in ("author", "title", "year", "doi"):
        assert re.search(rf"^  {name} = \{{.+\}},?$", entry, flags=re.M), (name, entry)


def test_write_citation_files(tree):
    paths = M.write_citation_files(tree)
    logs = tree / "logs"
    assert paths == [logs / "CITATION.md", logs / "CITATION.html", logs / "CITATION.bib"]
    assert NSIDL_DOI in (logs / "CITATION.md").read_text(encoding="utf-8")
    assert "<!DOCTYPE html>" in (logs / "CITATION.html").read_text(encoding="utf-8")
    assert "@article{qsmprep_tkd," in (logs / "CITATION.bib").read_text(encoding="utf-8")
    assert not list(logs.glob(".*")) and not list(logs.glob("*.tmp*"))  # nothing left by the atomic writes


def test_write_citation_files_md_only(tree, tmp_path):
    info = M.methods_from_outputs(tree, "02")
    paths = M.write_citation_files(tmp_path / "o", info, md_only=True)
    assert paths == [tmp_path / "o" / "logs" / "CITATION.md"]
    assert sorted(p.name for p in (tmp_path / "o" / "logs").iterdir()) == ["CITATION.md"]
    assert _doi("tkd") in paths[0].read_text(encoding="utf-8")


def test_empty_output_folder(tmp_path):
    info = M.methods_from_outputs(tmp_path)
    assert info.runs == [] and not info.atlas
    assert "qsmprep" in M.methods_markdown(info)  # still a valid text (software only)


def _config(**workflow):
    from qsmprep.config import Config

    cfg = Config()
    for k, v in workflow.items():
        setattr(cfg.workflow, k, v)
    return cfg


def test_from_config_alone_default_chain():
    """--boilerplate-only: the default chain (nsidl, ismv, romeo, atlas) in the future tense."""
    from qsmprep.dl.weights import weights_info

    cfg = _config()
    cfg.seeds.master = 77
    info = M.methods_from_config(cfg)
    assert info.planned and info.atlas and info.registration_flavors == ("fast",)
    md = M.methods_markdown(info)
    for needle in ("will be", "before any data were processed", INVERSIONS["nsidl"].description,
                   UNWRAPPINGS["romeo"].description, BACKGROUND_REMOVALS["ismv"].description, NSIDL_DOI,
                   weights_info(use="chain")["sha256"], "*chain*", "*fast* (2 mm template)", "random seed 77",
                   "read from each run's BIDS sidecars", "AAL3", _doi("ants"), "PyTorch"):
        assert needle in md, needle
    assert not re.search(r"\b(was|were) (processed|unwrapped|removed|estimated|registered)\b",
                         md.replace("before any data were processed", ""))


def test_from_config_alone_classical_without_atlas():
    info = M.methods_from_config(_config(inversion="tkd", unwrapping="laplacian", background_removal="vsharp",
                                         skip_atlas=True, sloppy=True))
    md = M.methods_markdown(info)
    assert "TKD (truncated k-space division)" in md and _doi("tkd") in md and "will be" in md
    for absent in (NSIDL_DOI, "ANTs", "AAL3", "PyTorch", "torch", "antspyx", "testing"):
        assert absent not in md, absent


def test_from_config_with_runs():
    """With the runs already read (QsmRun-like), the acquisitions appear."""
    from types import SimpleNamespace

    run = SimpleNamespace(prefix="sub-07_acq-fast", subject="07", echo_times_s=(0.005, 0.01), b0_t=3.0,
                          b0_dir=np.array([0.0, 0.1, 0.995]), voxel_size=(0.8, 0.8, 1.5), phase_units="scanner")
    md = M.methods_markdown(M.methods_from_config(_config(skip_atlas=True), [run]))
    for needle in ("`sub-07_acq-fast`", "2 echoes (TE = 5, 10 ms)", "0.8 × 0.8 × 1.5 mm",
                   "integer scanner units", "(7.5 ms)", "quantile classes of a log-linear R2* fit"):
        assert needle in md, needle
    assert "For a single echo" not in md and "that makes veins and iron-rich nuclei paramagnetic" in md
    one = SimpleNamespace(**{**vars(run), "echo_times_s": (0.02,)})  # one echo: no R2*, no slab trend
    md1 = M.methods_markdown(M.methods_from_config(_config(skip_atlas=True), [one]))
    assert "R2*" not in md1 and "what background removal left of that offset will be fitted out" in md1  # planned
    md0 = M.methods_markdown(M.methods_from_config(_config(skip_atlas=True, single_echo_offset="0", phase_sign="-1"),
                                                   [one]))
    assert "left of that offset" not in md0 and "with its sign reversed (the scanner's handedness, set by" in md0
    md_off = M.methods_markdown(M.methods_from_config(_config(skip_atlas=True, slab_trend="off"), [run]))
    assert "R2*" not in md_off  # --slab-trend off


def test_thick_slice_runs_name_the_network_grid():
    """Runs with slices beyond the network's training aspect (restore.net_splits) get their own paragraph that says
    the network ran on a grid with the slices cut in two; the others do not."""
    from types import SimpleNamespace

    def run(prefix, voxel):
        return SimpleNamespace(prefix=prefix, subject="07", echo_times_s=(0.005, 0.01), b0_t=3.0,
                               b0_dir=np.array([0.0, 0.0, 1.0]), voxel_size=voxel, phase_units="rad")

    info = M.methods_from_config(_config(skip_atlas=True), [run("sub-07_acq-thin", (1.0, 1.0, 1.0)),
                                                            run("sub-07_acq-thick", (1.0, 1.0, 3.0))])
    md = M.methods_markdown(info)
    words = "the network run on a grid with each slice cut into 2 thinner ones"
    assert md.count(words) == 1 and "`sub-07_acq-thick`" in md
    one = M.methods_markdown(M.methods_from_config(_config(skip_atlas=True), [run("sub-07_acq-thin", (1, 1, 2.5))]))
    assert words not in one


def test_chain_data_fit_text_names_the_noise_set_tv_weight():
    """The chain record's final fit (TV weight from the local-field noise) is in the methods text."""
    rec = {"DataFit": {"Preset": "chain", "NetworkDataFit": "robust",
                       "FinalFit": {"TVWeight": 6.1e-05, "LocalFieldNoisePpm": 0.00122, "RadiiMm": [8, 4, 2]}}}
    text = M._data_fit_text(rec)
    assert "*chain*" in text and "SMV-consistent fit of the total field" in text
    assert "TV weight 6.1e-05" in text and "noise of 0.0012 ppm" in text
    assert "steepest gradients" not in text  # uniform TV: no edge words
    rec["DataFit"]["FinalFit"]["EdgeWeightedTV"] = {"EdgeFraction": 0.3, "TVFactorOnEdges": 0.5}
    text = M._data_fit_text(rec)
    assert "TV weight times 0.5 on the 30 % of voxels where the network's chi has its steepest gradients" in text
    assert "ramp" not in text  # a record from before session 22: a step
    rec["DataFit"]["FinalFit"]["EdgeWeightedTV"]["RampBandQuantiles"] = 0.1
    text = M._data_fit_text(rec)
    assert "steepest gradients (a linear ramp over the neighbouring 10 % of voxels), away from signal voids" in text


def test_strong_data_fit_text_names_its_final_tv_fit():
    """The strong preset's record (its final TV fit after the network) is in the methods text; robust has none."""
    from qsmprep.dl.inference import data_fit_record, data_fit_settings

    lam, n_iter = data_fit_settings("strong")["final_tv"]
    text = M._data_fit_text({"DataFit": data_fit_record(data_fit_settings("strong"))})
    assert "*strong*" in text and f"TV weight {lam:.2g}, {n_iter} ADMM iterations" in text
    assert "total-variation" not in M._data_fit_text({"DataFit": data_fit_record(data_fit_settings("robust"))})
