"""Utility-fairness fronts: Pareto set, 2D hypervolume and minimax-Pareto model selection.

Points are ``(utility, gap)``: utility is maximised (e.g. validation AUC), gap is minimised (e.g. AUC gap).
Candidates are dicts ``{"name": str, "utility": float, "gap": float, "worst_group": float, ...}``; extra keys
(``lambda``, ``objective``...) are carried through. Points with a NaN/None utility or gap are never Pareto
optimal and are listed as ``"undefined"``.

Selection (MEDFAIR's minimax-Pareto rule, docs/metrics.md): among the Pareto-optimal candidates, choose the one
whose worst-group validation AUC (``worst_group``) is highest; ties go to higher utility, then lower gap, then
name order.

Hypervolume: the area dominated by the front and bounded by the reference point ``(utility_ref, gap_ref)``,
i.e. the union over Pareto points p of ``[utility_ref, p.utility] x [p.gap, gap_ref]``. Default reference
:data:`DEFAULT_REFERENCE` = ``(0.5, 1.0)``: chance-level AUC and the largest possible gap of a [0, 1] metric.
Points not strictly better than the reference in both coordinates add nothing. Compare hypervolumes only under
the same reference (it is stored in the output).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["DEFAULT_REFERENCE", "pareto_mask", "hypervolume_2d", "minimax_pareto_select", "front_summary"]

DEFAULT_REFERENCE: Tuple[float, float] = (0.5, 1.0)  # (utility_ref, gap_ref)

SELECTION_RULE = (
    "minimax-Pareto (MEDFAIR): among Pareto-optimal candidates (max utility, min gap), the highest worst-group "
    "validation AUC; ties -> higher utility, lower gap, name; candidates that level down (a group worse than the "
    "reference beyond its paired validation interval) are excluded while any other candidate exists"
)


def _ok(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def pareto_mask(utility: Sequence[float], gap: Sequence[float]) -> np.ndarray:
    """Boolean mask of non-dominated points (maximise utility, minimise gap). Duplicates are all kept."""
    u = np.asarray([float(x) if _ok(x) else np.nan for x in utility])
    g = np.asarray([float(x) if _ok(x) else np.nan for x in gap])
    ok = np.isfinite(u) & np.isfinite(g)
    mask = np.zeros(u.size, dtype=bool)
    for i in np.flatnonzero(ok):
        dom = ok & (u >= u[i]) & (g <= g[i]) & ((u > u[i]) | (g < g[i]))
        mask[i] = not dom.any()
    return mask


def hypervolume_2d(
    utility: Sequence[float], gap: Sequence[float], reference: Tuple[float, float] = DEFAULT_REFERENCE
) -> float:
    """Area dominated by the points w.r.t. ``reference = (utility_ref, gap_ref)`` (see module docstring)."""
    ur, gr = reference
    pts = [(float(a), float(b)) for a, b in zip(utility, gap) if _ok(a) and _ok(b) and float(a) > ur and float(b) < gr]
    if not pts:
        return 0.0
    m = pareto_mask([p[0] for p in pts], [p[1] for p in pts])
    front = sorted({pts[i] for i in np.flatnonzero(m)}, key=lambda p: -p[0])  # utility desc -> gap desc
    area, prev_gap = 0.0, gr
    for u, g in front:  # sweep from the best-utility (largest gap) point to lower utility / smaller gap
        area += (u - ur) * (prev_gap - g)
        prev_gap = g
    return float(area)


def minimax_pareto_select(candidates: Sequence[Mapping[str, Any]]) -> Optional[Dict[str, Any]]:
    """The candidate chosen by the minimax-Pareto rule (``None`` when no candidate is defined).

    A candidate flagged ``levels_down`` (some group worse than under the reference beyond its interval) is never
    chosen while one that is not flagged exists: the rule then runs on the unflagged candidates alone."""
    if not candidates:
        return None
    fair = [c for c in candidates if not c.get("levels_down")]
    if fair and len(fair) < len(candidates):
        candidates = fair
    mask = pareto_mask([c.get("utility") for c in candidates], [c.get("gap") for c in candidates])
    pool = [c for c, m in zip(candidates, mask) if m and _ok(c.get("worst_group"))]
    if not pool:  # no worst-group value among the front: fall back to the front by utility
        pool = [c for c, m in zip(candidates, mask) if m]
        if not pool:
            return None
        return dict(sorted(pool, key=lambda c: (-float(c["utility"]), float(c["gap"]), str(c.get("name"))))[0])
    best = sorted(
        pool, key=lambda c: (-float(c["worst_group"]), -float(c["utility"]), float(c["gap"]), str(c.get("name")))
    )[0]
    return dict(best)


def front_summary(
    candidates: Sequence[Mapping[str, Any]],
    reference: Tuple[float, float] = DEFAULT_REFERENCE,
    utility_name: str = "val AUC",
    gap_name: str = "val AUC gap",
) -> Dict[str, Any]:
    """JSON-serialisable summary of a sweep::

    {"points": [{...candidate, "pareto": bool, "defined": bool}], "front": [names, utility descending],
     "hypervolume": float, "reference": {"utility": float, "gap": float},
     "selected": name | None, "selection_rule": str, "utility_name": str, "gap_name": str}
    """
    mask = pareto_mask([c.get("utility") for c in candidates], [c.get("gap") for c in candidates])
    pts: List[Dict[str, Any]] = []
    for c, m in zip(candidates, mask):
        p = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in dict(c).items()}
        for k in ("utility", "gap", "worst_group"):
            if k in p and p[k] is not None:
                p[k] = float(p[k])
        p["pareto"] = bool(m)
        p["defined"] = _ok(c.get("utility")) and _ok(c.get("gap"))
        pts.append(p)
    front = sorted([p for p in pts if p["pareto"]], key=lambda p: (-p["utility"], p["gap"]))
    sel = minimax_pareto_select(candidates)
    return {
        "points": pts,
        "front": [p.get("name") for p in front],
        "hypervolume": hypervolume_2d(
            [c.get("utility") for c in candidates], [c.get("gap") for c in candidates], reference
        ),
        "reference": {"utility": float(reference[0]), "gap": float(reference[1])},
        "selected": sel.get("name") if sel else None,
        "selection_rule": SELECTION_RULE,
        "utility_name": utility_name,
        "gap_name": gap_name,
    }
