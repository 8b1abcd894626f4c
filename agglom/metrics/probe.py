"""Linear probe on frozen features, and the label-efficiency protocol.

A probe is ``StandardScaler -> LogisticRegression(C, max_iter)`` (sklearn), one per label for multi-label
targets (one-vs-rest: each label is an independent binary problem). It is fitted on train features, its
decision threshold is chosen per label on validation (:func:`agglom.metrics.thresholds.choose_threshold`), and it
scores the test features. Everything here is numpy in, numpy out; group metrics are the caller's business
(pass ``metric_fn`` to :func:`label_efficiency`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from agglom.metrics.thresholds import THRESHOLD_FIXED, choose_threshold

__all__ = ["ProbeResult", "fit_linear_probe", "subsample_labels", "label_efficiency"]


@dataclass
class ProbeResult:
    """What a fitted probe produced. Scores are ``[N]`` for one label, ``[N, L]`` for multi-label."""

    val_scores: np.ndarray
    test_scores: np.ndarray
    thresholds: Dict[str, np.ndarray]  # {"fixed_0.5": [L], "val_<method>": [L]}
    models: List[Any] = field(repr=False, default_factory=list)  # one sklearn Pipeline (or constant) per label
    n_train: int = 0
    multilabel: bool = False

    def threshold(self, name: str) -> Any:
        """Threshold(s) by name: a float for one label, an array ``[L]`` for multi-label."""
        t = self.thresholds[name]
        return t if self.multilabel else float(t[0])


class _Constant:
    """Stand-in when a label has one class in the training subset (predicts its prevalence)."""

    def __init__(self, p: float):
        self.p = p

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(x), 1))


def _fit_one(x: np.ndarray, y: np.ndarray, C: float, max_iter: int, seed: int) -> Any:
    if len(np.unique(y)) < 2:
        return _Constant(float(np.mean(y)))
    model: Pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    model.fit(x, y)
    return model


def fit_linear_probe(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    threshold_method: str = "youden",
    seed: int = 0,
) -> ProbeResult:
    """Fit the probe on train, choose thresholds on val, score val and test.

    ``train_y``/``val_y``: ``[N]`` or ``[N, L]`` in {0, 1}. ``threshold_method``: ``"youden"`` or ``"f1"``; the
    chosen threshold is stored as ``thresholds["val_<method>"]`` next to ``thresholds["fixed_0.5"]``.
    """
    Xtr, Xva, Xte = (np.asarray(a, dtype=np.float64) for a in (train_x, val_x, test_x))
    Ytr, Yva = np.asarray(train_y), np.asarray(val_y)
    multilabel = Ytr.ndim == 2
    if not multilabel:
        Ytr, Yva = Ytr[:, None], Yva[:, None]
    L = Ytr.shape[1]
    models, sv, st, tv = [], [], [], []
    for j in range(L):
        m = _fit_one(Xtr, Ytr[:, j].astype(int), C, max_iter, seed)
        models.append(m)
        pv = m.predict_proba(Xva)[:, 1]
        sv.append(pv)
        st.append(m.predict_proba(Xte)[:, 1])
        tv.append(choose_threshold(Yva[:, j], pv, threshold_method))
    val_scores, test_scores = np.stack(sv, 1), np.stack(st, 1)
    if not multilabel:
        val_scores, test_scores = val_scores[:, 0], test_scores[:, 0]
    return ProbeResult(
        val_scores=val_scores,
        test_scores=test_scores,
        thresholds={THRESHOLD_FIXED: np.full(L, 0.5), f"val_{threshold_method}": np.asarray(tv, dtype=float)},
        models=models,
        n_train=int(len(Xtr)),
        multilabel=multilabel,
    )


def subsample_labels(y: Any, fraction: float, seed: int) -> np.ndarray:
    """Indices of a stratified subsample of ``fraction`` of the labelled training set.

    Single label: per class ``max(1, round(fraction * n_c))`` samples, so every class present in ``y`` keeps at
    least one sample. Multi-label ``[N, L]``: a random ``round(fraction * N)`` subset (at least 1), then, for each
    label, one random sample of each class present in the full set but missing from the subset is added.
    Returned indices are sorted; ``fraction >= 1`` returns all.
    """
    Y = np.asarray(y)
    n = len(Y)
    if fraction >= 1.0:
        return np.arange(n)
    if fraction <= 0:
        raise ValueError("fraction must be > 0")
    rng = np.random.default_rng(seed)
    if Y.ndim == 1:
        idx = []
        for c in np.unique(Y):
            members = np.flatnonzero(Y == c)
            k = max(1, int(round(fraction * members.size)))
            idx.append(rng.choice(members, size=min(k, members.size), replace=False))
        return np.sort(np.concatenate(idx))
    k = max(1, int(round(fraction * n)))
    chosen = set(rng.choice(n, size=k, replace=False).tolist())
    for j in range(Y.shape[1]):
        for c in np.unique(Y[:, j]):
            if not any(Y[i, j] == c for i in chosen):
                chosen.add(int(rng.choice(np.flatnonzero(Y[:, j] == c))))
    return np.asarray(sorted(chosen))


def label_efficiency(
    train_x: Any,
    train_y: Any,
    val_x: Any,
    val_y: Any,
    test_x: Any,
    metric_fn: Callable[[ProbeResult], Dict[str, Any]],
    *,
    fractions: Sequence[float] = (0.01, 0.1, 1.0),
    seeds: int | Sequence[int] = 3,
    C: float = 1.0,
    max_iter: int = 1000,
    threshold_method: str = "youden",
) -> Dict[str, Any]:
    """Refit the probe on stratified fractions of the training labels, over several seeds.

    ``metric_fn(probe_result) -> dict`` computes whatever the caller wants (e.g. group metrics on the test
    scores). ``seeds``: a count (seeds 0..n-1) or explicit seeds. At fraction 1.0 the subset is the full set
    for every seed (only the solver seed differs). Returns::

        {"fractions": {"0.01": {"fraction": 0.01, "seeds": {"0": {"n_train": int, "metrics": <metric_fn output>},
                                                              ...}}, ...},
         "seeds": [0, 1, 2], "threshold_method": "youden", "C": 1.0}
    """
    seed_list: List[int] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    Xtr, Ytr = np.asarray(train_x), np.asarray(train_y)
    out: Dict[str, Any] = {"fractions": {}, "seeds": seed_list, "threshold_method": threshold_method, "C": C}
    for f in fractions:
        per: Dict[str, Any] = {}
        for s in seed_list:
            idx = subsample_labels(Ytr, f, s)
            res = fit_linear_probe(
                Xtr[idx], Ytr[idx], val_x, val_y, test_x,
                C=C, max_iter=max_iter, threshold_method=threshold_method, seed=s,
            )  # fmt: skip
            per[str(s)] = {"n_train": int(idx.size), "metrics": metric_fn(res)}
        out["fractions"][_fkey(f)] = {"fraction": float(f), "seeds": per}
    return out


def _fkey(f: float) -> str:
    return f"{float(f):g}"


def summarise_label_efficiency(le: Dict[str, Any], key: Callable[[Dict[str, Any]], Optional[float]]) -> Dict[str, Any]:
    """Mean/std/min/max over seeds of one scalar ``key(metrics)`` per fraction: ``{fraction: {"mean", "std",
    "min", "max", "n_train_mean", "values"}}`` (``None`` values skipped)."""
    out: Dict[str, Any] = {}
    for fk, entry in le["fractions"].items():
        vals = [key(v["metrics"]) for v in entry["seeds"].values()]
        vals = [float(v) for v in vals if v is not None and np.isfinite(v)]
        ntr = [v["n_train"] for v in entry["seeds"].values()]
        out[fk] = {
            "mean": float(np.mean(vals)) if vals else None,
            "std": float(np.std(vals)) if vals else None,
            "min": float(np.min(vals)) if vals else None,
            "max": float(np.max(vals)) if vals else None,
            "n_train_mean": float(np.mean(ntr)),
            "values": vals,
        }
    return out
