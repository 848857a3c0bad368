"""Settings of one qsmprep run, saved as TOML next to the outputs so the run can be reproduced.

The command line (:mod:`qsmprep.cli.parser`) fills a :class:`Config`; only
:mod:`qsmprep.cli` and :mod:`qsmprep.workflows.base` read it.  Workflow factories
below ``base.py`` take plain keyword arguments.

Sections (as in fMRIPrep's ``config.py``):

``execution``
    paths, labels, analysis level, run UUID, dry run, verbosity.
``workflow``
    the processing choices (inversion, unwrapping, atlas).
``nipype``
    plugin and resources (processes, threads, memory, device).
``seeds``
    the master random seed (``--random-seed``; seeds ANTs' registration sampling).

``Config.to_toml()`` / ``Config.from_toml()`` round-trip; ``qsmprep ... --config-file
sub-01/log/<uuid>/qsmprep.toml`` reruns with the same choices.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path

#: Dipole inversions the CLI offers; ``nsidl`` is ``qsmprep.dl.inference.invert_nsidl``,
#: the others are ``qsmprep.qsm.inversion.METHODS[name]`` (``cgl2`` -> ``cg_l2``).
INVERSIONS = ("nsidl", "tkd", "cgl2", "ndi")
#: Background-field removal methods (``qsmprep.qsm.background.vsharp(method=...)``).
BACKGROUND_REMOVALS = ("ismv", "vsharp")

#: Phase unwrapping methods (``qsmprep.qsm.unwrap.unwrap_echoes(method=...)``).
UNWRAPPINGS = ("romeo", "laplacian")
#: Nipype execution plugins qsmprep supports through ``--use-plugin``.
PLUGINS = ("Linear", "MultiProc", "SLURM", "SLURMGraph", "SGE")
DEVICES = ("auto", "cpu", "cuda")


def _default_nprocs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _new_run_uuid() -> str:
    """``YYYYmmdd-HHMMSS_<8 hex>``: sortable by time, unique across parallel jobs."""
    return f"{datetime.now(timezone.utc):%Y%m%d-%H%M%S}_{uuid.uuid4().hex[:8]}"


@dataclass
class ExecutionSettings:
    bids_dir: Path | None = None
    """Root of the input BIDS dataset (read only)."""
    output_dir: Path | None = None
    """Root of the output BIDS derivatives dataset."""
    work_dir: Path | None = None
    """Nipype work folder; a rerun with the same folder resumes."""
    analysis_level: str = "participant"
    """``participant`` or ``group``."""
    participant_label: list = field(default_factory=list)
    """Subjects to process (without ``sub-``); empty = all."""
    session_label: list = field(default_factory=list)
    """Sessions to process (without ``ses-``); empty = all."""
    run_uuid: str = field(default_factory=_new_run_uuid)
    """Identifier of this run; names the log folder ``sub-XX/log/<run_uuid>/``."""
    dry_run: bool = False
    """Print the plan and exit without running or writing anything."""
    verbosity: int = 0
    """Number of ``-v`` flags."""
    version: str = ""
    """qsmprep version that wrote this config."""


@dataclass
class WorkflowSettings:
    inversion: str = "nsidl"
    """Dipole inversion: one of :data:`INVERSIONS`."""
    unwrapping: str = "romeo"
    """Phase unwrapping: one of :data:`UNWRAPPINGS`."""
    background_removal: str = "ismv"
    """Background-field removal: one of :data:`BACKGROUND_REMOVALS`."""
    skip_atlas: bool = False
    """Skip registration to MNI and the ROI tables."""
    atlas_precise: bool = False
    """Use the precise (slower) registration parameters."""
    sloppy: bool = False
    """Use the coarse ``testing`` registration parameters (demos and tests only)."""


@dataclass
class NipypeSettings:
    plugin: str = "MultiProc"
    """Nipype plugin (one of :data:`PLUGINS`)."""
    plugin_args: dict = field(default_factory=dict)
    """Extra plugin arguments from ``--use-plugin``."""
    nprocs: int = field(default_factory=_default_nprocs)
    """Maximum number of processes running at once."""
    omp_nthreads: int = 0
    """Threads per process (0 = ``min(nprocs - 1, 8)``, at least 1)."""
    mem_gb: float = 0.0
    """Memory limit for the scheduler in GB (0 = Nipype's default, 90 % of the machine)."""
    device: str = "auto"
    """Device for the NSIDL inversion: ``auto``, ``cpu`` or ``cuda``."""
    use_gpu: bool = False
    """Resolved at start: whether the inversion node is scheduled on a GPU."""

    def resolved_omp_nthreads(self) -> int:
        if self.omp_nthreads and self.omp_nthreads > 0:
            return int(self.omp_nthreads)
        return max(1, min(self.nprocs - 1, 8))


@dataclass
class SeedSettings:
    master: int = 20260
    """Master seed (``--random-seed``): the ANTs registration seed (metric sampling).  The other
    steps are deterministic (no random numbers): masking, unwrapping, the fits, the
    inversions (NSIDL inference included)."""


_SECTIONS = {"execution": ExecutionSettings, "workflow": WorkflowSettings, "nipype": NipypeSettings, "seeds": SeedSettings}
_PATHS = {("execution", "bids_dir"), ("execution", "output_dir"), ("execution", "work_dir")}


@dataclass
class Config:
    execution: ExecutionSettings = field(default_factory=ExecutionSettings)
    workflow: WorkflowSettings = field(default_factory=WorkflowSettings)
    nipype: NipypeSettings = field(default_factory=NipypeSettings)
    seeds: SeedSettings = field(default_factory=SeedSettings)

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
        for name in _SECTIONS:
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
        for section, klass in _SECTIONS.items():
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
