"""The two-sample statistics `agglom monitor` reports, in plain numpy/scipy.

- Embedding drift: maximum mean discrepancy (MMD², biased estimate) with an RBF kernel whose bandwidth is the median
  pairwise distance of the pooled sample (the median heuristic), on the reference's PCA projection, with a
  permutation p-value: the pooled kernel matrix is computed once and every permutation is a quadratic form
  ``aᵀKa`` of it, all permutations in one matrix product. A few lines of our own instead of a drift library
  (alibi-detect, torchdrift): those pull in TensorFlow or a second framework for one test, and their defaults
  (bandwidth, projection) would sit outside the report's reach.
- Score shift: the two-sample Kolmogorov–Smirnov test (scipy) on the probe's scores.
- Group proportions: the chi-square test of the 2 × k table (reference vs batch counts per group; scipy), which
  counts the reference's own sampling noise too.
- AUC: the rank (Mann–Whitney) AUC, and the difference batch − reference with a BCa bootstrap interval (agglom/metrics/bootstrap.py), each
  sample resampled within its label (the two samples are independent: no pairing).
- Calibration: the expected calibration error of the probe's probabilities (the logistic sigmoid of its scores;
  agglom/metrics/calibration.py, the ``range10`` binning `agglom eval` reports first), batch − reference, from
  the same bootstrap replicates as the AUC's difference, both sides at the same sample size: ECE grows as a
  sample shrinks (fewer samples per bin), so a 200-image batch against a 1500-image reference would read as worse
  calibration with nothing changed (measured: both i.i.d. batches of a quick run had a group flagged). The larger side's
  ECE is the mean over random subsets of the smaller side's size (one subset per bootstrap replicate).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy import stats as st


def fit_pca(x: np.ndarray, dims: int) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, components [k, D]) of ``x``; k = min(dims, rank bound)."""
    mean = x.mean(0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = max(1, min(int(dims), vt.shape[0], x.shape[0] - 1))
    return mean, vt[:k]


def project(x: np.ndarray, pca: Tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return (x - pca[0]) @ pca[1].T


def subsample(x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``x`` drawn without replacement (all of them when it has fewer)."""
    return x if len(x) <= n else x[rng.choice(len(x), n, replace=False)]


def mmd_test(x: np.ndarray, y: np.ndarray, permutations: int = 1000, seed: int = 0) -> Dict[str, float]:
    """``{"mmd2", "p", "bandwidth"}``: MMD² between the rows of ``x`` and ``y`` (RBF kernel, median heuristic) and
    its permutation p-value ``(1 + #{perm >= observed}) / (1 + permutations)``."""
    z = np.concatenate([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sq = (z * z).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0.0)
    off = d2[np.triu_indices(n + m, 1)]
    med = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    k = np.exp(-d2 / (2 * med))
    a = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(a @ k @ a)
    rng = np.random.default_rng(seed)
    perms = np.stack([a[rng.permutation(n + m)] for _ in range(int(permutations))], 1)  # [n + m, P]
    null = np.einsum("ip,ip->p", perms, k @ perms)
    p = (1.0 + float(np.sum(null >= observed - 1e-12))) / (1.0 + perms.shape[1])
    return {"mmd2": observed, "p": p, "bandwidth": float(np.sqrt(med))}


def ks_test(a: np.ndarray, b: np.ndarray) -> Dict[str, float]:
    """Two-sample Kolmogorov–Smirnov: ``{"ks", "p", "mean_shift"}`` (mean of b − mean of a)."""
    r = st.ks_2samp(a, b)
    return {"ks": float(r.statistic), "p": float(r.pvalue), "mean_shift": float(np.mean(b) - np.mean(a))}


def proportion_test(ref: Mapping[str, int], new: Mapping[str, int]) -> Dict[str, Any]:
    """Chi-square test of the group counts of the reference against a batch's: ``{"chi2", "p", "dof", "reference",
    "batch" (shares), "new_groups", "small_expected"}``; p None with a single group."""
    names = sorted(set(ref) | set(new))
    table = np.array([[ref.get(g, 0) for g in names], [new.get(g, 0) for g in names]], dtype=float)
    table = table[:, table.sum(0) > 0]
    shares = {label: {g: (c.get(g, 0) / max(1, sum(c.values()))) for g in names} for label, c in
              (("reference", ref), ("batch", new))}
    out: Dict[str, Any] = {**shares, "new_groups": sorted(g for g in new if new[g] and not ref.get(g)),
                           "chi2": None, "p": None, "dof": 0, "small_expected": False}
    if table.shape[1] >= 2 and table.sum(1).min() > 0:
        chi2, p, dof, expected = st.chi2_contingency(table, correction=False)
        out.update(chi2=float(chi2), p=float(p), dof=int(dof), small_expected=bool((expected < 5).any()))
    return out


def rank_auc(y: np.ndarray, s: np.ndarray) -> Optional[float]:
    """AUC of scores ``s`` for binary labels ``y`` (:func:`agglom.metrics.group_stats.rank_auc`); None when one
    class is absent."""
    from agglom.metrics.group_stats import rank_auc as auc

    v = auc(np.asarray(y).astype(int), np.asarray(s, dtype=float))
    return None if not np.isfinite(v) else v


ECE_BINNING = "range10"  # the binning of agglom eval's first ECE figure (agglom/metrics/calibration.py)


def probe_ece(y: np.ndarray, s: np.ndarray) -> Optional[float]:
    """ECE (:data:`ECE_BINNING`) of the probabilities sigmoid(``s``) of the probe's scores for labels ``y``; None
    for no samples."""
    from agglom.metrics.calibration import ece

    v = ece(np.asarray(y, dtype=float), 1.0 / (1.0 + np.exp(-np.asarray(s, dtype=float))), ECE_BINNING)
    return None if not np.isfinite(v) else v


ECE_DRAWS = 50  # random subsets behind the larger side's size-matched ECE


def ece_at(y: np.ndarray, s: np.ndarray, size: int, rng: np.random.Generator, draws: int = ECE_DRAWS) -> Optional[float]:
    """:func:`probe_ece` of ``(y, s)`` at ``size`` samples: of all of them when there are no more, else the mean
    over ``draws`` random subsets of ``size`` (drawn without replacement)."""
    if len(y) <= size:
        return probe_ece(y, s)
    vals = [probe_ece(y[i], s[i]) for i in (rng.choice(len(y), size, replace=False) for _ in range(max(1, draws)))]
    vals = [v for v in vals if v is not None]
    return float(np.mean(vals)) if vals else None


def _interval(point: Optional[float], reps: Sequence[float], jack: Sequence[float], ci: float) -> Optional[list]:
    from agglom.metrics.intervals import bca_interval

    if point is None:
        return None
    lo, hi, _ = bca_interval(point, list(reps), list(jack), ci)
    return None if not np.isfinite(lo) else [float(lo), float(hi)]


def auc_delta(y_ref: np.ndarray, s_ref: np.ndarray, y_new: np.ndarray, s_new: np.ndarray, n_boot: int = 500,
              seed: int = 0, ci: float = 0.95) -> Dict[str, Any]:
    """``{"reference", "batch", "delta", "ci", "n_reference", "n_batch", "ece"}``: AUC of the batch − the
    reference's, with a BCa interval from agglom's one bootstrap (:mod:`agglom.metrics.bootstrap`: each sample
    resampled within its labels, independently; the jackknife leaves a block out of both); None where either AUC is
    undefined or ``n_boot`` is 0. ``ece``: the same for the calibration error of the probe's probabilities
    (:func:`probe_ece` at the smaller side's size, :func:`ece_at`; ``{"reference", "batch", "delta", "ci",
    "binning", "at_size"}``; its interval bias-corrected, no acceleration), from the same replicates."""
    from agglom.metrics.bootstrap import Resampler, strata_by

    y_ref, y_new = np.asarray(y_ref).astype(int), np.asarray(y_new).astype(int)
    s_ref, s_new = np.asarray(s_ref, dtype=float), np.asarray(s_new, dtype=float)
    a, b = rank_auc(y_ref, s_ref), rank_auc(y_new, s_new)
    size, rng = min(len(y_ref), len(y_new)), np.random.default_rng(seed + 4)
    ea, eb = ece_at(y_ref, s_ref, size, rng), ece_at(y_new, s_new, size, rng)
    out: Dict[str, Any] = {"reference": a, "batch": b, "delta": None if a is None or b is None else b - a, "ci": None,
                           "n_reference": int(len(y_ref)), "n_batch": int(len(y_new)),
                           "ece": {"reference": ea, "batch": eb, "delta": None if ea is None or eb is None else eb - ea,
                                   "ci": None, "binning": ECE_BINNING, "at_size": int(size)}}
    if n_boot <= 0 or (out["delta"] is None and out["ece"]["delta"] is None):
        return out

    def auc_diff(i: np.ndarray, j: np.ndarray) -> float:
        ra, rb = rank_auc(y_ref[i], s_ref[i]), rank_auc(y_new[j], s_new[j])
        return float("nan") if ra is None or rb is None else rb - ra

    def ece_diff(i: np.ndarray, j: np.ndarray) -> float:
        xa, xb = ece_at(y_ref[i], s_ref[i], size, rng, 1), ece_at(y_new[j], s_new[j], size, rng, 1)
        return float("nan") if xa is None or xb is None else xb - xa

    ref, new = Resampler(strata_by(y_ref)), Resampler(strata_by(y_new))
    pairs = list(zip(ref.replicates(n_boot, seed), new.replicates(n_boot, seed + 1)))
    jack = [auc_diff(i, j) for i, j in zip(ref.jackknife(20, seed + 2), new.jackknife(20, seed + 3))]
    out["ci"] = _interval(out["delta"], [auc_diff(i, j) for i, j in pairs], jack, ci)
    out["ece"]["ci"] = _interval(out["ece"]["delta"], [ece_diff(i, j) for i, j in pairs], [], ci)
    return out


def bonferroni(ps: Sequence[Optional[float]], alpha: float) -> float:
    """The per-test threshold alpha / m over the tests that were run (m = the non-None p-values, at least 1)."""
    return alpha / max(1, sum(p is not None for p in ps))


__all__ = ["fit_pca", "project", "subsample", "mmd_test", "ks_test", "proportion_test", "rank_auc", "auc_delta",
           "probe_ece", "ece_at", "bonferroni", "ECE_BINNING"]
