"""Command-line parser: ``qsmprep bids_dir out_dir {participant,group} [options]``.

The options are generated from the settings declared in :mod:`qsmprep.config` (one argparse
option per declared field: flags, help, choices, type, default), so a new setting is declared
once, there.  Only the standard library and :mod:`qsmprep.config` are imported here, so
``qsmprep --help`` is fast.  :func:`parse_args` returns a :class:`qsmprep.config.Config`.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg
from qsmprep.config import PLUGINS, Config, declared_options

#: Plugin arguments whose type qsmprep checks when it reads a ``--use-plugin`` file.
_PLUGIN_ARG_TYPES = {"n_procs": (int, 1), "n_gpu_procs": (int, 0), "memory_gb": (float, 0.0), "max_jobs": (int, 1)}


def read_plugin_file(path) -> dict:
    """Read a ``--use-plugin`` YAML file: ``{"plugin": name, "plugin_args": {...}}``.

    Raises ``ValueError`` with a one-sentence message naming the file.
    """
    import yaml

    path = Path(path)
    choices = ", ".join(PLUGINS)

    def bad(why):
        return ValueError(msg.PLUGIN_FILE_BAD.format(path=path, why=why, choices=choices))

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise bad(type(exc).__name__) from None
    if not isinstance(data, dict) or "plugin" not in data:
        raise bad("no 'plugin' key")
    if data["plugin"] not in PLUGINS:
        raise bad(f"unknown plugin {data['plugin']!r}")
    args = data.get("plugin_args") or {}
    if not isinstance(args, dict):
        raise bad("'plugin_args' is not a mapping")
    for key, (kind, least) in _PLUGIN_ARG_TYPES.items():
        if key in args:
            value = args[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)) \
                    or value < least:
                word = "an integer" if kind is int else "a number"
                raise bad(f"{key}: {value!r} is not {word} of at least {least:g}")
            args[key] = kind(value)
    node_args = data.get("node_plugin_args") or {}
    if not isinstance(node_args, dict) or not all(isinstance(v, dict) for v in node_args.values()):
        raise bad("'node_plugin_args' is not a mapping of node name to plugin arguments")
    if node_args:
        # kept inside plugin_args so the saved run config round-trips; popped before workflow.run
        args = {**args, "node_plugin_args": node_args}
    return {"plugin": data["plugin"], "plugin_args": args}


def _dest(section: str, name: str) -> str:
    return f"{section}.{name}"


def _help(f) -> str:
    text = f.metadata["help"]
    action = f.metadata["argparse"].get("action")
    if f.default is not MISSING and action is None and f.default not in (None, 0, 0.0, "") and "(default" not in text:
        text += f" (default: {f.default})"
    return text


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser: the positional arguments, then one option per declared setting."""
    parser = argparse.ArgumentParser(
        prog="qsmprep",
        description=(
            "qsmprep: quantitative susceptibility maps (ppm) and deep-gray-matter ROI tables from "
            "multi-echo gradient-echo MRI in BIDS.  'qsmprep invert --help' shows the stand-alone "
            "inversion command."
        ),
        epilog="exit status: 0 success; 1 a step failed (rerun to resume); 2 bad command line or input, nothing "
               "written; 126 --device cuda without a usable GPU on this machine.",
    )
    parser.add_argument("bids_dir", type=Path, help="root of the input BIDS dataset (never modified)")
    parser.add_argument("output_dir", type=Path, help="output folder (a BIDS derivatives dataset; outside bids_dir)")
    parser.add_argument("analysis_level", choices=["participant", "group"], help="processing stage")
    parser.add_argument("--version", action="version", version=f"qsmprep {__version__}")
    groups: dict[str, argparse._ArgumentGroup] = {}
    for section, f in declared_options():
        meta = f.metadata
        group = groups.get(meta["group"]) or groups.setdefault(meta["group"], parser.add_argument_group(meta["group"]))
        group.add_argument(*meta["flags"], dest=_dest(section, f.name), default=argparse.SUPPRESS, help=_help(f),
                           **meta["argparse"])
        if section == "nipype" and f.name == "device":
            group.add_argument("--use-plugin", type=Path, default=None, metavar="FILE",
                               help=f"YAML with 'plugin' ({', '.join(PLUGINS)}), 'plugin_args' and optional "
                                    "'node_plugin_args' (default: MultiProc on this machine)")
    groups["Other"].add_argument("--config-file", type=Path, default=None, metavar="FILE",
                                 help="qsmprep.toml from an earlier run: reuse its choices (options given here win)")
    return parser


def _load_saved(parser, path: Path, cfg: Config) -> None:
    """Copy the reusable settings of a saved ``qsmprep.toml`` into ``cfg``."""
    try:
        saved = Config.from_toml(path)
    except Exception as exc:  # tomllib / OSError / TypeError
        parser.error(msg.CONFIG_FILE_BAD.format(path=path, why=str(exc) or type(exc).__name__))
    for section, f in declared_options():
        if f.metadata["reuse"]:
            setattr(getattr(cfg, section), f.name, getattr(getattr(saved, section), f.name))
    cfg.nipype.plugin, cfg.nipype.plugin_args = saved.nipype.plugin, saved.nipype.plugin_args


def parse_args(argv=None) -> Config:
    """Parse ``argv`` (default ``sys.argv[1:]``) into a :class:`Config`.

    Usage errors (bad option values, unreadable plugin or config files, contradictory
    options) exit with status 2 through ``parser.error``.
    """
    parser = build_parser()
    opts = vars(parser.parse_args(argv))
    cfg = Config()
    if opts["config_file"] is not None:
        _load_saved(parser, opts["config_file"], cfg)
    for section, f in declared_options():
        if _dest(section, f.name) in opts:
            value = opts[_dest(section, f.name)]
            if isinstance(value, list):
                value = list(dict.fromkeys(value))
            setattr(getattr(cfg, section), f.name, value)

    ex = cfg.execution
    ex.bids_dir = opts["bids_dir"].absolute()
    ex.output_dir = opts["output_dir"].absolute()
    ex.work_dir = Path(ex.work_dir or Path.cwd() / "work").absolute()
    ex.analysis_level = opts["analysis_level"]
    ex.version = __version__

    if cfg.workflow.sloppy and cfg.workflow.atlas_precise:
        parser.error("--sloppy and --atlas-precise contradict each other; pass only one.")
    if ex.boilerplate_only and ex.reports_only:
        parser.error("--boilerplate-only and --reports-only contradict each other; pass only one.")
    nip = cfg.nipype
    if opts["use_plugin"] is not None:
        try:
            plugin = read_plugin_file(opts["use_plugin"])
        except ValueError as exc:
            parser.error(str(exc))
        nip.plugin, nip.plugin_args = plugin["plugin"], plugin["plugin_args"]
    if nip.plugin == "MultiProc" and "n_procs" in nip.plugin_args and "nipype.nprocs" not in opts:
        nip.nprocs = int(nip.plugin_args["n_procs"])
    if nip.omp_nthreads > nip.nprocs:
        parser.error(f"--omp-nthreads ({nip.omp_nthreads}) cannot exceed --nprocs ({nip.nprocs}); lower it.")
    return cfg
