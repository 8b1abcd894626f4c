"""Prediction files beside a report (``predictions.csv``, ``zero_shot_predictions.csv``, ``dense_predictions.csv``,
``sam_predictions.csv``): the rows, the CSV writer and reader, and one model's predictions read back for a
comparison. Used by several sections (:mod:`agglom.eval.classification`, :mod:`agglom.eval.zero_shot.zero_shot`) and by the
verdicts and the sweep."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from agglom.eval.csv_cells import cell, read_rows

__all__ = ["prediction_rows", "write_predictions_csv", "read_predictions_csv", "load_predictions"]


def prediction_rows(
    keys: Sequence[str],
    split: str | Sequence[str],
    y_true: Any,
    score: Any,
    thresholds: Mapping[str, Any],
    attributes: Mapping[str, Sequence[Any]],
    label_names: Optional[Sequence[str]] = None,
) -> List[Dict[str, Any]]:
    """Rows for :func:`write_predictions_csv`.

    Columns: ``key``, ``split``; one label: ``label``, ``score``, ``threshold:<name>``; multi-label:
    ``label:<l>``, ``score:<l>``, ``threshold:<name>:<l>``; then one column per attribute / proxy grouping
    (``attributes = {name: [N] group values}``). ``thresholds = {name: float | [L]}``.
    """
    Y, S = np.asarray(y_true), np.asarray(score, dtype=float)
    n = len(keys)
    splits = [split] * n if isinstance(split, str) else list(split)
    multi = Y.ndim == 2
    if multi:
        labs = list(label_names) if label_names is not None else [f"label{i}" for i in range(Y.shape[1])]
    rows = []
    for i in range(n):
        row: Dict[str, Any] = {"key": keys[i], "split": splits[i]}
        if multi:
            for j, lab in enumerate(labs):
                row[f"label:{lab}"] = int(Y[i, j])
                row[f"score:{lab}"] = float(S[i, j])
            for tn, tv in thresholds.items():
                tv = np.broadcast_to(np.asarray(tv, dtype=float), (len(labs),))
                for j, lab in enumerate(labs):
                    row[f"threshold:{tn}:{lab}"] = float(tv[j])
        else:
            row["label"] = int(Y[i])
            row["score"] = float(S[i])
            for tn, tv in thresholds.items():
                row[f"threshold:{tn}"] = float(np.asarray(tv, dtype=float).reshape(-1)[0])
        for a, vals in attributes.items():
            row[a] = vals[i]
        rows.append(row)
    return rows


def write_predictions_csv(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> str:
    """Write prediction rows (dicts) to CSV: ``key``, ``split``, label/score/threshold columns, then the rest in
    first-seen order. Floats are written with full precision (``repr``). Returns the path."""
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    first = [c for c in ("key", "split") if c in cols]
    lst = [c for c in cols if c.split(":")[0] in ("label", "score", "threshold")]
    cols = first + lst + [c for c in cols if c not in first and c not in lst]
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[cell(c) for c in cols])
        w.writeheader()
        for r in rows:  # text cells a spreadsheet would run as formulas are written as text (csv_cells.py)
            w.writerow({cell(k): (repr(float(v)) if isinstance(v, (float, np.floating)) else cell(v))
                        for k, v in r.items()})
    return str(p)


def read_predictions_csv(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Read a predictions CSV back as columns: label columns -> int arrays, score/threshold -> float arrays,
    everything else -> str arrays."""
    rows = read_rows(path)
    if not rows:
        return {}
    out: Dict[str, np.ndarray] = {}
    for c in rows[0]:
        vals = [r[c] for r in rows]
        kind = c.split(":")[0]
        if kind == "label":
            out[c] = np.asarray([int(v) for v in vals])
        elif kind in ("score", "threshold"):
            out[c] = np.asarray([float(v) for v in vals])
        else:
            out[c] = np.asarray(vals, dtype=str)
    return out


def find_eval_file(path: str | os.PathLike, name: str, hint: str) -> Path:
    """``name`` of an evaluation given a run dir, its ``eval/`` dir or the file itself; FileNotFoundError with
    ``hint`` (how to make it) otherwise."""
    p = Path(path)
    for cand in (p / "eval" / name, p / name, p):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{path}: no {name} ({hint})")


def load_predictions(path: str | os.PathLike, model: Optional[str] = None, split: str = "test") -> Dict[str, Any]:
    """One model's predictions on ``split`` (test or val) from an evaluation (a run dir, its ``eval/`` dir, or a
    predictions.csv), in the form :func:`agglom.eval.classification.compare.compare_predictions` takes: ``{"model", "key",
    "label" [N] or [N, L], "score", "label_names" (multi-label), <attribute>: [N] ...}``. ``model`` defaults to the
    report's primary."""
    p = find_eval_file(path, "predictions.csv", "evaluate it first with `agglom eval`")
    if model is None:
        rep = p.parent / "report.json"
        if not rep.is_file():
            raise FileNotFoundError(f"{rep}: missing; cannot tell which model of {p} is the primary")
        model = json.loads(rep.read_text())["primary"]
    cols = read_predictions_csv(p)
    if "model" not in cols:
        raise ValueError(f"{p}: no 'model' column")
    sel = (cols["model"] == model) & (cols["split"] == split)
    if not sel.any():
        raise ValueError(f"{p}: no {split} predictions of model {model!r} (models: {sorted(set(cols['model']))}, "
                         f"splits: {sorted(set(cols['split']))})")
    out: Dict[str, Any] = {"model": model, "key": cols["key"][sel]}
    labels = [c for c in cols if c.startswith("label:")]
    if labels:
        out["label_names"] = [c.split(":", 1)[1] for c in labels]
        out["label"] = np.stack([cols[c][sel] for c in labels], 1)
        out["score"] = np.stack([cols[f"score:{n}"][sel] for n in out["label_names"]], 1)
    else:
        out["label"], out["score"] = cols["label"][sel], cols["score"][sel]
    for c in cols:
        if c.split(":")[0] not in ("label", "score", "threshold") and c not in ("model", "key", "split"):
            out[c] = cols[c][sel]
    return out

