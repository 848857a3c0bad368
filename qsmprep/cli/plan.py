"""The ``--dry-run`` plan, derived from the graph that would run (not from a hand-written list).

:func:`format_plan` builds the participant graph of the first run (nothing runs), walks its nodes
in execution order and describes each one from its interface (first line of the docstring, the
method chosen with its description from :mod:`qsmprep.methods`) and its resources (memory,
threads, GPU).
"""

from __future__ import annotations

import re

from qsmprep import __version__

#: Interfaces that only move data between nodes: not shown in the plan.
_PLUMBING = ("IdentityInterface", "Merge")


def describe_node(node) -> str:
    """One line for a graph node: what it does (interface docstring, method) and its resources."""
    from nipype.interfaces.base import isdefined

    from qsmprep.methods import BACKGROUND_REMOVALS, INVERSIONS, UNWRAPPINGS

    iface = node.interface
    doc = (type(iface).__doc__ or type(iface).__name__).strip().split("\n\n")[0].replace("\n", " ")
    doc = re.sub(r"\s+", " ", re.sub(r":\w+:`~?([^`]+)`", r"\1", doc).replace("``", "")).rstrip(".")
    extra = []
    method = getattr(iface.inputs, "method", None)
    if method is not None and isdefined(method):
        table = {"DipoleInversion": INVERSIONS, "BackgroundRemoval": BACKGROUND_REMOVALS,
                 "UnwrapEchoes": UNWRAPPINGS}.get(type(iface).__name__, {})
        extra.append(table[method].description if method in table else str(method))
    own = INVERSIONS[method].options if type(iface).__name__ == "DipoleInversion" and method in INVERSIONS else {}
    for trait in ("flavor", *own):
        value = getattr(iface.inputs, trait, None)
        if value is not None and isdefined(value):
            extra.append(f"{trait.replace('_', ' ')} {value}")
    res = [f"{node.mem_gb:g} GB"]
    if getattr(node, "n_procs", 1) and node.n_procs > 1:
        res.append(f"{node.n_procs} threads")
    if getattr(iface.inputs, "use_gpu", False) is True:
        res.append("GPU")
    what = f"{doc}" + (f": {'; '.join(extra)}" if extra else "")
    return f"{node.name} -- {what} [{', '.join(res)}]"


def plan_steps(config, run) -> list[str]:
    """The steps of one run in execution order, from the graph ``init_single_subject_wf`` builds."""
    import networkx as nx

    from qsmprep.workflows.base import init_single_subject_wf

    wf = init_single_subject_wf(subject=run.subject, runs=[run], bids_dir=config.execution.bids_dir,
                                output_dir=config.execution.output_dir, **config.workflow_kwargs())
    graph = wf._create_flat_graph()
    lines, sinks = [], 0
    for node in nx.topological_sort(graph):
        name = type(node.interface).__name__
        if name in _PLUMBING:
            continue
        if name == "DerivativesSink":
            sinks += 1
            continue
        lines.append(describe_node(node))
    lines.append(f"{sinks} derivative files written to the output folder (atomically, with JSON sidecars)")
    return lines


def format_plan(config, runs) -> str:
    """The ``--dry-run`` text: settings, each run's echoes/TEs/B0/direction, and the steps."""
    wf, nip = config.workflow, config.nipype
    subjects = sorted({r.subject for r in runs})
    lines = [
        f"qsmprep {__version__} dry run (nothing is run or written)",
        f"  input:  {config.execution.bids_dir}",
        f"  output: {config.execution.output_dir}",
        f"  work:   {config.execution.work_dir}",
        f"  participants: {', '.join(subjects)}   runs: {len(runs)}",
        f"  inversion: {wf.inversion}   unwrapping: {wf.unwrapping}   background removal: {wf.background_removal}   "
        f"atlas: {'skipped' if wf.skip_atlas else 'precise' if wf.atlas_precise else 'sloppy' if wf.sloppy else 'on'}",
        f"  plugin: {nip.plugin}   nprocs: {nip.nprocs}   omp-nthreads: {nip.resolved_omp_nthreads()}   "
        f"device: {nip.device}{' (a GPU is reserved for the inversion)' if nip.use_gpu else ''}",
        "",
        "Runs:",
    ]
    for run in runs:
        lines.extend("  " + line for line in run.describe().splitlines())
    lines += ["", f"Steps (the graph of {runs[0].prefix}; every run has the same):"]
    lines += [f"  {i}. {s}" for i, s in enumerate(plan_steps(config, runs[0]), 1)]
    return "\n".join(lines)
