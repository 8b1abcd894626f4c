"""The zero-shot section's Markdown: the prompts, one headline row per model x attribute, then the groups."""
from __future__ import annotations

from typing import Any, List, Mapping

from agglom.eval.md_format import ATTR_HEADER, _table, binary_row, group_rows
from agglom.eval.metrics import primary_threshold

__all__ = ["zero_shot_markdown"]


def zero_shot_markdown(zs: Mapping[str, Any]) -> List[str]:
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
                    rows.append(binary_row(f"{name} / {attr} / {lab}", rr))
            else:
                rows.append(binary_row(f"{name} / {attr}", r))
    L += _table(["model / attribute"] + ATTR_HEADER[1:], rows)
    for name, m in zs.get("models", {}).items():
        for attr, r in m.get("attributes", {}).items():
            for lab, rr in (r["labels"].items() if "labels" in r else [(None, r)]):
                t = primary_threshold(rr)
                L += [f"### Zero-shot groups: {name} / {attr}" + (f" / {lab}" if lab else ""), ""]
                bins = [b for b in ("range10", "unit15") if b in rr.get("ece", {})]
                L += _table(["group", "n", "n_pos", "AUC", *[f"ECE {b}" for b in bins], f"TPR@{t}", f"FPR@{t}",
                             f"sel.rate@{t}"], group_rows(rr))
    return L
