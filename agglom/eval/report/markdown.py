"""The Markdown side of evaluation reports: the report's tables (:func:`render_markdown`: the data read, then each
section's own lines in report order, :mod:`agglom.eval.sections`, then the teacher audit and the front), the data
summary (the console summary table is :func:`agglom.eval.md_format.summary_table`). The schema lives in
:mod:`agglom.eval.report.schema`."""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

from agglom.eval.md_format import _num, _table, summary_table
from agglom.eval.section import part_of
from agglom.eval.sections import in_report_order

__all__ = ["render_markdown", "data_markdown"]


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human-readable report: the header, the data read, each section's part, the teacher audit, the front."""
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
    for section in in_report_order():
        L += section.markdown(part_of(section, report))
    models = report.get("models", {})
    if len(models) > 1:
        L += ["## Teacher audit: same probe protocol on every model", "", "```", summary_table(report), "```", ""]
    if report.get("pareto"):
        L += _pareto_markdown(report["pareto"])
    return "\n".join(L).rstrip() + "\n"


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
