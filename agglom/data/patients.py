"""Patients: the reserved attribute that says which images come from one person.

Clinical sets hold several images per patient. A sample's patient id travels as the attribute ``patient`` (written
by ``agglom data pack ... patient_col=COL`` or added to existing shards by a sidecar). It is never a group
attribute: splits keep a patient whole and every bootstrap resamples patients (docs/guide/data.md).

This module holds what the writers need to know about patients, apart from how they are read
(agglom/data/pack_patients.py) and written (agglom/data/writer.py):

- :func:`patient_split`: the patient-level train/val/test draw (agglom/data/splits.py ``grouped_split``);
- :func:`patient_from_path` and :func:`repeated_patients_warning`: patients that CheXpert-style
  (``patientNNNNN/studyN/``) or MIMIC-style (``pNN/pNNNNNNNN/sNNNN/``) paths reveal;
- :func:`apply_patient_attrs`: the rule for an attribute that differs between one patient's images;
- :func:`leaked_patients` / :func:`check_split_col`: patients found in two splits;
- :class:`PatientCounter` and :func:`summary_lines`: the datasheet's ``patients`` section and how
  ``agglom data info`` prints it.
"""
from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from typing import Any, Dict, Hashable, List, Mapping, MutableMapping, Optional, Sequence, Tuple

import numpy as np

from agglom.config.choices import PATIENT_ATTRS
from agglom.data.groups import fmt_value
from agglom.data.splits import grouped_split
from agglom.errors import ConfigError

PATIENT = "patient"
MAX_NUMERIC_GROUPS = 10  # a numeric attribute with more values is not counted per value in ``patients.by_attribute``
#: patient ids in paths or keys (a key is the path with ``/`` made ``_``): CheXpert, then MIMIC-CXR
_PATH_PATTERNS = (
    re.compile(r"(?:^|[/\\_])(patient\d+)[/\\_]study\d+(?=$|[/\\_.])", re.IGNORECASE),
    re.compile(r"(?:^|[/\\_])p\d\d[/\\_](p\d{4,})[/\\_]s\d+(?=$|[/\\_.])"),
)


def patient_ids(attrs: Sequence[Mapping[str, Any]]) -> Optional[np.ndarray]:
    """``[N]`` patient ids (str) of samples' attributes, or None when no sample names a patient. A sample without
    one is its own patient (its position makes the id unique)."""
    if not any(a.get(PATIENT) not in (None, "") for a in attrs):
        return None
    return np.asarray([str(a[PATIENT]) if a.get(PATIENT) not in (None, "") else f"\x00image{i}"
                       for i, a in enumerate(attrs)], dtype=object)


def _known(p: Any) -> bool:
    return p is not None and p != ""


def _missing(v: Any) -> bool:
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def patient_split(keys: Sequence[str], patients: Sequence[Optional[str]], strata: Sequence[Hashable],
                  fractions: Mapping[str, float], seed: int = 0) -> Dict[str, str]:
    """key -> split with every patient's images in one split (a key without a patient is a patient of its own).
    A patient is stratified by the stratum (label, then the ``stratify`` attributes) its images show most often,
    a tie going to the smallest; with one image per patient the draw is the image-level one, key for key."""
    groups = [("p", str(p)) if _known(p) else ("k", k) for k, p in zip(keys, patients)]
    return grouped_split(keys, groups, strata, fractions, seed=seed)


def patient_from_path(*names: Optional[str]) -> Optional[str]:
    """The patient id a CheXpert (``.../patient00001/study1/...``) or MIMIC-CXR (``p10/p10000032/s50414267/``) path
    or sample key shows, from the first of ``names`` that shows one; None when none does."""
    for name in names:
        for pattern in _PATH_PATTERNS:
            m = pattern.search(name or "")
            if m:
                return m.group(1)
    return None


def repeated_patients_warning(keys: Sequence[str], sources: Sequence[Optional[str]],
                              command: str = "agglom data pack") -> Optional[str]:
    """A warning when images' paths (or keys) show patients with several images but no patient was given: the
    images split one by one could put a patient in train and in test. None when no patient repeats."""
    per = Counter(p for p in (patient_from_path(s, k) for k, s in zip(keys, sources)) if p)
    shared = {p: n for p, n in per.items() if n > 1}
    if not shared:
        return None
    example = min(shared)
    return (f"{command}: warning: {sum(shared.values())} of {len(keys)} images share an apparent patient with "
            f"another image ({len(shared)} patients by their paths, e.g. {example!r} with {shared[example]} images) "
            "but no patient id was given, so the split is drawn image by image and one patient's images can land in "
            "train and in test. Give patient_col=COLUMN (the patient id column) or patient_from_path=true")


def _by_patient(patients: Sequence[Optional[str]]) -> Dict[str, List[int]]:
    out: Dict[str, List[int]] = defaultdict(list)
    for i, p in enumerate(patients):
        if _known(p):
            out[str(p)].append(i)
    return out


def _values(idx: Sequence[int], attrs: Sequence[Mapping[str, Any]], a: str) -> List[Optional[str]]:
    return sorted({None if _missing(attrs[i].get(a)) else fmt_value(attrs[i][a]) for i in idx}, key=str)


def varying_attributes(patients: Sequence[Optional[str]], attrs: Sequence[Mapping[str, Any]]
                       ) -> Dict[str, List[str]]:
    """attribute -> the patients (sorted) whose images do not all show one value of it; a value on one image and
    none on another is a change (a sex left blank at one visit)."""
    out: Dict[str, List[str]] = defaultdict(list)
    for p, idx in sorted(_by_patient(patients).items()):
        if len(idx) > 1:
            for a in sorted({a for i in idx for a in attrs[i] if a != PATIENT}):
                if len(_values(idx, attrs, a)) > 1:
                    out[a].append(p)
    return dict(sorted(out.items()))


def _natural(text: str) -> Tuple[Any, ...]:
    """Sort key with numbers compared as numbers (``study2`` before ``study10``)."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def apply_patient_attrs(rule: str, patients: Sequence[Optional[str]], order: Sequence[str],
                        attrs: Sequence[MutableMapping[str, Any]]) -> Dict[str, int]:
    """Apply ``patient_attrs=rule`` to attributes that differ between one patient's images; returns attribute ->
    how many patients' values differed before the rule. ``per_image``: each image keeps its own value. ``first``:
    every image of the patient takes the value of the patient's first image that has one, images in the order of
    ``order`` (their source paths, numbers compared as numbers). ``refuse``: ConfigError naming a patient."""
    if rule not in PATIENT_ATTRS:
        raise ConfigError(f"patient_attrs={rule!r}: choose one of {', '.join(PATIENT_ATTRS)}")
    varying = varying_attributes(patients, attrs)
    if varying and rule == "refuse":
        a, who = next(iter(varying.items()))
        idx = _by_patient(patients)[who[0]]
        shown = ", ".join("(blank)" if v is None else v for v in _values(idx, attrs, a))
        counts = ", ".join(f"{k}: {len(v)}" for k, v in varying.items())
        raise ConfigError(f"patient_attrs=refuse: attributes change between one patient's images ({counts} "
                          f"patients; e.g. patient {who[0]!r} has {a} = {shown}); fix the table, or choose "
                          "patient_attrs=per_image (each image keeps its own value) or patient_attrs=first (each "
                          "patient's first recorded value)")
    if varying and rule == "first":
        groups = _by_patient(patients)
        for a, who in varying.items():
            for p in who:
                idx = sorted(groups[p], key=lambda i: _natural(order[i]))
                first = next((attrs[i][a] for i in idx if not _missing(attrs[i].get(a))), None)
                for i in idx:
                    if first is None:
                        attrs[i].pop(a, None)
                    else:
                        attrs[i][a] = first
    return {a: len(who) for a, who in varying.items()}


def leaked_patients(patients: Sequence[Optional[str]], splits: Sequence[str]) -> Dict[str, List[str]]:
    """patient -> its splits, for every patient whose images are in more than one split."""
    seen: Dict[str, set] = defaultdict(set)
    for p, s in zip(patients, splits):
        if _known(p):
            seen[str(p)].add(s)
    return {p: sorted(s) for p, s in sorted(seen.items()) if len(s) > 1}


def check_split_col(split_col: str, patients: Sequence[Optional[str]], splits: Sequence[str]) -> None:
    """Refuse a given split (``split_col``) that puts a patient in two splits: that patient's images would be
    trained on and then judged, which no evaluation can see."""
    leaked = leaked_patients(patients, splits)
    if leaked:
        p, where = next(iter(leaked.items()))
        raise ConfigError(f"split_col={split_col!r} puts {len(leaked)} patient(s) in two splits (e.g. patient {p!r} "
                          f"in {', '.join(where)}): their images would be trained on and then tested. Give each "
                          "patient one split in that column, or leave split_col out to draw a patient-level split")


class PatientCounter:
    """Patients per split and per attribute value while samples are written (the datasheet's ``patients``)."""

    def __init__(self) -> None:
        self.splits: Dict[str, Counter] = defaultdict(Counter)  # patient -> split -> images
        self.without: Counter = Counter()  # split -> images without a patient
        self.by_value: Dict[str, Dict[str, Dict[str, Counter]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(Counter)))  # attr -> split -> value -> patient -> images
        self.seen: Dict[str, Dict[str, set]] = defaultdict(lambda: defaultdict(set))  # patient -> attr -> values

    def add(self, split: str, attrs: Mapping[str, Any]) -> None:
        p = attrs.get(PATIENT)
        if not _known(p):
            self.without[split] += 1
            return
        p = str(p)
        first = p not in self.splits
        self.splits[p][split] += 1
        names = set(self.seen[p]) | {a for a in attrs if a != PATIENT}
        for a in names:
            v = attrs.get(a)
            value = None if _missing(v) else fmt_value(v)
            if first or a in self.seen[p]:
                self.seen[p][a].add(value)
            else:  # an attribute the patient's earlier images lacked
                self.seen[p][a].update((None, value))
            if value is not None:
                self.by_value[a][split][value][p] += 1

    def __bool__(self) -> bool:
        return bool(self.splits)

    def section(self, splits: Sequence[str], attributes: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
        """``{"patients", "images", "images_without_patient", "patients_in_two_splits", "splits": {split:
        {"patients", "images", "images_without_patient"}}, "by_attribute": {attr: {split: {value: {"patients",
        "images"}}}}, "attributes_varying": {attr: patients}}``; ``by_attribute`` for the datasheet's ``attributes``
        that are categorical or numeric with at most :data:`MAX_NUMERIC_GROUPS` values (an age is binned into
        groups later; its patients per year would be noise). A patient whose attribute changes counts under each
        of its values."""
        listed = {a for a, e in attributes.items() if "values" in e and (
            e.get("type") != "numeric" or len(e["values"]) <= MAX_NUMERIC_GROUPS)}
        per = {s: [c[s] for c in self.splits.values() if c[s]] for s in splits}
        varying = Counter(a for vals in self.seen.values() for a, v in vals.items() if len(v) > 1)
        return {"patients": len(self.splits), "images": sum(sum(c.values()) for c in self.splits.values()),
                "images_without_patient": sum(self.without.values()),
                "patients_in_two_splits": sum(1 for c in self.splits.values() if len(c) > 1),
                "splits": {s: {"patients": len(per[s]), "images": sum(per[s]),
                               "images_without_patient": self.without[s]} for s in splits},
                "by_attribute": {a: {s: {v: {"patients": len(c), "images": sum(c.values())}
                                         for v, c in sorted(self.by_value[a][s].items())} for s in splits}
                                 for a in sorted(self.by_value) if a in listed},
                "attributes_varying": dict(sorted(varying.items()))}


def patients_text(n: int) -> str:
    """``1 patient``, ``3 patients``."""
    return f"{n} patient{'' if n == 1 else 's'}"


def summary_lines(section: Mapping[str, Any], splits: Sequence[str], width: int,
                  binned: Optional[Mapping[str, List[str]]] = None) -> List[str]:
    """The datasheet's ``patients`` section as ``agglom data info`` prints it: patients and their images per split,
    patients per attribute value, patients in two splits and attributes that change within a patient. ``binned``:
    attribute -> its rows of patients per bin (agglom/data/binning.py ``patient_lines``), printed instead of its
    rows per value."""
    rows = section.get("splits", {})

    def row(name: str, cells: Sequence[Any]) -> str:
        return f"{name:<24}" + "".join(f"{c:>{width}}" for c in cells)

    lines = [row("patients", [rows.get(s, {}).get("patients", 0) for s in splits]),
             row("  their images", [rows.get(s, {}).get("images", 0) for s in splits])]
    if section.get("images_without_patient"):
        lines.append(row("  images, no patient", [rows.get(s, {}).get("images_without_patient", 0) for s in splits]))
    by_attribute = section.get("by_attribute", {})
    binned = binned or {}
    for a in sorted(set(by_attribute) | set(binned)):
        if a in binned:
            lines.extend(binned[a])
            continue
        per = by_attribute[a]
        for v in sorted({v for s in splits for v in per.get(s, {})}):
            lines.append(row(f"  {a}={v}", [per.get(s, {}).get(v, {}).get("patients", 0) for s in splits]))
    varying = section.get("attributes_varying") or {}
    lines.append(f"patients in two splits: {section.get('patients_in_two_splits', 0)} (of {section.get('patients', 0)})")
    lines.append("attributes changing within a patient: "
                 + (", ".join(f"{a} ({patients_text(n)})" for a, n in varying.items()) if varying else "none"))
    return lines


__all__ = ["PATIENT", "patient_ids", "patient_split", "patient_from_path", "repeated_patients_warning",
           "varying_attributes", "apply_patient_attrs", "leaked_patients", "check_split_col", "PatientCounter",
           "summary_lines", "patients_text"]
