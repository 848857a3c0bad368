"""Command line: ``qsmprep bids_dir out_dir {participant,group}`` (:mod:`qsmprep.cli.run`).

:mod:`qsmprep.cli.parser` builds the options; ``qsmprep invert ...`` dispatches to
:mod:`qsmprep.cli.invert`.  Nothing heavy is imported here.
"""
