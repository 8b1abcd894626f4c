"""Per-group utility and fairness metrics for binary (and multi-label) classification scores, as result dicts.

Definitions follow ``docs/metrics.md``. This module assembles the documented, JSON-ready results
(:func:`binary_group_metrics`, :func:`multilabel_group_metrics`, :func:`evaluate_attributes`,
:func:`group_mean_summary`, :func:`headline`) and states their conventions; the pieces live in their own modules
and are re-exported here so that ``agglom.eval.metrics`` stays the one import for callers:

- :mod:`agglom.metrics.calibration`: ECE and its binnings (:data:`ECE_BINNINGS`, :func:`ece`, :func:`ece_bins`);
- :mod:`agglom.metrics.thresholds`: choosing decision thresholds (:func:`choose_threshold`, Youden, best F1) and the
  threshold a headline reports (:func:`primary_threshold`);
- :mod:`agglom.metrics.group_stats`: per-group base statistics (fairlearn point estimates, a vectorised numpy copy
  for replicates), the derived gaps/worst-group values/ES-AUC, and the stratified bootstrap (BCa intervals).

Everything works on numpy arrays: ``y_true [N]`` in {0, 1}, ``score [N]`` probabilities of the positive class,
``groups [N]`` strings (any number of groups; the explicit ``"unknown"`` group is allowed). Gaps are
``max_g - min_g`` over the *defined* groups (``MetricFrame.difference`` semantics with undefined groups skipped
and listed). Intervals come from one stratified (group x label) bootstrap for every metric (BCa, see
:mod:`agglom.metrics.intervals`), with
thresholds held fixed across replicates (including the optimistic best-F1 one, chosen once on the evaluated split).

Conventions (also stored in every result under ``"conventions"``):

- every ``*_gap`` / ``dpd`` / ``eod_*`` is a *gap*: lower is better. ``eod_fairmedfm_score`` is a *score*
  (``1 - eod_mean``, higher is better), as FairMedFM reports it.
- ``eod_worst_case`` = fairlearn ``equalized_odds_difference(agg="worst_case")`` = max(ΔTPR, ΔFPR).
- ``eod_mean`` = fairlearn ``equalized_odds_difference(agg="mean")`` = mean(ΔTPR, ΔFPR) = mean(ΔTPR, ΔTNR)
  (ΔTNR = ΔFPR since TNR = 1 - FPR); FairMedFM's EOD score is ``1 - eod_mean``.
- ``eo_tpr_gap`` = equal opportunity difference = ΔTPR (fairlearn ``equal_opportunity_difference``).
- ECE binnings ``"range10"`` (FairMedFM/MEDFAIR) and ``"unit15"`` (torchmetrics): see :mod:`agglom.metrics.calibration`.
- Undefined values (a group AUC with one class present, a TPR with no positives in the group, a gap with fewer
  than two defined groups) are NaN internally and ``None`` in the returned dicts, never 0.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from agglom.metrics.bootstrap import Resampler, add_patient_counts, clusters_of, strata_by
from agglom.metrics.calibration import ECE_BINNINGS, ece, ece_bins
from agglom.metrics.group_means import group_mean_summary  # noqa: F401 - one of this module's results
from agglom.metrics.group_stats import (
    RATES,
    THRESHOLD_METRICS,
    _derive,
    _fairlearn_base_stats,
    _numpy_base_stats,  # noqa: F401  (re-exported: the tests compare it with _fairlearn_base_stats)
    bootstrap_cis,
    es_auc,
)
from agglom.metrics.intervals import METHOD as INTERVAL_METHOD
from agglom.metrics.thresholds import (
    OPTIMISTIC_THRESHOLD,
    THRESHOLD_FIXED,
    best_f1_threshold,
    choose_threshold,
    f1_at,  # noqa: F401  (re-exported: reports and tests use metrics.f1_at)
    primary_threshold,
    youden_threshold,
)
from agglom.metrics.values import _as_groups, _f, _group_order, _m, nan_to_none  # noqa: F401 - re-exported

__all__ = [
    "ECE_BINNINGS",
    "UNKNOWN",
    "THRESHOLD_FIXED",
    "OPTIMISTIC_THRESHOLD",
    "CONVENTIONS",
    "ece",
    "ece_bins",
    "es_auc",
    "choose_threshold",
    "best_f1_threshold",
    "youden_threshold",
    "binary_group_metrics",
    "multilabel_group_metrics",
    "evaluate_attributes",
    "group_mean_summary",
    "nan_to_none",
]

UNKNOWN = "unknown"

CONVENTIONS = {
    "gaps": "max_g - min_g over groups where the metric is defined (lower is better); undefined groups are listed",
    "auc": "ROC-AUC (sklearn roc_auc_score / torchmetrics BinaryAUROC)",
    "worst_group_auc": "min_g AUC_g over defined, non-excluded groups",
    "es_auc": "AUC / (1 + sum_g |AUC - AUC_g|) over defined, non-excluded groups (FairVision/FairCLIP)",
    "ece_range10": "10 equal-width bins over the observed score range of the evaluated samples (FairMedFM/MEDFAIR)",
    "ece_unit15": "15 equal-width bins over [0, 1], torchmetrics edge rule",
    "dpd": "max_g P(yhat=1|g) - min_g P(yhat=1|g) (fairlearn demographic_parity_difference)",
    "eod_worst_case": "max(dTPR, dFPR) (fairlearn equalized_odds_difference agg='worst_case')",
    "eod_mean": "mean(dTPR, dFPR) = mean(dTPR, dTNR) (fairlearn agg='mean'); FairMedFM form",
    "eod_fairmedfm_score": "1 - eod_mean (a score: higher is better), as FairMedFM reports 'eod'",
    "eo_tpr_gap": "equal opportunity difference dTPR (fairlearn equal_opportunity_difference)",
    "fnr_gap": "max_g FNR_g - min_g FNR_g (underdiagnosis gap)",
    "fpr_gap": "max_g FPR_g - min_g FPR_g",
    "yhat": "yhat = score >= threshold",
    "bootstrap": (
        "stratified (group x label) bootstrap, thresholds fixed across replicates; BCa intervals (bias from the "
        "replicates, acceleration from a grouped jackknife), widened to contain the point estimate where a "
        "statistic at a boundary (a gap of 0) leaves almost every replicate on one side (flagged ci_widened)"
    ),
    OPTIMISTIC_THRESHOLD: "best-F1 threshold chosen on the evaluated split itself (optimistic; FairMedFM comparability)",
}


def _binary_inputs(y_true: Any, score: Any, groups: Any, ece_binnings: Sequence[str]) -> tuple:
    """Labels, scores and group names as flat arrays, checked (binary labels, equal lengths, known binnings)."""
    y = np.asarray(y_true).astype(int).reshape(-1)
    s = np.asarray(score, dtype=float).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and score {s.shape} differ")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must be binary 0/1")
    for b in ece_binnings:
        if b not in ECE_BINNINGS:
            raise ValueError(f"unknown ECE binning {b!r}")
    return y, s, _as_groups(groups, y.size)


def _binary_result(point: Dict[tuple, float], cis: Dict[tuple, Any], y: np.ndarray, g: np.ndarray,
                   names: List[str], included: List[str], thr: Dict[str, float], binnings: List[str],
                   boot: Dict[str, Any]) -> Dict[str, Any]:
    """The documented result dict of :func:`binary_group_metrics` from point estimates and intervals."""

    def M(key: tuple, **extra):
        return _m(point[key], cis.get(key), **extra)

    def argbest(vals: Dict[str, float], fn) -> Optional[str]:
        fin = {k: v for k, v in vals.items() if np.isfinite(v)}
        return fn(fin, key=fin.get) if fin else None

    gauc = {n: point[("auc_g", n)] for n in included}
    res: Dict[str, Any] = {
        "n": int(y.size),
        "n_pos": int(y.sum()),
        "group_names": names,
        "excluded_from_gaps": [n for n in names if n not in included],
        "undefined_auc_groups": [n for n in names if not np.isfinite(point[("auc_g", n)])],
        "auc": M(("auc",)),
        "worst_group_auc": M(("worst_group_auc",), group=argbest(gauc, min)),
        "best_group_auc": M(("best_group_auc",), group=argbest(gauc, max)),
        "auc_gap": M(("auc_gap",)),
        "es_auc": M(("es_auc",)),
        "ece": {},
        "groups": {},
        "thresholds": {},
        "bootstrap": boot,
        "conventions": CONVENTIONS,
    }
    for b in binnings:
        ge = {n: point[("ece", b, n)] for n in included}
        res["ece"][b] = {
            "overall": M(("ece_overall", b)),
            "gap": M(("ece_gap", b)),
            "worst_group": M(("ece_worst", b), group=argbest(ge, max)),
        }
    for n in names:
        m = g == n
        res["groups"][n] = {
            "n": int(m.sum()),
            "n_pos": int(y[m].sum()),
            "auc": M(("auc_g", n)),
            "ece": {b: M(("ece", b, n)) for b in binnings},
        }
    for tname, t in thr.items():
        entry: Dict[str, Any] = {"threshold": float(t), "optimistic": tname == OPTIMISTIC_THRESHOLD}
        for k in THRESHOLD_METRICS:
            entry[k] = M(("thr", tname, k))
        entry["by_group"] = {n: {r: _f(point[("rate", tname, r, n)]) for r in RATES} for n in names}
        res["thresholds"][tname] = entry
    return res


# --------------------------------------------------------------------------- main entry points
def binary_group_metrics(
    y_true: Any,
    score: Any,
    groups: Any,
    *,
    thresholds: Optional[Mapping[str, float]] = None,
    optimistic_f1: bool = False,
    ece_binnings: Sequence[str] = ("range10", "unit15"),
    n_boot: int = 200,
    ci: float = 0.95,
    seed: int = 0,
    exclude_unknown: bool = False,
    unknown: str = UNKNOWN,
    patients: Any = None,
) -> Dict[str, Any]:
    """All per-group metrics for one binary label and one attribute.

    Args:
        y_true: ``[N]`` labels in {0, 1}.
        score: ``[N]`` positive-class probabilities.
        groups: ``[N]`` group names (strings; ``unknown`` is the explicit unknown group).
        thresholds: ``{name: threshold}``; default ``{"fixed_0.5": 0.5}``. Conventional names: ``"fixed_0.5"``,
            ``"val_youden"`` / ``"val_f1"`` (from :func:`choose_threshold` on validation).
        optimistic_f1: also add ``"optimistic_best_f1_on_eval"`` (best-F1 threshold of this split; FairMedFM).
        ece_binnings: named binnings from :data:`ECE_BINNINGS`.
        n_boot: bootstrap replicates (0 = no intervals); ``ci``: interval mass; ``seed``: bootstrap seed.
        exclude_unknown: leave the ``unknown`` group out of worst-group values, gaps and ES-AUC (it is still
            reported per group).
        patients: ``[N]`` patient ids; the bootstrap then resamples patients, and each group reports its patients.

    Returns a JSON-ready dict (undefined -> ``None``); every metric ``M`` is ``{"value", "ci"}``::

        {"n", "n_pos", "group_names": [...], "excluded_from_gaps": [...], "undefined_auc_groups": [...],
         "auc": M, "worst_group_auc": M + {"group"}, "best_group_auc": M + {"group"}, "auc_gap": M, "es_auc": M,
         "ece": {binning: {"overall": M, "gap": M, "worst_group": M + {"group"}}},
         "groups": {g: {"n", "n_pos", "auc": M, "ece": {binning: M}}},
         "thresholds": {name: {"threshold", "optimistic": bool, "dpd": M, "eod_worst_case": M, "eod_mean": M,
                               "eod_fairmedfm_score": M, "eo_tpr_gap": M, "fnr_gap": M, "fpr_gap": M,
                               "by_group": {g: {"tpr", "fpr", "fnr", "tnr", "selection_rate"}}}},
         "bootstrap": {"n_boot", "ci", "seed", "method"}, "conventions": {...}}
    """
    y, s, g = _binary_inputs(y_true, score, groups, ece_binnings)
    thr: Dict[str, float] = dict(thresholds) if thresholds is not None else {THRESHOLD_FIXED: 0.5}
    if optimistic_f1:
        thr[OPTIMISTIC_THRESHOLD] = best_f1_threshold(y, s)
    names = _group_order(g, unknown)
    included = [n for n in names if not (exclude_unknown and n == unknown)]
    binnings = list(ece_binnings)

    point = _derive(_fairlearn_base_stats(y, s, g, thr, binnings), names, included, thr, binnings)

    clusters = clusters_of(patients, y.size)
    cis = bootstrap_cis(y, s, g, names, included, thr, binnings, list(point.keys()), n_boot=n_boot, ci=ci, seed=seed,
                        point=point, clusters=clusters)
    unit = Resampler(strata_by(g, y), clusters).describe("group x label")
    boot = {"n_boot": int(n_boot), "ci": ci, "seed": seed,
            "method": f"{unit}, {INTERVAL_METHOD}" if n_boot else "none"}
    out = _binary_result(point, cis, y, g, names, included, thr, binnings, boot)
    return out if clusters is None else add_patient_counts(out, g, clusters)


#: the summary metrics that a multi-label macro mean averages (path into a binary result)
MACRO_KEYS = ("auc", "worst_group_auc", "auc_gap", "es_auc")


def multilabel_group_metrics(
    y_true: Any,
    score: Any,
    groups: Any,
    *,
    label_names: Optional[Sequence[str]] = None,
    thresholds: Optional[Mapping[str, Any]] = None,
    **kwargs: Any,
) -> Dict[str, Any]:
    """:func:`binary_group_metrics` per label of ``y_true [N, L]`` / ``score [N, L]``, plus a macro mean.

    ``thresholds``: ``{name: float | sequence of L floats}`` (a per-label threshold vector, e.g. chosen on
    validation per label). Returns::

        {"labels": {label: <binary result>}, "label_names": [...],
         "macro": {"auc", "worst_group_auc", "auc_gap", "es_auc", "ece_gap:<binning>",
                   "<threshold>:<metric>" ...: float | None}}   # unweighted mean over labels with a defined value
    """
    Y = np.asarray(y_true)
    S = np.asarray(score, dtype=float)
    if Y.ndim == 1:
        Y, S = Y[:, None], S[:, None]
    L = Y.shape[1]
    names = list(label_names) if label_names is not None else [f"label{i}" for i in range(L)]
    if len(names) != L:
        raise ValueError(f"{len(names)} label names for {L} labels")
    per: Dict[str, Any] = {}
    for i, name in enumerate(names):
        thr_i = None
        if thresholds is not None:
            thr_i = {k: float(np.broadcast_to(np.asarray(v, dtype=float), (L,))[i]) for k, v in thresholds.items()}
        per[name] = binary_group_metrics(Y[:, i], S[:, i], groups, thresholds=thr_i, **kwargs)
    return {"label_names": names, "labels": per, "macro": macro_mean(per)}


def macro_mean(per_label: Mapping[str, Mapping[str, Any]]) -> Dict[str, Optional[float]]:
    """Unweighted mean over labels of the main summary values (labels where a value is undefined are skipped)."""
    acc: Dict[str, List[float]] = {}

    def add(k: str, v: Optional[float]) -> None:
        acc.setdefault(k, [])
        if v is not None and np.isfinite(v):
            acc[k].append(float(v))

    for r in per_label.values():
        for k in MACRO_KEYS:
            add(k, r[k]["value"])
        for b, e in r["ece"].items():
            add(f"ece_gap:{b}", e["gap"]["value"])
        for t, e in r["thresholds"].items():
            for k in THRESHOLD_METRICS:
                add(f"{t}:{k}", e[k]["value"])
    return {k: (float(np.mean(v)) if v else None) for k, v in acc.items()}


def evaluate_attributes(
    y_true: Any, score: Any, attributes: Mapping[str, Any], **kwargs: Any
) -> Dict[str, Dict[str, Any]]:
    """Metrics for each attribute (or proxy grouping) ``{name: groups [N]}``; binary or multi-label by shape.

    ``kwargs`` go to :func:`binary_group_metrics` / :func:`multilabel_group_metrics`. Returns ``{name: result}``.
    """
    y = np.asarray(y_true)
    fn = multilabel_group_metrics if (y.ndim == 2 and y.shape[1] > 1) else binary_group_metrics
    if fn is binary_group_metrics:
        kwargs.pop("label_names", None)
        y = y.reshape(-1)
        score = np.asarray(score).reshape(-1)
    return {name: fn(y, score, grp, **kwargs) for name, grp in attributes.items()}


def headline(result: Mapping[str, Any], threshold: Optional[str] = None, binning: str = "range10") -> Dict[str, Any]:
    """Flat scalars of a binary or multi-label result (multi-label: the macro mean)::

    {"auc", "worst_group_auc", "auc_gap", "es_auc", "ece_gap", "eod_worst_case", "eod_mean", "dpd",
     "eo_tpr_gap", "fnr_gap", "fpr_gap", "threshold": name}   # float | None
    """
    if "labels" in result and "macro" in result:
        mac = result["macro"]
        first = next(iter(result["labels"].values()))
        t = threshold or primary_threshold(first)
        out = {k: mac.get(k) for k in MACRO_KEYS}
        out["ece_gap"] = mac.get(f"ece_gap:{binning}")
        for k in THRESHOLD_METRICS:
            out[k] = mac.get(f"{t}:{k}")
        out["threshold"] = t
        return out
    t = threshold or primary_threshold(result)
    out = {k: result[k]["value"] for k in MACRO_KEYS}
    out["ece_gap"] = result["ece"][binning]["gap"]["value"] if binning in result["ece"] else None
    tr = result["thresholds"].get(t, {}) if t else {}
    for k in THRESHOLD_METRICS:
        out[k] = tr[k]["value"] if k in tr else None
    out["threshold"] = t
    return out


# the group means of a per-sample quantity live beside, re-exported here (imported last: that module reads this one)
