"""The classification section's Markdown: each model's headline table, per-group tables and label efficiency, and
the comparison against a reference evaluation."""
from __future__ import annotations

import math
from typing import Any, List, Mapping

import numpy as np

from agglom.eval.md_format import ATTR_HEADER, _mci, _num, _table, binary_row, group_rows, with_interval
from agglom.eval.metrics import headline, primary_threshold

__all__ = ["model_markdown", "comparison_markdown"]


def model_markdown(name: str, m: Mapping[str, Any]) -> List[str]:
    """One model's section: the headline row per attribute (and label), then each grouping's tables."""
    L = [f"## Model `{name}` ({m.get('kind', 'model')})", ""]
    rows = []
    for attr, r in m.get("attributes", {}).items():
        if "labels" in r:
            for lab, rr in r["labels"].items():
                rows.append(binary_row(f"{attr} / {lab}", rr))
            h = headline(r)
            rows.append([f"{attr} / macro", _num(h["auc"]), _num(h["worst_group_auc"]), _num(h["auc_gap"]),
                         _num(h["es_auc"]), _num(h["ece_gap"]), _num(h["eod_worst_case"]), _num(h["eod_mean"]),
                         _num(h["dpd"]), h["threshold"] or "–"])  # fmt: skip
        else:
            rows.append(binary_row(attr, r))
    L += _table(ATTR_HEADER, rows)
    for attr, r in m.get("attributes", {}).items():
        per = r["labels"].items() if "labels" in r else [(None, r)]
        for lab, rr in per:
            L += _groups_markdown(attr if lab is None else f"{attr} / {lab}", rr)
    le = m.get("label_efficiency")
    if le:
        L += [f"### Label efficiency: `{name}`", ""] + _label_efficiency_table(le)
    return L


def _groups_markdown(title: str, rr: Mapping[str, Any]) -> List[str]:
    """Per-group metrics at the primary threshold, and the threshold-dependent gaps at every threshold."""
    L = [f"### Groups: {title}", ""]
    undefined = rr.get("undefined_auc_groups") or []
    if undefined:
        L += [f"AUC undefined (one class present) for: {', '.join(undefined)}.", ""]
    t = primary_threshold(rr)
    bins = [b for b in ("range10", "unit15") if b in rr.get("ece", {})]
    L += _table(["group", "n", "n_pos", "AUC", *[f"ECE {b}" for b in bins], f"TPR@{t}", f"FPR@{t}", f"sel.rate@{t}"],
                group_rows(rr))
    trows = []
    for tn, e in rr["thresholds"].items():
        trows.append([tn + (" (optimistic)" if e.get("optimistic") else ""), _num(e["threshold"]),
                      _mci(e["dpd"]), _mci(e["eod_worst_case"]), _mci(e["eod_mean"]),
                      _mci(e["eo_tpr_gap"]), _mci(e["fnr_gap"]), _mci(e["fpr_gap"])])  # fmt: skip
    return L + _table(["threshold", "value", "DPD", "EOD worst-case", "EOD mean", "EO (ΔTPR)", "FNR gap", "FPR gap"],
                      trows)


def _delta(d: Mapping[str, Any]) -> str:
    return with_interval(d, key="delta", empty="undefined")


def comparison_markdown(c: Mapping[str, Any]) -> List[str]:
    flagged = c.get("levelled_down") or {}
    verdict = ("**levels down**: " + "; ".join(f"{a}: {', '.join(g)}" for a, g in flagged.items()) +
               " got worse beyond the interval of the difference") if flagged else \
        "no group got worse beyond the interval of its difference (no levelling down)"
    L = [f"## Against the reference `{c.get('reference')}` (paired bootstrap on the same test samples)", "",
         f"Δ = this model − reference, 95% paired-bootstrap BCa intervals; {verdict}.", ""]
    for attr, r in c.get("attributes", {}).items():
        per = r["labels"].items() if "labels" in r else [(None, r)]
        for lab, rr in per:
            rows = [["overall AUC", "", _num(rr["overall_auc"]["reference"]), _num(rr["overall_auc"]["new"]),
                     _delta(rr["overall_auc"]), ""],
                    ["worst-group AUC", "", _num(rr["worst_group_auc"]["reference"]), _num(rr["worst_group_auc"]["new"]),
                     _delta(rr["worst_group_auc"]), ""],
                    ["AUC gap (lower is better)", "", _num(rr["auc_gap"]["reference"]), _num(rr["auc_gap"]["new"]),
                     _delta(rr["auc_gap"]), ""]]
            for g, d in rr["groups"].items():
                flag = "worse" if g in rr["levelled_down"] else ("better" if g in rr["lifted"] else "")
                rows.append([f"group {g}", d["n"], _num(d["reference"]), _num(d["new"]), _delta(d), flag])
            title = attr if lab is None else f"{attr} / {lab}"
            L += [f"### {title}", ""] + _table(["", "n", "reference", "this model", "Δ [95% CI]", "beyond CI"], rows)
    return L


def _label_efficiency_table(le: Mapping[str, Any]) -> List[str]:
    keys: List[str] = []
    for entry in le["fractions"].values():
        for s in entry["seeds"].values():
            for k, v in s["metrics"].items():
                if k not in keys and (v is None or isinstance(v, (int, float))):
                    keys.append(k)
    rows = []
    for fk, entry in le["fractions"].items():
        seeds = list(entry["seeds"].values())
        row = [fk, len(seeds), _num(np.mean([s["n_train"] for s in seeds]), 1)]
        for k in keys:
            vals = [s["metrics"].get(k) for s in seeds]
            vals = [float(v) for v in vals if v is not None and math.isfinite(float(v))]
            row.append(f"{np.mean(vals):.3f} ± {np.std(vals):.3f}" if vals else "undefined")
        rows.append(row)
    return _table(["fraction", "seeds", "n_train (mean)", *keys], rows)
