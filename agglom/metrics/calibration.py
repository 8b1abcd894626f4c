"""Expected calibration error (ECE) of positive-class probabilities under named binnings.

Kept apart from the group metrics (:mod:`agglom.eval.metrics`) because the binning rules are used on their own
too: the reliability plots (:mod:`agglom.eval.report.plots`) bin with :func:`ece_bins` so that they match the reported
numbers. Definitions follow ``docs/metrics.md``:

- ``"range10"`` (FairMedFM/MEDFAIR) = 10 equal-width bins spanning the observed score range
  ``[min(score), max(score)]`` of the samples evaluated (a group's own range for a group ECE), last bin closed;
- ``"unit15"`` (torchmetrics ``BinaryCalibrationError`` default) = 15 equal-width bins over [0, 1] with
  torchmetrics' edge rule (``bucketize(right=True)``, so a score of exactly 1.0 sits in its own extra bin).

Both: ECE = Σ_b (n_b / n) |mean(y in b) - mean(score in b)| (L1 reliability of the positive-class probability).
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

__all__ = ["ECE_BINNINGS", "ece", "ece_bins"]

#: named ECE binnings: number of bins and the range they span
ECE_BINNINGS: Dict[str, Dict[str, Any]] = {
    "range10": {"n_bins": 10, "range": "observed", "source": "FairMedFM/MEDFAIR"},
    "unit15": {"n_bins": 15, "range": "unit", "source": "torchmetrics BinaryCalibrationError"},
}


def ece_bins(score: np.ndarray, binning: str = "range10") -> tuple[np.ndarray, np.ndarray]:
    """Bin index per sample and the bin edges for a named binning (see module docstring)."""
    if binning not in ECE_BINNINGS:
        raise ValueError(f"unknown ECE binning {binning!r}; choose from {sorted(ECE_BINNINGS)}")
    s = np.asarray(score, dtype=float)
    spec = ECE_BINNINGS[binning]
    n_bins = spec["n_bins"]
    if spec["range"] == "unit":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        idx = np.searchsorted(edges, s, side="right") - 1  # torch.bucketize(right=True) - 1
        return idx, edges
    lo, hi = (float(s.min()), float(s.max())) if s.size else (0.0, 1.0)
    edges = np.linspace(lo, hi, n_bins + 1)
    if hi <= lo:
        return np.zeros(s.shape, dtype=int), edges
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, n_bins - 1)  # last bin closed
    return idx, edges


def ece(y_true: Any, score: Any, binning: str = "range10") -> float:
    """Expected calibration error of positive-class probabilities under a named binning (NaN when empty)."""
    y = np.asarray(y_true, dtype=float)
    s = np.asarray(score, dtype=float)
    if y.size == 0:
        return float("nan")
    idx, _ = ece_bins(s, binning)
    idx = idx - idx.min()
    cnt = np.bincount(idx)
    sy = np.bincount(idx, weights=y)
    ss = np.bincount(idx, weights=s)
    nz = cnt > 0
    return float(np.sum(np.abs(sy[nz] - ss[nz])) / y.size)
