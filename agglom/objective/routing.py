"""Teacher × group routing: per-group weights on each teacher's per-sample loss (docs/metrics.md, "Group objectives").

A recipe sets ``objective.routing: {teacher: {group: weight}}``; pairs not named keep weight 1. Applied to the
per-sample × per-teacher loss matrix before the teacher and group aggregations, so a teacher can count more
(or less) on the groups where it is known to do well (or badly).

Automatic routing (``objective.route_by_audit: ρ > 0``) derives the weights from a teacher audit on validation
(:func:`routing_from_audit`): a teacher that serves a group better than the group's average teacher counts more
for that group. It only ever raises weights, so no teacher is dropped for any group (the student still learns to
reproduce every teacher on every group); explicit ``routing`` entries override the automatic ones.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch


def build_routing(routing_cfg: Optional[Mapping[str, Mapping[str, Any]]], teacher_names: Sequence[str],
                  group_names: Sequence[str], base: Optional[torch.Tensor] = None,
                  aliases: Sequence[str] = ()) -> torch.Tensor:
    """Return a float32 ``[T, G]`` weight matrix from ``{teacher: {group: weight}}``; pairs not named keep their
    ``base`` weight (automatic routing) or 1. ``aliases``: another name per teacher that the mapping may use (the
    short name logs show for a teacher given by path, e.g. ``ft-fair`` for ``runs/demo/teachers/ft-fair``).

    Unknown teacher or group names raise :class:`agglom.config.ConfigError` (a ``ValueError``) that lists the
    valid names; negative or non-finite weights are rejected as well.
    """
    from agglom.config.load import ConfigError

    teacher_names = [str(t) for t in teacher_names]
    group_names = [str(g) for g in group_names]
    w = torch.ones(len(teacher_names), len(group_names), dtype=torch.float32) if base is None else base.clone().float()
    if tuple(w.shape) != (len(teacher_names), len(group_names)):
        raise ValueError(f"base routing {tuple(w.shape)} does not match {len(teacher_names)} teachers x "
                         f"{len(group_names)} groups")
    if not routing_cfg:
        return w
    t_index = {t: i for i, t in enumerate(teacher_names)}
    for i, a in enumerate(aliases):
        t_index.setdefault(str(a), i)
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


def routing_from_audit(auc: Sequence[Sequence[Optional[float]]], strength: float) -> torch.Tensor:
    """``[T, G]`` weights from per teacher × group validation AUCs (None = undefined).

    For group g, teacher t's usefulness is ``u_tg = max(0, AUC_tg − 0.5)`` and its relative usefulness
    ``r_tg = u_tg / mean_t' u_t'g``; the weight is ``1 + ρ · max(0, r_tg − 1)``: teachers above the group's average
    count more, in proportion to how far above they are, and none counts less than 1. A group where no teacher
    beats chance, or where an AUC is undefined, keeps weight 1."""
    from agglom.config.load import ConfigError

    if not strength >= 0:
        raise ConfigError(f"objective.route_by_audit must be >= 0, got {strength}")
    T = len(auc)
    G = len(auc[0]) if T else 0
    w = torch.ones(T, G, dtype=torch.float32)
    for g in range(G):
        vals = [auc[t][g] for t in range(T)]
        if any(v is None for v in vals):
            continue
        u = torch.tensor([max(0.0, float(v) - 0.5) for v in vals], dtype=torch.float64)
        if float(u.mean()) <= 0:
            continue
        rel = u / u.mean()
        w[:, g] = (1.0 + float(strength) * torch.clamp(rel - 1.0, min=0.0)).float()
    return w

