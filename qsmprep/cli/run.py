"""``qsmprep`` entry point: parse -> check inputs -> (dry run | build graph -> run -> reports).

Order of a participant run:

1. parse the command line into a :class:`qsmprep.config.Config`;
2. check the output/work folders, the GPU request and the whole BIDS input
   (:func:`qsmprep.bids.collect_runs`); any problem prints one sentence and exits
   with status 2 (126 for an unusable GPU) before anything is written;
3. ``--dry-run``: print the plan and exit 0;
4. write ``dataset_description.json`` (locked update), ``.bidsignore`` and the
   config (``sub-XX/log/<run_uuid>/qsmprep.toml``), build the Nipype graph and run
   it with the chosen plugin (progress is logged node by node);
5. build each subject's HTML report (``qsmprep.reports.subject``) when installed.

``qsmprep invert ...`` dispatches to ``qsmprep.cli.invert.main``.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg

LOGGER = logging.getLogger("qsmprep")
CODE_URL = "https://github.com/qsmprep/qsmprep"
BIDS_VERSION = "1.10.0"
BIDSIGNORE = ["*.html", "*.lock", "*/log/", "*/figures/", "group/"]


def setup_logging(verbosity: int = 0) -> None:
    """qsmprep logs at INFO (DEBUG with -vv); level 25 is IMPORTANT (milestones).

    Nipype's levels are set when the graph runs (:func:`configure_nipype_logging`).
    """
    logging.addLevelName(25, "IMPORTANT")
    logging.basicConfig(format="%(asctime)s [%(name)s] %(levelname)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    LOGGER.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)


def _error(text: str, code: int) -> int:
    print(f"qsmprep: error: {text}", file=sys.stderr)
    return code


# --------------------------------------------------------------------------- devices


def cuda_status() -> tuple[bool, str]:
    """``(available, why)`` for a CUDA GPU as torch sees it (imports torch)."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a dependency
        return False, f"torch cannot be imported: {exc}"
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else f"torch {torch.__version__} with CUDA {torch.version.cuda}"
        return False, f"torch.cuda.is_available() is False, {build}"
    return True, torch.cuda.get_device_name(0)


def resolve_gpu(config) -> None:
    """Set ``config.nipype.use_gpu``; raise ``RuntimeError(NO_CUDA)`` for an unmet ``--device cuda``."""
    nip = config.nipype
    if nip.device == "cuda":
        ok, why = cuda_status()
        if not ok:
            raise RuntimeError(msg.NO_CUDA.format(why=why))
        nip.use_gpu = config.workflow.inversion == "nsidl"
    elif nip.device == "auto" and config.workflow.inversion == "nsidl":
        nip.use_gpu = cuda_status()[0]
    else:
        nip.use_gpu = False


def check_weights(config) -> dict | None:
    """For ``--inversion nsidl``: the weights file must exist (checked before anything runs)."""
    from qsmprep.bids import InputError

    if config.workflow.inversion != "nsidl":
        return None
    from qsmprep.interfaces.qsm import nsidl_weights_info

    try:
        return nsidl_weights_info()
    except (FileNotFoundError, ModuleNotFoundError) as exc:
        raise InputError(msg.NSIDL_WEIGHTS_MISSING.format(why=str(exc).rstrip("."))) from None


# --------------------------------------------------------------------------- outputs


def write_dataset_description(out_dir, bids_dir) -> dict:
    """Create or update ``out_dir/dataset_description.json`` (safe under concurrent jobs)."""
    import os

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


# --------------------------------------------------------------------------- plan


def format_plan(config, runs) -> str:
    """The ``--dry-run`` text: settings, each run's echoes/TEs/B0/direction, and the steps."""
    from qsmprep.workflows.base import atlas_factory, workflow_steps

    wf, nip = config.workflow, config.nipype
    atlas = atlas_factory(wf.skip_atlas) is not None
    subjects = sorted({r.subject for r in runs})
    lines = [
        f"qsmprep {__version__} dry run (nothing is run or written)",
        f"  input:  {config.execution.bids_dir}",
        f"  output: {config.execution.output_dir}",
        f"  work:   {config.execution.work_dir}",
        f"  participants: {', '.join(subjects)}   runs: {len(runs)}",
        f"  inversion: {wf.inversion}   unwrapping: {wf.unwrapping}   "
        f"background removal: {wf.background_removal}   atlas: "
        f"{'on' if atlas else 'skipped'}{' (precise)' if atlas and wf.atlas_precise else ''}",
        f"  plugin: {nip.plugin}   nprocs: {nip.nprocs}   omp-nthreads: {nip.resolved_omp_nthreads()}   "
        f"device: {nip.device}{' (GPU)' if nip.use_gpu else ''}",
        "",
        "Runs:",
    ]
    for run in runs:
        lines.extend("  " + line for line in run.describe().splitlines())
    lines += ["", "Steps (per run):"]
    lines += [f"  {i}. {s}" for i, s in enumerate(workflow_steps(
        inversion=wf.inversion, unwrapping=wf.unwrapping, atlas=atlas, precise=wf.atlas_precise, sloppy=wf.sloppy,
        background_removal=wf.background_removal), 1)]
    return "\n".join(lines)


def count_jobs(workflow) -> int:
    """Nodes that will run (Nipype drops the IdentityInterface nodes from the execution graph)."""
    from nipype.interfaces.utility import IdentityInterface

    return sum(not isinstance(n.interface, IdentityInterface) for n in workflow._get_all_nodes())


def configure_nipype_logging(verbosity: int) -> None:
    """Nipype resets its loggers from its own config when a workflow runs: set the levels there."""
    from nipype import config as ncfg
    from nipype import logging as nlogging

    level = {0: "WARNING", 1: "INFO", 2: "INFO"}.get(verbosity, "DEBUG")
    for key in ("workflow_level", "interface_level", "utils_level"):
        ncfg.set("logging", key, level)
    nlogging.update_logging(ncfg)
    for name in ("nipype.workflow", "nipype.interface", "nipype.utils"):
        logging.getLogger(name).propagate = False  # Nipype has its own handler: no duplicate lines


class LogBuffer(logging.Handler):
    """Keeps the run's log lines in memory; :meth:`save` writes them atomically under ``out_dir``."""

    def __init__(self):
        super().__init__(level=logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s [%(name)s] %(levelname)s: %(message)s"))

    def emit(self, record):
        self.lines.append(self.format(record))

    def attach(self):
        for name in ("qsmprep", "nipype.workflow"):
            logging.getLogger(name).addHandler(self)
        return self

    def detach(self):
        for name in ("qsmprep", "nipype.workflow"):
            logging.getLogger(name).removeHandler(self)

    def save(self, paths) -> None:
        from qsmprep.utils.atomic import write_text

        for path in paths:
            write_text(path, "\n".join(self.lines) + "\n")


class Progress:
    """Nipype ``status_callback`` that logs ``[done/total] node (seconds)``."""

    def __init__(self, total: int):
        self.total, self.done, self.started = max(1, total), 0, {}

    def __call__(self, node, status):
        name = node.fullname
        if status == "start":
            self.started[name] = time.monotonic()
            LOGGER.debug("started %s", name)
        elif status in ("end", "exception"):
            self.done += 1
            word = "finished" if status == "end" else "FAILED"
            start = self.started.pop(name, None)
            took = f" ({time.monotonic() - start:.1f} s)" if start is not None else ""
            LOGGER.info("[%d/%d] %s %s%s", self.done, self.total, name, word, took)


# --------------------------------------------------------------------------- levels


def run_participant(config) -> int:
    from qsmprep.bids import InputError, check_output_dir, collect_runs

    ex = config.execution
    try:
        check_output_dir(ex.bids_dir, ex.output_dir, ex.work_dir)
        resolve_gpu(config)
    except InputError as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)
    except RuntimeError as exc:
        return _error(str(exc), msg.EXIT_CANNOT_EXECUTE)
    try:
        runs = collect_runs(ex.bids_dir, ex.participant_label, ex.session_label)
        check_weights(config)
    except InputError as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)

    if ex.dry_run:
        print(format_plan(config, runs))
        return 0

    subjects = sorted({r.subject for r in runs})
    log_buffer = LogBuffer().attach()  # saved to sub-XX/log/<run_uuid>/qsmprep.log at the end
    try:
        LOGGER.log(25, msg.STARTED.format(version=__version__, run_uuid=ex.run_uuid, n_runs=len(runs),
                                          n_subjects=len(subjects)))
        for run in runs:
            LOGGER.info("run %s", run.describe())
        Path(ex.output_dir).mkdir(parents=True, exist_ok=True)
        write_dataset_description(ex.output_dir, ex.bids_dir)
        write_bidsignore(ex.output_dir)
        for path in write_configs(config, subjects):
            LOGGER.info("config saved to %s", path)
        return _build_and_run(config, runs, subjects)
    finally:
        log_buffer.detach()
        log_buffer.save(Path(ex.output_dir) / f"sub-{sub}" / "log" / ex.run_uuid / "qsmprep.log" for sub in subjects)


#: Nipype plugins that submit the whole graph to a scheduler and return before it has run.
GRAPH_PLUGINS = ("SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan", "LSFGraph")


def _build_and_run(config, runs, subjects) -> int:
    """Build the graph, run it with the configured plugin, then the subject reports."""
    from qsmprep.workflows.base import init_qsmprep_wf

    ex = config.execution
    workflow = init_qsmprep_wf(config, runs)
    crash_dir = Path(ex.work_dir) / "crash" / ex.run_uuid
    workflow.config["execution"] = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                    "poll_sleep_duration": 0.5}
    from qsmprep.workflows.base import apply_node_plugin_args

    for name in apply_node_plugin_args(workflow, config.get_node_plugin_args()):
        LOGGER.info("per-node plugin arguments from the --use-plugin file applied to %s", name)
    plugin = config.get_plugin()
    n_jobs = count_jobs(workflow)
    if plugin["plugin"] in ("Linear", "MultiProc"):
        plugin["plugin_args"]["status_callback"] = Progress(n_jobs)
    configure_nipype_logging(config.execution.verbosity)
    LOGGER.info("running %d jobs with %s (work folder %s)", n_jobs, plugin["plugin"], ex.work_dir)
    try:
        workflow.run(**plugin)
    except Exception as exc:  # nipype raises RuntimeError with the failed nodes
        LOGGER.error("%s", exc)
        return _error(msg.FAILED.format(crash_dir=crash_dir), msg.EXIT_WORKFLOW_FAILED)
    if plugin["plugin"] in GRAPH_PLUGINS:
        # A graph plugin returns once the jobs are submitted: results and reports come later.
        LOGGER.log(25, msg.SUBMITTED.format(plugin=plugin["plugin"], work=ex.work_dir))
        return 0

    code = 0
    try:
        from qsmprep.reports.subject import build_subject_report
    except ModuleNotFoundError as exc:
        if exc.name != "qsmprep.reports.subject":
            raise
        build_subject_report = None
    if build_subject_report is not None:
        for sub in subjects:
            try:
                from qsmprep.interfaces.qsm import call_with_supported

                LOGGER.info("report: %s", call_with_supported(build_subject_report, ex.output_dir, sub,
                                                              bids_dir=ex.bids_dir))
            except Exception as exc:  # a failed report must not hide the results
                LOGGER.error("The report of sub-%s failed: %s", sub, exc)
                code = msg.EXIT_WORKFLOW_FAILED
    if code == 0:
        LOGGER.log(25, msg.FINISHED.format(out=ex.output_dir))
    return code


def run_group_level(config) -> int:
    ex = config.execution
    out = Path(ex.output_dir)
    if not out.is_dir():
        return _error(msg.GROUP_NO_OUTPUT_DIR.format(out=out, bids=ex.bids_dir), msg.EXIT_INPUT_ERROR)
    try:
        from qsmprep.group import run_group
    except ModuleNotFoundError as exc:
        if exc.name not in ("qsmprep.group",):
            raise
        return _error(msg.GROUP_UNAVAILABLE, msg.EXIT_WORKFLOW_FAILED)
    try:
        written = run_group(ex.bids_dir, ex.output_dir, ex.participant_label or None)
    except (ValueError, FileNotFoundError) as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)
    for path in written or []:
        LOGGER.info("wrote %s", path)
    LOGGER.log(25, msg.FINISHED.format(out=out))
    return 0


def main(argv=None) -> int:
    """Console entry point; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "invert":
        from qsmprep.cli.invert import main as invert_main

        return invert_main(argv[1:])
    from qsmprep.cli.parser import parse_args

    config = parse_args(argv)
    setup_logging(config.execution.verbosity)
    if config.execution.analysis_level == "group":
        return run_group_level(config)
    return run_participant(config)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
