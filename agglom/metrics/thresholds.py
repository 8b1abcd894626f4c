"""Decision thresholds: choosing one on validation scores, and naming the one a headline reports.

Kept apart from the group metrics (:mod:`agglom.eval.metrics`) because thresholds are chosen elsewhere (the
linear probe picks one per label on validation, :mod:`agglom.metrics.probe`) and only *applied* by the metrics,
which hold them fixed across bootstrap replicates. Threshold names used in results:

- ``"fixed_0.5"`` (:data:`THRESHOLD_FIXED`): ``yhat = score >= 0.5``;
- ``"val_youden"`` / ``"val_f1"``: chosen on validation with :func:`choose_threshold`;
- ``"optimistic_best_f1_on_eval"`` (:data:`OPTIMISTIC_THRESHOLD`): best-F1 threshold of the evaluated split
  itself (optimistic; for FairMedFM comparability).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np
from sklearn.metrics import f1_score, precision_recall_curve, roc_curve

__all__ = [
    "THRESHOLD_FIXED",
    "OPTIMISTIC_THRESHOLD",
    "youden_threshold",
    "best_f1_threshold",
    "choose_threshold",
    "f1_at",
    "primary_threshold",
]

THRESHOLD_FIXED = "fixed_0.5"
OPTIMISTIC_THRESHOLD = "optimistic_best_f1_on_eval"


def youden_threshold(y_val: Any, score_val: Any) -> float:
    """Threshold maximising Youden's J = TPR - FPR on validation scores (ties: the larger threshold)."""
    y = np.asarray(y_val).astype(int)
    s = np.asarray(score_val, dtype=float)
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, s)
    ok = np.isfinite(thr)
    j = (tpr - fpr)[ok]
    return float(thr[ok][int(np.argmax(j))])


def best_f1_threshold(y: Any, score: Any) -> float:
    """Threshold maximising F1 of ``score >= t`` (ties: the larger threshold)."""
    y = np.asarray(y).astype(int)
    s = np.asarray(score, dtype=float)
    if y.sum() == 0:
        return 0.5
    prec, rec, thr = precision_recall_curve(y, s)
    prec, rec = prec[:-1], rec[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    best = np.flatnonzero(f1 == f1.max())
    return float(thr[best[-1]])


def choose_threshold(y_val: Any, score_val: Any, method: str = "youden") -> float:
    """Choose a decision threshold on validation: ``method="youden"`` (max TPR - FPR) or ``"f1"`` (best F1)."""
    if method == "youden":
        return youden_threshold(y_val, score_val)
    if method == "f1":
        return best_f1_threshold(y_val, score_val)
    raise ValueError(f"unknown threshold method {method!r} (youden | f1)")


def f1_at(y: Any, score: Any, t: float) -> float:
    """F1 of ``score >= t`` (helper for reports/tests)."""
    return float(f1_score(np.asarray(y).astype(int), (np.asarray(score) >= t).astype(int), zero_division=0))


def primary_threshold(result: Mapping[str, Any]) -> Optional[str]:
    """The threshold a headline uses: the first validation-chosen one (``val_*``), else ``fixed_0.5``, else any."""
    names = list(result.get("thresholds", {}))
    for n in names:
        if n.startswith("val_"):
            return n
    if THRESHOLD_FIXED in names:
        return THRESHOLD_FIXED
    return names[0] if names else None
