"""Markdown for the report: a number (``undefined`` for NaN), a metric with its interval, a table. Shared by
:mod:`agglom.eval.report_md` and the sections that render their own part (:mod:`agglom.eval.sam_report`)."""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence


def _num(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "undefined"
    return f"{float(v):.{nd}f}"


def with_interval(d: Optional[Mapping[str, Any]], spec: str = ".3f", key: str = "value", empty: str = "–") -> str:
    """A reported number with its interval, e.g. ``0.912 [0.887, 0.934]`` or ``+0.0529 [+0.0377, +0.0702]``
    (``spec`` formats each number); "undefined" for a missing or non-finite value, ``empty`` for no entry. The
    one formatter of every report, verdict and comparison."""
    if not d:
        return empty
    v = d.get(key)
    if v is None or not math.isfinite(float(v)):
        return "undefined"

    def one(x: Any) -> str:
        return "undefined" if x is None or not math.isfinite(float(x)) else format(float(x), spec)

    ci = d.get("ci")
    return one(v) + (f" [{one(ci[0])}, {one(ci[1])}]" if ci else "")


def _mci(m: Optional[Mapping[str, Any]], nd: int = 3) -> str:
    return with_interval(m, f".{nd}f")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return out + [""]



def _n(entry: Mapping[str, Any]) -> Any:
    """A group's size: its images, or "P patients / N images" when the samples name their patients."""
    if entry.get("n_patients") is None:
        return entry.get("n")
    return f"{entry['n_patients']} patients / {entry.get('n')} images"


__all__: List[str] = []
