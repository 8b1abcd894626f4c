"""The dense section's Markdown: one row per model x attribute, then each model's groups."""
from __future__ import annotations

from typing import Any, List, Mapping

from agglom.eval.md_format import _mci, _n, _num, _table

__all__ = ["dense_markdown"]


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
