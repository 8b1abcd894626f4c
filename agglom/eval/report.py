"""Evaluation reports: a versioned JSON schema, Markdown tables, predictions CSV and a console summary.

Report schema ``"agglom.eval/2"`` (a plain dict; undefined numbers are ``None`` / ``null``)::

    {
      "schema": "agglom.eval/2",
      "created": "2025-01-01T00:00:00Z",          # optional, filled by write_report
      "primary": "student",                        # the model the report is about
      "models": {
        "<model>": {
          "kind": "student" | "teacher" | "baseline",
          "attributes": {"<attribute or proxy grouping>": <binary_group_metrics or multilabel_group_metrics result>},
          "validation": {"<attribute>": <metrics.headline on the validation split>},
          "label_efficiency": <probe.label_efficiency output>,   # optional; metric_fn returning flat scalars
          "probe": {...}                                          # optional: C, threshold_method, thresholds ...
        }
      },
      "fidelity": {"<attribute>": {"<teacher>/<output>": <metrics.group_mean_summary>}},  # optional: global R²
      "fidelity_measure": "...",                                                       # what "fidelity" holds
      "fidelity_cosine": {same shape as fidelity},                                     # optional, secondary
      "fidelity_functional": {"<teacher>": <fidelity.functional_fidelity result>},     # optional
      "comparison": <compare.compare_predictions result>,                               # optional (reference=)
      "zero_shot": {                                                                    # optional (zero_shot=)
        "prompts": {"<class>": ["<prompt>", ...]},      # multi-label: {"<label>": {"0": [...], "1": [...]}}
        "scoring": "...",                               # how prompts and embeddings become scores
        "models": {
          "<model>@<teacher>" | "teacher:<teacher>": {
            "kind": "student" | "teacher", "via": "<teacher whose text tower scored it>",
            "attributes": {"<attribute>": <binary_group_metrics or multilabel_group_metrics result>},
            "validation": {"<attribute>": <metrics.headline on the validation split>},
            "thresholds": {"fixed_0.5": ..., "val_<method>": ...}, "n_val": int, "n_test": int,
            "logit_scale": float, "logit_bias": float | null, "text_tower_digest": "<card digest>"
          }
        }
      },
      "dense": {                                                                        # optional (eval.dense)
        "protocol": "...", "mask_size": [H, W],
        "masks": {"train"|"val"|"test": {"samples", "masked", "with_foreground"}},
        "models": {"<model>": {"kind", "features", "feature_dim", "grid", "threshold", "val_dice", "n_train",
                               "n_test", "empty_masks": {"n", "with_prediction"},
                               "attributes": {"<attribute>": <dense.dice_fairness result>}}}
      },
      "sam_prompts": {                                                                  # optional (eval.sam_prompts)
        "protocol": "...", "prompt": "box" | "point" | "box+point", "split", "mask_size", "samples",
        "without_foreground", "teachers": {"<SAM teacher>": {"decoder", "embedding", "adapter_grid", "resampled", "n",
          "embedding_cosine", "models": {"teacher:<t>" | "<student>": {"encoder", "attributes": {"<attribute>":
          <dense.dice_fairness result>}}}, "agreement": {"attributes": {"<attribute>": <dice_fairness result>}}}}
      },
      "pareto": <pareto.front_summary result>,                                          # optional
      "data": {"train"|"val"|"test": {"samples": n read, "expected": n listed or null,   # optional: what the
               "skipped": {reason: n}, "noted": {reason: n}, "examples": {...}}},      # readers left out
      "meta": {...}                                                                     # optional, free-form
    }

Version 2 (over 1): ``fidelity`` holds the global-normalised R² instead of the cosine (which moved to
``fidelity_cosine``); intervals are BCa; ``fidelity_functional`` and ``comparison`` are new. ``zero_shot``
(zero-shot classification through each CLIP-family teacher's text tower, :mod:`agglom.eval.zero_shot`: the
student through its adapter for that teacher, the teacher itself through its own embedding, each with the same
per-group metrics and intervals as ``models``) is an optional section of version 2: reports without it stay valid.
So is ``dense`` (:mod:`agglom.eval.dense`: a linear 1x1 probe on each model's spatial features against the samples'
segmentation masks; Dice and IoU overall and per group, Dice gap, worst group, std and skewness across groups and
both equity-scaled Dice forms, with BCa intervals; per-sample Dice in ``dense_predictions.csv``). So is
``sam_prompts`` (:mod:`agglom.eval.sam_run`: prompted segmentation through each SAM teacher's own decoder on the
teacher's embedding and on the student's adapter output, per-group Dice of both and their agreement; per-sample
numbers in ``sam_predictions.csv``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from agglom.eval.csv_cells import cell, read_rows
from agglom.eval.metrics import nan_to_none
from agglom.eval.report_md import data_markdown, render_markdown, summary_table  # noqa: F401 - re-exported
from agglom.eval.sam_report import check_sam_section
from agglom.metrics.values import _check_metric

__all__ = [
    "SCHEMA",
    "ReportError",
    "new_report",
    "validate_report",
    "write_report",
    "render_markdown",
    "summary_table",
    "prediction_rows",
    "write_predictions_csv",
    "read_predictions_csv",
]

SCHEMA = "agglom.eval/2"
_BINARY_KEYS = ("n", "group_names", "auc", "worst_group_auc", "auc_gap", "es_auc", "ece", "groups", "thresholds")


class ReportError(ValueError):
    """A report dict does not follow the schema; ``.problems`` lists every issue found."""

    def __init__(self, problems: List[str]):
        super().__init__("invalid agglom.eval report: " + "; ".join(problems))
        self.problems = problems


def new_report(primary: str, models: Optional[Mapping[str, Any]] = None, **extra: Any) -> Dict[str, Any]:
    """A report skeleton: ``{"schema", "primary", "models", **extra}``."""
    return {"schema": SCHEMA, "primary": primary, "models": dict(models or {}), **extra}


def _check_binary(r: Any, where: str, problems: List[str]) -> None:
    if not isinstance(r, Mapping):
        problems.append(f"{where}: not a dict")
        return
    missing = [k for k in _BINARY_KEYS if k not in r]
    if missing:
        problems.append(f"{where}: missing {missing}")
        return
    for k in ("auc", "worst_group_auc", "auc_gap", "es_auc"):
        _check_metric(r[k], f"{where}.{k}", problems)
    for g in r["group_names"]:
        if g not in r["groups"]:
            problems.append(f"{where}.groups: missing group {g!r}")
        else:
            _check_metric(r["groups"][g].get("auc"), f"{where}.groups.{g}.auc", problems)
    for t, e in r["thresholds"].items():
        for k in ("threshold", "dpd", "eod_worst_case", "eod_mean", "fnr_gap", "fpr_gap"):
            if k not in e:
                problems.append(f"{where}.thresholds.{t}: missing {k}")


def _check_models(models: Mapping[str, Any], problems: List[str]) -> None:
    """Each model's attribute results (binary, or multi-label with a macro summary) and label efficiency."""
    for name, m in models.items():
        if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping):
            problems.append(f"models.{name}.attributes: expected a dict")
            continue
        for attr, r in m["attributes"].items():
            where = f"models.{name}.attributes.{attr}"
            if isinstance(r, Mapping) and "labels" in r:
                if "macro" not in r:
                    problems.append(f"{where}: multi-label result without 'macro'")
                for lab, rr in r["labels"].items():
                    _check_binary(rr, f"{where}.labels.{lab}", problems)
            else:
                _check_binary(r, where, problems)
        le = m.get("label_efficiency")
        if le is not None and not (isinstance(le, Mapping) and isinstance(le.get("fractions"), Mapping)):
            problems.append(f"models.{name}.label_efficiency: expected {{'fractions': ...}}")


def _check_zero_shot(zs: Any, problems: List[str]) -> None:
    """The zero-shot section: prompts, and per model the teacher it went through and its attribute results."""
    if not (isinstance(zs, Mapping) and isinstance(zs.get("models"), Mapping) and "prompts" in zs):
        problems.append("zero_shot: expected {'prompts', 'scoring', 'models'}")
        return
    for name, m in zs["models"].items():
        if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping) or "via" not in m:
            problems.append(f"zero_shot.models.{name}: expected {{'kind', 'via', 'attributes', ...}}")
            continue
        for attr, r in m["attributes"].items():
            where = f"zero_shot.models.{name}.attributes.{attr}"
            if isinstance(r, Mapping) and "labels" in r:
                for lab, rr in r["labels"].items():
                    _check_binary(rr, f"{where}.labels.{lab}", problems)
            else:
                _check_binary(r, where, problems)


def _check_dense(dense: Any, problems: List[str]) -> None:
    """The dense section: protocol, and per model and attribute a dice_fairness result with its metrics."""
    if not (isinstance(dense, Mapping) and isinstance(dense.get("models"), Mapping) and "protocol" in dense):
        problems.append("dense: expected {'protocol', 'masks', 'models'}")
        return
    for name, m in dense["models"].items():
        if not isinstance(m, Mapping) or not isinstance(m.get("attributes"), Mapping):
            problems.append(f"dense.models.{name}: expected {{'kind', 'threshold', 'attributes', ...}}")
            continue
        for attr, r in m["attributes"].items():
            where = f"dense.models.{name}.attributes.{attr}"
            if not isinstance(r, Mapping) or "groups" not in r or "group_names" not in r:
                problems.append(f"{where}: expected a dice_fairness dict")
                continue
            for k in ("dice", "iou", "worst_group_dice", "dice_gap", "es_dice", "es_dice_std"):
                _check_metric(r.get(k), f"{where}.{k}", problems)


def validate_report(d: Any) -> Dict[str, Any]:
    """Check a report against the current schema (:data:`SCHEMA`); returns it, or raises :class:`ReportError` listing problems."""
    problems: List[str] = []
    if not isinstance(d, Mapping):
        raise ReportError(["report is not a dict"])
    if d.get("schema") != SCHEMA:
        problems.append(f"schema: expected {SCHEMA!r}, got {d.get('schema')!r}")
    models = d.get("models")
    if not isinstance(models, Mapping) or not models:
        problems.append("models: expected a non-empty dict")
        models = {}
    if d.get("primary") not in models:
        problems.append(f"primary: {d.get('primary')!r} is not one of the models")
    _check_models(models, problems)
    for key in ("fidelity", "fidelity_cosine"):
        fid = d.get(key)
        if fid is None:
            continue
        if not isinstance(fid, Mapping):
            problems.append(f"{key}: expected a dict")
            continue
        for attr, per in fid.items():
            for t, s in per.items():
                if not isinstance(s, Mapping) or "by_group" not in s or "gap" not in s:
                    problems.append(f"{key}.{attr}.{t}: expected a group_mean_summary dict")
    if d.get("zero_shot") is not None:
        _check_zero_shot(d["zero_shot"], problems)
    if d.get("dense") is not None:
        _check_dense(d["dense"], problems)
    if d.get("sam_prompts") is not None:
        check_sam_section(d["sam_prompts"], problems)
    comp = d.get("comparison")
    if comp is not None and not (isinstance(comp, Mapping) and "attributes" in comp and "levels_down" in comp):
        problems.append("comparison: expected a compare_predictions dict")
    p = d.get("pareto")
    if p is not None and not (isinstance(p, Mapping) and "points" in p and "hypervolume" in p):
        problems.append("pareto: expected a front_summary dict")
    for split, info in (d.get("data") or {}).items():
        if not (isinstance(info, Mapping) and "samples" in info and isinstance(info.get("skipped"), Mapping)):
            problems.append(f"data.{split}: expected {{samples, expected, skipped, noted}}")
    if problems:
        raise ReportError(problems)
    return dict(d)


def write_report(out_dir: str | os.PathLike, report: Mapping[str, Any]) -> Dict[str, str]:
    """Validate and write ``report.json`` (NaN -> null) and ``report.md``; returns ``{"json": path, "md": path}``."""
    d = dict(report)
    d.setdefault("schema", SCHEMA)
    d.setdefault("created", _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    d = nan_to_none(d)
    validate_report(d)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pj, pm = out / "report.json", out / "report.md"
    pj.write_text(json.dumps(d, indent=2, allow_nan=False) + "\n")
    pm.write_text(render_markdown(d))
    return {"json": str(pj), "md": str(pm)}


# --------------------------------------------------------------------------- predictions CSV
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


def load_predictions(path: str | os.PathLike, model: Optional[str] = None, split: str = "test") -> Dict[str, Any]:
    """One model's predictions on ``split`` (test or val) from an evaluation (a run dir, its ``eval/`` dir, or a
    predictions.csv), in the form :func:`agglom.eval.compare.compare_predictions` takes: ``{"model", "key",
    "label" [N] or [N, L], "score", "label_names" (multi-label), <attribute>: [N] ...}``. ``model`` defaults to the
    report's primary."""
    p = Path(path)
    for cand in (p / "eval" / "predictions.csv", p / "predictions.csv", p):
        if cand.is_file():
            p = cand
            break
    else:
        raise FileNotFoundError(f"{path}: no predictions.csv (evaluate it first with `agglom eval`)")
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

