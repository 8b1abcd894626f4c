"""Group means of a per-sample quantity (fidelity, agreement) with the worst group, the gap and BCa intervals
(resampling within groups); re-exported by :mod:`agglom.eval.metrics`; results as :mod:`agglom.metrics.values` writes them."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from agglom.metrics.group_stats import _spread
from agglom.metrics.values import _as_groups, _group_order, _m

__all__ = ["group_mean_summary"]


def group_mean_summary(
    values: Any,
    groups: Any,
    *,
    higher_is_better: bool = True,
    exclude_unknown: bool = False,
    unknown: str = "unknown",
    n_boot: int = 0,
    ci: float = 0.95,
    seed: int = 0,
    patients: Any = None,
) -> Dict[str, Any]:
    """Group means of a per-sample quantity (e.g. student-teacher cosine fidelity), with worst group and gap.

    Returns ``{"overall": M, "by_group": {g: M + {"n"}}, "worst_group": M + {"group"}, "gap": M,
    "higher_is_better": bool, "excluded_from_gaps": [...]}`` (bootstrap: resampling within groups, patients
    rather than samples when ``patients`` gives an id per sample).
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
        from agglom.metrics.bootstrap import Resampler, clusters_of, replicate
        from agglom.metrics.intervals import bca_interval

        def row(idx: np.ndarray) -> List[float]:
            o, mm, w, gp = stats(v[idx], g[idx])
            return [o, w, gp] + [mm[n] for n in names]

        resampler = Resampler([np.flatnonzero(g == n) for n in names], clusters_of(patients, v.size))
        r = replicate(row, resampler, n_boot, seed)
        points = [overall, worst, gap] + [means[n] for n in names]
        for j, k in enumerate(["overall", "worst", "gap"] + [f"g:{n}" for n in names]):
            cis[k] = bca_interval(points[j], r["reps"][:, j], r["jack"][:, j], ci)
    inc_means = {n: means[n] for n in included if np.isfinite(means[n])}
    wg = (min if higher_is_better else max)(inc_means, key=inc_means.get) if inc_means else None
    out = {
        "overall": _m(overall, cis.get("overall")),
        "by_group": {n: _m(means[n], cis.get(f"g:{n}"), n=int(np.sum(g == n))) for n in names},
        "worst_group": _m(worst, cis.get("worst"), group=wg),
        "gap": _m(gap, cis.get("gap")),
        "higher_is_better": higher_is_better,
        "excluded_from_gaps": [n for n in names if n not in included],
    }
    if patients is not None:
        from agglom.metrics.bootstrap import add_patient_counts

        add_patient_counts(out, g, np.asarray(patients, dtype=object).reshape(-1), per_group="by_group")
    return out
