"""The ablation's Markdown (:mod:`agglom.ablation`): one table per attribute and the sentences that say which part of
the fair recipe carries the worst group's lift, each with its paired interval."""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

from agglom.eval.md_format import with_interval
from agglom.eval.verdict import fmt_delta

WHAT = {
    "full": "the demo's fair recipe: ft-fair among the teachers + balancing (β 0.75) + `excess` held to ERM",
    "no-ft-fair": "the fair recipe without the fairness-tuned teacher",
    "no-ft-general": "the fair recipe without the general fine-tuned teacher",
    "no-random-cards": "the fair recipe without the three random-weight cards",
    "balance-only": "balancing only (ERM objective), all teachers",
    "objective-only": "`excess` objective only (natural draws), all teachers",
    "erm-no-ft-fair": "ERM without the fairness-tuned teacher (what ft-fair does under ERM, with the sign flipped)",
    "proxy-balance-only": "balancing only, over proxy clusters from `agglom curate` instead of the true site",
}


def _what(name: str, spec: Mapping[str, Any]) -> str:
    base = name.partition(":")[0]
    text = WHAT.get(base, base)
    if "proxy_teacher" in spec:
        text += f" (k={spec['proxy_k']} clusters of `{spec['proxy_teacher']}`'s summary embeddings)"
    return text


def _excludes_zero(d: Mapping[str, Any]) -> bool:
    c = d.get("ci")
    return bool(c) and (c[0] > 0 or c[1] < 0)


def _sentences(rows: Mapping[str, Any]) -> List[str]:
    """Plain statements, only where a paired interval excludes 0 (otherwise: no difference shown)."""
    out = []
    full = rows["full"]["vs_erm"]["worst"]
    out.append(f"- The full recipe changes the worst group's AUC by {fmt_delta(full)} against ERM"
               + (" (its interval excludes 0)." if _excludes_zero(full) else " (its interval includes 0)."))
    for name, r in rows.items():
        if name == "full":
            continue
        lift, vs_full = r["vs_erm"]["worst"], r["vs_full"]["worst"]
        if name.startswith("no-") or name == "erm-no-ft-fair":
            part = name[3:] if name.startswith("no-") else "ft-fair (under ERM)"
            if name == "erm-no-ft-fair":
                verdict = ("ERM loses worst-group AUC without ft-fair" if _excludes_zero(lift) and lift["value"] < 0
                           else "ERM gains worst-group AUC without ft-fair" if _excludes_zero(lift)
                           else "ERM's worst group does not change measurably without ft-fair")
                out.append(f"- {part}: {verdict}: {fmt_delta(lift)}.")
                continue
            verdict = ("the lift depends on it" if _excludes_zero(vs_full) and vs_full["value"] < 0
                       else "the recipe does better without it" if _excludes_zero(vs_full)
                       else "no measurable part of the lift")
            out.append(f"- Without {part}: worst group {fmt_delta(vs_full)} against the full recipe — {verdict}.")
        else:
            share = (lift["value"] / full["value"]) if full.get("value") else None
            out.append(f"- {name}: lifts the worst group by {fmt_delta(lift)} against ERM"
                       + (f" ({share:.0%} of the full recipe's lift)" if share is not None else "")
                       + f"; against the full recipe {fmt_delta(vs_full)}.")
    return out


def render(result: Mapping[str, Any]) -> List[str]:
    L = ["# What lifts the worst group: the fair recipe's ablation", "",
         f"{result['seeds']} seeds × {result['steps']} steps per student, on the demo's benchmark, teachers, caches "
         "and ERM students; test split; 95% paired-bootstrap BCa intervals, differences averaged over seeds "
         f"(`python -m agglom.ablation`, {result['seconds']:.0f} s).", ""]
    for attr, rows in result["by_attribute"].items():
        groups = list(next(iter(rows.values()))["vs_erm"]["groups"])
        n = next(iter(rows.values()))["n_per_group"]
        L += [f"## Groups by `{attr}` ({', '.join(f'{g}: n={n[g]}' for g in groups)})", "",
              "| variant | Δ worst-group AUC vs ERM | Δ overall AUC vs ERM | " +
              " | ".join(f"Δ AUC {g} vs ERM" for g in groups) +
              " | levelled down vs ERM | Δ worst-group AUC vs full recipe |",
              "|---" * (5 + len(groups)) + "|"]
        for name, r in rows.items():
            e = r["vs_erm"]
            f = r.get("vs_full")
            L.append(f"| `{name}` | {fmt_delta(e['worst'])} | {fmt_delta(e['auc'])} | " +
                     " | ".join(fmt_delta(e["groups"][g]) for g in groups) +
                     f" | {', '.join(e['levelled_down']) or 'none'} | {fmt_delta(f['worst']) if f else '—'} |")
        L += ["", "Absolute AUCs (test, mean over seeds, 95% BCa intervals): ERM, the reference every Δ above is taken "
              "against, and each variant.", "",
              "| model | AUC | worst-group AUC | " + " | ".join(f"AUC {g}" for g in groups) + " |",
              "|---" * (3 + len(groups)) + "|"]
        first = next(iter(rows.values()))["vs_erm"]
        for name, a in [("ERM", first.get("reference")),
                        *[(f"`{k}`", r["vs_erm"].get("variant")) for k, r in rows.items()]]:
            if a:
                L.append(f"| {name} | {with_interval(a['auc'], '.4f')} | {with_interval(a['worst'], '.4f')} | "
                         + " | ".join(with_interval(a["groups"][g], ".4f") for g in groups) + " |")
        L += ["", *_sentences(rows), ""]
    L += ["Variants:", "", *[f"- `{k}`: {_what(k, result['variants'].get(k, {}))}" for k in ["full", *result["variants"]]]]
    return L


def worst_lifts(result: Mapping[str, Any], attribute: str = "site") -> Dict[str, Any]:
    """``{variant: Δ worst-group AUC vs ERM}`` of one attribute (the ablation's headline numbers)."""
    return {k: r["vs_erm"]["worst"] for k, r in result["by_attribute"][attribute].items()}
