"""Markdown for the report: a number (``undefined`` for NaN), a metric with its interval, a table. Shared by
:mod:`agglom.eval.report_md` and the sections that render their own part (:mod:`agglom.eval.sam_report`)."""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence


def _num(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "undefined"
    return f"{float(v):.{nd}f}"


def _mci(m: Optional[Mapping[str, Any]], nd: int = 3) -> str:
    if not m:
        return "–"
    s = _num(m.get("value"), nd)
    ci = m.get("ci")
    if s != "undefined" and ci:
        s += f" [{_num(ci[0], nd)}, {_num(ci[1], nd)}]"
    return s


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
