"""Paired comparison of two models on the same test samples, and the levelling-down check (docs/metrics.md, "Levelling down").

A fair model is compared with its reference (the λ = 0 / ERM model) group by group: the difference of every
group's AUC, of the overall AUC, of the worst-group AUC and of the AUC gap, each with a *paired* bootstrap
interval — one set of resampled test indices per replicate, used for both models, stratified by group × label, drawn over patients when samples name them —
so sample-level noise that both models share cancels out. BCa intervals, as everywhere in the report.

Levelling down (Zietlow et al. 2022; Mittelstadt et al. 2023): a group whose AUC fell and whose interval of the
difference lies entirely below 0 got worse beyond its interval. A comparison with such a group is flagged
``levels_down``; the sweep never selects a flagged model while an unflagged one exists.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from agglom.data.patients import PATIENT
from agglom.metrics.bootstrap import Resampler, clusters_of, replicate, strata_by
from agglom.metrics.group_stats import rank_auc
from agglom.metrics.intervals import bca_interval

__all__ = ["paired_group_deltas", "compare_predictions", "levelled_down_groups", "COMPARE_SCHEMA"]

COMPARE_SCHEMA = "agglom.compare/1"
UNKNOWN = "unknown"


def _stats(y: np.ndarray, a: np.ndarray, b: np.ndarray, g: np.ndarray, names: Sequence[str],
           included: Sequence[str]) -> np.ndarray:
    """[AUC_a, AUC_b, worst_a, worst_b, gap_a, gap_b, AUC_g a/b for each group...] for one resample."""
    ga = np.asarray([rank_auc(y[g == n], a[g == n]) for n in names])
    gb = np.asarray([rank_auc(y[g == n], b[g == n]) for n in names])
    inc = np.asarray([n in included for n in names])

    def worst_gap(v: np.ndarray) -> tuple:
        d = v[inc & np.isfinite(v)]
        return (float(d.min()), float(d.max() - d.min()) if d.size >= 2 else np.nan) if d.size else (np.nan, np.nan)

    wa, gapa = worst_gap(ga)
    wb, gapb = worst_gap(gb)
    return np.concatenate([[rank_auc(y, a), rank_auc(y, b), wa, wb, gapa, gapb], ga, gb])


def paired_group_deltas(y: Any, score_new: Any, score_ref: Any, groups: Any, *, n_boot: int = 200, ci: float = 0.95,
                        seed: int = 0, exclude_unknown: bool = True, patients: Any = None) -> Dict[str, Any]:
    """Differences new − reference for one binary label and one attribute, with paired-bootstrap intervals.

    Returns ``{"overall_auc", "worst_group_auc", "auc_gap": D, "groups": {g: D + {"n"}}, "levelled_down": [...],
    "lifted": [...]}`` where ``D = {"new", "reference", "delta", "ci": [lo, hi] | None}`` (a gap delta < 0 is an
    improvement). ``levelled_down``: groups with delta < 0 and interval entirely below 0; ``lifted``: delta > 0
    and interval entirely above 0. With ``patients`` (an id per sample) the bootstrap resamples patients."""
    y = np.asarray(y).astype(int).reshape(-1)
    a, b = np.asarray(score_new, dtype=float).reshape(-1), np.asarray(score_ref, dtype=float).reshape(-1)
    g = np.asarray(groups).astype(str).reshape(-1)
    if not (y.shape == a.shape == b.shape == g.shape):
        raise ValueError(f"shapes differ: y {y.shape}, new {a.shape}, reference {b.shape}, groups {g.shape}")
    names = sorted(set(g.tolist()) - {UNKNOWN}) + ([UNKNOWN] if UNKNOWN in set(g.tolist()) else [])
    included = [n for n in names if not (exclude_unknown and n == UNKNOWN)]
    point = _stats(y, a, b, g, names, included)
    k = len(names)
    reps = np.empty((0, point.size))
    jack = None
    resampler = Resampler(strata_by(g, y), clusters_of(patients, y.size))
    if n_boot:
        r = replicate(lambda i: _stats(y[i], a[i], b[i], g[i], names, included), resampler, n_boot, seed)
        reps, jack = r["reps"], r["jack"]

    def delta(i_new: int, i_ref: int) -> Dict[str, Any]:
        new, ref = point[i_new], point[i_ref]
        d = new - ref
        out: Dict[str, Any] = {"new": _f(new), "reference": _f(ref), "delta": _f(d), "ci": None}
        if n_boot and np.isfinite(d):
            lo, hi, widened = bca_interval(float(d), reps[:, i_new] - reps[:, i_ref], jack[:, i_new] - jack[:, i_ref], ci)
            if np.isfinite(lo):
                out["ci"] = [lo, hi]
                if widened:
                    out["ci_widened"] = True
        return out

    res: Dict[str, Any] = {"overall_auc": delta(0, 1), "worst_group_auc": delta(2, 3), "auc_gap": delta(4, 5),
                           "groups": {}, "group_names": names, "excluded": [n for n in names if n not in included]}
    for j, n in enumerate(names):
        res["groups"][n] = {**delta(6 + j, 6 + k + j), "n": int(np.sum(g == n)), "n_pos": int(y[g == n].sum())}
    res["levelled_down"] = levelled_down_groups(res)
    res["lifted"] = [n for n in included if _below(res["groups"][n], upper=False)]
    res["bootstrap"] = {"n_boot": int(n_boot), "ci": ci, "seed": seed,
                        "method": f"paired {resampler.describe('group x label')}, BCa" if n_boot else "none"}
    return res


def _f(x: float) -> Optional[float]:
    return float(x) if np.isfinite(x) else None


def fell_beyond(value: Optional[float], ci: Optional[Sequence[float]], margin: float = 0.0) -> bool:
    """The one rule for "this group got worse": the difference is negative and its whole interval lies below
    ``-margin``. Margin 0 is the levelling-down flag (here and in the verdict); a margin > 0 the validation
    choice's non-inferiority margin (:mod:`agglom.eval.selection`)."""
    return value is not None and bool(ci) and value < 0 and ci[1] < -margin


def _below(d: Mapping[str, Any], upper: bool = True) -> bool:
    """delta < 0 with the whole interval below 0 (``upper``), or delta > 0 with the interval above 0."""
    v, c = d.get("delta"), d.get("ci")
    if upper:
        return fell_beyond(v, c)
    return v is not None and c is not None and v > 0 and c[0] > 0


def levelled_down_groups(delta_result: Mapping[str, Any]) -> List[str]:
    """Groups (excluding the unknown group) that got worse beyond their paired interval."""
    excluded = set(delta_result.get("excluded", []))
    return [n for n, d in delta_result["groups"].items() if n not in excluded and _below(d)]


def compare_predictions(new: Mapping[str, Any], reference: Mapping[str, Any], attributes: Sequence[str], *,
                        new_name: str = "new", reference_name: str = "reference", n_boot: int = 200,
                        seed: int = 0, exclude_unknown: bool = True, patients: Any = None) -> Dict[str, Any]:
    """Compare two sets of test predictions (``{"key": [N], "label": [N] or [N, L], "score": same, <attr>: [N]}``,
    e.g. columns of two ``predictions.csv``), aligned by sample key. Multi-label predictions are compared label by
    label. Returns ``{"schema", "new", "reference", "attributes": {attr: result | {label: result}},
    "levels_down": bool, "levelled_down": {attr: [groups]}}``. The bootstrap resamples patients when ``patients``
    (ids in ``new``'s order) or a ``patient`` column of ``new`` names them."""
    ka, kb = [str(k) for k in new["key"]], [str(k) for k in reference["key"]]
    common = sorted(set(ka) & set(kb))
    if len(common) < len(ka) or len(common) < len(kb):
        raise ValueError(f"the two models were evaluated on different samples ({len(ka)} vs {len(kb)} keys, "
                         f"{len(common)} shared); compare runs evaluated on the same test split")
    ia = {k: i for i, k in enumerate(ka)}
    ib = {k: i for i, k in enumerate(kb)}
    pa, pb = np.asarray([ia[k] for k in common]), np.asarray([ib[k] for k in common])
    ya, yb = np.asarray(new["label"])[pa], np.asarray(reference["label"])[pb]
    if not np.array_equal(ya, yb):
        raise ValueError("the two prediction sets disagree on the labels of the same samples")
    sa, sb = np.asarray(new["score"], dtype=float)[pa], np.asarray(reference["score"], dtype=float)[pb]
    patients = patients if patients is not None else new.get(PATIENT)
    pat = None if patients is None else np.asarray(patients, dtype=object)[pa]
    out: Dict[str, Any] = {"schema": COMPARE_SCHEMA, "new": new_name, "reference": reference_name, "n": len(common),
                           "attributes": {}, "levelled_down": {}}
    for attr in attributes:
        g = np.asarray(new[attr])[pa]
        kw = dict(n_boot=n_boot, seed=seed, exclude_unknown=exclude_unknown, patients=pat)
        if ya.ndim == 2:
            labels = list(new.get("label_names") or [f"label{j}" for j in range(ya.shape[1])])
            per = {lab: paired_group_deltas(ya[:, j], sa[:, j], sb[:, j], g, **kw) for j, lab in enumerate(labels)}
            out["attributes"][attr] = {"labels": per}
            worse = sorted({n for r in per.values() for n in r["levelled_down"]})
        else:
            r = paired_group_deltas(ya, sa, sb, g, **kw)
            out["attributes"][attr] = r
            worse = r["levelled_down"]
        if worse:
            out["levelled_down"][attr] = worse
    out["levels_down"] = bool(out["levelled_down"])
    return out
