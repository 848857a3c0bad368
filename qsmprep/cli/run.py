"""``qsmprep`` entry point: parse -> check -> (dry run | write dataset files -> run the graph).

Order of a participant run:

1. parse the command line into a :class:`qsmprep.config.Config` (:mod:`qsmprep.cli.parser`);
2. check the output/work folders, the GPU request, the NSIDL weights and the whole BIDS input
   (:func:`qsmprep.cli.prepare.check_participant`); any problem prints one sentence and exits
   with status 2 (126 for an unusable GPU) before anything is written;
3. ``--dry-run``: print the plan derived from the graph (:mod:`qsmprep.cli.plan`) and exit 0;
4. write ``dataset_description.json``, ``.bidsignore`` and the config
   (``sub-XX/log/<run_uuid>/qsmprep.toml``), build the Nipype graph and run it with the chosen
   plugin (:mod:`qsmprep.cli.execute`); the subject reports are the graph's last nodes.

``qsmprep ... group`` builds the study tables (:mod:`qsmprep.group`); ``--reports-only`` rebuilds
the subject reports from the outputs on disk; ``qsmprep invert ...`` dispatches to
:mod:`qsmprep.cli.invert`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from qsmprep import __version__
from qsmprep import messages as msg

LOGGER = logging.getLogger("qsmprep")


def _error(text: str, code: int) -> int:
    print(f"qsmprep: error: {text}", file=sys.stderr)
    return code


def run_participant(config) -> int:
    from qsmprep.bids import InputError
    from qsmprep.cli.execute import LogBuffer, run_workflow
    from qsmprep.cli.prepare import check_participant, write_dataset_files
    from qsmprep.utils.gpu import DeviceUnavailableError

    ex = config.execution
    try:
        runs = check_participant(config)
    except InputError as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)
    except DeviceUnavailableError as exc:
        return _error(str(exc), msg.EXIT_CANNOT_EXECUTE)

    if ex.dry_run:
        from qsmprep.cli.plan import format_plan

        print(format_plan(config, runs))
        return 0
    if ex.boilerplate_only:
        from qsmprep.reports.methods import methods_from_config, write_citation_files

        for path in write_citation_files(ex.output_dir, methods_from_config(config, runs),
                                         md_only=ex.md_only_boilerplate):
            print(path)
        return 0

    subjects = sorted({r.subject for r in runs})
    log_buffer = LogBuffer().attach()  # saved to sub-XX/log/<run_uuid>/qsmprep.log at the end
    started = time.time()
    try:
        LOGGER.log(25, msg.STARTED.format(version=__version__, run_uuid=ex.run_uuid, n_runs=len(runs),
                                          n_subjects=len(subjects)))
        for run in runs:
            LOGGER.info("run %s", run.describe())
        write_dataset_files(config, subjects)
        return run_workflow(config, runs)
    finally:
        from qsmprep.utils.atomic import remove_stale_temporaries

        for sub in subjects:  # what an earlier, killed run of these subjects left half written
            for path in remove_stale_temporaries(Path(ex.output_dir) / f"sub-{sub}", before=started - 60.0):
                LOGGER.info("removed %s, a temporary file an interrupted earlier run left", path)
        log_buffer.detach()
        log_buffer.save((Path(ex.output_dir) / f"sub-{sub}" / "log" / ex.run_uuid / "qsmprep.log" for sub in subjects),
                        root=ex.output_dir)


def run_reports(config) -> int:
    """``--reports-only``: rebuild the subject reports from the outputs already in ``output_dir``."""
    from qsmprep.reports.subject import NoSubjectOutputsError, build_subject_report

    from qsmprep.bids import InputError
    from qsmprep.cli.prepare import check_output_links

    ex = config.execution
    out = Path(ex.output_dir)
    subjects = ex.participant_label or sorted(p.name[4:] for p in out.glob("sub-*") if p.is_dir())
    if not out.is_dir() or not subjects:
        return _error(msg.GROUP_NO_OUTPUT_DIR.format(out=out, bids=ex.bids_dir), msg.EXIT_INPUT_ERROR)
    try:
        check_output_links(out)
    except InputError as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)
    for sub in subjects:
        try:
            LOGGER.info("report: %s", build_subject_report(out, sub, bids_dir=ex.bids_dir))
        except NoSubjectOutputsError as exc:
            return _error(str(exc), msg.EXIT_INPUT_ERROR)
    from qsmprep.reports.methods import write_citation_files

    for path in write_citation_files(out, md_only=ex.md_only_boilerplate):
        LOGGER.info("methods text: %s", path)
    LOGGER.log(25, msg.FINISHED.format(out=out))
    return 0


def run_group_level(config) -> int:
    """``qsmprep ... group``: the study tables, and with ``--group-by`` / ``--covariate`` the statistics."""
    from qsmprep.bids import InputError
    from qsmprep.cli.prepare import check_output_links
    from qsmprep.group import GroupInputError, run_group

    ex = config.execution
    out = Path(ex.output_dir)
    if not out.is_dir():
        return _error(msg.GROUP_NO_OUTPUT_DIR.format(out=out, bids=ex.bids_dir), msg.EXIT_INPUT_ERROR)
    try:
        check_output_links(out)
    except InputError as exc:
        return _error(str(exc), msg.EXIT_INPUT_ERROR)
    try:
        written = run_group(ex.bids_dir, ex.output_dir, ex.participant_label or None, group_by=ex.group_by,
                            covariate=ex.covariate)
    except GroupInputError as exc:
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
    from qsmprep.cli.execute import setup_logging
    from qsmprep.cli.parser import parse_args

    config = parse_args(argv)
    setup_logging(config.execution.verbosity)
    try:
        if config.execution.analysis_level == "group":
            return run_group_level(config)
        if config.execution.reports_only:
            return run_reports(config)
        return run_participant(config)
    except KeyboardInterrupt:  # one sentence instead of a traceback
        print(f"qsmprep: {msg.INTERRUPTED}", file=sys.stderr)
        return msg.EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
