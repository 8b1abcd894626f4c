"""The verdict over seeds: does the agglomerated student match its best teacher, and does the fair student lift
the worst-off group without levelling down, at a small utility cost? (The review's two claims; `make demo`.)

Every model is scored on the same test samples, so one paired bootstrap serves every comparison: each replicate
draws one stratified (group × label) resample of the test indices and recomputes, on it, every model's overall,
per-group and worst-group AUC and AUC gap; a difference over seeds is the mean over seeds of the per-seed
differences on that replicate. Intervals are BCa (grouped-jackknife acceleration). Seeds are also reported one by
one, so seed-to-seed spread is visible next to the test-sample interval.

Each claim is checked against a stated target and reported as holds / does not hold — never softened.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from agglom.eval.group_stats import _auc_fast, _stratified_indices
from agglom.eval.intervals import bca_interval, jackknife_blocks

__all__ = ["TARGETS", "verdict", "render_verdict"]

#: the targets of the claims (issue: "Fairness that lifts the worst group without levelling down")
TARGETS = {
    "worst_group_lift": 0.02,  # fair worst-group AUC >= ERM's + this
    "gap_halving_above": 0.10,  # where ERM's AUC gap exceeds this, the fair gap must be at most half of it
    "max_overall_cost": 0.01,  # fair overall AUC >= ERM's - this
    "fidelity_gap_cut": 0.5,  # worst per-teacher group fidelity gap cut by at least this fraction
    "max_fidelity_cost": 0.02,  # at most this relative loss of mean fidelity
}


class _Scores:
    """One model's test scores aligned to a common key order."""

    def __init__(self, preds: Mapping[str, Any], order: Sequence[str]):
        idx = {str(k): i for i, k in enumerate(preds["key"])}
        missing = [k for k in order if k not in idx]
        if missing:
            raise ValueError(f"model {preds.get('model')!r} was not evaluated on {len(missing)} of the test samples")
        pos = np.asarray([idx[k] for k in order])
        self.y = np.asarray(preds["label"]).reshape(len(preds["key"]), -1)[pos, 0].astype(int)
        self.s = np.asarray(preds["score"], dtype=float).reshape(len(preds["key"]), -1)[pos, 0]


def _stats(y: np.ndarray, s: np.ndarray, g: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """[overall AUC, worst-group AUC, AUC gap, AUC per group ...]"""
    per = np.asarray([_auc_fast(y[g == n], s[g == n]) for n in names])
    d = per[np.isfinite(per)]
    worst = float(d.min()) if d.size else np.nan
    gap = float(d.max() - d.min()) if d.size >= 2 else np.nan
    return np.concatenate([[_auc_fast(y, s), worst, gap], per])


def _interval(point: float, reps: np.ndarray, jack: Optional[np.ndarray], ci: float = 0.95) -> Dict[str, Any]:
    if not np.isfinite(point):
        return {"value": None, "ci": None}
    lo, hi, widened = bca_interval(float(point), reps, jack, ci)
    out = {"value": float(point), "ci": [lo, hi] if np.isfinite(lo) else None}
    if widened:
        out["ci_widened"] = True
    return out


def verdict(seeds: Sequence[Mapping[str, Mapping[str, Any]]], teachers: Mapping[str, Mapping[str, Any]],
            attribute: str, *, fidelity: Optional[Sequence[Mapping[str, Any]]] = None, n_boot: int = 500,
            seed: int = 0, targets: Mapping[str, float] = TARGETS) -> Dict[str, Any]:
    """The comparison over seeds.

    ``seeds``: one ``{"erm": preds, "fair": preds}`` per seed; ``teachers``: ``{name: preds}`` (the audit);
    ``preds`` as :func:`agglom.eval.report.load_predictions` returns them (binary label; ``attribute`` a column).
    ``fidelity``: optional, per seed ``{"erm": headline, "fair": headline}`` of
    :func:`agglom.eval.fidelity.fidelity_headline`. Returns a JSON-ready dict with every number and the verdicts.
    """
    if not seeds:
        raise ValueError("verdict: no seeds")
    ref = seeds[0]["erm"]
    order = [str(k) for k in ref["key"]]
    key_pos = {str(k): i for i, k in enumerate(ref["key"])}
    groups = np.asarray([str(ref[attribute][key_pos[k]]) for k in order])
    names = sorted(set(groups.tolist()) - {"unknown"})
    # the unknown group counts in the overall AUC but never in worst-group values and gaps
    models: Dict[str, _Scores] = {}
    for i, sd in enumerate(seeds):
        models[f"erm/{i}"] = _Scores(sd["erm"], order)
        models[f"fair/{i}"] = _Scores(sd["fair"], order)
    for name, p in teachers.items():
        models[f"teacher/{name}"] = _Scores(p, order)
    y = models["erm/0"].y
    for k, m in models.items():
        if not np.array_equal(m.y, y):
            raise ValueError(f"model {k} disagrees with the others on the labels of the same samples")

    keys = list(models)

    def all_stats(idx: np.ndarray) -> np.ndarray:
        gi = groups[idx]
        return np.stack([_stats(y[idx], models[k].s[idx], gi, names) for k in keys])  # [M, 3 + G]

    point = all_stats(np.arange(len(y)))
    strata = _stratified_indices(groups, y)
    rng = np.random.default_rng(seed)
    reps = np.stack([all_stats(np.concatenate([st[rng.integers(0, st.size, st.size)] for st in strata]))
                     for _ in range(n_boot)]) if n_boot else None
    jack = np.stack([all_stats(ix) for ix in jackknife_blocks(strata, 20, seed + 1)]) if n_boot else None
    n_seeds = len(seeds)
    col = {"auc": 0, "worst": 1, "gap": 2, **{f"g:{n}": 3 + j for j, n in enumerate(names)}}

    def mean_of(prefix: str, c: int, arr: np.ndarray) -> np.ndarray:
        rows = [keys.index(f"{prefix}/{i}") for i in range(n_seeds)]
        return arr[..., rows, c].mean(-1)

    def model_of(name: str, c: int, arr: np.ndarray) -> np.ndarray:
        return arr[..., keys.index(name), c]

    def diff(a, b, c: int) -> Dict[str, Any]:
        """Interval of a(c) − b(c); a/b are functions (column, array) -> value(s)."""
        p = float(a(c, point) - b(c, point))
        return _interval(p, (a(c, reps) - b(c, reps)) if n_boot else np.array([]),
                         (a(c, jack) - b(c, jack)) if n_boot else None)

    erm = lambda c, arr: mean_of("erm", c, arr)  # noqa: E731
    fair = lambda c, arr: mean_of("fair", c, arr)  # noqa: E731
    teacher_auc = {n: float(model_of(f"teacher/{n}", 0, point)) for n in teachers}
    best = max(teacher_auc, key=teacher_auc.get) if teacher_auc else None
    out: Dict[str, Any] = {"attribute": attribute, "groups": names, "seeds": n_seeds, "n_test": int(len(y)),
                           "n_per_group": {n: int(np.sum(groups == n)) for n in names}, "targets": dict(targets),
                           "bootstrap": {"n_boot": n_boot, "method": "paired stratified (group x label), BCa; "
                                                                     "differences averaged over seeds per replicate"},
                           "teachers": {n: {"auc": v, "worst_group_auc": float(model_of(f"teacher/{n}", 1, point)),
                                            "auc_gap": float(model_of(f"teacher/{n}", 2, point))}
                                        for n, v in teacher_auc.items()},
                           "best_teacher": best}
    per_seed = []
    for i in range(n_seeds):
        row = {}
        for kind in ("erm", "fair"):
            st = point[keys.index(f"{kind}/{i}")]
            row[kind] = {"auc": float(st[0]), "worst_group_auc": float(st[1]), "auc_gap": float(st[2]),
                         "groups": {n: float(st[3 + j]) for j, n in enumerate(names)}}
        per_seed.append(row)
    out["per_seed"] = per_seed
    summary = {}
    for kind, fn in (("erm", erm), ("fair", fair)):
        summary[kind] = {k: _interval(float(fn(c, point)), fn(c, reps) if n_boot else np.array([]),
                                      fn(c, jack) if n_boot else None)
                         for k, c in col.items()}
    out["students"] = summary
    if best is not None:
        bt = lambda c, arr: model_of(f"teacher/{best}", c, arr)  # noqa: E731
        out["student_vs_best_teacher"] = {"erm": diff(erm, bt, 0), "fair": diff(fair, bt, 0)}
    deltas = {k: diff(fair, erm, c) for k, c in col.items()}
    out["fair_vs_erm"] = deltas
    worse = [n for n in names if deltas[f"g:{n}"]["ci"] and deltas[f"g:{n}"]["value"] < 0
             and deltas[f"g:{n}"]["ci"][1] < 0]
    out["levelled_down"] = worse
    out["levelled_down_per_seed"] = _per_seed_levelling(per_seed, models, keys, groups, y, names, strata, n_boot, seed)

    erm_gap = summary["erm"]["gap"]["value"]
    checks: List[Dict[str, Any]] = []
    if best is not None:
        d = out["student_vs_best_teacher"]["fair"]
        de = out["student_vs_best_teacher"]["erm"]
        checks.append({"claim": f"agglomerated student >= best teacher ({best}) on overall AUC",
                       "holds": bool(de["value"] is not None and de["value"] >= 0 and d["value"] is not None
                                     and d["value"] >= 0),
                       "detail": f"ERM student {_fmt_d(de)}, fair student {_fmt_d(d)} (mean over seeds)"})
    lift = deltas["worst"]
    checks.append({"claim": f"fair student's worst-group AUC >= ERM's + {targets['worst_group_lift']:.2f}",
                   "holds": bool(lift["value"] is not None and lift["value"] >= targets["worst_group_lift"]),
                   "detail": f"Δ worst-group AUC {_fmt_d(lift)}"})
    if erm_gap is not None and erm_gap > targets["gap_halving_above"]:
        fg = summary["fair"]["gap"]["value"]
        checks.append({"claim": f"ERM's AUC gap {erm_gap:.3f} > {targets['gap_halving_above']:.2f}: fair gap at most "
                                "half of it",
                       "holds": bool(fg is not None and fg <= erm_gap / 2), "detail": f"fair gap {fg:.3f}"})
    cost = deltas["auc"]
    checks.append({"claim": f"overall AUC cost <= {targets['max_overall_cost']:.2f}",
                   "holds": bool(cost["value"] is not None and cost["value"] >= -targets["max_overall_cost"]),
                   "detail": f"Δ overall AUC {_fmt_d(cost)}"})
    checks.append({"claim": "no group worse than under ERM beyond its interval, over seeds (no levelling down)",
                   "holds": not worse,
                   "detail": ("groups worse beyond the interval of the seed-mean difference: " +
                              (", ".join(worse) if worse else "none") + "; seed by seed (one student against its "
                              "ERM twin, training noise included): " +
                              ", ".join(f"seed {i}: {', '.join(w) or 'none'}"
                                        for i, w in enumerate(out["levelled_down_per_seed"])))})
    if fidelity:
        fe = [f["erm"] for f in fidelity if f.get("erm") and f.get("fair")]
        ff = [f["fair"] for f in fidelity if f.get("erm") and f.get("fair")]
        if fe:
            wg_e, wg_f = float(np.mean([f["worst_gap"] for f in fe])), float(np.mean([f["worst_gap"] for f in ff]))
            m_e, m_f = float(np.mean([f["mean"] for f in fe])), float(np.mean([f["mean"] for f in ff]))
            cut = 1 - wg_f / wg_e if wg_e > 0 else 0.0
            fcost = (m_e - m_f) / abs(m_e) if m_e else 0.0
            out["fidelity"] = {"erm": {"worst_gap": wg_e, "mean": m_e}, "fair": {"worst_gap": wg_f, "mean": m_f},
                               "worst_gap_cut": cut, "mean_cost": fcost, "per_seed": list(fidelity)}
            checks.append({"claim": f"worst per-teacher group fidelity gap (R²) cut by >= "
                                    f"{targets['fidelity_gap_cut']:.0%} at <= {targets['max_fidelity_cost']:.0%} "
                                    "mean-fidelity cost",
                           "holds": bool(cut >= targets["fidelity_gap_cut"] and fcost <= targets["max_fidelity_cost"]),
                           "detail": f"worst gap {wg_e:.3f} -> {wg_f:.3f} ({-cut:+.0%}); mean R² {m_e:.3f} -> "
                                     f"{m_f:.3f} ({-fcost:+.1%})"})
    out["checks"] = checks
    return out


def _per_seed_levelling(per_seed, models, keys, groups, y, names, strata, n_boot, seed) -> List[List[str]]:
    """Per seed: groups whose fair − ERM AUC difference has its whole paired interval below 0."""
    from agglom.eval.compare import paired_group_deltas

    out = []
    for i in range(len(per_seed)):
        if not n_boot:
            out.append([])
            continue
        r = paired_group_deltas(y, models[f"fair/{i}"].s, models[f"erm/{i}"].s, groups, n_boot=n_boot, seed=seed + i)
        out.append(list(r["levelled_down"]))
    return out


def _fmt_d(d: Mapping[str, Any]) -> str:
    if d.get("value") is None:
        return "undefined"
    s = f"{d['value']:+.4f}"
    if d.get("ci"):
        s += f" [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"
    return s


def _fmt_v(d: Mapping[str, Any]) -> str:
    if d.get("value") is None:
        return "undefined"
    s = f"{d['value']:.4f}"
    if d.get("ci"):
        s += f" [{d['ci'][0]:.4f}, {d['ci'][1]:.4f}]"
    return s


def render_verdict(v: Mapping[str, Any]) -> List[str]:
    """Markdown lines: the verdict table and the per-seed numbers behind it."""
    a = v["attribute"]
    L = [f"Groups by `{a}` ({', '.join(f'{g}: n={n}' for g, n in v['n_per_group'].items())} test samples); "
         f"{v['seeds']} seeds; 95% paired-bootstrap BCa intervals over the test samples "
         f"({v['bootstrap']['n_boot']} replicates), differences averaged over seeds.", "",
         "| claim | holds | measured |", "|---|---|---|"]
    for c in v["checks"]:
        L.append(f"| {c['claim']} | {'**yes**' if c['holds'] else '**no**'} | {c['detail']} |")
    L += ["", "| model | overall AUC | worst-group AUC | AUC gap | " +
          " | ".join(f"AUC {g}" for g in v["groups"]) + " |", "|---" * (4 + len(v["groups"])) + "|"]
    for kind in ("erm", "fair"):
        s = v["students"][kind]
        L.append(f"| {kind} student (mean of {v['seeds']} seeds) | {_fmt_v(s['auc'])} | {_fmt_v(s['worst'])} | "
                 f"{_fmt_v(s['gap'])} | " + " | ".join(_fmt_v(s[f'g:{g}']) for g in v["groups"]) + " |")
    d = v["fair_vs_erm"]
    L.append("| fair − ERM | " + " | ".join(_fmt_d(d[k]) for k in ("auc", "worst", "gap")) + " | " +
             " | ".join(_fmt_d(d[f"g:{g}"]) for g in v["groups"]) + " |")
    for n, t in v["teachers"].items():
        L.append(f"| teacher {n} | {t['auc']:.4f} | {t['worst_group_auc']:.4f} | {t['auc_gap']:.4f} | " +
                 " | ".join("" for _ in v["groups"]) + " |")
    L += ["", "Per seed (overall / worst-group AUC / gap):", ""]
    for i, r in enumerate(v["per_seed"]):
        e, f = r["erm"], r["fair"]
        L.append(f"- seed {i}: ERM {e['auc']:.4f} / {e['worst_group_auc']:.4f} / {e['auc_gap']:.4f}; "
                 f"fair {f['auc']:.4f} / {f['worst_group_auc']:.4f} / {f['auc_gap']:.4f}")
    return L
