"""The HTML report of a split (:func:`report`): one self-contained file with the summary table,
the equivalence check and, per split unit, its plots, reference images and feature
visualisation. ``neuronsplit report`` and ``neuronsplit demo`` write it (docs/report.md).

The package is called ``reporting`` so that ``neuronsplit.report`` stays the function.
"""

from .build import ReportPart, check_out, report, report_part, write_report

__all__ = ["report", "report_part", "write_report", "check_out", "ReportPart"]
