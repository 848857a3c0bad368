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
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg

LOGGER = logging.getLogger("qsmprep")
CODE_URL = "https://github.com/qsmprep/qsmprep"
BIDS_VERSION = "1.10.0"
#: What BIDS has no name for (logs, figures, reports, group tables), for ``out_dir/.bidsignore``.
BIDSIGNORE = ["*.html", "*.lock", "*/log/", "*/figures/", "group/"]


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


def check_weights(config) -> dict | None:
    """For ``--inversion nsidl``: the weights file must exist (checked before anything runs)."""
    from qsmprep.bids import InputError

    if config.workflow.inversion != "nsidl":
        return None
    from qsmprep.dl.weights import weights_info

    try:
        return weights_info()
    except FileNotFoundError as exc:
        raise InputError(msg.NSIDL_WEIGHTS_MISSING.format(why=str(exc).rstrip("."))) from None


def check_participant(config):
    """All checks of a participant-level run, before anything is written; returns the runs.

    Raises :class:`qsmprep.bids.InputError` or :class:`qsmprep.utils.gpu.DeviceUnavailableError`.
    """
    from qsmprep.bids import check_output_dir, collect_runs

    ex = config.execution
    check_output_dir(ex.bids_dir, ex.output_dir, ex.work_dir)
    check_gpu_request(config)
    runs = collect_runs(ex.bids_dir, ex.participant_label, ex.session_label)
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

    return locked_json_update(Path(out_dir) / "dataset_description.json", _update)


def write_bidsignore(out_dir) -> None:
    """Add qsmprep's patterns to ``out_dir/.bidsignore`` (concurrent jobs write the same text)."""
    from qsmprep.utils.atomic import write_text

    path = Path(out_dir) / ".bidsignore"
    lines = path.read_text().splitlines() if path.exists() else []
    missing = [p for p in BIDSIGNORE if p not in lines]
    if missing:
        write_text(path, "\n".join(lines + missing) + "\n")


def write_configs(config, subjects) -> list[Path]:
    """Save the run's config to ``sub-XX/log/<run_uuid>/qsmprep.toml`` for each subject."""
    from qsmprep.utils.atomic import write_text

    text = config.to_toml()
    out = []
    for sub in subjects:
        path = Path(config.execution.output_dir) / f"sub-{sub}" / "log" / config.execution.run_uuid / "qsmprep.toml"
        out.append(write_text(path, text))
    return out


def write_dataset_files(config, subjects) -> None:
    """``dataset_description.json``, ``.bidsignore`` and each subject's ``qsmprep.toml``."""
    ex = config.execution
    Path(ex.output_dir).mkdir(parents=True, exist_ok=True)
    write_dataset_description(ex.output_dir, ex.bids_dir)
    write_bidsignore(ex.output_dir)
    for path in write_configs(config, subjects):
        LOGGER.info("config saved to %s", path)
