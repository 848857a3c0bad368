"""``python -m qsmprep`` runs the command-line interface."""

from qsmprep.cli.run import main

if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
