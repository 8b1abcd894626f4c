"""The dense verdict over seeds: does the agglomerated student's spatial output segment as well as its best
teacher's, and how does each group fare? (Issue target: the student's probe Dice >= the best single teacher's
− 0.01, per-group Dice with intervals for every student and teacher; ``make demo``.)

Inputs are the per-sample rows of ``dense_predictions.csv`` (:mod:`agglom.eval.dense.run`): every model's Dice on
the same masked test samples with foreground. One paired bootstrap serves every comparison, as in
:mod:`agglom.eval.verdict`: each replicate resamples the test samples within each group and recomputes every
model's mean, per-group and worst-group Dice; a student's number over seeds is the mean over seeds on that
replicate. Intervals are BCa with grouped-jackknife acceleration.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

from agglom.eval.csv_cells import read_rows
from agglom.eval.md_format import with_interval
from agglom.eval.predictions import find_eval_file
from agglom.eval.verdict import patients_in
from agglom.metrics.bootstrap import Resampler, clusters_of, replicate
from agglom.metrics.intervals import bca_interval

__all__ = ["DICE_MARGIN", "load_dense_rows", "dense_verdict", "render_dense_verdict"]

#: the student's mean Dice may sit at most this far below the best teacher's
DICE_MARGIN = 0.01


def load_dense_rows(path: str | Path, model: str) -> Dict[str, Any]:
    """``{"key": [N], "dice": [N], <attribute>: [N]}`` of one model's evaluated test samples, from a run dir, its
    ``eval/`` dir or a ``dense_predictions.csv``."""
    p = find_eval_file(path, "dense_predictions.csv", "evaluate it with `agglom eval ... eval.dense=true`")
    rows = [r for r in read_rows(p) if r["model"] == model and r["split"] == "test" and r["evaluated"] == "1"]
    if not rows:
        raise ValueError(f"{p}: no evaluated test rows of model {model!r}")
    extra = [c for c in rows[0] if c not in ("model", "key", "split", "evaluated", "dice", "iou", "true_area",
                                             "pred_area", "threshold")]
    out: Dict[str, Any] = {"key": np.asarray([r["key"] for r in rows]),
                           "dice": np.asarray([float(r["dice"]) for r in rows])}
    for c in extra:
        out[c] = np.asarray([r[c] for r in rows])
    return out


def _stats(d: np.ndarray, g: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[mean Dice, worst-group Dice, Dice gap, Dice per group ...] of one model (``d`` [N])."""
    per = np.asarray([d[g == n].mean() if np.any(g == n) else np.nan for n in names])
    fin = per[np.isfinite(per)]
    return np.concatenate([[d.mean(), fin.min() if fin.size else np.nan,
                            fin.max() - fin.min() if fin.size >= 2 else np.nan], per])


def _aligned(rows: Mapping[str, Any], order: Sequence[str]) -> np.ndarray:
    pos = {str(k): i for i, k in enumerate(rows["key"])}
    return np.asarray(rows["dice"], float)[[pos[k] for k in order]]


def _interval(point: float, reps: np.ndarray, jack: np.ndarray) -> Dict[str, Any]:
    if not np.isfinite(point):
        return {"value": None, "ci": None}
    if not reps.size:
        return {"value": float(point), "ci": None}
    lo, hi, _ = bca_interval(float(point), reps, jack, 0.95)
    return {"value": float(point), "ci": [lo, hi] if np.isfinite(lo) else None}


def dense_verdict(students: Mapping[str, Sequence[Mapping[str, Any]]], teachers: Mapping[str, Mapping[str, Any]],
                  attribute: str, *, n_boot: int = 500, seed: int = 0,
                  margin: float = DICE_MARGIN) -> Dict[str, Any]:
    """``students``: ``{kind: [rows per seed]}``; ``teachers``: ``{name: rows}``; rows as :func:`load_dense_rows`
    gives them. Compared on the samples every model evaluated, resampling patients when the rows carry a
    ``patient`` column. Returns a JSON-ready dict with every model's Dice
    (overall, worst group, gap, per group; seed means for students) with intervals, the student − best teacher
    difference, and the check."""
    arrays = {f"{k}/{i}": r for k, per in students.items() for i, r in enumerate(per)}
    arrays.update({f"teacher/{n}": r for n, r in teachers.items()})
    if not arrays:
        raise ValueError("dense_verdict: no models")
    common = set.intersection(*(set(map(str, r["key"])) for r in arrays.values()))
    first = next(iter(arrays.values()))
    order = [str(k) for k in first["key"] if str(k) in common]
    if not order:
        raise ValueError("dense_verdict: the models share no evaluated test sample")
    pos0 = {str(k): i for i, k in enumerate(first["key"])}
    groups = np.asarray([str(first[attribute][pos0[k]]) for k in order])
    names = sorted(set(groups.tolist()) - {"unknown"})
    keys = list(arrays)
    D = np.stack([_aligned(arrays[m], order) for m in keys])  # [models, N]

    def stats(idx: np.ndarray) -> np.ndarray:
        return np.stack([_stats(D[j, idx], groups[idx], names) for j in range(len(keys))])  # [models, 3 + G]

    resampler = Resampler([np.flatnonzero(groups == n) for n in sorted(set(groups.tolist()))],
                          clusters_of(patients_in(first, order), len(order)))
    point = stats(np.arange(len(order)))
    r = replicate(stats, resampler, n_boot, seed) if n_boot else {"reps": np.zeros((0, *point.shape))}
    reps, jack = r["reps"], r.get("jack", r["reps"])
    col = {"dice": 0, "worst": 1, "gap": 2, **{f"g:{n}": 3 + j for j, n in enumerate(names)}}

    def q(models: Sequence[str]):
        rows = [keys.index(m) for m in models]
        return lambda arr: arr[..., rows, :].mean(-2)

    def summary(f) -> Dict[str, Any]:
        return {k: _interval(f(point)[c], f(reps)[..., c], f(jack)[..., c]) for k, c in col.items()}

    quantity = {kind: q([f"{kind}/{i}" for i in range(len(per))]) for kind, per in students.items() if per}
    quantity.update({f"teacher:{n}": q([f"teacher/{n}"]) for n in teachers})
    out: Dict[str, Any] = {"attribute": attribute, "groups": names, "n_test": len(order),
                           "n_per_group": {n: int(np.sum(groups == n)) for n in names}, "margin": margin,
                           "seeds": {k: len(v) for k, v in students.items()},
                           "models": {m: summary(f) for m, f in quantity.items()}}
    best = max(teachers, key=lambda n: point[keys.index(f"teacher/{n}"), 0]) if teachers else None
    out["best_teacher"] = best
    if best is not None:
        bt = quantity[f"teacher:{best}"]
        diff = {kind: _interval((f(point) - bt(point))[0], (f(reps) - bt(reps))[..., 0], (f(jack) - bt(jack))[..., 0])
                for kind, f in quantity.items() if not kind.startswith("teacher:")}
        out["student_vs_best_teacher"] = diff
        vals = [d["value"] for d in diff.values()]
        out["check"] = {"claim": f"student's probe Dice >= best teacher's ({best}) − {margin:g}",
                        "holds": bool(vals and all(v is not None and v >= -margin for v in vals)),
                        "detail": ", ".join(f"{k} student {_fmt(d, '+.4f')}" for k, d in diff.items())
                                  + " (mean over seeds)"}
    return out


def _fmt(d: Mapping[str, Any], spec: str) -> str:
    return with_interval(d, spec, empty="undefined")


def render_dense_verdict(v: Mapping[str, Any]) -> List[str]:
    """Markdown lines: the check, then one row per student (seed mean) and teacher with per-group Dice."""
    L = [f"Dense probe (1x1 linear, on each model's spatial output) on {v['n_test']} masked test samples with "
         f"foreground, groups by `{v['attribute']}` ({', '.join(f'{g}: n={n}' for g, n in v['n_per_group'].items())}); "
         "95% paired-bootstrap BCa intervals; students: mean over seeds.", ""]
    c = v.get("check")
    if c:
        L += ["| claim | holds | measured |", "|---|---|---|",
              f"| {c['claim']} | {'**yes**' if c['holds'] else '**no**'} | {c['detail']} |", ""]
    L += ["| model | Dice | worst-group Dice | Dice gap | " + " | ".join(f"Dice {g}" for g in v["groups"]) + " |",
          "|---" * (4 + len(v["groups"])) + "|"]
    for m, s in v["models"].items():
        label = f"{m} student" if not m.startswith("teacher:") else m
        L.append(f"| {label} | {_fmt(s['dice'], '.4f')} | {_fmt(s['worst'], '.4f')} | {_fmt(s['gap'], '.4f')} | "
                 + " | ".join(_fmt(s[f'g:{g}'], '.4f') for g in v["groups"]) + " |")
    return L
