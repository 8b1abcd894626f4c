"""The rows of a pack CSV (`agglom data pack csv=`) as records: path, label, attributes, and the optional key,
split and mask columns — every row checked before anything is written.

Labels follow :mod:`agglom.data.labels`. A row whose label cell is not a label is skipped and counted
(``bad_label``); a column whose values do not agree on what a label is refuses the pack. An image listed on two
rows is never packed twice (it would land in two splits, a leak between train and test): two rows that say the
same thing about it (same label, attributes, key, split and mask) are one row plus a duplicate, dropped and counted
(``duplicate_row``, with the lines on stdout); two rows that disagree refuse the pack, naming the image, the lines
and what differs. Keys (``key_col``) must be usable sample keys and name one image each; splits (``split_col``)
must be given on every row, as names of letters, digits, '_' and '-'.
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from agglom.data.csvfile import read_csv
from agglom.data.groups import parse_value
from agglom.data.labels import binary_cell, class_of, label_names
from agglom.data.paths import shown
from agglom.data.patients import PATIENT

log = logging.getLogger("agglom.data.pack")
LABEL_POLICIES = {"uncertain": ("zeros", "ones", "drop"), "blank": ("zeros", "drop")}
NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")
COMPARED = ("label", "attrs", "key", "split", "mask_path", "patient")


def _uncertain(uncertain: str, converted: Counter) -> Optional[int]:
    """-1 (uncertain, as in CheXpert) by policy; None means drop the image."""
    converted["uncertain_label"] += 1
    return None if uncertain == "drop" else (1 if uncertain == "ones" else 0)


def row_label(r: Dict[str, str], label_cols: List[str], names: Optional[List[str]], uncertain: str, blank: str,
              converted: Counter) -> Any:
    """One row's label: a class index (names or integers; -1 follows ``uncertain``), or a multi-label list; None
    when the row is dropped by the label policy; ValueError when the cell is not a label."""
    if len(label_cols) == 1:
        v = (r.get(label_cols[0]) or "").strip()
        if v == "":
            raise ValueError("empty label")
        x = class_of(v, names)
        return _uncertain(uncertain, converted) if names is None and x == -1 else x
    label = []
    for c in label_cols:
        x = binary_cell(r.get(c) or "")
        if x is None:
            converted["blank_label"] += 1
            x = None if blank == "drop" else 0
        elif x == -1:
            x = _uncertain(uncertain, converted)
        label.append(x)
    return None if any(x is None for x in label) else label


def _check_columns(path: Path, cols: List[str], needed: Sequence[Optional[str]], attr_cols: List[str],
                   patient_col: Optional[str] = None) -> None:
    """Refuse a named column the CSV lacks, and an attribute ``patient`` that is not the patient column."""
    from agglom.config.load import ConfigError

    if PATIENT in attr_cols and patient_col != PATIENT:
        raise ConfigError(f"csv {shown(path)}: column {PATIENT!r} is reserved for the patient id; give "
                          f"patient_col={PATIENT} to use it as one, or list attr_cols without it")
    for c in needed:
        if c and c not in cols:
            raise ConfigError(f"csv {shown(path)}: no column {c!r} (columns: {cols})")
    for c in attr_cols:
        if c not in cols:
            raise ConfigError(f"csv {shown(path)}: no attribute column {c!r} (columns: {cols})")


def _lines(items: Sequence[Tuple[int, Any]], limit: int = 6) -> str:
    shown = ", ".join(str(ln) for ln, _ in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def _check_keys_and_splits(path: Path, recs: List[Dict[str, Any]], key_col: Optional[str],
                           split_col: Optional[str]) -> None:
    """Keys that cannot be sample keys or name two images, splits blank or with odd characters: refused."""
    from agglom.config.load import ConfigError

    if key_col:
        bad = [(r["line"], r["key"]) for r in recs if r["key"] and not NAME_RE.match(r["key"])]
        if bad:
            raise ConfigError(f"csv {shown(path)}: key_col {key_col!r} holds {bad[0][1]!r} (line {_lines(bad)}): a sample "
                              "key may use only letters, digits, '_' and '-'; fix those keys or leave key_col out")
        first: Dict[str, int] = {}
        for r in recs:
            if r["key"] and r["key"] in first:
                raise ConfigError(f"csv {shown(path)}: key {r['key']!r} names two images (lines {first[r['key']]} and "
                                  f"{r['line']}); give each image its own key")
            first.setdefault(r["key"], r["line"])
    if split_col:
        bad = [(r["line"], r["split"]) for r in recs if not NAME_RE.match(r["split"])]
        if bad:
            raise ConfigError(f"csv {shown(path)}: split_col {split_col!r} holds {bad[0][1]!r} (line {_lines(bad)}): give "
                              "every row a split named with letters, digits, '_' and '-' (train, val, test)")


def _refuse_conflicts(path: Path, conflicts: List[Tuple[str, int, int, List[str]]]) -> None:
    from agglom.config.load import ConfigError

    rel, a, b, differ = conflicts[0]
    more = f" (and {len(conflicts) - 1} more images on two rows that disagree)" if len(conflicts) > 1 else ""
    raise ConfigError(f"csv {shown(path)}: {rel!r} is listed twice with a different {', '.join(differ)} (lines {a} and "
                      f"{b}){more}; keep one row per image")


def _record(path: Path, r: Dict[str, str], ln: int, cols: Dict[str, Any], label: Any) -> Dict[str, Any]:
    rel = (r.get(cols["path"]) or "").strip()
    p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
    rec: Dict[str, Any] = {"path": p, "rel": rel, "label": label, "line": ln,
                           "attrs": {c: parse_value(r[c]) for c in cols["attrs"] if (r.get(c) or "").strip() != ""}}
    if cols["key"]:
        rec["key"] = (r.get(cols["key"]) or "").strip()
    if cols["split"]:
        rec["split"] = (r.get(cols["split"]) or "").strip()
    if cols["patient"] and (r.get(cols["patient"]) or "").strip():
        rec["patient"] = r[cols["patient"]].strip()  # an id, kept as written (00012 stays 00012)
    if cols["mask"] and (r.get(cols["mask"]) or "").strip():
        m = Path(r[cols["mask"]].strip())
        rec["mask_path"] = m if m.is_absolute() else path.parent / m
    return rec


def records_from_csv(path: Path, path_col: str, label_cols: List[str], attr_cols: List[str], key_col: Optional[str],
                     split_col: Optional[str], skipped: Counter, uncertain: str = "zeros", blank: str = "zeros",
                     converted: Optional[Counter] = None,
                     mask_col: Optional[str] = None, patient_col: Optional[str] = None
                     ) -> Tuple[List[Dict[str, Any]], Optional[List[str]]]:
    """Rows -> records. One label column: class names or integers (a blank cell drops the image; with values in
    {1, 0, -1} the -1 follows `uncertain`). Several label columns: a multi-label target, each column binary,
    -1 (uncertain) mapped by `uncertain` (U-Zeros / U-Ones / drop, as in CheXpert) and blank cells (not mentioned)
    by `blank`. ``mask_col``: a column with each image's mask file (relative to the CSV, or absolute; a blank cell:
    no mask), recorded as ``rec["mask_path"]``; ``patient_col``: each image's patient id, ``rec["patient"]`` (an
    attribute only when ``attr_cols`` lists it too). Duplicate rows, keys and splits: see the module."""
    from agglom.config.load import ConfigError

    converted = converted if converted is not None else Counter()
    for key, allowed in LABEL_POLICIES.items():
        if {"uncertain": uncertain, "blank": blank}[key] not in allowed:
            raise ConfigError(f"{key}= must be one of {', '.join(allowed)}")
    cols, rows = read_csv(path, "csv")
    used = {path_col, *label_cols, key_col, split_col, mask_col, patient_col}
    attr_cols = list(attr_cols) if attr_cols else [c for c in cols if c not in used and c]
    _check_columns(path, cols, [path_col, *label_cols, key_col, split_col, mask_col, patient_col], attr_cols,
                   patient_col)
    names = None
    if len(label_cols) == 1:
        c = label_cols[0]
        names = label_names(c, [(ln, r[c].strip()) for ln, r in rows if (r.get(c) or "").strip()])
    which = {"path": path_col, "attrs": attr_cols, "key": key_col, "split": split_col, "mask": mask_col,
             "patient": patient_col}
    recs, dups, conflicts = [], [], []
    seen: Dict[str, Dict[str, Any]] = {}
    for ln, r in rows:
        row_conv: Counter = Counter()
        try:
            label = row_label(r, label_cols, names, uncertain, blank, row_conv)
        except ValueError as e:
            skipped["bad_label"] += 1
            log.warning("pack: %s line %d: bad label (%s); skipped", shown(path), ln, e)
            continue
        rec = _record(path, r, ln, which, label)
        ident = os.path.normpath(str(rec["path"]))
        first = seen.setdefault(ident, rec)
        if first is not rec:
            differ = [f for f in COMPARED if first.get(f) != rec.get(f)]
            if differ:
                conflicts.append((rec["rel"], first["line"], ln, differ))
            else:
                dups.append((ln, rec["rel"]))
            continue
        converted.update(row_conv)
        if label is None:
            skipped["dropped_label"] += 1
            continue
        recs.append(rec)
    if conflicts:
        _refuse_conflicts(path, conflicts)
    if dups:
        skipped["duplicate_row"] += len(dups)
        print(f"agglom data pack: {shown(path)}: {len(dups)} row(s) repeat an earlier row exactly (lines {_lines(dups)}); "
              "each image is packed once", flush=True)
    _check_keys_and_splits(path, recs, key_col, split_col)
    return recs, names


__all__ = ["records_from_csv", "row_label", "LABEL_POLICIES"]
