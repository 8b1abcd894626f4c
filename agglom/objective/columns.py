"""Every teacher's group objective in one pass (``objective.group_scope: teacher``).

The per-teacher scope gives each teacher its own group objective (its own GroupDRO weights, its own references).
Calling them one by one on the columns of the ``[B, T]`` loss matrix repeats the same bookkeeping T times: each
computes its utility, its per-group sums and counts, its presence mask and a term per group. Here the
statistics are computed once for all columns (a ``[G, T]`` ``index_add``), the objectives aggregate their columns
in one call where they allow it (:meth:`agglom.objective.groups.GroupObjective.aggregate_columns`; GroupDRO, which
keeps state per teacher, runs a column at a time), and the logged terms come out already averaged over the
teachers. Each column's values are those of calling its objective on it alone, to float rounding
(``tests/distill/test_step_fused.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from agglom.objective.groups import GroupObjective


@dataclass
class Columns:
    """What :func:`per_teacher` returns: each teacher's objective value, and the terms it logs."""

    loss: torch.Tensor  # [T], each teacher's group-aggregated loss (differentiable)
    utility: torch.Tensor  # [T], detached: each teacher's plain (weighted) mean loss
    terms: Dict[str, torch.Tensor]  # utility, parity, group/<g> (and GroupDRO's q/<g>), averaged over teachers


def _check(objectives: Sequence[GroupObjective], loss: torch.Tensor, group: torch.Tensor,
           weight: Optional[torch.Tensor]) -> None:
    if loss.dim() != 2 or loss.shape[1] != len(objectives):
        raise ValueError(f"expected per-sample x per-teacher losses [B, {len(objectives)}], got {tuple(loss.shape)}")
    if group.shape != loss.shape[:1]:
        raise ValueError(f"group shape {tuple(group.shape)} != batch {loss.shape[0]}")
    if weight is not None and weight.shape != loss.shape:
        raise ValueError(f"weight shape {tuple(weight.shape)} != loss shape {tuple(loss.shape)}")
    lead = objectives[0]
    if any((o.num_groups, o.unknown_index, o.exclude_unknown) != (lead.num_groups, lead.unknown_index,
                                                                 lead.exclude_unknown) for o in objectives):
        raise ValueError("per-teacher group objectives must share their groups and the unknown group's handling")


def per_teacher(objectives: Sequence[GroupObjective], loss: torch.Tensor, group: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> Columns:
    """Teacher t's objective on column t of ``loss`` [B, T] (``weight`` [B, T]: the teacher mask)."""
    _check(objectives, loss, group, weight)
    lead = objectives[0]
    utility = lead._utility(loss, weight)  # [T]
    means, counts, present = lead._group_stats(loss, group, weight)  # [G, T]
    parity_mask = lead.parity_mask(present)
    total, parity = lead.aggregate_columns(objectives, utility, means, counts, parity_mask, group)
    # a group a teacher did not see is NaN in its column (as each objective logs it): the mean over the teachers
    # that saw it, and NaN (logged as null) where none did
    shown = torch.where(present, means.detach(), torch.full_like(means, float("nan"))).nanmean(1)
    utility = utility.detach()
    terms: Dict[str, torch.Tensor] = {"utility": utility.nanmean(), "parity": parity.detach().nanmean()}
    terms.update({f"group/{g}": v for g, v in enumerate(shown.unbind(0))})
    extra: Dict[str, List[torch.Tensor]] = {}
    for o in objectives:
        for k, v in o.extra_terms().items():
            extra.setdefault(k, []).append(v)
    terms.update({k: torch.stack(v).nanmean() for k, v in extra.items()})
    return Columns(loss=total, utility=utility, terms=terms)
