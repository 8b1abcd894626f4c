"""The report's ``sam_prompts`` section (:mod:`agglom.eval.sam.run`): its schema check, its Markdown and its console
lines — prompted-segmentation Dice per group with the SAM teacher's decoder on the teacher's embedding and on the
student's adapter output, and the agreement between the two encoders' masks."""
from __future__ import annotations

from typing import Any, List, Mapping

from agglom.eval.checks import check_fairness
from agglom.eval.md_format import _mci, _n, _num, _table


def check_sam_section(section: Any, problems: List[str]) -> None:
    """Append what is wrong with a ``sam_prompts`` section to ``problems``."""
    if not (isinstance(section, Mapping) and "protocol" in section and isinstance(section.get("teachers"), Mapping)):
        problems.append("sam_prompts: expected {'protocol', 'prompt', 'teachers', ...}")
        return
    for name, t in section["teachers"].items():
        where = f"sam_prompts.teachers.{name}"
        if not (isinstance(t, Mapping) and isinstance(t.get("models"), Mapping) and "agreement" in t):
            problems.append(f"{where}: expected {{'decoder', 'embedding', 'models', 'agreement', ...}}")
            continue
        for model, m in t["models"].items():
            check_fairness((m or {}).get("attributes"), f"{where}.models.{model}.attributes", problems)
        check_fairness((t.get("agreement") or {}).get("attributes"), f"{where}.agreement.attributes", problems)


def sam_markdown(section: Mapping[str, Any]) -> List[str]:
    """Per SAM teacher and attribute: one row per group with the teacher-encoder Dice, the student-encoder Dice and
    their agreement Dice (95% BCa intervals), after an overall row."""

    L = ["## The student as SAM's image encoder: prompted segmentation Dice per group", "",
         f"Protocol: {section.get('protocol', '')}. Prompt: `{section.get('prompt')}`; split `{section.get('split')}`, "
         f"masks at {'x'.join(map(str, section.get('mask_size') or []))} px; {section.get('samples')} samples read, "
         f"{section.get('without_foreground')} without foreground (not evaluated). Per-sample numbers: "
         "`sam_predictions.csv`.", ""]
    for name, t in section.get("teachers", {}).items():
        models = t.get("models", {})
        teacher_key = f"teacher:{name}"
        student_key = next((k for k in models if k != teacher_key), None)
        L += [f"### SAM teacher `{name}` (decoder: {t.get('decoder')}; embedding {'x'.join(map(str, t.get('embedding', [])))}"
              f", adapter grid {'x'.join(map(str, t.get('adapter_grid', [])))}"
              f"{' resampled to it' if t.get('resampled') else ''}; {t.get('n')} samples; mean embedding cosine "
              f"student vs teacher {_num(t.get('embedding_cosine'))})", ""]
        for attr, agree in (t.get("agreement", {}).get("attributes") or {}).items():
            tr = models.get(teacher_key, {}).get("attributes", {}).get(attr, {})
            sr = models.get(student_key, {}).get("attributes", {}).get(attr, {}) if student_key else {}
            rows = [["all", agree.get("n"), _mci(tr.get("dice")), _mci(sr.get("dice")), _mci(agree.get("dice"))]]
            for g in agree.get("group_names", []):
                cell = [(r.get("groups") or {}).get(g, {}).get("dice") for r in (tr, sr, agree)]
                rows.append([g + (" (excluded from gaps)" if g in agree.get("excluded_from_gaps", []) else ""),
                             _n(agree["groups"][g]), *(_mci(c) for c in cell)])
            rows.append(["Dice gap", "", *(_mci(r.get("dice_gap")) for r in (tr, sr, agree))])
            L += _table([f"group ({attr})", "n", "Dice, teacher encoder", f"Dice, student encoder ({student_key})",
                         "agreement Dice (student vs teacher masks)"], rows)
    return L


def sam_console(section: Mapping[str, Any]) -> List[str]:
    """One line per SAM teacher and attribute for the console."""
    out = []
    for name, t in (section.get("teachers") or {}).items():
        models = t.get("models", {})
        for attr, agree in (t.get("agreement", {}).get("attributes") or {}).items():
            parts = []
            for g in agree.get("group_names", []):
                vals = [(m.get("attributes", {}).get(attr, {}).get("groups", {}).get(g, {}).get("dice") or {})
                        .get("value") for m in models.values()]
                a = agree["groups"][g]["dice"]["value"]
                parts.append(f"{g}: " + "/".join(f"{v:.3f}" if v is not None else "–" for v in vals)
                             + f" agree {a:.3f}" if a is not None else f"{g}: –")
            out.append(f"SAM decoder {name} / {attr} (Dice teacher/student encoder): " + "; ".join(parts))
    return out


__all__ = ["check_sam_section", "sam_markdown", "sam_console"]
