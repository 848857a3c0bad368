"""Settings of one qsmprep run: each declared ONCE here, saved as TOML next to the outputs.

Every setting is a dataclass field; the fields that are command-line options carry their flags,
help, choices (from :mod:`qsmprep.methods` where there is a registry) and parsing in
``metadata`` (made by :func:`option`).  From these declarations alone come

* the ``qsmprep`` options (:func:`qsmprep.cli.parser.build_parser` adds one argparse option per
  declared field; the defaults are the fields' defaults);
* the TOML round trip (:meth:`Config.to_toml` / :meth:`Config.from_toml`; ``--config-file``
  reuses the fields declared with ``reuse=True``);
* the workflow factories' keywords (:meth:`Config.workflow_kwargs`: every field of
  :class:`WorkflowSettings` is a keyword of ``init_single_subject_wf``).

Sections (as in fMRIPrep's ``config.py``): ``execution`` (paths, labels, what to do),
``workflow`` (the processing choices), ``nipype`` (plugin and resources), ``seeds``.
Only :mod:`qsmprep.cli` and :mod:`qsmprep.workflows.base` read a :class:`Config`; the
factories below ``base.py`` take plain keyword arguments.
"""

from __future__ import annotations

import argparse
import os
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

from qsmprep.methods import BACKGROUND_REMOVALS, DEFAULT_INVERSION, INVERSIONS, UNWRAPPINGS

#: Nipype execution plugins qsmprep supports through ``--use-plugin``.
PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE")
#: Plugins that run the nodes on this machine (the others submit them to a cluster scheduler).
LOCAL_PLUGINS = ("Linear", "MultiProc")
DEVICES = ("auto", "cpu", "cuda")


# --------------------------------------------------------------------------- option declarations


def option(default=MISSING, *, flags, help, default_factory=MISSING, reuse=True, group="Processing", **argparse_kwargs):
    """A dataclass field that is also a command-line option.

    ``flags`` (e.g. ``("--inversion",)``) and ``help`` are argparse's; further keywords
    (``choices``, ``type``, ``action``, ``nargs``, ``metavar``) go to ``add_argument`` unchanged.
    ``reuse``: ``--config-file`` takes this setting from the saved file (machine- and
    invocation-specific settings, e.g. ``--nprocs`` or ``--dry-run``, say False).  ``group``: the
    help section.
    """
    meta = {"flags": tuple(flags), "help": help, "reuse": reuse, "group": group, "argparse": argparse_kwargs}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _default_nprocs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _new_run_uuid() -> str:
    """``YYYYmmdd-HHMMSS_<8 hex>``: sortable by time, unique across parallel jobs."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


def _strip_prefix(prefix):
    def _strip(value: str) -> str:
        return value[len(prefix):] if value.startswith(prefix) else value

    return _strip


def _int_between(lo: int, hi: int | None = None):
    """An argparse type: an integer in ``[lo, hi)`` (no upper bound when ``hi`` is None)."""

    def parse(value: str) -> int:
        try:
            ivalue = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
        if ivalue < lo or (hi is not None and ivalue >= hi):
            raise argparse.ArgumentTypeError(
                f"{value!r} must be at least {lo}" if hi is None else f"{value!r} must be between {lo} and {hi - 1}")
        return ivalue

    return parse


#: A count of processes or threads (at least 1).
positive_int = _int_between(1)
#: A seed: an integer in [0, 2**31) (ANTs takes a 32-bit signed seed).
seed_int = _int_between(0, 2**31)


def positive_float(value: str) -> float:
    try:
        fvalue = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if fvalue <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be positive")
    return fvalue


def bids_filter_file(value: str) -> dict:
    """Read a ``--bids-filter-file``: JSON ``{query name: {entity: value(s)}}`` (fMRIPrep's format)."""
    import json

    path = Path(value)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(
            f"the BIDS filter file {path} cannot be read ({getattr(exc, 'msg', None) or type(exc).__name__}); write JSON "
            'such as {"megre": {"acquisition": "fast"}}') from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise argparse.ArgumentTypeError(
            f'the BIDS filter file {path} must hold an object of queries, e.g. {{"megre": {{"run": 1}}}}')
    return data


# --------------------------------------------------------------------------- sections


@dataclass
class ExecutionSettings:
    bids_dir: Path | None = None
    """Root of the input BIDS dataset (read only)."""
    output_dir: Path | None = None
    """Root of the output BIDS derivatives dataset."""
    analysis_level: str = "participant"
    """``participant`` or ``group``."""
    work_dir: Path | None = option(
        None, flags=("-w", "--work-dir"), type=Path, reuse=False, group="Resources and execution",
        help="Nipype work folder (rerun with the same folder to resume); default ./work")
    participant_label: list = option(
        flags=("--participant-label", "--participant_label"), default_factory=list, nargs="+", metavar="LABEL",
        type=_strip_prefix("sub-"), group="Selecting data",
        help="subjects to process (with or without 'sub-'); default all")
    session_label: list = option(
        flags=("--session-label", "--session_label"), default_factory=list, nargs="+", metavar="LABEL",
        type=_strip_prefix("ses-"), group="Selecting data",
        help="sessions to process (with or without 'ses-'); default all")
    bids_filters: dict = option(
        flags=("--bids-filter-file",), default_factory=dict, type=bids_filter_file, metavar="FILE",
        group="Selecting data",
        help="JSON file of pybids filters per query, e.g. {\"megre\": {\"acquisition\": \"fast\"}} to pick an acq- "
             "or run- (queries: megre, t2starw, t1w); the filters are saved in qsmprep.toml")
    skip_bids_validation: bool = option(
        False, flags=("--skip-bids-validation",), action="store_true", group="Selecting data",
        help="do not run the official BIDS validator on the input before processing")
    run_uuid: str = field(default_factory=_new_run_uuid)
    """Identifier of this run; names the log folder ``sub-XX/log/<run_uuid>/``."""
    dry_run: bool = option(
        False, flags=("--dry-run",), action="store_true", reuse=False, group="Resources and execution",
        help="print the runs found (echoes, TEs, B0, B0 direction) and the steps, then exit")
    reports_only: bool = option(
        False, flags=("--reports-only",), action="store_true", reuse=False, group="Other",
        help="only rebuild the subject reports (and methods text) from the outputs already in output_dir")
    boilerplate_only: bool = option(
        False, flags=("--boilerplate-only", "--boilerplate_only"), action="store_true", reuse=False, group="Other",
        help="only write the methods text (logs/CITATION.md, .html, .bib) for these settings, then exit")
    md_only_boilerplate: bool = option(
        False, flags=("--md-only-boilerplate",), action="store_true", group="Other",
        help="write the methods text as Markdown only (no .html, no .bib)")
    write_graph: bool = option(
        False, flags=("--write-graph",), action="store_true", reuse=False, group="Other",
        help="write the workflow graph (graph.dot / graph.svg) into the work folder")
    clean_workdir: bool = option(
        False, flags=("--clean-workdir",), action="store_true", reuse=False, group="Resources and execution",
        help="delete qsmprep's part of the work folder after a successful run (no resuming afterwards)")
    group_by: str | None = option(
        None, flags=("--group-by",), metavar="COL", group="Group level",
        help="group level: a categorical participants.tsv column; per-structure group means, 95%% CIs and effect sizes")
    covariate: str | None = option(
        None, flags=("--covariate",), metavar="COL", group="Group level",
        help="group level: a numeric participants.tsv column; per-structure linear fit of mean chi against it")
    verbosity: int = option(
        0, flags=("-v", "--verbose"), action="count", reuse=False, group="Other",
        help="more log output (repeat for more)")
    version: str = ""
    """qsmprep version that wrote this config."""


@dataclass
class WorkflowSettings:
    """The processing choices: every field is a keyword of ``init_single_subject_wf``."""

    inversion: str = option(
        DEFAULT_INVERSION, flags=("--inversion",), choices=tuple(INVERSIONS),
        help="dipole inversion: " + "; ".join(f"{i.name}: {i.description}" for i in INVERSIONS.values()))
    unwrapping: str = option(
        "romeo", flags=("--unwrapping",), choices=tuple(UNWRAPPINGS),
        help="phase unwrapping: " + "; ".join(f"{s.name}: {s.description}" for s in UNWRAPPINGS.values()))
    background_removal: str = option(
        "ismv", flags=("--background-removal",), choices=tuple(BACKGROUND_REMOVALS),
        help="background-field removal: " + "; ".join(f"{s.name}: {s.description}" for s in BACKGROUND_REMOVALS.values()))
    skip_atlas: bool = option(
        False, flags=("--skip-atlas",), action="store_true",
        help="skip registration to MNI and the ROI tables (quick runs, tests)")
    atlas_precise: bool = option(
        False, flags=("--atlas-precise",), action="store_true", help="slower, more precise registration to MNI")
    sloppy: bool = option(
        False, flags=("--sloppy",), action="store_true",
        help="coarse, low-accuracy registration (testing parameters): for demos and tests only")
    phase_sign: str = option(
        "auto", flags=("--phase-sign",), choices=("auto", "1", "-1"),
        help="sign convention of the input phase: 1 = as stored (a positive field gives a positive phase), "
             "-1 = negated (the other handedness), auto = the sign that makes veins and iron-rich nuclei "
             "paramagnetic (logged and recorded in the QC JSON; +1 with a warning when it cannot tell)")
    single_echo_offset: str = option(
        "auto", flags=("--single-echo-offset",), choices=("auto", "0", "2", "3", "4"),
        help="single-echo runs only (several echoes fit the offset): polynomial degree of the receive-phase "
             "offset whose background-removal residual is removed before the inversion; auto = 2, or 4 when a "
             "smooth residual remains; 0 = off")
    slab_trend: str = option(
        "auto", flags=("--slab-trend",), choices=("auto", "off"),
        help="multi-echo runs whose brain mask reaches two opposite faces of the image (a slab): auto = remove the "
             "chi trend along the cut axis, which the field does not measure, estimated from R2* classes "
             "(recorded in the QC JSON); off = keep chi's own trend")


@dataclass
class NipypeSettings:
    plugin: str = "MultiProc"
    """Nipype plugin (one of :data:`PLUGINS`; set with ``--use-plugin``)."""
    plugin_args: dict = field(default_factory=dict)
    """Extra plugin arguments from ``--use-plugin``."""
    nprocs: int = option(
        flags=("--nprocs", "--nthreads"), default_factory=_default_nprocs, type=positive_int, reuse=False,
        group="Resources and execution", help="maximum number of processes at once (default: all available CPUs)")
    omp_nthreads: int = option(
        0, flags=("--omp-nthreads",), type=positive_int, group="Resources and execution",
        help="threads per process (default: min(nprocs - 1, 8))")
    mem_gb: float = option(
        0.0, flags=("--mem-gb", "--mem"), type=positive_float, group="Resources and execution",
        help="memory limit for the scheduler in GB (default: 90%% of the machine)")
    device: str = option(
        "auto", flags=("--device",), choices=DEVICES, group="Resources and execution",
        help="device of the torch inversion (nsidl): auto = a GPU if PyTorch sees one where the node runs; cuda = "
             "a GPU, reserved for the node (MultiProc GPU slot, SLURM --gres=gpu:1): on a cluster, ask for cuda; it "
             "fails at start only when the nodes run on this machine and it has no GPU")
    stop_on_first_crash: bool = option(
        False, flags=("--stop-on-first-crash",), action="store_true", group="Resources and execution",
        help="stop the whole run at the first failed step (default: finish every independent step first)")
    use_gpu: bool = False
    """Derived at start (:meth:`Config.schedules_gpu`): the inversion node reserves a GPU."""

    def resolved_omp_nthreads(self) -> int:
        if self.omp_nthreads and self.omp_nthreads > 0:
            return int(self.omp_nthreads)
        return max(1, min(self.nprocs - 1, 8))


@dataclass
class SeedSettings:
    master: int = option(
        20260, flags=("--random-seed",), type=seed_int, metavar="SEED", group="Resources and execution",
        help="master random seed (ANTs registration sampling); every other step is deterministic")
    """Master seed: the ANTs registration seed (metric sampling).  The other steps are deterministic."""


SECTIONS = {"execution": ExecutionSettings, "workflow": WorkflowSettings, "nipype": NipypeSettings, "seeds": SeedSettings}
_PATHS = {("execution", "bids_dir"), ("execution", "output_dir"), ("execution", "work_dir")}


def declared_options():
    """``(section, field)`` of every setting that is a command-line option, in declaration order."""
    for section, klass in SECTIONS.items():
        for f in fields(klass):
            if "flags" in f.metadata:
                yield section, f


@dataclass
class Config:
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    nipype: NipypeSettings = field(default_factory=NipypeSettings)
    seeds: SeedSettings = field(default_factory=SeedSettings)

    # ------------------------------------------------------------------ derived
    @property
    def runs_locally(self) -> bool:
        """The nodes run on this machine (Linear, MultiProc), not on a cluster's nodes."""
        return self.nipype.plugin in LOCAL_PLUGINS

    def schedules_gpu(self, local_gpu: bool | None = None) -> bool:
        """Whether the inversion node reserves a GPU, from what the user asked for.

        Only an inversion that uses torch reserves one.  ``--device cuda`` always does (on a cluster
        the node asks for ``--gres=gpu:1``, whatever the machine that submits has).  ``auto`` does
        only when the nodes run on this machine and ``local_gpu`` (this machine has a GPU); on a
        cluster ``auto`` reserves nothing.  ``cpu`` never does.
        """
        if not INVERSIONS[self.workflow.inversion].uses_torch:
            return False
        if self.nipype.device == "cuda":
            return True
        return bool(self.nipype.device == "auto" and self.runs_locally and local_gpu)

    def workflow_kwargs(self) -> dict:
        """Keywords of ``init_single_subject_wf``: every :class:`WorkflowSettings` field, plus the
        resolved resources (device, use_gpu, omp_nthreads) and the seed."""
        return {**asdict(self.workflow), "device": self.nipype.device, "use_gpu": self.nipype.use_gpu,
                "omp_nthreads": self.nipype.resolved_omp_nthreads(), "seed": self.seeds.master,
                "md_only_boilerplate": self.execution.md_only_boilerplate}

    # ------------------------------------------------------------------ plugin
    def get_plugin(self) -> dict:
        """``{"plugin": name, "plugin_args": {...}}`` for ``workflow.run(**...)``.

        MultiProc gets ``n_procs``, ``memory_gb`` (when set), ``n_gpu_procs`` = 1 when
        the inversion uses the GPU, and ``raise_insufficient`` = False; values from
        the ``--use-plugin`` file win.
        """
        nip = self.nipype
        args: dict = {}
        if nip.plugin == "MultiProc":
            args["n_procs"] = int(nip.nprocs)
            if nip.mem_gb:
                args["memory_gb"] = float(nip.mem_gb)
            args["raise_insufficient"] = False
            if nip.use_gpu:
                args["n_gpu_procs"] = 1
        args.update(nip.plugin_args or {})
        # per-node arguments (e.g. the GPU request of the inversion) are applied to the graph,
        # not passed to the plugin: see qsmprep.workflows.base.apply_node_plugin_args
        args.pop("node_plugin_args", None)
        if nip.plugin == "MultiProc":
            # forkserver always: forked workers can dead-lock on locks held by threads of the
            # parent (seen once in ~6 local runs), and CUDA cannot be used after fork
            args.setdefault("mp_context", "forkserver")
        return {"plugin": nip.plugin, "plugin_args": args}

    def get_node_plugin_args(self) -> dict:
        """``{node name or fnmatch pattern of its dotted full name: plugin_args}`` from ``--use-plugin``."""
        return dict((self.nipype.plugin_args or {}).get("node_plugin_args") or {})

    # ------------------------------------------------------------------ TOML
    def to_dict(self) -> dict:
        out = {}
        for name in SECTIONS:
            sec = asdict(getattr(self, name))
            out[name] = {k: (str(v) if isinstance(v, Path) else v) for k, v in sec.items()}
        return out

    def to_toml(self) -> str:
        """The settings as TOML text (``None`` values are left out)."""
        lines = ["# qsmprep run configuration; rerun with: qsmprep ... --config-file <this file>"]
        for section, values in self.to_dict().items():
            tables = {k: v for k, v in values.items() if isinstance(v, dict)}
            lines.append(f"\n[{section}]")
            for key, val in values.items():
                if val is None or key in tables:
                    continue
                lines.append(f"{key} = {_toml_value(val)}")
            for key, table in tables.items():
                lines.append(f"\n[{section}.{key}]")
                for k2, v2 in table.items():
                    if v2 is not None:
                        lines.append(f"{_toml_key(k2)} = {_toml_value(v2)}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_dict(cls, data: dict) -> "Config":
        cfg = cls()
        for section, klass in SECTIONS.items():
            known = {f.name for f in fields(klass)}
            values = {k: v for k, v in (data.get(section) or {}).items() if k in known}
            for k in list(values):
                if (section, k) in _PATHS and values[k] is not None:
                    values[k] = Path(values[k])
            setattr(cfg, section, klass(**values))
        return cfg

    @classmethod
    def from_toml(cls, path) -> "Config":
        import tomllib

        with open(path, "rb") as fh:
            return cls.from_dict(tomllib.load(fh))


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(str(key))


def _toml_value(val) -> str:
    import json

    if isinstance(val, bool):
        return "true" if val else "false"
    if isinstance(val, (int, float)):
        return repr(val)
    if isinstance(val, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in val) + "]"
    if isinstance(val, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in val.items() if v is not None) + "}"
    return json.dumps(str(val))  # a TOML basic string is a JSON string
