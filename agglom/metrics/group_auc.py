"""Per-group ROC-AUC of a supervised head's logits: what `agglom finetune` validates with.

Binary labels: the sigmoid of the one logit; multi-class: one-vs-rest on the softmax; multi-label: one column per
label. A column's AUC is defined only where both classes occur (:func:`agglom.metrics.group_stats.rank_auc`); the AUC
of a set is the mean over its defined columns, and *undefined* (None, never 0) when no column is. The worst-group
AUC is the minimum over the defined parity groups (the unknown group counts only when the caller says so), the
AUC gap the best minus the worst.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from agglom.metrics.group_stats import rank_auc

KINDS = ("binary", "multiclass", "multilabel")


def scores_targets(kind: str, logits: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-column scores and binary targets ``[N, K]`` for one-vs-rest AUC."""
    if kind == "binary":
        return 1 / (1 + np.exp(-logits[:, :1])), labels.reshape(-1, 1).astype(int)
    if kind == "multiclass":
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return p, np.eye(logits.shape[1], dtype=int)[labels.reshape(-1).astype(int)]
    return 1 / (1 + np.exp(-logits)), labels.astype(int)


def mean_auc(scores: np.ndarray, targets: np.ndarray) -> Optional[float]:
    """ROC-AUC, macro over the columns where both classes occur; None when undefined everywhere."""
    vals = [rank_auc(targets[:, j], scores[:, j]) for j in range(targets.shape[1])]
    vals = [v for v in vals if np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def group_auc_metrics(kind: str, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                      names: Sequence[str], parity: Sequence[bool]) -> Dict[str, Any]:
    """``{"n", "auc", "groups": {name: {"n", "positives", "auc"}}, "worst_group", "worst_group_auc", "auc_gap"}``
    for the groups present; ``parity[i]``: whether group ``i`` takes part in the worst-group and gap values."""
    s, t = scores_targets(kind, logits, labels)
    out: Dict[str, Any] = {"n": int(len(groups)), "auc": mean_auc(s, t), "groups": {}}
    for gi, name in enumerate(names):
        m = groups == gi
        if not m.any():
            continue
        pos = int(t[m].sum()) if kind != "multiclass" else None
        out["groups"][name] = {"n": int(m.sum()), "positives": pos, "auc": mean_auc(s[m], t[m])}
    defined: List[Tuple[str, float]] = [(n, g["auc"]) for n, g in out["groups"].items()
                                        if g["auc"] is not None and parity[list(names).index(n)]]
    if defined:
        worst = min(defined, key=lambda v: v[1])
        best = max(defined, key=lambda v: v[1])
        out["worst_group"], out["worst_group_auc"] = worst
        out["auc_gap"] = best[1] - worst[1]
    else:
        out["worst_group"], out["worst_group_auc"], out["auc_gap"] = None, None, None
    return out


__all__ = ["KINDS", "scores_targets", "mean_auc", "group_auc_metrics"]
