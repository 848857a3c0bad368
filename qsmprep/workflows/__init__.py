"""Nipype graph factories (``init_*_wf``): wiring only, building runs nothing.

:mod:`~qsmprep.workflows.base` (all participants, one participant; the only reader of the
config), :mod:`~qsmprep.workflows.qsm` (one run's QSM chain),
:mod:`~qsmprep.workflows.outputs` (derivatives writers) and
:mod:`~qsmprep.workflows.atlas` (registration and ROI tables).
"""
