"""Evaluation math and reporting: per-group metrics, linear probe, Pareto fronts, reports and plots.

Numpy in, dicts out. See each module's docstring; the exact metric definitions are those of
``docs/metrics.md``. :mod:`agglom.eval.metrics` builds the per-group results from
:mod:`agglom.metrics.calibration` (ECE), :mod:`agglom.metrics.thresholds` (decision thresholds) and
:mod:`agglom.metrics.group_stats` (base statistics and the bootstrap), and re-exports their public names; the
linear probe is :mod:`agglom.metrics.probe` (the teacher audit fits it too), re-exported here.
Plots live in :mod:`agglom.eval.report.plots` (imported lazily: it pulls in matplotlib).
"""

from agglom.eval.md_format import summary_table
from agglom.eval.metrics import (
    CONVENTIONS,
    ECE_BINNINGS,
    OPTIMISTIC_THRESHOLD,
    THRESHOLD_FIXED,
    UNKNOWN,
    binary_group_metrics,
    choose_threshold,
    ece,
    es_auc,
    evaluate_attributes,
    group_mean_summary,
    headline,
    multilabel_group_metrics,
)
from agglom.eval.predictions import prediction_rows, read_predictions_csv, write_predictions_csv
from agglom.eval.report.schema import SCHEMA, new_report, validate_report
from agglom.eval.report.write import write_report
from agglom.eval.section import ReportError
from agglom.metrics.pareto import DEFAULT_REFERENCE, front_summary, hypervolume_2d, minimax_pareto_select, pareto_mask
from agglom.metrics.probe import ProbeResult, fit_linear_probe, label_efficiency, subsample_labels

__all__ = [
    "CONVENTIONS",
    "ECE_BINNINGS",
    "OPTIMISTIC_THRESHOLD",
    "THRESHOLD_FIXED",
    "UNKNOWN",
    "binary_group_metrics",
    "choose_threshold",
    "ece",
    "es_auc",
    "evaluate_attributes",
    "group_mean_summary",
    "headline",
    "multilabel_group_metrics",
    "DEFAULT_REFERENCE",
    "front_summary",
    "hypervolume_2d",
    "minimax_pareto_select",
    "pareto_mask",
    "ProbeResult",
    "fit_linear_probe",
    "label_efficiency",
    "subsample_labels",
    "SCHEMA",
    "ReportError",
    "new_report",
    "prediction_rows",
    "read_predictions_csv",
    "summary_table",
    "validate_report",
    "write_predictions_csv",
    "write_report",
]
