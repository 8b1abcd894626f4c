"""Markdown for the report: a number (``undefined`` for NaN), a metric with its interval, a table. Shared by
:mod:`agglom.eval.report.markdown` and the sections that render their own part; the per-group table rows of a binary
result (:func:`agglom.eval.metrics.binary_group_metrics`), which the probe's and zero-shot's sections both show; the
console summary table (:func:`summary_table`, the report's teacher audit and the sections' console lines)."""
from __future__ import annotations

import math
from typing import Any, Iterable, List, Mapping, Optional, Sequence

from agglom.eval.metrics import headline, primary_threshold


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


def binary_row(label: str, r: Mapping[str, Any], binning: str = "range10") -> List[str]:
    t = primary_threshold(r)
    tr = r["thresholds"].get(t, {}) if t else {}
    wg = r["worst_group_auc"]
    return [
        label,
        _mci(r["auc"]),
        _mci(wg) + (f" ({wg.get('group')})" if wg.get("group") else ""),
        _mci(r["auc_gap"]),
        _mci(r["es_auc"]),
        _mci(r["ece"].get(binning, {}).get("gap")) if r.get("ece") else "–",
        _mci(tr.get("eod_worst_case")),
        _mci(tr.get("eod_mean")),
        _mci(tr.get("dpd")),
        f"{t} ({_num(tr.get('threshold'))})" if t else "–",
    ]


ATTR_HEADER = [
    "attribute / label", "AUC", "worst-group AUC", "AUC gap", "ES-AUC", "ECE gap (range10)",
    "EOD worst-case", "EOD mean", "DPD", "threshold",
]  # fmt: skip


def group_rows(r: Mapping[str, Any]) -> List[List[str]]:
    t = primary_threshold(r)
    rows = []
    for g in r["group_names"]:
        e = r["groups"][g]
        rates = r["thresholds"][t]["by_group"].get(g, {}) if t else {}
        rows.append([
            g + (" (excluded from gaps)" if g in r.get("excluded_from_gaps", []) else ""),
            _n(e), e["n_pos"], _mci(e["auc"]),
            *[_mci(e["ece"][b]) for b in ("range10", "unit15") if b in e["ece"]],
            _num(rates.get("tpr")), _num(rates.get("fpr")), _num(rates.get("selection_rate")),
        ])  # fmt: skip
    return rows


def summary_table(reports: Any, binning: str = "range10") -> str:
    """Console table ``model | attribute | AUC | worst-group AUC | AUC gap | ES-AUC | ECE gap | EOD | DPD``.

    ``reports``: one report dict, a list of them, or ``{name: report}``; every model in every report is listed
    (multi-label attributes show the macro mean). EOD is the fairlearn worst-case form, at the headline threshold.
    """
    if isinstance(reports, Mapping) and "schema" in reports:
        reports = [reports]
    elif isinstance(reports, Mapping):
        reports = list(reports.values())
    header = ["model", "attribute", "AUC", "worst-group AUC", "AUC gap", "ES-AUC", "ECE gap", "EOD", "DPD", "threshold"]
    rows: List[List[str]] = []
    for rep in reports:
        for mname, m in rep.get("models", {}).items():
            for attr, r in m.get("attributes", {}).items():
                h = headline(r, binning=binning)
                rows.append([mname, attr, *[_num(h[k]) for k in ("auc", "worst_group_auc", "auc_gap", "es_auc",
                             "ece_gap", "eod_worst_case", "dpd")], str(h["threshold"])])  # fmt: skip
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda r: " | ".join(str(c).ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *[fmt(r) for r in rows]])
