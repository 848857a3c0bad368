"""Before the graph: every check of the command line and the input, then the dataset-level files.

:func:`check_participant` finds every problem before anything is written (folders, GPU request,
NSIDL weights, the input dataset) and returns the runs; each problem is an :class:`InputError`
(exit status 2) or a :class:`qsmprep.utils.gpu.DeviceUnavailableError` (exit status 126).
:func:`write_dataset_files` then writes ``dataset_description.json``, ``.bidsignore``, ``README``
and the run's ``qsmprep.toml`` files.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg

LOGGER = logging.getLogger("qsmprep")
CODE_URL = "https://github.com/qsmprep/qsmprep"
BIDS_VERSION = "1.10.0"
#: What BIDS has no name for, for ``out_dir/.bidsignore``: reports, locks, logs, figures, transforms,
#: statistics tables, the group level and the methods text.  The official validator matches folders
#: without a trailing slash (``sub-*/log``, not ``*/log/``).
BIDSIGNORE = ["*.html", "*.lock", "sub-*/log", "sub-*/figures", "*_xfm.*", "*_stats.tsv", "*_stats.json", "group",
              "logs", "*_desc-qc.json"]
README_TEXT = """# qsmprep derivatives

Quantitative susceptibility maps (chi, ppm) and deep-gray-matter tables written by qsmprep {version}
({url}).  Per run, in sub-<label>/[ses-<label>/]: anat/ holds the chi map (_Chimap), the final brain
mask (_desc-brain_mask), the deep-gray-matter labels (_desc-dgm_dseg) and tables (_desc-dgm_stats),
chi in MNI space and the transforms; fmap/ holds the total field (Hz) and the local field (ppm) with
the echo-combined magnitude.  sub-<label>.html is each participant's report, logs/CITATION.md the
methods text with references, group/ the study tables.  Every file has a JSON sidecar with its units
and provenance.
"""


def check_gpu_request(config) -> None:
    """Derive ``config.nipype.use_gpu`` from the request (:meth:`~qsmprep.config.Config.schedules_gpu`).

    When the nodes run on this machine, ``--device cuda`` needs a GPU here (raises
    :class:`~qsmprep.utils.gpu.DeviceUnavailableError`) and ``auto`` reserves one when present.
    On a cluster plugin nothing is probed here: the submit host's hardware does not decide.
    """
    from qsmprep.methods import INVERSIONS
    from qsmprep.utils.gpu import DeviceUnavailableError, cuda_status

    nip = config.nipype
    local_gpu = None
    if config.runs_locally and INVERSIONS[config.workflow.inversion].uses_torch and nip.device != "cpu":
        local_gpu, why = cuda_status()
        if nip.device == "cuda" and not local_gpu:
            raise DeviceUnavailableError(msg.NO_CUDA.format(why=why))
    nip.use_gpu = config.schedules_gpu(local_gpu)


def check_weights(config):
    """The inversion's own preflight (NSIDL: the weights file must exist), before anything runs."""
    from qsmprep.bids import InputError
    from qsmprep.methods import INVERSIONS

    inv = INVERSIONS[config.workflow.inversion]
    if inv.preflight is None:
        return None
    try:
        return inv.preflight()
    except FileNotFoundError as exc:
        raise InputError(msg.NSIDL_WEIGHTS_MISSING.format(why=str(exc).rstrip("."))) from None


def validate_input(config) -> None:
    """Run the official BIDS validator on the input (unless ``--skip-bids-validation``).

    Its errors stop the run (:class:`qsmprep.bids.InputError` with the validator's own summary);
    its warnings go to the log, one line per kind.  Only the selected participants' issues count.
    """
    from qsmprep.bids import InputError
    from qsmprep.bids_validator import ValidatorError, validate

    ex = config.execution
    if ex.skip_bids_validation:
        LOGGER.info("BIDS validation of %s skipped (--skip-bids-validation)", ex.bids_dir)
        return
    try:
        result = validate(ex.bids_dir, participant_label=ex.participant_label or None)
    except ValidatorError as exc:
        raise InputError(str(exc)) from None
    for line in result.lines("warning"):
        LOGGER.warning("BIDS validator: %s", line)
    if not result.ok:
        raise InputError(msg.BIDS_INVALID.format(summary=result.summary().rstrip(".")))


def check_output_links(out_dir) -> None:
    """Refuse an output folder that holds a symbolic link (qsmprep never writes through one)."""
    from qsmprep.bids import InputError
    from qsmprep.utils.atomic import LINK_IN_OUTPUT, find_links

    links = find_links(out_dir)
    if links:
        raise InputError(LINK_IN_OUTPUT.format(link=links[0], root=out_dir))


#: Characters a path may hold when a cluster plugin puts it on an sbatch/qsub command line (Nipype
#: passes the work folder through a shell without quoting: a space or ``;`` breaks or injects).
_SHELL_SAFE = re.compile(r"^[A-Za-z0-9_./+,:@%=~-]+$")


def check_cluster_paths(config) -> None:
    """For the SLURM/SGE plugins, refuse a work folder the scheduler's shell would split or run."""
    from qsmprep.bids import InputError

    if config.runs_locally:
        return
    work = str(Path(config.execution.work_dir).absolute())
    if not _SHELL_SAFE.match(work):
        bad = sorted({c for c in work if not _SHELL_SAFE.match(c)})
        raise InputError(msg.CLUSTER_PATH_UNSAFE.format(path=work, plugin=config.nipype.plugin,
                                                        chars=" ".join(repr(c) for c in bad)))


def check_participant(config):
    """All checks of a participant-level run, before anything is written; returns the runs.

    Raises :class:`qsmprep.bids.InputError` or :class:`qsmprep.utils.gpu.DeviceUnavailableError`.
    """
    from qsmprep.bids import check_output_dir, collect_runs

    ex = config.execution
    check_output_dir(ex.bids_dir, ex.output_dir, ex.work_dir)
    check_output_links(ex.output_dir)
    check_cluster_paths(config)
    check_gpu_request(config)
    # qsmprep's own checks first (one sentence naming the file and the fix for every problem qsmprep
    # knows), then the official validator for everything else
    runs = collect_runs(ex.bids_dir, ex.participant_label, ex.session_label, bids_filters=ex.bids_filters)
    validate_input(config)
    check_weights(config)
    return runs


# --------------------------------------------------------------------------- dataset files


def write_dataset_description(out_dir, bids_dir) -> dict:
    """Create or update ``out_dir/dataset_description.json`` (safe under concurrent jobs)."""
    from qsmprep.utils.atomic import locked_json_update

    def _update(desc: dict) -> dict:
        desc.setdefault("Name", "qsmprep derivatives")
        desc["BIDSVersion"] = BIDS_VERSION
        desc["DatasetType"] = "derivative"
        others = [g for g in desc.get("GeneratedBy", []) if g.get("Name") != "qsmprep"]
        old = [g.get("Version") for g in desc.get("GeneratedBy", []) if g.get("Name") == "qsmprep"]
        if old and old[0] != __version__:
            LOGGER.warning("%s was written by qsmprep %s; now %s.", out_dir, old[0], __version__)
        gen = {"Name": "qsmprep", "Version": __version__, "CodeURL": CODE_URL}
        if os.environ.get("QSMPREP_CONTAINER"):
            gen["Container"] = {"Type": os.environ["QSMPREP_CONTAINER"], "Tag": __version__}
        desc["GeneratedBy"] = [gen] + others
        desc.setdefault("DatasetLinks", {})["raw"] = Path(bids_dir).absolute().as_uri()
        desc["SourceDatasets"] = [{"URL": "bids:raw:"}]
        return desc

    return locked_json_update(Path(out_dir) / "dataset_description.json", _update, root=out_dir)


def write_bidsignore(out_dir) -> None:
    """Add qsmprep's patterns to ``out_dir/.bidsignore`` (concurrent jobs write the same text)."""
    from qsmprep.utils.atomic import write_text

    path = Path(out_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in BIDSIGNORE if p not in lines]
    if missing:
        write_text(path, "\n".join(lines + missing) + "\n", root=out_dir)


def write_configs(config, subjects) -> list[Path]:
    """Save the run's config to ``sub-XX/log/<run_uuid>/qsmprep.toml`` for each subject."""
    from qsmprep.utils.atomic import write_text

    text = config.to_toml()
    out = []
    for sub in subjects:
        path = Path(config.execution.output_dir) / f"sub-{sub}" / "log" / config.execution.run_uuid / "qsmprep.toml"
        out.append(write_text(path, text, root=config.execution.output_dir))
    return out


def write_readme(out_dir) -> Path:
    """``out_dir/README`` (what the derivatives are), when there is none yet."""
    from qsmprep.utils.atomic import write_text

    path = Path(out_dir) / "README"
    if not path.exists():
        write_text(path, README_TEXT.format(version=__version__, url=CODE_URL), root=out_dir)
    return path


def write_dataset_files(config, subjects) -> None:
    """``dataset_description.json``, ``.bidsignore``, ``README`` and each subject's ``qsmprep.toml``."""
    ex = config.execution
    Path(ex.output_dir).mkdir(parents=True, exist_ok=True)
    write_dataset_description(ex.output_dir, ex.bids_dir)
    write_bidsignore(ex.output_dir)
    write_readme(ex.output_dir)
    for path in write_configs(config, subjects):
        LOGGER.info("config saved to %s", path)
