"""Choosing the fair recipe on validation, per dataset: a fairness recipe is kept only where it lifts the worst-off
group on the validation split without levelling any group down; otherwise the ERM (λ = 0) student is the choice.

Why: no fairness knob helps on every dataset. Where the ERM student is already even across groups, audit routing
or rebalancing has nothing to close and can only move groups around (the held-out variants in docs/results.md
show a fair candidate lowering a group's test AUC). The test split must not decide which recipe to use, so
the decision is taken on validation, with the same paired comparison the verdict uses on test (seed-mean
differences, paired bootstrap BCa intervals), and the test split then reports the chosen student.

The rule is MEDFAIR's minimax choice restricted to candidates that pass the levelling-down guard:

1. a candidate under which some group's seed-mean validation AUC fell beyond its interval is out (levels down);
   with a non-inferiority ``margin`` δ > 0 (default 0), only a fall whose whole interval lies below −δ counts, as
   in a clinical non-inferiority test: the user states how small a loss is no loss (the paired test on thousands
   of majority-group samples resolves AUC drops of 0.0005, docs/fairness.md);
2. so is one whose overall validation AUC fell by more than the allowed utility cost;
3. so is one that raises the seed-mean validation worst-group AUC by less than ``min_lift`` (default 0.01, half
   the lift the demo's verdict asks for): a lift inside the noise of a few seeds is no reason to change recipe;
4. of the rest, the one with the highest seed-mean validation worst-group AUC is chosen; with none left, ERM.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.verdict import fmt_delta, levelled_beyond

__all__ = ["MODES", "select_recipe", "render_selection", "levelled_beyond"]

#: ``validation``: the rule above; ``always``: the candidate recipe is used whatever validation says
MODES = ("validation", "always")


def _candidate_row(name: str, v: Mapping[str, Any], max_cost: float, min_lift: float, margin: float) -> Dict[str, Any]:
    d = v["fair_vs_erm"]
    worst, auc = d["worst"], d["auc"]
    deltas = {g: d[f"g:{g}"] for g in v["groups"]}
    worse = levelled_beyond(deltas, margin)
    why: List[str] = []
    if worse:
        beyond = f" (beyond the margin {margin:g})" if margin else ""
        why.append(f"levels down {', '.join(worse)} on validation{beyond}")
    if auc["value"] is not None and auc["value"] < -max_cost:
        why.append(f"overall validation AUC cost {-auc['value']:.4f} > {max_cost:.2f}")
    if worst["value"] is None or worst["value"] < min_lift:
        why.append(f"raises the validation worst-group AUC by less than {min_lift:.3f}")
    return {"name": name, "eligible": not why, "why_not": why, "delta_worst_group_auc": worst,
            "delta_overall_auc": auc, "delta_groups": deltas, "levelled_down": worse,
            "worst_group_auc": v["students"]["fair"]["worst"]["value"]}


def select_recipe(validation: Mapping[str, Mapping[str, Any]], *, mode: str = "validation",
                  max_overall_cost: float = 0.01, min_lift: float = 0.01, margin: float = 0.0) -> Dict[str, Any]:
    """The recipe to report as the fair student.

    ``validation``: ``{candidate: verdict}`` where each verdict is :func:`agglom.eval.verdict.verdict` of the
    candidate (as ``fair``) against the ERM students (as ``erm``) on the *validation* predictions of the same seeds.
    Returns ``{"mode", "chosen": "erm" | <candidate>, "reason", "candidates": [...], "erm_worst_group_auc"}``."""
    if mode not in MODES:
        raise ValueError(f"selection mode {mode!r}: choose one of {', '.join(MODES)}")
    if not validation:
        raise ValueError("select_recipe: no candidate")
    if not margin >= 0:
        raise ValueError(f"levelling-down margin {margin!r}: must be >= 0 (0: any fall beyond its interval counts)")
    rows = [_candidate_row(n, v, max_overall_cost, min_lift, margin) for n, v in validation.items()]
    erm_worst = next(iter(validation.values()))["students"]["erm"]["worst"]["value"]
    out: Dict[str, Any] = {"mode": mode, "split": "val", "max_overall_cost": max_overall_cost,
                           "min_lift": min_lift, "margin": margin, "candidates": rows,
                           "erm_worst_group_auc": erm_worst}
    if mode == "always":
        out.update(chosen=rows[0]["name"], reason="selection off (select=always): the candidate recipe is used "
                                                  "whatever validation says")
        return out
    ok = [r for r in rows if r["eligible"]]
    if not ok:
        out.update(chosen="erm", reason="no candidate recipe passes the validation rule (a worthwhile lift of the "
                                        "worst group, no levelling down, a small utility cost); the ERM student is kept (" +
                                        "; ".join(f"{r['name']}: {', '.join(r['why_not'])}" for r in rows) + ")")
        return out
    best = max(ok, key=lambda r: r["delta_worst_group_auc"]["value"])
    out.update(chosen=best["name"], reason=f"{best['name']} raises the validation worst-group AUC by "
                                           f"{best['delta_worst_group_auc']['value']:+.4f} without levelling down")
    return out


def render_selection(sel: Mapping[str, Any], recipes: Mapping[str, str]) -> List[str]:
    """Markdown lines: what validation said of each candidate and which student the verdict reports."""
    chosen = sel["chosen"]
    label = "the ERM student (no fair recipe)" if chosen == "erm" else f"`{recipes.get(chosen, chosen)}`"
    margin = sel.get("margin") or 0.0
    note = (f" A group's fall counts as levelling down only beyond the non-inferiority margin {margin:g} "
            "(`levelling_margin=`); the verdict below still flags every fall beyond its interval.") if margin else ""
    L = [f"Fair recipe chosen on the validation split ({sel['mode']}): **{label}** — {sel['reason']}.{note}", "",
         "| candidate (vs ERM, validation, mean over seeds) | Δ worst-group AUC | Δ overall AUC | levels down | chosen |",
         "|---|---|---|---|---|"]
    for r in sel["candidates"]:
        L.append(f"| `{recipes.get(r['name'], r['name'])}` | {fmt_delta(r['delta_worst_group_auc'])} | "
                 f"{fmt_delta(r['delta_overall_auc'])} | {', '.join(r['levelled_down']) or 'no'} | "
                 f"{'yes' if r['name'] == chosen else 'no'} |")
    return L
