"""Numeric attributes counted in bins in the datasheet: ``agglom data pack attr_bins={Age: [0, 40, 60, 80, 200]}``.

An age recorded per year gives one datasheet row per year; bins give the rows a reader (and a model card) can use.
Binning here is a reporting choice only: the samples keep their raw values, and the groups that training and
evaluation use come from the recipe's ``groups.specs`` (``{name: age_bin, attr: Age, bins: [0, 40, 60, 80, 200]}``
gives the same groups as these bins). A value is put in its bin by the code ``groups.specs`` uses
(agglom/data/groups.py :class:`~agglom.data.groups.GroupIndexer`), so the datasheet's counts are the group sizes
training sees: the same bin names (``[40,60)``) and the same ``unknown`` group for a value outside every bin, one
that is not a number and one that is missing — counted by reason, never dropped.

- :func:`check_edges` / :func:`check_attr_bins`: the option refused with a message naming what is wrong, before
  anything is written (agglom/config/rules.py checks its shape when the config loads);
- :class:`BinCounter`: images and patients per split x bin while samples are written (agglom/data/writer.py
  ``DatasheetBuilder``), the datasheet's ``attribute_bins`` section;
- :func:`attribute_lines` / :func:`patient_lines`: how ``agglom data info`` prints them.
"""
from __future__ import annotations

import difflib
import math
from collections import Counter, defaultdict
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from agglom.data.groups import UNKNOWN, GroupIndexer, bin_names, fmt_value
from agglom.data.patients import PATIENT
from agglom.errors import ConfigError

REASONS = ("out_of_range", "not_numeric", "missing")  # why a value is in the ``unknown`` group
Edges = List[Union[int, float]]


def _edge(e: Any) -> Union[int, float]:
    """An edge as the datasheet stores it: ``40`` rather than ``40.0``."""
    x = float(e)
    return int(x) if x.is_integer() else x


def _is_missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def check_edges(attr: str, edges: Any) -> Edges:
    """The bin edges of ``attr`` as numbers; ConfigError unless they are at least two strictly increasing finite
    numbers (``[0, 40, 60, 80, 200]`` gives ``[0,40)``, ``[40,60)``, ``[60,80)``, ``[80,200)``)."""
    where = f"attr_bins.{attr}"
    if not isinstance(edges, Sequence) or isinstance(edges, (str, bytes)):
        raise ConfigError(f"{where}={edges!r}: give a list of bin edges, e.g. {where}=[0, 40, 60, 80, 200]")
    shown = "[" + ", ".join(fmt_value(e) for e in edges) + "]"
    if len(edges) < 2:
        raise ConfigError(f"{where}={shown}: give at least two edges (n edges make n - 1 bins, e.g. [0, 40, 60, 80, "
                          "200])")
    bad = [e for e in edges if isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e)]
    if bad:
        raise ConfigError(f"{where}={shown}: {fmt_value(bad[0])} is not a finite number; every edge must be one "
                          "(a value past the last edge is counted as out of range, so no infinite edge is needed)")
    down = next(((a, b) for a, b in zip(edges, edges[1:]) if not b > a), None)
    if down is not None:
        raise ConfigError(f"{where}={shown}: the edges must increase strictly ({fmt_value(down[0])} then "
                          f"{fmt_value(down[1])}); bin i is [edge i, edge i+1)")
    return [_edge(e) for e in edges]


def _plain_bins(bins: Any) -> Dict[str, Any]:
    """``attr_bins`` as a plain dict (from a DictConfig, a mapping or nothing)."""
    if not bins:
        return {}
    if not isinstance(bins, Mapping) and not hasattr(bins, "items"):
        raise ConfigError(f"attr_bins={bins!r}: give a mapping attribute -> bin edges, e.g. "
                          "attr_bins={Age: [0, 40, 60, 80, 200]}")
    return {str(a): list(e) if hasattr(e, "__iter__") and not isinstance(e, (str, bytes)) else e
            for a, e in bins.items()}


def check_bin_option(bins: Any) -> Dict[str, Edges]:
    """``attr_bins`` checked on its own (before any file is read): attribute -> edges."""
    out: Dict[str, Edges] = {}
    for attr, edges in _plain_bins(bins).items():
        if attr == PATIENT:
            raise ConfigError(f"attr_bins.{PATIENT}: {PATIENT!r} is the patient id, not an attribute to bin")
        out[attr] = check_edges(attr, edges)
    return out


def check_attr_bins(bins: Any, attrs: Sequence[Mapping[str, Any]]) -> Dict[str, Edges]:
    """``attr_bins`` checked against the samples' attributes ``attrs``; returns attribute -> edges. ConfigError
    naming the valid attributes for an attribute no sample has a value of, and for one no sample holds a number
    of (bins count numbers)."""
    checked = check_bin_option(bins)
    if not checked:
        return {}
    known: Set[str] = {a for r in attrs for a, v in r.items() if a != PATIENT and not _is_missing(v)}
    for attr in checked:
        if attr not in known:
            close = difflib.get_close_matches(attr, sorted(known), n=1, cutoff=0.5)
            raise ConfigError(f"attr_bins.{attr}: no sample has a value of attribute {attr!r}"
                              + (f" (did you mean {close[0]}?)" if close else "")
                              + f"; the attributes are: {', '.join(sorted(known)) or 'none'}")
        values = [r[attr] for r in attrs if not _is_missing(r.get(attr))]
        if values and not any(_reason(v) != "not_numeric" for v in values):
            distinct = sorted({fmt_value(v) for v in values})
            seen = ", ".join(distinct[:4]) + (", ..." if len(distinct) > 4 else "")
            raise ConfigError(f"attr_bins.{attr}: no sample holds a number in {attr!r} (values: {seen}); bins "
                              "count numeric attributes (a categorical one is counted per value without them)")
    return checked


def _reason(v: Any) -> str:
    """Why a value falls outside every bin: ``missing``, ``not_numeric`` or ``out_of_range`` (a finite number)."""
    if _is_missing(v):
        return "missing"
    if isinstance(v, bool):
        return "not_numeric"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return "not_numeric"
    return "out_of_range" if not math.isnan(x) else "not_numeric"


class BinCounter:
    """Images and patients per split x bin of each binned attribute, while samples are written."""

    def __init__(self, bins: Optional[Mapping[str, Sequence[float]]] = None) -> None:
        self.edges: Dict[str, Edges] = {a: [_edge(e) for e in edges] for a, edges in (bins or {}).items()}
        self.names: Dict[str, List[str]] = {a: bin_names(e) for a, e in self.edges.items()}
        # the groups.specs code path itself: a value lands where training puts it
        self._groups = GroupIndexer([{"name": a, "attr": a, "bins": list(e)} for a, e in self.edges.items()],
                                    by=next(iter(self.edges))) if self.edges else None
        self.images: Dict[str, Dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))  # attr > split > bin
        self.reasons: Dict[str, Dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))  # attr > split > why
        self.patients: Dict[str, Dict[str, Dict[str, Set[str]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(set)))  # attr > split > bin > patients
        self.seen_patients = False

    def __bool__(self) -> bool:
        return bool(self.edges)

    def bin_of(self, attr: str, attrs: Mapping[str, Any]) -> Tuple[str, Optional[str]]:
        """(bin name or ``unknown``, the reason for ``unknown`` or None) of one sample's attributes."""
        assert self._groups is not None
        name = self._groups.values_of(attr, attrs)
        return (name, None) if name != UNKNOWN else (UNKNOWN, _reason(attrs.get(attr)))

    def add(self, split: str, attrs: Mapping[str, Any]) -> None:
        if not self.edges:
            return
        pid = attrs.get(PATIENT)
        pid = None if _is_missing(pid) else str(pid)
        self.seen_patients = self.seen_patients or pid is not None
        for attr in self.edges:
            name, why = self.bin_of(attr, attrs)
            self.images[attr][split][name] += 1
            if why is not None:
                self.reasons[attr][split][why] += 1
            if pid is not None:
                self.patients[attr][split][name].add(pid)

    def params(self) -> Dict[str, Edges]:
        """The datasheet's ``params.attr_bins``: attribute -> edges."""
        return {a: list(e) for a, e in self.edges.items()}

    def section(self, splits: Sequence[str]) -> Dict[str, Any]:
        """The datasheet's ``attribute_bins``: ``{attr: {"edges", "bins", "images": {split: {bin: n, "unknown": n}},
        "unknown": {split: {"out_of_range", "not_numeric", "missing"}}, "patients": {split: {bin: n, "unknown":
        n}}}}``; ``patients`` only when samples name patients (a patient counts in each bin its images show)."""
        out: Dict[str, Any] = {}
        for a, edges in self.edges.items():
            names = self.names[a] + [UNKNOWN]
            entry: Dict[str, Any] = {
                "edges": list(edges), "bins": list(self.names[a]),
                "images": {s: {n: int(self.images[a][s][n]) for n in names} for s in splits},
                "unknown": {s: {r: int(self.reasons[a][s][r]) for r in REASONS} for s in splits}}
            if self.seen_patients:
                entry["patients"] = {s: {n: len(self.patients[a][s][n]) for n in names} for s in splits}
            out[a] = entry
        return out


def _row(name: str, cells: Sequence[Any], width: int) -> str:
    return f"{name:<24}" + "".join(f"{c:>{width}}" for c in cells)


def attribute_lines(attr: str, info: Mapping[str, Any], entry: Mapping[str, Any], splits: Sequence[str],
                    width: int) -> List[str]:
    """A binned attribute as ``agglom data info`` prints it: images per bin and split, then those in no bin by
    reason (out of range, not a number when there are any, missing)."""
    edges = ", ".join(fmt_value(e) for e in entry.get("edges", []))
    images, unknown = entry.get("images", {}), entry.get("unknown", {})
    lines = [f"{attr} ({info.get('type', 'numeric')}) in bins [{edges}]"]
    for name in entry.get("bins", []):
        lines.append(_row(f"  {name}", [images.get(s, {}).get(name, 0) for s in splits], width))
    for reason, label in (("out_of_range", "(out of range)"), ("not_numeric", "(not a number)"),
                          ("missing", "(missing)")):
        counts = [unknown.get(s, {}).get(reason, 0) for s in splits]
        if reason != "not_numeric" or any(counts):
            lines.append(_row(f"  {label}", counts, width))
    return lines


def patient_lines(attr: str, entry: Mapping[str, Any], splits: Sequence[str], width: int) -> List[str]:
    """Patients per bin (and in ``unknown``) of a binned attribute, for the patients block of ``agglom data info``."""
    per = entry.get("patients") or {}
    return [_row(f"  {attr}={name}", [per.get(s, {}).get(name, 0) for s in splits], width)
            for name in list(entry.get("bins", [])) + [UNKNOWN]]


__all__ = ["REASONS", "check_edges", "check_bin_option", "check_attr_bins", "BinCounter", "attribute_lines",
           "patient_lines"]
