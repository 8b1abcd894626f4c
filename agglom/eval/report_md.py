"""The Markdown side of evaluation reports: the report's tables (:func:`render_markdown`), the data summary, and
the console summary table. The schema and the files live in :mod:`agglom.eval.report`."""
from __future__ import annotations

import math
from typing import Any, List, Mapping, Optional

import numpy as np

from agglom.eval.md_format import _mci, _n, _num, _table, with_interval
from agglom.eval.metrics import headline, primary_threshold
from agglom.eval.sam_report import sam_markdown

__all__ = ["render_markdown", "data_markdown", "summary_table"]


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
            _n(e), e["n_pos"], _mci(e["auc"]),
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
        L += _model_markdown(name, models[name])
    L += _fidelity_markdown(report)
    if report.get("zero_shot"):
        L += _zero_shot_markdown(report["zero_shot"])
    if report.get("dense"):
        L += dense_markdown(report["dense"])
    if report.get("sam_prompts"):
        L += sam_markdown(report["sam_prompts"])
    if report.get("comparison"):
        L += _comparison_markdown(report["comparison"])
    if report.get("resolution"):
        from agglom.eval.resolution import resolution_markdown

        L += resolution_markdown(report["resolution"])
    if len(models) > 1:
        L += ["## Teacher audit: same probe protocol on every model", "", "```", summary_table(report), "```", ""]
    if report.get("pareto"):
        L += _pareto_markdown(report["pareto"])
    return "\n".join(L).rstrip() + "\n"


def _model_markdown(name: str, m: Mapping[str, Any]) -> List[str]:
    """One model's section: the headline row per attribute (and label), then each grouping's tables."""
    L = [f"## Model `{name}` ({m.get('kind', 'model')})", ""]
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
                _group_rows(rr))
    trows = []
    for tn, e in rr["thresholds"].items():
        trows.append([tn + (" (optimistic)" if e.get("optimistic") else ""), _num(e["threshold"]),
                      _mci(e["dpd"]), _mci(e["eod_worst_case"]), _mci(e["eod_mean"]),
                      _mci(e["eo_tpr_gap"]), _mci(e["fnr_gap"]), _mci(e["fpr_gap"])])  # fmt: skip
    return L + _table(["threshold", "value", "DPD", "EOD worst-case", "EOD mean", "EO (ΔTPR)", "FNR gap", "FPR gap"],
                      trows)


def _pareto_markdown(p: Mapping[str, Any]) -> List[str]:
    L = ["## Utility–fairness front", "",
         f"Hypervolume {_num(p['hypervolume'], 4)} (reference {p['reference']}); selected: "
         f"**{p.get('selected')}** — {p.get('selection_rule')}.", ""]  # fmt: skip
    rows = [[pt.get("name"), _num(pt.get("utility")), _num(pt.get("gap")), _num(pt.get("worst_group")),
             "yes" if pt.get("pareto") else ""] for pt in p["points"]]  # fmt: skip
    return L + _table(["candidate", p.get("utility_name", "utility"), p.get("gap_name", "gap"), "worst group",
                       "Pareto"], rows)  # fmt: skip


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
        L += [f"### Dense groups: `{name}` ({m.get('head', 'linear')} head on {m.get('features')}, "
              f"{m.get('feature_dim')} channels on a "
              f"{'x'.join(map(str, m.get('grid', [])))} grid; threshold {_num(m.get('threshold'), 2)}, validation Dice "
              f"{_num(m.get('val_dice'))}; {em.get('n', 0)} test masks without foreground, "
              f"{_num(em.get('with_prediction'))} of them with a predicted pixel)", ""]
        for attr, r in m.get("attributes", {}).items():
            L += _table(["group (" + attr + ")", "n", "Dice", "IoU"],
                        [[g + (" (excluded from gaps)" if g in r.get("excluded_from_gaps", []) else ""),
                          _n(r["groups"][g]), _mci(r["groups"][g]["dice"]), _mci(r["groups"][g]["iou"])]
                         for g in r["group_names"]])
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


def _delta(d: Mapping[str, Any]) -> str:
    return with_interval(d, key="delta", empty="undefined")


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
