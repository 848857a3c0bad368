"""Run the participant graph: logging, progress, the plugin, and what to do after it.

The reports are nodes of the graph (:func:`qsmprep.workflows.base.init_single_subject_wf`), so a
finished graph has written them, with every plugin.
"""

from __future__ import annotations

import logging
import shutil
import sys
import time
from pathlib import Path

from qsmprep import messages as msg

LOGGER = logging.getLogger("qsmprep")
#: Nipype plugins that submit the whole graph to a scheduler and return before it has run.
GRAPH_PLUGINS = ("SLURMGraph", "SGEGraph", "PBSGraph", "CondorDAGMan", "LSFGraph")


def setup_logging(verbosity: int = 0) -> None:
    """qsmprep logs at INFO (DEBUG with -vv); level 25 is IMPORTANT (milestones).

    Nipype's levels are set when the graph runs (:func:`configure_nipype_logging`).
    """
    logging.addLevelName(25, "IMPORTANT")
    logging.basicConfig(format="%(asctime)s [%(name)s] %(levelname)s: %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stderr)
    LOGGER.setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)


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

    def save(self, paths, root=None) -> None:
        from qsmprep.utils.atomic import write_text

        for path in paths:
            write_text(path, "\n".join(self.lines) + "\n", root=root)


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


def count_jobs(workflow) -> int:
    """Nodes that will run (Nipype drops the IdentityInterface nodes from the execution graph)."""
    from nipype.interfaces.utility import IdentityInterface

    return sum(not isinstance(n.interface, IdentityInterface) for n in workflow._get_all_nodes())


def build_workflow(config, runs):
    """The participant graph with its execution settings and per-node plugin arguments applied."""
    from qsmprep.workflows.base import apply_node_plugin_args, init_qsmprep_wf

    ex = config.execution
    workflow = init_qsmprep_wf(config, runs)
    crash_dir = Path(ex.work_dir) / "crash" / ex.run_uuid
    workflow.config["execution"] = {"crashdump_dir": str(crash_dir), "crashfile_format": "txt",
                                    "poll_sleep_duration": 0.5,
                                    "stop_on_first_crash": bool(config.nipype.stop_on_first_crash)}
    for name in apply_node_plugin_args(workflow, config.get_node_plugin_args()):
        LOGGER.info("per-node plugin arguments from the --use-plugin file applied to %s", name)
    return workflow


def write_graph(workflow, work_dir: Path) -> list[Path]:
    """``--write-graph``: the graph as ``work_dir/qsmprep_graph.dot`` and ``.svg`` (graphviz's ``dot`` draws
    the SVG; without it only the ``.dot`` is written, with a warning).  Outside the node folders, so
    ``--clean-workdir`` keeps it."""
    import shutil as _shutil

    wf_dir = work_dir / workflow.name
    wf_dir.mkdir(parents=True, exist_ok=True)
    try:
        workflow.write_graph(graph2use="colored", format="svg", simple_form=True)
    except Exception as exc:  # graphviz's dot missing: the .dot file is still there
        LOGGER.warning("the workflow graph could not be drawn (%s); only the .dot file is written", exc)
    written = []
    for ext in (".dot", ".svg"):
        src = wf_dir / f"graph{ext}"
        if src.is_file():
            written.append(Path(_shutil.copyfile(src, work_dir / f"qsmprep_graph{ext}")))
    LOGGER.info("workflow graph written to %s", ", ".join(str(p) for p in written))
    return written


def other_builds(work_dir: Path, name: str) -> list[Path]:
    """Top-workflow folders in ``work_dir`` that another qsmprep build left (any ``qsmprep_*wf`` folder but
    ``name``: :func:`qsmprep.workflows.base.top_name`), sorted."""
    from qsmprep.workflows.base import TOP_PREFIX

    if not work_dir.is_dir():
        return []
    return sorted(p for p in work_dir.glob(f"{TOP_PREFIX}_*wf") if p.is_dir() and p.name != name)


def run_workflow(config, runs) -> int:
    """Build and run the graph with the configured plugin; returns the exit status."""
    ex = config.execution
    workflow = build_workflow(config, runs)
    stale = other_builds(Path(ex.work_dir), workflow.name)
    if stale:
        LOGGER.warning("the work folder %s also holds node folders of other qsmprep builds (%s); this build does not "
                       "reuse them (delete them to free space)", ex.work_dir, ", ".join(p.name for p in stale))
    crash_dir = workflow.config["execution"]["crashdump_dir"]
    if ex.write_graph:
        write_graph(workflow, Path(ex.work_dir))
    plugin = config.get_plugin()
    n_jobs = count_jobs(workflow)
    if plugin["plugin"] in ("Linear", "MultiProc"):
        plugin["plugin_args"]["status_callback"] = Progress(n_jobs)
    configure_nipype_logging(ex.verbosity)
    LOGGER.info("running %d jobs with %s (work folder %s)", n_jobs, plugin["plugin"], ex.work_dir)
    run_plugin = plugin["plugin"]
    if run_plugin == "MultiProc":  # workers that end with this process (qsmprep.utils.procs)
        from qsmprep.utils.procs import multiproc_plugin

        run_plugin = multiproc_plugin(plugin["plugin_args"])
    try:
        workflow.run(plugin=run_plugin, plugin_args=plugin["plugin_args"])
    except Exception as exc:  # nipype raises RuntimeError with the failed nodes
        LOGGER.error("%s", exc)
        print(f"qsmprep: error: {msg.FAILED.format(crash_dir=crash_dir)}", file=sys.stderr)
        return msg.EXIT_WORKFLOW_FAILED
    if plugin["plugin"] in GRAPH_PLUGINS:
        # A graph plugin returns once the jobs are submitted: the jobs write results and reports.
        LOGGER.log(25, msg.SUBMITTED.format(plugin=plugin["plugin"], out=ex.output_dir))
        return 0
    if ex.clean_workdir:
        shutil.rmtree(Path(ex.work_dir) / workflow.name, ignore_errors=True)
        LOGGER.info("removed %s (--clean-workdir)", Path(ex.work_dir) / workflow.name)
    LOGGER.log(25, msg.FINISHED.format(out=ex.output_dir))
    return 0
