"""How one reported number is written (``{"value", "ci"}``, NaN as null) and how group labels are read: the shared
conventions of every metric module (:mod:`agglom.eval.metrics`, :mod:`agglom.metrics.group_means`,
:mod:`agglom.eval.dense.dense`)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np


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


def _m(value: float, ci: Optional[Sequence[Any]] = None, **extra: Any) -> Dict[str, Any]:
    """One reported metric: ``{"value": float|None, "ci": [lo, hi]|None, **extra}``; a third ``ci`` element True
    (an interval widened to contain its point estimate) adds ``"ci_widened": true``."""
    out: Dict[str, Any] = {"value": _f(value)}
    if ci is None or ci[0] is None or not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        out["ci"] = None
    else:
        out["ci"] = [float(ci[0]), float(ci[1])]
        if len(ci) > 2 and ci[2]:
            out["ci_widened"] = True
    out.update(extra)
    return out


def _as_groups(groups: Any, n: int) -> np.ndarray:
    g = np.asarray(groups).astype(str)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    return g


def _group_order(g: np.ndarray, unknown: str) -> List[str]:
    names = sorted(set(g.tolist()) - {unknown})
    return names + ([unknown] if unknown in set(g.tolist()) else [])


def _check_metric(m: Any, where: str, problems: List[str]) -> None:
    if not isinstance(m, Mapping) or "value" not in m or "ci" not in m:
        problems.append(f"{where}: expected {{'value', 'ci'}}")
        return
    v = m["value"]
    if v is not None and not isinstance(v, (int, float)):
        problems.append(f"{where}.value: not a number or null")
    if m["ci"] is not None and (not isinstance(m["ci"], (list, tuple)) or len(m["ci"]) != 2):
        problems.append(f"{where}.ci: expected [lo, hi] or null")


__all__ = ["nan_to_none"]
