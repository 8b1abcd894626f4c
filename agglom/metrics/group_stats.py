"""The statistics engine behind :func:`agglom.eval.metrics.binary_group_metrics`: per-group base statistics,
the summaries derived from them, and the stratified bootstrap with BCa intervals.

Kept apart from :mod:`agglom.eval.metrics` (which turns these numbers into the documented result dicts) because
it is pure computation on flat ``{key tuple: float}`` maps, and it holds the two implementations that must agree:

- :func:`_fairlearn_base_stats`: point estimates through fairlearn's :class:`~fairlearn.metrics.MetricFrame`
  (AUC via ``sklearn.metrics.roc_auc_score``; TPR/FPR/FNR/TNR/selection rate via fairlearn's base metrics; ECE via
  :func:`agglom.metrics.calibration.ece`);
- :func:`_numpy_base_stats`: the same statistics, vectorised numpy, for bootstrap replicates (fairlearn's
  per-replicate MetricFrame costs ~70 ms; this ~1 ms). The tests check that the two agree exactly.

:func:`_derive` turns base statistics into worst-group values, gaps (``max_g - min_g`` over defined groups),
ES-AUC, DPD and EOD; :func:`bootstrap_cis` resamples with replacement inside each (group x label) stratum, so
group sizes and class presence are those of the data and a group AUC defined on the data stays defined in every
replicate. Thresholds are held fixed across replicates. Undefined values are NaN here.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Mapping, Sequence

import numpy as np
from fairlearn.metrics import (
    MetricFrame,
    false_negative_rate,
    false_positive_rate,
    selection_rate,
    true_negative_rate,
    true_positive_rate,
)
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from agglom.metrics.calibration import ece

__all__ = ["RATES", "THRESHOLD_METRICS", "es_auc", "rank_auc", "bootstrap_cis"]

RATES = ("tpr", "fpr", "fnr", "tnr", "selection_rate")
THRESHOLD_METRICS = (
    "dpd",
    "eod_worst_case",
    "eod_mean",
    "eod_fairmedfm_score",
    "eo_tpr_gap",
    "fnr_gap",
    "fpr_gap",
)


def _spread(values: Iterable[float]) -> float:
    """max - min over the finite values; NaN with fewer than two defined values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.max() - v.min()) if v.size >= 2 else float("nan")


def es_auc(auc: float, group_aucs: Iterable[float]) -> float:
    """Equity-scaled AUC: AUC / (1 + Σ_g |AUC - AUC_g|) over the defined group AUCs (FairVision/FairCLIP)."""
    vals = [a for a in group_aucs if a is not None and np.isfinite(a)]
    if auc is None or not np.isfinite(auc) or not vals:
        return float("nan")
    return float(auc / (1.0 + sum(abs(auc - a) for a in vals)))


# --------------------------------------------------------------------------- base statistics
def _nan_guard(fn, need: int):
    """Wrap a fairlearn rate so that an empty denominator gives NaN instead of 0."""

    def wrapped(y_true, y_pred):
        y_true = np.asarray(y_true)
        if need == 1 and not np.any(y_true == 1):
            return float("nan")
        if need == 0 and not np.any(y_true == 0):
            return float("nan")
        if len(y_true) == 0:
            return float("nan")
        return float(fn(y_true, y_pred))

    wrapped.__name__ = getattr(fn, "__name__", "rate")
    return wrapped


def _safe_auc(y_true, score):
    y_true = np.asarray(y_true)
    if len(np.unique(y_true)) < 2:
        return float("nan")
    return float(roc_auc_score(y_true, score))


#: fairlearn's base rates, in the order of :data:`RATES` (a rate with an empty denominator is NaN, not 0)
_RATE_FNS = (_nan_guard(true_positive_rate, 1), _nan_guard(false_positive_rate, 0),
             _nan_guard(false_negative_rate, 1), _nan_guard(true_negative_rate, 0), _nan_guard(selection_rate, -1))


def _fairlearn_base_stats(y, s, g, thresholds: Mapping[str, float], binnings: Sequence[str]) -> Dict[tuple, float]:
    """Base statistics via one fairlearn MetricFrame (point estimates).

    Its one metric returns every statistic of a group as a vector (AUC, ECE per binning, fairlearn's five rates
    per threshold): MetricFrame converts its columns for each metric it calls, and at a few thousand samples
    that conversion, not the statistics, was most of an evaluation's time with one metric per statistic."""
    tnames = list(thresholds)

    def base(y_true: np.ndarray, score: np.ndarray) -> np.ndarray:
        vals = [_safe_auc(y_true, score)] + [ece(y_true, score, b) for b in binnings]
        for t in tnames:
            yhat = (np.asarray(score) >= thresholds[t]).astype(int)
            vals += [fn(y_true, yhat) for fn in _RATE_FNS]
        return np.asarray(vals, dtype=float)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = MetricFrame(metrics={"base": base}, y_true=y, y_pred=s, sensitive_features=g)
    nb = len(binnings)
    overall = mf.overall["base"]
    stats: Dict[tuple, float] = {("auc",): float(overall[0])}
    stats.update({("ece_overall", b): float(overall[1 + i]) for i, b in enumerate(binnings)})
    for grp, row in mf.by_group.iterrows():
        v = row["base"]
        stats[("auc_g", str(grp))] = float(v[0])
        stats.update({("ece", b, str(grp)): float(v[1 + i]) for i, b in enumerate(binnings)})
        for k, tname in enumerate(tnames):
            at = 1 + nb + k * len(RATES)
            stats.update({("rate", tname, r, str(grp)): float(v[at + j]) for j, r in enumerate(RATES)})
    return stats


def rank_auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC-AUC by the rank-sum (Mann-Whitney) formula, ties averaged; equals ``roc_auc_score`` (NaN when one
    class is absent)."""
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _numpy_base_stats(y, s, g, names, thresholds: Mapping[str, float], binnings: Sequence[str]) -> Dict[tuple, float]:
    """The same base statistics as :func:`_fairlearn_base_stats`, vectorised numpy (bootstrap replicates)."""
    stats: Dict[tuple, float] = {("auc",): rank_auc(y, s)}
    for b in binnings:
        stats[("ece_overall", b)] = ece(y, s, b)
    masks = {grp: g == grp for grp in names}
    for grp, m in masks.items():
        yg, sg = y[m], s[m]
        stats[("auc_g", grp)] = rank_auc(yg, sg)
        for b in binnings:
            stats[("ece", b, grp)] = ece(yg, sg, b)
        n = yg.size
        p = int(yg.sum())
        q = n - p
        for tname, t in thresholds.items():
            yh = sg >= t
            tp = int(np.sum(yh & (yg == 1)))
            fp = int(np.sum(yh & (yg == 0)))
            nan = float("nan")
            stats[("rate", tname, "tpr", grp)] = tp / p if p else nan
            stats[("rate", tname, "fnr", grp)] = (p - tp) / p if p else nan
            stats[("rate", tname, "fpr", grp)] = fp / q if q else nan
            stats[("rate", tname, "tnr", grp)] = (q - fp) / q if q else nan
            stats[("rate", tname, "selection_rate", grp)] = (tp + fp) / n if n else nan
    return stats


# --------------------------------------------------------------------------- derived summaries
def _derive(stats: Dict[tuple, float], names: Sequence[str], included: Sequence[str], thresholds, binnings):
    """Summary statistics (worst, gaps, ES-AUC, DPD, EOD, ...) from base statistics; NaN where undefined."""
    out: Dict[tuple, float] = dict(stats)
    gauc = {grp: stats[("auc_g", grp)] for grp in included}
    defined = [v for v in gauc.values() if np.isfinite(v)]
    out[("worst_group_auc",)] = float(min(defined)) if defined else float("nan")
    out[("best_group_auc",)] = float(max(defined)) if defined else float("nan")
    out[("auc_gap",)] = _spread(gauc.values())
    out[("es_auc",)] = es_auc(stats[("auc",)], gauc.values())
    for b in binnings:
        ge = [stats[("ece", b, grp)] for grp in included]
        out[("ece_gap", b)] = _spread(ge)
        fin = [v for v in ge if np.isfinite(v)]
        out[("ece_worst", b)] = float(max(fin)) if fin else float("nan")
    for tname in thresholds:
        r = {k: [stats[("rate", tname, k, grp)] for grp in included] for k in RATES}
        d_tpr, d_fpr = _spread(r["tpr"]), _spread(r["fpr"])
        out[("thr", tname, "dpd")] = _spread(r["selection_rate"])
        out[("thr", tname, "eo_tpr_gap")] = d_tpr
        out[("thr", tname, "fpr_gap")] = d_fpr
        out[("thr", tname, "fnr_gap")] = _spread(r["fnr"])
        if np.isfinite(d_tpr) and np.isfinite(d_fpr):
            out[("thr", tname, "eod_worst_case")] = max(d_tpr, d_fpr)
            out[("thr", tname, "eod_mean")] = 0.5 * (d_tpr + d_fpr)
        else:
            out[("thr", tname, "eod_worst_case")] = float("nan")
            out[("thr", tname, "eod_mean")] = float("nan")
        out[("thr", tname, "eod_fairmedfm_score")] = 1.0 - out[("thr", tname, "eod_mean")]
    return out


# --------------------------------------------------------------------------- bootstrap
def bootstrap_cis(y: np.ndarray, s: np.ndarray, g: np.ndarray, names: Sequence[str], included: Sequence[str],
                  thresholds: Mapping[str, float], binnings: Sequence[str], keys: Sequence[tuple], *, n_boot: int,
                  ci: float, seed: int, point: Mapping[tuple, float] | None = None,
                  n_jackknife: int = 20, clusters: Any = None) -> Dict[tuple, tuple]:
    """Intervals ``{key: (lo, hi, widened)}`` of the derived statistics ``keys`` over ``n_boot`` stratified
    (group x label) replicates with thresholds held fixed, resampling patients when ``clusters`` gives a patient
    id per sample (:mod:`agglom.metrics.bootstrap`); ``{}`` when ``n_boot`` is 0.

    With ``point`` (the point estimates) the intervals are BCa with a grouped-jackknife acceleration
    (:func:`agglom.metrics.intervals.bca_interval`), widened to contain the point where even BCa cannot; without
    it, plain percentile intervals (``widened`` False)."""
    from agglom.metrics.bootstrap import Resampler, replicate, strata_by
    from agglom.metrics.intervals import bca_interval

    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    cis: Dict[tuple, tuple] = {}
    if not n_boot or n_boot <= 0:
        return cis
    keys = list(keys)

    def values(idx: np.ndarray) -> List[float]:
        rs = _derive(_numpy_base_stats(y[idx], s[idx], g[idx], names, thresholds, binnings),
                     names, included, thresholds, binnings)
        return [rs.get(k, np.nan) for k in keys]

    r = replicate(values, Resampler(strata_by(g, y), clusters), n_boot, seed,
                  n_jackknife if point is not None else 0)
    reps, jack = r["reps"].astype(float).reshape(n_boot, len(keys)), r["jack"]
    if point is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            qs = np.nanquantile(reps, [lo_q, hi_q], axis=0)
        return {k: (float(qs[0, j]), float(qs[1, j]), False) for j, k in enumerate(keys)}
    for j, k in enumerate(keys):
        cis[k] = bca_interval(float(point.get(k, np.nan)), reps[:, j], None if jack is None else jack[:, j], ci)
    return cis
