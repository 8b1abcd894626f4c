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
both equity-scaled Dice forms, with BCa intervals; per-sample Dice in ``dense_predictions.csv``).
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from agglom.eval.metrics import headline, nan_to_none, primary_threshold

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


def _check_metric(m: Any, where: str, problems: List[str]) -> None:
    if not isinstance(m, Mapping) or "value" not in m or "ci" not in m:
        problems.append(f"{where}: expected {{'value', 'ci'}}")
        return
    v = m["value"]
    if v is not None and not isinstance(v, (int, float)):
        problems.append(f"{where}.value: not a number or null")
    if m["ci"] is not None and (not isinstance(m["ci"], (list, tuple)) or len(m["ci"]) != 2):
        problems.append(f"{where}.ci: expected [lo, hi] or null")


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


def validate_report(d: Any) -> Dict[str, Any]:
    """Check a report against ``agglom.eval/1``; returns it, or raises :class:`ReportError` listing problems."""
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
    zs = d.get("zero_shot")
    if zs is not None:
        if not (isinstance(zs, Mapping) and isinstance(zs.get("models"), Mapping) and "prompts" in zs):
            problems.append("zero_shot: expected {'prompts', 'scoring', 'models'}")
        else:
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
    dense = d.get("dense")
    if dense is not None:
        if not (isinstance(dense, Mapping) and isinstance(dense.get("models"), Mapping) and "protocol" in dense):
            problems.append("dense: expected {'protocol', 'masks', 'models'}")
        else:
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


# --------------------------------------------------------------------------- formatting
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


def _binary_row(label: str, r: Mapping[str, Any], binning: str = "range10") -> List[str]:
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


_ATTR_HEADER = [
    "attribute / label", "AUC", "worst-group AUC", "AUC gap", "ES-AUC", "ECE gap (range10)",
    "EOD worst-case", "EOD mean", "DPD", "threshold",
]  # fmt: skip


def _group_rows(r: Mapping[str, Any]) -> List[List[str]]:
    t = primary_threshold(r)
    rows = []
    for g in r["group_names"]:
        e = r["groups"][g]
        rates = r["thresholds"][t]["by_group"].get(g, {}) if t else {}
        rows.append([
            g + (" (excluded from gaps)" if g in r.get("excluded_from_gaps", []) else ""),
            e["n"], e["n_pos"], _mci(e["auc"]),
            *[_mci(e["ece"][b]) for b in ("range10", "unit15") if b in e["ece"]],
            _num(rates.get("tpr")), _num(rates.get("fpr")), _num(rates.get("selection_rate")),
        ])  # fmt: skip
    return rows


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report (see module docstring for what it holds)."""
    L: List[str] = [f"# agglom evaluation report ({report.get('schema')})", ""]
    if report.get("created"):
        L += [f"Created {report['created']}. Primary model: **{report.get('primary')}**.", ""]
    L += [
        "Gaps are max − min over groups where the metric is defined (lower is better); intervals are stratified "
        "bootstrap 95% BCa intervals (widened to contain the point estimate where a statistic at a boundary leaves almost every replicate on one side); `undefined` = not computable (e.g. a group with one class), never 0. "
        "EOD worst-case = max(ΔTPR, ΔFPR) (fairlearn default); EOD mean = mean(ΔTPR, ΔFPR) (FairMedFM form; its "
        "score is 1 − this). ECE range10 = 10 equal-width bins over the observed score range (FairMedFM/MEDFAIR).",
        "",
    ]
    L += data_markdown(report.get("data"))
    models = report.get("models", {})
    order = [report.get("primary")] + [m for m in models if m != report.get("primary")]
    for name in [m for m in order if m in models]:
        m = models[name]
        L += [f"## Model `{name}` ({m.get('kind', 'model')})", ""]
        rows = []
        for attr, r in m.get("attributes", {}).items():
            if "labels" in r:
                for lab, rr in r["labels"].items():
                    rows.append(_binary_row(f"{attr} / {lab}", rr))
                h = headline(r)
                rows.append([f"{attr} / macro", _num(h["auc"]), _num(h["worst_group_auc"]), _num(h["auc_gap"]),
                             _num(h["es_auc"]), _num(h["ece_gap"]), _num(h["eod_worst_case"]), _num(h["eod_mean"]),
                             _num(h["dpd"]), h["threshold"] or "–"])  # fmt: skip
            else:
                rows.append(_binary_row(attr, r))
        L += _table(_ATTR_HEADER, rows)
        for attr, r in m.get("attributes", {}).items():
            per = r["labels"].items() if "labels" in r else [(None, r)]
            for lab, rr in per:
                title = attr if lab is None else f"{attr} / {lab}"
                undefined = rr.get("undefined_auc_groups") or []
                L += [f"### Groups: {title}", ""]
                if undefined:
                    L += [f"AUC undefined (one class present) for: {', '.join(undefined)}.", ""]
                t = primary_threshold(rr)
                bins = [b for b in ("range10", "unit15") if b in rr.get("ece", {})]
                L += _table(
                    [
                        "group",
                        "n",
                        "n_pos",
                        "AUC",
                        *[f"ECE {b}" for b in bins],
                        f"TPR@{t}",
                        f"FPR@{t}",
                        f"sel.rate@{t}",
                    ],
                    _group_rows(rr),
                )
                trows = []
                for tn, e in rr["thresholds"].items():
                    trows.append([tn + (" (optimistic)" if e.get("optimistic") else ""), _num(e["threshold"]),
                                  _mci(e["dpd"]), _mci(e["eod_worst_case"]), _mci(e["eod_mean"]),
                                  _mci(e["eo_tpr_gap"]), _mci(e["fnr_gap"]), _mci(e["fpr_gap"])])  # fmt: skip
                L += _table(["threshold", "value", "DPD", "EOD worst-case", "EOD mean", "EO (ΔTPR)", "FNR gap",
                             "FPR gap"], trows)  # fmt: skip
        le = m.get("label_efficiency")
        if le:
            L += [f"### Label efficiency: `{name}`", ""] + _label_efficiency_table(le)
    L += _fidelity_markdown(report)
    if report.get("zero_shot"):
        L += _zero_shot_markdown(report["zero_shot"])
    if report.get("dense"):
        L += dense_markdown(report["dense"])
    if report.get("comparison"):
        L += _comparison_markdown(report["comparison"])
    if len(models) > 1:
        L += ["## Teacher audit: same probe protocol on every model", "", "```", summary_table(report), "```", ""]
    p = report.get("pareto")
    if p:
        L += ["## Utility–fairness front", "",
              f"Hypervolume {_num(p['hypervolume'], 4)} (reference {p['reference']}); selected: "
              f"**{p.get('selected')}** — {p.get('selection_rule')}.", ""]  # fmt: skip
        rows = [[pt.get("name"), _num(pt.get("utility")), _num(pt.get("gap")), _num(pt.get("worst_group")),
                 "yes" if pt.get("pareto") else ""] for pt in p["points"]]  # fmt: skip
        L += _table(["candidate", p.get("utility_name", "utility"), p.get("gap_name", "gap"), "worst group",
                     "Pareto"], rows)  # fmt: skip
    return "\n".join(L).rstrip() + "\n"


def data_markdown(data: Optional[Mapping[str, Any]]) -> List[str]:
    """What the readers read per split; a split read short of its datasheet, or with skips, is said in bold."""
    if not data:
        return []
    rows, short = [], []
    for split, info in data.items():
        skipped = info.get("skipped") or {}
        exp = info.get("expected")
        rows.append([split, str(info.get("samples")), "–" if exp is None else str(exp),
                     ", ".join(f"{k} {v}" for k, v in skipped.items()) or "none",
                     ", ".join(f"{k} {v}" for k, v in (info.get("noted") or {}).items()) or "none"])
        if skipped or (exp is not None and info.get("samples", 0) < exp):
            short.append(f"{split} read {info.get('samples')}" + (f" of {exp}" if exp is not None else "")
                         + " samples")
    out = ["## Data read", ""]
    if short:
        out += [f"**Not every sample was used: {'; '.join(short)}. The numbers below hold for the samples read.**",
                ""]
    return out + _table(["split", "samples read", "listed in the datasheet", "skipped (distinct samples/shards)",
                         "noted (used)"], rows)


def _group_mean_tables(section: Mapping[str, Mapping[str, Any]]) -> List[str]:
    L: List[str] = []
    for attr, per in section.items():
        groups: List[str] = []
        for s in per.values():
            groups += [g for g in s["by_group"] if g not in groups]
        rows = []
        for teacher, s in per.items():
            wg = s["worst_group"]
            rows.append([teacher, _mci(s["overall"]), *[_mci(s["by_group"].get(g)) for g in groups],
                         _num(wg["value"]) + (f" ({wg.get('group')})" if wg.get("group") else ""),
                         _mci(s["gap"])])  # fmt: skip
        L += [f"### {attr}", ""] + _table(["teacher/output", "overall", *groups, "worst group", "gap"], rows)
    return L


def _fidelity_markdown(report: Mapping[str, Any]) -> List[str]:
    L: List[str] = []
    if report.get("fidelity"):
        L += ["## Fidelity per teacher × output × group (global-normalised R²)", "",
              "1 − squared error / the per-channel variance of the teacher's features over the whole test split: one "
              "normaliser for every group, so the same error counts the same in every group (1 = perfect, 0 = as good "
              "as the teacher's mean; higher is better; gap = max − min over groups).", ""]  # fmt: skip
        L += _group_mean_tables(report["fidelity"])
    if report.get("fidelity_functional"):
        L += ["## Functional fidelity: each teacher's own probe on the student's adapter output", "",
              "The teacher's linear probe (fitted on its train features, threshold on val) scores the teacher's test "
              "features and the student's adapter output for that teacher; Δ = student − teacher; agreement = share of "
              "samples on which the two decisions agree.", ""]  # fmt: skip
        for teacher, f in report["fidelity_functional"].items():
            rows = []
            for attr, a in f["attributes"].items():
                for g, e in a["by_group"].items():
                    rows.append([attr, g, e["n"], _num(e["teacher_auc"]), _num(e["student_auc"]), _num(e["delta_auc"]),
                                 _mci(a["agreement"]["by_group"].get(g))])
            L += [f"### {teacher}", ""] + _table(["attribute", "group", "n", "teacher AUC", "student AUC", "Δ AUC",
                                                  "agreement"], rows)  # fmt: skip
    if report.get("fidelity_cosine"):
        L += ["## Cosine fidelity (secondary; biased)", "",
              "Cosine between the student's head output and the teacher's features in the training normaliser's space. "
              "It rewards samples far from the normaliser's running mean (a rare group can score 0.99 on a summary and "
              "0.79 on the same teacher's spatial map) and moves when the sampling moves that mean: compare groups with "
              "the R² above, not with this.", ""]  # fmt: skip
        L += _group_mean_tables(report["fidelity_cosine"])
    return L


def _zero_shot_markdown(zs: Mapping[str, Any]) -> List[str]:
    L = ["## Zero-shot through the CLIP text tower", "",
         f"Scores: {zs.get('scoring', '')}. The student is scored through its adapter for each CLIP-family teacher "
         "(`<model>@<teacher>`), each teacher through its own image embedding (`teacher:<name>`); same metrics, "
         "BCa intervals and thresholds (fixed 0.5 = the argmax for two classes; one chosen on validation) as above.",
         "", "Prompts:", ""]
    for cls, prompts in zs.get("prompts", {}).items():
        L.append(f"- `{cls}`: " + ("; ".join(f'"{p}"' for p in prompts) if isinstance(prompts, list) else
                                   "; ".join(f"{c}: " + ", ".join(f'"{p}"' for p in ps) for c, ps in prompts.items())))
    L.append("")
    rows = []
    for name, m in zs.get("models", {}).items():
        for attr, r in m.get("attributes", {}).items():
            if "labels" in r:
                for lab, rr in r["labels"].items():
                    rows.append(_binary_row(f"{name} / {attr} / {lab}", rr))
            else:
                rows.append(_binary_row(f"{name} / {attr}", r))
    L += _table(["model / attribute"] + _ATTR_HEADER[1:], rows)
    for name, m in zs.get("models", {}).items():
        for attr, r in m.get("attributes", {}).items():
            for lab, rr in (r["labels"].items() if "labels" in r else [(None, r)]):
                t = primary_threshold(rr)
                L += [f"### Zero-shot groups: {name} / {attr}" + (f" / {lab}" if lab else ""), ""]
                bins = [b for b in ("range10", "unit15") if b in rr.get("ece", {})]
                L += _table(["group", "n", "n_pos", "AUC", *[f"ECE {b}" for b in bins], f"TPR@{t}", f"FPR@{t}",
                             f"sel.rate@{t}"], _group_rows(rr))
    return L


def dense_markdown(dense: Mapping[str, Any]) -> List[str]:
    """The dense (segmentation) probe section: one row per model x attribute, then each model's groups."""
    masks = dense.get("masks", {})
    L = ["## Dense probe: segmentation Dice per group", "",
         f"Protocol: {dense.get('protocol', '')}. Masks at {'x'.join(map(str, dense.get('mask_size', [])))} px; "
         "masked / with foreground samples: " + ", ".join(f"{s} {v.get('masked')} / {v.get('with_foreground')}"
                                                          for s, v in masks.items()) + ". "
         "Dice gap = max − min of the group Dices (lower is better); ES-Dice (FairSeg) = Dice / (1 + Σ|Dice − "
         "Dice_g|) and ES-Dice std (FairMedFM) = Dice / (1 + std of group Dices) are scores (higher is better); "
         "std and skewness are across group Dices. Per-sample Dice: `dense_predictions.csv`.", ""]
    rows = []
    for name, m in dense.get("models", {}).items():
        for attr, r in m.get("attributes", {}).items():
            wg = r["worst_group_dice"]
            rows.append([f"{name} / {attr}", _mci(r["dice"]), _mci(r["iou"]),
                         _mci(wg) + (f" ({wg.get('group')})" if wg.get("group") else ""), _mci(r["dice_gap"]),
                         _mci(r["es_dice"]), _mci(r["es_dice_std"]), _mci(r["dice_std"]), _num(r["dice_skewness"].get("value")),
                         _num(m.get("threshold"), 2)])
    L += _table(["model / attribute", "Dice", "IoU", "worst-group Dice", "Dice gap", "ES-Dice", "ES-Dice std",
                 "std", "skewness", "threshold"], rows)
    for name, m in dense.get("models", {}).items():
        em = m.get("empty_masks", {})
        L += [f"### Dense groups: `{name}` ({m.get('features')}, {m.get('feature_dim')} channels on a "
              f"{'x'.join(map(str, m.get('grid', [])))} grid; threshold {_num(m.get('threshold'), 2)}, validation Dice "
              f"{_num(m.get('val_dice'))}; {em.get('n', 0)} test masks without foreground, "
              f"{_num(em.get('with_prediction'))} of them with a predicted pixel)", ""]
        for attr, r in m.get("attributes", {}).items():
            L += _table(["group (" + attr + ")", "n", "Dice", "IoU"],
                        [[g + (" (excluded from gaps)" if g in r.get("excluded_from_gaps", []) else ""),
                          r["groups"][g]["n"], _mci(r["groups"][g]["dice"]), _mci(r["groups"][g]["iou"])]
                         for g in r["group_names"]])
    return L


def _delta(d: Mapping[str, Any]) -> str:
    s = _num(d.get("delta"))
    if s != "undefined" and d.get("ci"):
        s += f" [{_num(d['ci'][0])}, {_num(d['ci'][1])}]"
    return s


def _comparison_markdown(c: Mapping[str, Any]) -> List[str]:
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
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (repr(float(v)) if isinstance(v, (float, np.floating)) else v) for k, v in r.items()})
    return str(p)


def read_predictions_csv(path: str | os.PathLike) -> Dict[str, np.ndarray]:
    """Read a predictions CSV back as columns: label columns -> int arrays, score/threshold -> float arrays,
    everything else -> str arrays."""
    with Path(path).open(newline="") as f:
        rows = list(csv.DictReader(f))
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

