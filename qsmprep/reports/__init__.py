"""qsmprep.reports: figures (matplotlib, Agg) and the self-contained subject HTML report.

* :mod:`~qsmprep.reports.figures` - mosaics, field maps, label contours, ROI bars, group plot;
* :mod:`~qsmprep.reports.subject` - :func:`~qsmprep.reports.subject.build_subject_report`.
"""
