"""Nipype interface of the subject report: the last node of each participant's graph.

:class:`SubjectReport` calls :func:`qsmprep.reports.subject.build_subject_report` once every data
sink of the subject has written (its ``in_files`` are their outputs), so every plugin, SLURMGraph
included, ends with the report; it then writes the methods text of everything in ``out_dir``
(:func:`qsmprep.reports.methods.write_citation_files`: ``logs/CITATION.md``, ``.html``, ``.bib``).
"""

from __future__ import annotations

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _SubjectReportInputSpec(BaseInterfaceInputSpec):
    out_dir = traits.Str(mandatory=True, desc="the derivatives dataset (out_dir)")
    subject = traits.Str(mandatory=True, desc="participant label (without sub-)")
    bids_dir = traits.Str(desc="the input dataset (for the magnitude under the mask figure)")
    in_files = InputMultiObject(traits.Any, desc="the subject's written derivatives (only to order the node)")
    md_only = traits.Bool(False, usedefault=True, desc="write only logs/CITATION.md (no .html, .bib)")


class _SubjectReportOutputSpec(TraitedSpec):
    out_report = File(desc="the subject's HTML report")


class SubjectReport(SimpleInterface):
    """Write ``sub-<l>.html`` and its figures from the derivatives on disk (runs every time)."""

    input_spec = _SubjectReportInputSpec
    output_spec = _SubjectReportOutputSpec
    always_run = True

    def _run_interface(self, runtime):
        from qsmprep.reports.subject import build_subject_report

        from qsmprep.reports.methods import write_citation_files

        bids_dir = self.inputs.bids_dir if isdefined(self.inputs.bids_dir) else None
        self._results["out_report"] = str(build_subject_report(self.inputs.out_dir, self.inputs.subject,
                                                               bids_dir=bids_dir))
        write_citation_files(self.inputs.out_dir, md_only=self.inputs.md_only)
        return runtime
