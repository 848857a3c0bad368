"""Command-line parser: ``qsmprep bids_dir out_dir {participant,group} [options]``.

Only the standard library is imported here so ``qsmprep --help`` is fast.
:func:`parse_args` returns a :class:`qsmprep.config.Config`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg
from qsmprep.config import BACKGROUND_REMOVALS, DEVICES, INVERSIONS, PLUGINS, UNWRAPPINGS, Config, SeedSettings


def _positive_int(value: str) -> int:
    try:
        ivalue = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if ivalue < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return ivalue


def _nonneg_int(value: str) -> int:
    """A seed: an integer in [0, 2**31) (ANTs takes a 32-bit signed seed)."""
    try:
        ivalue = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if not 0 <= ivalue < 2**31:
        raise argparse.ArgumentTypeError(f"{value!r} must be between 0 and 2147483647")
    return ivalue


def _positive_float(value: str) -> float:
    try:
        fvalue = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if fvalue <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be positive")
    return fvalue


def _strip_prefix(prefix):
    def _strip(value: str) -> str:
        return value[len(prefix):] if value.startswith(prefix) else value

    return _strip


def read_plugin_file(path) -> dict:
    """Read a ``--use-plugin`` YAML file: ``{"plugin": name, "plugin_args": {...}}``.

    Raises ``ValueError`` with a one-sentence message naming the file.
    """
    import yaml

    path = Path(path)
    choices = ", ".join(PLUGINS)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(msg.PLUGIN_FILE_BAD.format(path=path, why=type(exc).__name__, choices=choices)) from None
    if not isinstance(data, dict) or "plugin" not in data:
        raise ValueError(msg.PLUGIN_FILE_BAD.format(path=path, why="no 'plugin' key", choices=choices))
    if data["plugin"] not in PLUGINS:
        raise ValueError(msg.PLUGIN_FILE_BAD.format(path=path, why=f"unknown plugin {data['plugin']!r}", choices=choices))
    args = data.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise ValueError(msg.PLUGIN_FILE_BAD.format(path=path, why="'plugin_args' is not a mapping", choices=choices))
    node_args = data.get("node_plugin_args") or {}
    if not isinstance(node_args, dict) or not all(isinstance(v, dict) for v in node_args.values()):
        raise ValueError(msg.PLUGIN_FILE_BAD.format(
            path=path, why="'node_plugin_args' is not a mapping of node name to plugin arguments", choices=choices))
    if node_args:
        # kept inside plugin_args so the saved run config round-trips; popped before workflow.run
        args = {**args, "node_plugin_args": node_args}
    return {"plugin": data["plugin"], "plugin_args": args}


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser (documented option by option in README.md)."""
    parser = argparse.ArgumentParser(
        prog="qsmprep",
        description=(
            "qsmprep: quantitative susceptibility maps (ppm) and deep-gray-matter ROI tables from "
            "multi-echo gradient-echo MRI in BIDS.  'qsmprep invert --help' shows the stand-alone "
            "inversion command."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (never modified)")
    parser.add_argument("output_dir", type=Path, help="output folder (a BIDS derivatives dataset; outside bids_dir)")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"qsmprep {__version__}")
    parser.add_argument("-v", "--verbose", dest="verbosity", action="count", default=0,
                        help="more log output (repeat for more)")

    g = parser.add_argument_group("Selecting data")
    g.add_argument("--participant-label", "--participant_label", nargs="+", type=_strip_prefix("sub-"), default=[],
                   metavar="LABEL", help="subjects to process (with or without 'sub-'); default all")
    g.add_argument("--session-label", "--session_label", nargs="+", type=_strip_prefix("ses-"), default=[],
                   metavar="LABEL", help="sessions to process (with or without 'ses-'); default all")

    g = parser.add_argument_group("Processing")
    g.add_argument("--inversion", choices=INVERSIONS, default="nsidl",
                   help="dipole inversion: nsidl (deep learning, nonlinear data term), or the classical tkd, cgl2, ndi")
    g.add_argument("--unwrapping", choices=UNWRAPPINGS, default="romeo", help="phase unwrapping method")
    g.add_argument("--background-removal", choices=BACKGROUND_REMOVALS, default="ismv",
                   help="background-field removal: iSMV (default; best local-field accuracy in "
                        "benchmarks/RESULTS.md) or V-SHARP (12 mm -> voxel size, TSVD 0.05)")
    g.add_argument("--skip-atlas", action="store_true",
                   help="skip registration to MNI and the ROI tables (quick runs, tests)")
    g.add_argument("--atlas-precise", action="store_true", help="slower, more precise registration to MNI")
    g.add_argument("--sloppy", action="store_true",
                   help="coarse, low-accuracy registration (testing parameters): for demos and tests only")

    g = parser.add_argument_group("Resources and execution")
    g.add_argument("-w", "--work-dir", type=Path, default=None,
                   help="Nipype work folder (rerun with the same folder to resume); default ./work")
    g.add_argument("--nprocs", "--nthreads", dest="nprocs", type=_positive_int, default=None,
                   help="maximum number of processes at once (default: all available CPUs)")
    g.add_argument("--omp-nthreads", type=_positive_int, default=None,
                   help="threads per process (default: min(nprocs - 1, 8))")
    g.add_argument("--mem-gb", "--mem", dest="mem_gb", type=_positive_float, default=None,
                   help="memory limit for the scheduler in GB (default: 90%% of the machine)")
    g.add_argument("--use-plugin", type=Path, default=None, metavar="FILE",
                   help=f"YAML with 'plugin' ({', '.join(PLUGINS)}) and 'plugin_args'")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="device for the NSIDL inversion; cuda fails at start when no GPU is visible")
    g.add_argument("--dry-run", action="store_true",
                   help="print the runs found (echoes, TEs, B0, B0 direction) and the steps, then exit")
    g.add_argument("--random-seed", type=_nonneg_int, default=None, metavar="SEED",
                   help="master random seed (ANTs registration sampling); default %d" % SeedSettings.master)
    g.add_argument("--config-file", type=Path, default=None, metavar="FILE",
                   help="qsmprep.toml from an earlier run: reuse its choices (options given here win)")
    return parser


def _defaults_from_config(path: Path) -> dict:
    """Parser defaults from a saved ``qsmprep.toml``."""
    try:
        cfg = Config.from_toml(path)
    except Exception as exc:  # tomllib / OSError / TypeError
        raise ValueError(msg.CONFIG_FILE_BAD.format(path=path, why=str(exc) or type(exc).__name__)) from None
    return {
        "participant_label": cfg.execution.participant_label,
        "session_label": cfg.execution.session_label,
        "inversion": cfg.workflow.inversion,
        "unwrapping": cfg.workflow.unwrapping,
        "background_removal": cfg.workflow.background_removal,
        "skip_atlas": cfg.workflow.skip_atlas,
        "atlas_precise": cfg.workflow.atlas_precise,
        "sloppy": cfg.workflow.sloppy,
        "omp_nthreads": cfg.nipype.omp_nthreads or None,
        "mem_gb": cfg.nipype.mem_gb or None,
        "device": cfg.nipype.device,
        "random_seed": cfg.seeds.master,
        "_plugin": (cfg.nipype.plugin, cfg.nipype.plugin_args),
    }


def parse_args(argv=None) -> Config:
    """Parse ``argv`` (default ``sys.argv[1:]``) into a :class:`Config`.

    Usage errors (bad option values, unreadable plugin or config files) exit with
    status 2 through ``parser.error``.
    """
    parser = build_parser()
    opts = parser.parse_args(argv)
    saved_plugin = None
    if opts.config_file is not None:
        try:
            defaults = _defaults_from_config(opts.config_file)
        except ValueError as exc:
            parser.error(str(exc))
        saved_plugin = defaults.pop("_plugin")
        parser.set_defaults(**defaults)
        opts = parser.parse_args(argv)

    cfg = Config()
    ex = cfg.execution
    ex.bids_dir = opts.bids_dir.absolute()
    ex.output_dir = opts.output_dir.absolute()
    ex.work_dir = (opts.work_dir or Path.cwd() / "work").absolute()
    ex.analysis_level = opts.analysis_level
    ex.participant_label = list(dict.fromkeys(opts.participant_label))
    ex.session_label = list(dict.fromkeys(opts.session_label))
    ex.dry_run = opts.dry_run
    ex.verbosity = opts.verbosity
    ex.version = __version__

    wf = cfg.workflow
    wf.inversion = opts.inversion
    wf.unwrapping = opts.unwrapping
    wf.background_removal = opts.background_removal
    wf.skip_atlas = opts.skip_atlas
    wf.atlas_precise = opts.atlas_precise
    wf.sloppy = opts.sloppy
    if wf.sloppy and wf.atlas_precise:
        parser.error("--sloppy and --atlas-precise contradict each other; pass only one.")

    if opts.random_seed is not None:
        cfg.seeds.master = opts.random_seed

    nip = cfg.nipype
    if opts.nprocs:
        nip.nprocs = opts.nprocs
    nip.omp_nthreads = opts.omp_nthreads or 0
    if nip.omp_nthreads > nip.nprocs:
        parser.error(f"--omp-nthreads ({nip.omp_nthreads}) cannot exceed --nprocs ({nip.nprocs}); lower it.")
    nip.mem_gb = opts.mem_gb or 0.0
    nip.device = opts.device
    if opts.use_plugin is not None:
        try:
            plugin = read_plugin_file(opts.use_plugin)
        except ValueError as exc:
            parser.error(str(exc))
        nip.plugin, nip.plugin_args = plugin["plugin"], plugin["plugin_args"]
    elif saved_plugin is not None:
        nip.plugin, nip.plugin_args = saved_plugin
    if nip.plugin == "MultiProc" and "n_procs" in nip.plugin_args and not opts.nprocs:
        nip.nprocs = int(nip.plugin_args["n_procs"])
    return cfg
