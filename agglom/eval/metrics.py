"""Per-group utility and fairness metrics for binary (and multi-label) classification scores.

Definitions follow ``shared/docs/FAIRNESS.md``. Everything works on numpy arrays:

- ``y_true [N]`` in {0, 1}, ``score [N]`` probabilities of the positive class, ``groups [N]`` strings (any number
  of groups; the explicit ``"unknown"`` group is allowed).
- Point estimates go through fairlearn's :class:`~fairlearn.metrics.MetricFrame` (AUC via
  ``sklearn.metrics.roc_auc_score``; TPR/FPR/FNR/TNR/selection rate via fairlearn's base metrics; ECE via the
  custom :func:`ece`). Gaps are ``max_g - min_g`` over the *defined* groups (``MetricFrame.difference`` semantics
  with undefined groups skipped and listed).
- Intervals come from one **stratified percentile bootstrap** for every metric: samples are resampled with
  replacement inside each (group x label) stratum, so group sizes and class presence are those of the data and
  a group AUC defined on the data stays defined in every replicate. Replicates use a vectorised numpy
  re-implementation of the same statistics (fairlearn's per-replicate MetricFrame costs ~70 ms; this ~1 ms);
  the tests check that the two agree exactly on the data itself. Thresholds are held fixed across replicates
  (including the optimistic best-F1 one, which is chosen once on the evaluated split).

Conventions (also stored in every result under ``"conventions"``):

- every ``*_gap`` / ``dpd`` / ``eod_*`` is a *gap*: lower is better. ``eod_fairmedfm_score`` is a *score*
  (``1 - eod_mean``, higher is better), as FairMedFM reports it.
- ``eod_worst_case`` = fairlearn ``equalized_odds_difference(agg="worst_case")`` = max(ΔTPR, ΔFPR).
- ``eod_mean`` = fairlearn ``equalized_odds_difference(agg="mean")`` = mean(ΔTPR, ΔFPR) = mean(ΔTPR, ΔTNR)
  (ΔTNR = ΔFPR since TNR = 1 - FPR); FairMedFM's EOD score is ``1 - eod_mean``.
- ``eo_tpr_gap`` = equal opportunity difference = ΔTPR (fairlearn ``equal_opportunity_difference``).
- ECE binnings: ``"range10"`` (FairMedFM/MEDFAIR) = 10 equal-width bins spanning the observed score range
  ``[min(score), max(score)]`` of the samples evaluated (a group's own range for a group ECE), last bin closed;
  ``"unit15"`` (torchmetrics ``BinaryCalibrationError`` default) = 15 equal-width bins over [0, 1] with
  torchmetrics' edge rule (``bucketize(right=True)``, so a score of exactly 1.0 sits in its own extra bin).
  Both: ECE = Σ_b (n_b / n) |mean(y in b) - mean(score in b)| (L1 reliability of the positive-class probability).
- Undefined values (a group AUC with one class present, a TPR with no positives in the group, a gap with fewer
  than two defined groups) are NaN internally and ``None`` in the returned dicts, never 0.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

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
from sklearn.metrics import f1_score, precision_recall_curve, roc_auc_score, roc_curve

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
THRESHOLD_FIXED = "fixed_0.5"
OPTIMISTIC_THRESHOLD = "optimistic_best_f1_on_eval"

#: named ECE binnings: number of bins and the range they span
ECE_BINNINGS: Dict[str, Dict[str, Any]] = {
    "range10": {"n_bins": 10, "range": "observed", "source": "FairMedFM/MEDFAIR"},
    "unit15": {"n_bins": 15, "range": "unit", "source": "torchmetrics BinaryCalibrationError"},
}

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
        "stratified (group x label) percentile bootstrap, thresholds fixed across replicates; percentile intervals "
        "of max-min gaps and of ECE are biased upward, so their point estimate can sit at or below the lower end"
    ),
    OPTIMISTIC_THRESHOLD: "best-F1 threshold chosen on the evaluated split itself (optimistic; FairMedFM comparability)",
}


# --------------------------------------------------------------------------- small helpers
def nan_to_none(x: Any) -> Any:
    """Recursively turn NaN/inf floats (and numpy scalars) into JSON-friendly values (NaN -> None)."""
    if isinstance(x, dict):
        return {str(k): nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, np.ndarray):
        return [nan_to_none(v) for v in x.tolist()]
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if not math.isfinite(x) else x
    return x


def _f(x: Any) -> Optional[float]:
    x = float(x)
    return x if math.isfinite(x) else None


def _m(value: float, ci: Optional[Sequence[float]] = None, **extra: Any) -> Dict[str, Any]:
    """One reported metric: ``{"value": float|None, "ci": [lo, hi]|None, **extra}``."""
    out: Dict[str, Any] = {"value": _f(value)}
    if ci is None or ci[0] is None or not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        out["ci"] = None
    else:
        out["ci"] = [float(ci[0]), float(ci[1])]
    out.update(extra)
    return out


def _spread(values: Iterable[float]) -> float:
    """max - min over the finite values; NaN with fewer than two defined values."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return float(v.max() - v.min()) if v.size >= 2 else float("nan")


def _as_groups(groups: Any, n: int) -> np.ndarray:
    g = np.asarray(groups).astype(str)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    return g


def _group_order(g: np.ndarray, unknown: str) -> List[str]:
    names = sorted(set(g.tolist()) - {unknown})
    return names + ([unknown] if unknown in set(g.tolist()) else [])


# --------------------------------------------------------------------------- ECE
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


def es_auc(auc: float, group_aucs: Iterable[float]) -> float:
    """Equity-scaled AUC: AUC / (1 + Σ_g |AUC - AUC_g|) over the defined group AUCs (FairVision/FairCLIP)."""
    vals = [a for a in group_aucs if a is not None and np.isfinite(a)]
    if auc is None or not np.isfinite(auc) or not vals:
        return float("nan")
    return float(auc / (1.0 + sum(abs(auc - a) for a in vals)))


# --------------------------------------------------------------------------- thresholds
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


def _fairlearn_base_stats(y, s, g, thresholds: Mapping[str, float], binnings: Sequence[str]) -> Dict[tuple, float]:
    """Base statistics via fairlearn MetricFrame (point estimates)."""
    stats: Dict[tuple, float] = {}
    metrics = {"auc": _safe_auc}
    for b in binnings:
        metrics[f"ece:{b}"] = lambda yt, yp, _b=b: ece(yt, yp, _b)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mf = MetricFrame(metrics=metrics, y_true=y, y_pred=s, sensitive_features=g)
        stats[("auc",)] = float(mf.overall["auc"])
        for b in binnings:
            stats[("ece_overall", b)] = float(mf.overall[f"ece:{b}"])
        for grp, row in mf.by_group.iterrows():
            stats[("auc_g", str(grp))] = float(row["auc"])
            for b in binnings:
                stats[("ece", b, str(grp))] = float(row[f"ece:{b}"])
        rate_fns = {
            "tpr": _nan_guard(true_positive_rate, 1),
            "fpr": _nan_guard(false_positive_rate, 0),
            "fnr": _nan_guard(false_negative_rate, 1),
            "tnr": _nan_guard(true_negative_rate, 0),
            "selection_rate": _nan_guard(selection_rate, -1),
        }
        for tname, t in thresholds.items():
            yhat = (s >= t).astype(int)
            mf = MetricFrame(metrics=rate_fns, y_true=y, y_pred=yhat, sensitive_features=g)
            for grp, row in mf.by_group.iterrows():
                for r in RATES:
                    stats[("rate", tname, r, str(grp))] = float(row[r])
    return stats


def _auc_fast(y: np.ndarray, s: np.ndarray) -> float:
    n1 = int(y.sum())
    n0 = y.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    r = rankdata(s)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def _numpy_base_stats(y, s, g, names, thresholds: Mapping[str, float], binnings: Sequence[str]) -> Dict[tuple, float]:
    """The same base statistics as :func:`_fairlearn_base_stats`, vectorised numpy (bootstrap replicates)."""
    stats: Dict[tuple, float] = {("auc",): _auc_fast(y, s)}
    for b in binnings:
        stats[("ece_overall", b)] = ece(y, s, b)
    masks = {grp: g == grp for grp in names}
    for grp, m in masks.items():
        yg, sg = y[m], s[m]
        stats[("auc_g", grp)] = _auc_fast(yg, sg)
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


def _stratified_indices(g: np.ndarray, y: np.ndarray) -> List[np.ndarray]:
    keys = np.char.add(np.char.add(g.astype(str), "\x00"), y.astype(int).astype(str))
    return [np.flatnonzero(keys == k) for k in np.unique(keys)]


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
    y = np.asarray(y_true).astype(int).reshape(-1)
    s = np.asarray(score, dtype=float).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true {y.shape} and score {s.shape} differ")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must be binary 0/1")
    g = _as_groups(groups, y.size)
    for b in ece_binnings:
        if b not in ECE_BINNINGS:
            raise ValueError(f"unknown ECE binning {b!r}")
    thr: Dict[str, float] = dict(thresholds) if thresholds is not None else {THRESHOLD_FIXED: 0.5}
    if optimistic_f1:
        thr[OPTIMISTIC_THRESHOLD] = best_f1_threshold(y, s)
    names = _group_order(g, unknown)
    included = [n for n in names if not (exclude_unknown and n == unknown)]
    binnings = list(ece_binnings)

    point = _derive(_fairlearn_base_stats(y, s, g, thr, binnings), names, included, thr, binnings)

    lo_q, hi_q = (1 - ci) / 2, 1 - (1 - ci) / 2
    cis: Dict[tuple, tuple] = {}
    if n_boot and n_boot > 0:
        rng = np.random.default_rng(seed)
        strata = _stratified_indices(g, y)
        keys = list(point.keys())
        reps = np.full((n_boot, len(keys)), np.nan)
        for b in range(n_boot):
            idx = np.concatenate([st[rng.integers(0, st.size, st.size)] for st in strata])
            rs = _derive(
                _numpy_base_stats(y[idx], s[idx], g[idx], names, thr, binnings), names, included, thr, binnings
            )
            reps[b] = [rs.get(k, np.nan) for k in keys]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            qs = np.nanquantile(reps, [lo_q, hi_q], axis=0)
        for j, k in enumerate(keys):
            cis[k] = (float(qs[0, j]), float(qs[1, j]))

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
        "bootstrap": {
            "n_boot": int(n_boot),
            "ci": ci,
            "seed": seed,
            "method": "stratified (group x label) percentile bootstrap" if n_boot else "none",
        },
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


def group_mean_summary(
    values: Any,
    groups: Any,
    *,
    higher_is_better: bool = True,
    exclude_unknown: bool = False,
    unknown: str = UNKNOWN,
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
) -> Dict[str, Any]:
    """Group means of a per-sample quantity (e.g. student-teacher cosine fidelity), with worst group and gap.

    Returns ``{"overall": M, "by_group": {g: M + {"n"}}, "worst_group": M + {"group"}, "gap": M,
    "higher_is_better": bool, "excluded_from_gaps": [...]}`` (bootstrap: resampling within groups).
    """
    v = np.asarray(values, dtype=float).reshape(-1)
    g = _as_groups(groups, v.size)
    names = _group_order(g, unknown)
    included = [n for n in names if not (exclude_unknown and n == unknown)]

    def stats(vv, gg):
        means = {n: float(vv[gg == n].mean()) if np.any(gg == n) else float("nan") for n in names}
        inc = [means[n] for n in included]
        fin = [x for x in inc if np.isfinite(x)]
        worst = (min(fin) if higher_is_better else max(fin)) if fin else float("nan")
        return float(vv.mean()), means, worst, _spread(inc)

    overall, means, worst, gap = stats(v, g)
    cis: Dict[str, tuple] = {}
    if n_boot:
        rng = np.random.default_rng(seed)
        strata = [np.flatnonzero(g == n) for n in names]
        rows = []
        for _ in range(n_boot):
            idx = np.concatenate([st[rng.integers(0, st.size, st.size)] for st in strata])
            o, mm, w, gp = stats(v[idx], g[idx])
            rows.append([o, w, gp] + [mm[n] for n in names])
        q = np.nanquantile(np.asarray(rows), [(1 - ci) / 2, 1 - (1 - ci) / 2], axis=0)
        for j, k in enumerate(["overall", "worst", "gap"] + [f"g:{n}" for n in names]):
            cis[k] = (q[0, j], q[1, j])
    inc_means = {n: means[n] for n in included if np.isfinite(means[n])}
    wg = (min if higher_is_better else max)(inc_means, key=inc_means.get) if inc_means else None
    return {
        "overall": _m(overall, cis.get("overall")),
        "by_group": {n: _m(means[n], cis.get(f"g:{n}"), n=int(np.sum(g == n))) for n in names},
        "worst_group": _m(worst, cis.get("worst"), group=wg),
        "gap": _m(gap, cis.get("gap")),
        "higher_is_better": higher_is_better,
        "excluded_from_gaps": [n for n in names if n not in included],
    }


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
