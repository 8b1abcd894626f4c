"""Schema checks shared by several sections' parts of a report: a binary per-group result
(:func:`agglom.eval.metrics.binary_group_metrics`, the probe's and zero-shot's) and a Dice fairness result
(:func:`agglom.eval.dense.dense.dice_fairness`, the dense probe's and the SAM decoder's). Each appends its problems to
a list (one report lists every problem at once)."""
from __future__ import annotations

from typing import Any, List, Mapping

from agglom.metrics.values import _check_metric

__all__ = ["check_binary", "check_fairness", "DICE_STATS"]

_BINARY_KEYS = ("n", "group_names", "auc", "worst_group_auc", "auc_gap", "es_auc", "ece", "groups", "thresholds")
#: the statistics of a dice_fairness result that must be metric dicts
DICE_STATS = ("dice", "iou", "worst_group_dice", "dice_gap", "es_dice", "es_dice_std")


def check_binary(r: Any, where: str, problems: List[str]) -> None:
    """Append what is wrong with one binary per-group result ``r`` (at ``where``) to ``problems``."""
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


def check_fairness(attrs: Any, where: str, problems: List[str]) -> None:
    """Append what is wrong with ``{attribute: dice_fairness result}`` (at ``where``) to ``problems``."""
    if not isinstance(attrs, Mapping):
        problems.append(f"{where}: expected {{attribute: dice_fairness dict}}")
        return
    for attr, r in attrs.items():
        if not isinstance(r, Mapping) or "groups" not in r or "group_names" not in r:
            problems.append(f"{where}.{attr}: expected a dice_fairness dict")
            continue
        for k in DICE_STATS:
            _check_metric(r.get(k), f"{where}.{attr}.{k}", problems)
