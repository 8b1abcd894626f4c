"""The fidelity section's Markdown: global-normalised R² per teacher x output x group, functional fidelity and the
(secondary) cosine."""
from __future__ import annotations

from typing import Any, List, Mapping

from agglom.eval.md_format import _mci, _num, _table

__all__ = ["fidelity_markdown"]


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


def fidelity_markdown(report: Mapping[str, Any]) -> List[str]:
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
