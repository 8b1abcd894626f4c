"""One arriving batch against the reference, per group and overall: embedding drift, score shift, group proportions
and, where labels arrived, AUC and calibration (the statistics of :mod:`agglom.monitor.stats`), and which of them
raise the alarm.

A group is ``<attribute>=<value>`` (numeric attributes binned as `agglom eval` bins them,
:func:`agglom.eval.extract.attribute_groups`); a group with fewer than ``min_group`` samples on either side is
reported as too small, not tested. The drift and score tests of one batch are a family: each is held to
alpha / (the number of tests run in it) (Bonferroni); the proportion tests likewise over the attributes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from agglom.monitor.stats import auc_delta, bonferroni, ks_test, mmd_test, proportion_test, subsample

UNKNOWN = "unknown"


@dataclass
class Reference:
    """The reference split as every batch is compared with it."""

    projected: np.ndarray  # [N, k] PCA projection of the features
    groups: Dict[str, np.ndarray]  # attribute -> [N] group names
    labels: Optional[np.ndarray]  # [N] binary labels, None when the reference has none usable
    scores: Optional[np.ndarray]  # [N] out-of-fold probe scores, None without a probe


def fit_probe(features: np.ndarray, labels: Optional[np.ndarray], seed: int) -> Tuple[Optional[np.ndarray], Any]:
    """(out-of-fold reference scores, the probe fitted on the whole reference) of a standardised logistic regression
    on binary labels; (None, None) when the reference has no two classes of at least 5 samples each."""
    if labels is None:
        return None, None
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    counts = np.bincount(labels, minlength=2)
    if len(counts) != 2 or counts.min() < 5:
        return None, None
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    folds = StratifiedKFold(n_splits=int(min(5, counts.min())), shuffle=True, random_state=seed)
    oof = cross_val_predict(probe, features, labels, cv=folds, method="decision_function")
    return np.asarray(oof, dtype=float), probe.fit(features, labels)


def binary_labels(labels: np.ndarray, index: int) -> Optional[np.ndarray]:
    """[N] labels in {0, 1, -1 (none)}: column ``index`` of a multi-label array; None for a multiclass label."""
    y = np.asarray(labels)
    if y.ndim == 2:
        if index >= y.shape[1]:
            return None
        y = y[:, index]
    y = y.astype(int)
    return y if set(np.unique(y).tolist()) <= {-1, 0, 1} else None


def _masks(groups: Mapping[str, np.ndarray], n: int) -> Dict[str, np.ndarray]:
    """``{"overall": all, "<attr>=<value>": mask}`` (the unknown group left out of the per-group tests)."""
    out = {"overall": np.ones(n, dtype=bool)}
    for attr, vals in groups.items():
        for v in sorted(set(vals.tolist()) - {UNKNOWN}):
            out[f"{attr}={v}"] = vals == v
    return out


def _drift(ref: Reference, z: np.ndarray, masks_r: Dict[str, np.ndarray], masks_b: Dict[str, np.ndarray],
           opts: Mapping[str, Any]) -> Dict[str, Dict[str, Any]]:
    rng = np.random.default_rng(opts["seed"])
    out: Dict[str, Dict[str, Any]] = {}
    for g, mb in masks_b.items():
        mr = masks_r.get(g, np.zeros(len(ref.projected), dtype=bool))
        res: Dict[str, Any] = {"n_reference": int(mr.sum()), "n_batch": int(mb.sum())}
        if min(res.values()) >= opts["min_group"]:
            x = subsample(ref.projected[mr], opts["max_samples"], rng)
            y = subsample(z[mb], opts["max_samples"], rng)
            res.update(mmd_test(x, y, opts["permutations"], opts["seed"]))
        out[g] = res
    return out


def _scores(ref: Reference, s: Optional[np.ndarray], masks_r: Dict[str, np.ndarray], masks_b: Dict[str, np.ndarray],
            min_group: int) -> Optional[Dict[str, Dict[str, Any]]]:
    if ref.scores is None or s is None:
        return None
    out: Dict[str, Dict[str, Any]] = {}
    for g, mb in masks_b.items():
        mr = masks_r.get(g, np.zeros(len(ref.scores), dtype=bool))
        res: Dict[str, Any] = {"n_reference": int(mr.sum()), "n_batch": int(mb.sum())}
        if min(res.values()) >= min_group:
            res.update(ks_test(ref.scores[mr], s[mb]))
        out[g] = res
    return out


def _auc(ref: Reference, s: Optional[np.ndarray], y: Optional[np.ndarray], masks_r: Dict[str, np.ndarray],
         masks_b: Dict[str, np.ndarray], opts: Mapping[str, Any]) -> Optional[Dict[str, Dict[str, Any]]]:
    if ref.scores is None or ref.labels is None or s is None or y is None or not np.any(y >= 0):
        return None
    out: Dict[str, Dict[str, Any]] = {}
    for g, mb in masks_b.items():
        mb = mb & (y >= 0)
        mr = masks_r.get(g, np.zeros(len(ref.scores), dtype=bool))
        if min(int(mb.sum()), int(mr.sum())) < opts["min_group"]:
            out[g] = {"n_reference": int(mr.sum()), "n_batch": int(mb.sum()), "delta": None, "ci": None, "ece": None}
            continue
        out[g] = auc_delta(ref.labels[mr], ref.scores[mr], y[mb], s[mb], opts["bootstrap"], opts["seed"])
    return out


def _proportions(ref: Reference, groups: Mapping[str, np.ndarray]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for attr, vals in groups.items():
        count = lambda v: {g: int(n) for g, n in zip(*np.unique(v, return_counts=True))}  # noqa: E731
        out[attr] = proportion_test(count(ref.groups[attr]), count(vals))
    return out


def _prevalence(ref: Reference, labels: Optional[np.ndarray]) -> Optional[Dict[str, Any]]:
    """The label's prevalence in the batch's labelled samples against the reference's (chi-square of the 2 x 2
    table); None without labels on both sides."""
    if ref.labels is None or labels is None or not np.any(labels >= 0):
        return None

    def count(y: np.ndarray) -> Dict[str, int]:
        y = y[y >= 0]
        return {"negative": int(np.sum(y == 0)), "positive": int(np.sum(y == 1))}

    r = proportion_test(count(np.asarray(ref.labels)), count(np.asarray(labels)))
    r["reference_prevalence"] = float(np.mean(ref.labels[ref.labels >= 0]))
    r["batch_prevalence"] = float(np.mean(labels[labels >= 0]))
    return r


def assess_batch(ref: Reference, z: np.ndarray, groups: Dict[str, np.ndarray], scores: Optional[np.ndarray],
                 labels: Optional[np.ndarray], opts: Mapping[str, Any]) -> Dict[str, Any]:
    """Every test of one batch (``z``: its PCA projection; ``scores``: the probe's; ``labels``: -1 where none) and
    its findings, each marked ``alarm`` when its kind is in ``opts["alarm_on"]``."""
    masks_r, masks_b = _masks(ref.groups, len(ref.projected)), _masks(groups, len(z))
    result: Dict[str, Any] = {
        "n": int(len(z)), "labelled": int(np.sum(labels >= 0)) if labels is not None else 0,
        "drift": _drift(ref, z, masks_r, masks_b, opts),
        "score": _scores(ref, scores, masks_r, masks_b, opts["min_group"]),
        "proportions": _proportions(ref, groups),
        "auc": _auc(ref, scores, labels, masks_r, masks_b, opts),
        "prevalence": _prevalence(ref, labels),
    }
    result["findings"] = findings(result, opts)
    return result


def _p_findings(kind: str, section: Optional[Mapping[str, Mapping[str, Any]]], alpha: float,
                what: str) -> List[Dict[str, Any]]:
    if not section:
        return []
    limit = bonferroni([r.get("p") for r in section.values()], alpha)
    return [{"kind": kind, "group": g, "p": r["p"], "threshold": limit, "effect": r.get("mmd2", r.get("ks")),
             "text": f"{what} in {g}: p = {r['p']:.3g} < {limit:.3g}"
                     + (f" (MMD² {r['mmd2']:.3g})" if "mmd2" in r else f" (KS {r['ks']:.3f}, mean shift "
                                                                       f"{r['mean_shift']:+.3g})")}
            for g, r in section.items() if r.get("p") is not None and r["p"] < limit]


def findings(result: Mapping[str, Any], opts: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The batch's findings: drift, score shift, proportion shift (or a new group), AUC degradation beyond
    ``auc_drop`` with its interval below 0, calibration worse beyond its interval (a note only); ``alarm``: the
    kind is one ``alarm_on`` names."""
    alpha = float(opts["alpha"])
    out = _p_findings("drift", result["drift"], alpha, "embedding drift")
    out += _p_findings("score", result["score"], alpha, "score shift")
    limit = bonferroni([r["p"] for r in result["proportions"].values()], alpha)
    for attr, r in result["proportions"].items():
        if (r["p"] is not None and r["p"] < limit) or r["new_groups"]:
            p = "n/a" if r["p"] is None else f"{r['p']:.3g}"
            text = f"group proportions of {attr} shifted: p = {p}" + (f", new groups {', '.join(r['new_groups'])}"
                                                                      if r["new_groups"] else "")
            out.append({"kind": "proportions", "group": attr, "p": r["p"], "threshold": limit, "text": text})
    prev = result.get("prevalence")
    if prev and prev.get("p") is not None and prev["p"] < alpha:
        out.append({"kind": "prevalence", "group": "all", "p": prev["p"], "threshold": alpha,
                    "text": f"label prevalence changed: {prev['reference_prevalence']:.3f} -> "
                            f"{prev['batch_prevalence']:.3f} (p = {prev['p']:.3g})"})
    for g, r in (result["auc"] or {}).items():
        if r.get("delta") is not None and r["ci"] and r["delta"] < -opts["auc_drop"] and r["ci"][1] < 0:
            out.append({"kind": "auc", "group": g, "delta": r["delta"], "ci": r["ci"],
                        "text": f"AUC of {g} fell by {-r['delta']:.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}] "
                                f"(from {r['reference']:.3f} to {r['batch']:.3f}; allowed {opts['auc_drop']:g})"})
    out += _calibration_findings(result["auc"])
    for f in out:
        f["alarm"] = f["kind"] in opts["alarm_on"]
    return out


def _calibration_findings(section: Optional[Mapping[str, Mapping[str, Any]]]) -> List[Dict[str, Any]]:
    """A note (never an alarm: not a kind ``alarm_on`` takes) for each group whose probe calibration error rose
    with its interval above 0."""
    out = []
    for g, r in (section or {}).items():
        e = r.get("ece") or {}
        if e.get("delta") is not None and e.get("ci") and e["delta"] > 0 and e["ci"][0] > 0:
            out.append({"kind": "calibration", "group": g, "delta": e["delta"], "ci": e["ci"],
                        "text": f"calibration of {g} worsened: ECE {e['reference']:.3f} → {e['batch']:.3f}, "
                                f"Δ {e['delta']:+.3f} [{e['ci'][0]:+.3f}, {e['ci'][1]:+.3f}]"})
    return out


__all__ = ["Reference", "fit_probe", "binary_labels", "assess_batch", "findings"]
