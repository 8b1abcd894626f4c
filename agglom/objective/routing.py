"""Teacher × group routing: per-group weights on each teacher's per-sample loss (FAIRNESS.md, "Objectives").

A recipe sets ``objective.routing: {teacher: {group: weight}}``; pairs not named keep weight 1. Applied to the
per-sample × per-teacher loss matrix before the teacher and group aggregations, so a teacher can count more
(or less) on the groups where it is known to do well (or badly).
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch


def build_routing(routing_cfg: Optional[Mapping[str, Mapping[str, Any]]], teacher_names: Sequence[str],
                  group_names: Sequence[str]) -> torch.Tensor:
    """Return a float32 ``[T, G]`` weight matrix (default 1) from ``{teacher: {group: weight}}``.

    Unknown teacher or group names raise :class:`agglom.config.ConfigError` (a ``ValueError``) that lists the
    valid names; negative or non-finite weights are rejected as well.
    """
    from agglom.config.load import ConfigError

    teacher_names = [str(t) for t in teacher_names]
    group_names = [str(g) for g in group_names]
    w = torch.ones(len(teacher_names), len(group_names), dtype=torch.float32)
    if not routing_cfg:
        return w
    t_index = {t: i for i, t in enumerate(teacher_names)}
    g_index = {g: j for j, g in enumerate(group_names)}
    for teacher, per_group in routing_cfg.items():
        teacher = str(teacher)
        if teacher not in t_index:
            raise ConfigError(f"objective.routing: unknown teacher {teacher!r}; valid teachers: "
                              f"{', '.join(teacher_names) or '(none)'}")
        if per_group is None:
            continue
        if not hasattr(per_group, "items"):
            raise ConfigError(f"objective.routing.{teacher}: expected a mapping group -> weight, "
                              f"got {type(per_group).__name__}")
        for group, value in per_group.items():
            group = str(group)
            if group not in g_index:
                raise ConfigError(f"objective.routing.{teacher}: unknown group {group!r}; valid groups: "
                                  f"{', '.join(group_names) or '(none)'}")
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigError(f"objective.routing.{teacher}.{group}: weight must be a number, "
                                  f"got {value!r}") from None
            if not (value >= 0.0 and value < float("inf")):
                raise ConfigError(f"objective.routing.{teacher}.{group}: weight must be finite and >= 0, "
                                  f"got {value}")
            w[t_index[teacher], g_index[group]] = value
    return w


def apply_routing(loss_bt: torch.Tensor, group: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``loss_bt [B, T] * weights[t, group[b]]`` (differentiable in ``loss_bt``)."""
    if loss_bt.dim() != 2:
        raise ValueError(f"expected per-sample × per-teacher losses [B, T], got {tuple(loss_bt.shape)}")
    if weights.dim() != 2 or weights.shape[0] != loss_bt.shape[1]:
        raise ValueError(f"routing weights {tuple(weights.shape)} do not match {loss_bt.shape[1]} teachers")
    w = weights.to(device=loss_bt.device, dtype=loss_bt.dtype)
    return loss_bt * w[:, group.long().to(loss_bt.device)].transpose(0, 1)
