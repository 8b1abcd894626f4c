"""Group aggregation of per-sample losses: the utility <-> parity objectives (docs/metrics.md, "Group objectives").

Every objective is an ``nn.Module`` called as ``obj(loss [B] fp32, group [B] long, weight [B] | None)`` and
returns ``(scalar, terms)``:

* ``terms["utility"]``: the plain (optionally weighted) mean over *all* samples, unknown group included;
* ``terms["parity"]``: what the objective adds on top of the utility (the λ-scaled penalty for
  ``variance``/``gap``; ``loss - utility`` for ``balanced`` and ``groupdro``; 0 for ``erm``);
* ``terms["group/<idx>"]``: the batch mean loss of each group *present in the batch* (absent groups are
  omitted, so nothing is NaN); the unknown group is listed too when present.

Definitions (L_g = mean loss of group g in the batch; G* = parity groups present in the batch, i.e. present
groups minus the unknown group unless ``exclude_unknown=False``):

* ``erm``: mean over samples.
* ``balanced``: (1/|G*|) Σ_{g∈G*} L_g.
* ``variance``: mean + λ·Var_{g∈G*}(L_g), the *population* variance (divide by |G*|, ``unbiased=False``).
  Symmetric: it also pulls a group that does *better* than the rest towards them — it can level down.
* ``gap``: mean + λ·(max_{g∈G*} L_g − min_{g∈G*} L_g). Symmetric, like ``variance``: the gradient raises the
  best group's loss as much as it lowers the worst's — it can level down.
* ``excess`` (one-sided): mean + λ·(1/|G*|) Σ_{g∈G*} max(0, L_g − r_g), with r_g the group's reference loss
  (``reference``: e.g. the loss the λ = 0 run reached on that group) or, without one, the detached mean of the
  present parity groups' losses. Only groups worse off than their reference are pushed; every other group keeps
  exactly its ERM weight, so the objective never asks a group to get worse.
* ``groupdro``: online exponentiated-gradient weights (Sagawa et al. 2020),
  q_g ← q_g·exp(η·(L_g − r_g + C/√n_g)) for g ∈ G*, then q normalised over all parity groups; the loss is
  Σ_{g∈G*} q_g L_g / Σ_{g∈G*} q_g (q renormalised over the groups present). n_g are running sample counts
  (this batch included), C = ``groupdro_size_adjust``, η = ``groupdro_eta``, r_g the per-group reference loss
  (0 without ``reference``): with it, weight goes to the groups *furthest above what they can reach* rather than to
  an intrinsically harder group (excess-loss DRO). q and n are buffers, so they are in ``state_dict()`` and
  restored on resume. q is only updated in training mode (``module.train()``).

With λ = 0, ``variance`` and ``gap`` return the very tensor ``erm`` returns (bitwise identical). When no
parity group is present (e.g. a batch of unknown-group samples only) every objective falls back to the utility.

Weights: with ``weight`` given, every mean is the weighted mean Σ w·ℓ / Σ w (per group and overall); a group
whose weights sum to zero counts as absent.

Distributed training: each rank aggregates its *own* batch (group means, penalty, and the GroupDRO update use
the local batch only; nothing is all-reduced here). Gradients are averaged by DDP as usual; the GroupDRO q
buffers may therefore drift slightly apart across ranks, and the checkpoint records rank 0's. A caller that
wants global statistics can all-reduce ``loss*w`` / ``w`` sums per group before calling.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Type

import torch
from torch import nn

from agglom.config.access import cfg_get
from agglom.registry import Registry

Terms = Dict[str, torch.Tensor]

GROUP_OBJECTIVES: Registry[Type["GroupObjective"]] = Registry("group objective", key="objective.group")


def register_group_objective(name: str) -> Callable[[Type["GroupObjective"]], Type["GroupObjective"]]:
    """Class decorator: make a :class:`GroupObjective` subclass available as ``objective.group: <name>``."""

    def deco(cls: Type["GroupObjective"]) -> Type["GroupObjective"]:
        GROUP_OBJECTIVES.add(name, cls)
        cls.name = name
        return cls

    return deco


def list_group_objectives() -> list:
    return sorted(GROUP_OBJECTIVES)


class GroupObjective(nn.Module):
    """Base class: shared per-group statistics; subclasses implement :meth:`aggregate`."""

    name = "base"
    note = ""  # one line for --help: what the objective does to the better-off groups
    columnwise = False  # see one_call()

    def __init__(self, num_groups: int, unknown_index: Optional[int] = None, exclude_unknown: bool = True,
                 lam: float = 0.0, reference: Optional[Sequence[float]] = None, **_: Any) -> None:
        super().__init__()
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        if unknown_index is not None and not (0 <= unknown_index < num_groups):
            raise ValueError(f"unknown_index {unknown_index} outside [0, {num_groups})")
        self.num_groups = int(num_groups)
        self.unknown_index = None if unknown_index is None else int(unknown_index)
        self.exclude_unknown = bool(exclude_unknown)
        self.lam = float(lam)
        parity = torch.ones(num_groups, dtype=torch.bool)
        if self.exclude_unknown and self.unknown_index is not None:
            parity[self.unknown_index] = False
        # which groups may enter parity terms (not saved: it follows from the constructor arguments)
        self.register_buffer("parity_groups", parity, persistent=False)
        ref = torch.full((num_groups,), float("nan"))
        if reference is not None:
            ref = torch.as_tensor([float("nan") if v is None else float(v) for v in reference], dtype=torch.float32)
            if ref.shape != (num_groups,):
                raise ValueError(f"reference: {ref.numel()} values for {num_groups} groups")
        # per-group reference losses (NaN = none); from the recipe, so not saved either
        self.register_buffer("reference", ref, persistent=False)

    # ------------------------------------------------------------------ statistics
    # Each works on one loss column [B] or on every teacher's at once [B, T] (agglom/objective/columns.py):
    # reductions run over dim 0, so a column of the [B, T] result is the [B] one's value.
    def _utility(self, loss: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        if weight is None:
            return loss.mean(0)
        w = weight.to(loss.dtype)
        return (loss * w).sum(0) / w.sum(0).clamp_min(torch.finfo(loss.dtype).tiny)

    def _group_stats(self, loss: torch.Tensor, group: torch.Tensor,
                     weight: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-group means [G] (0 where absent), per-group weight sums [G], presence mask [G] ([G, T] for [B, T])."""
        g = group.long().reshape(-1)
        w = torch.ones_like(loss) if weight is None else weight.to(loss.dtype).reshape(loss.shape)
        size = (self.num_groups,) + tuple(loss.shape[1:])
        try:  # index_add checks the range itself (on CPU; a device assert on GPU): no host sync to check first
            sums = loss.new_zeros(size).index_add(0, g, loss * w)
        except IndexError:
            raise ValueError(f"group indices must lie in [0, {self.num_groups}); got "
                             f"min {int(g.min())}, max {int(g.max())}") from None
        counts = loss.new_zeros(size).index_add(0, g, w)
        present = counts > 0
        means = sums / counts.clamp_min(torch.finfo(loss.dtype).tiny)
        return means, counts, present

    def parity_mask(self, present: torch.Tensor) -> torch.Tensor:
        """The parity groups present: ``present`` [G] or [G, T] and this objective's parity groups."""
        parity = self.parity_groups.to(present.device)
        return present & parity.view((-1,) + (1,) * (present.dim() - 1))

    def forward(self, loss: torch.Tensor, group: torch.Tensor,
                weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Terms]:
        if loss.dim() != 1:
            raise ValueError(f"expected per-sample losses [B], got shape {tuple(loss.shape)}")
        if group.shape != loss.shape:
            raise ValueError(f"group shape {tuple(group.shape)} != loss shape {tuple(loss.shape)}")
        if weight is not None and weight.shape != loss.shape:
            raise ValueError(f"weight shape {tuple(weight.shape)} != loss shape {tuple(loss.shape)}")
        utility = self._utility(loss, weight)
        means, counts, present = self._group_stats(loss, group, weight)
        parity_mask = self.parity_mask(present)
        total, parity = self.aggregate(utility, means, counts, parity_mask, group)
        terms: Terms = {"utility": utility.detach(), "parity": parity.detach()}
        # every group's mean loss, NaN where the batch has none (logged as null): which groups a batch holds is
        # known only on the device, and asking would stall the step on a host sync
        shown = torch.where(present, means.detach(), torch.full_like(means, float("nan")))
        terms.update({f"group/{idx}": shown[idx] for idx in range(self.num_groups)})
        terms.update(self.extra_terms())
        return total, terms

    def aggregate(self, utility: torch.Tensor, means: torch.Tensor, counts: torch.Tensor,
                  parity_mask: torch.Tensor, group: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loss, parity_term)``; ``parity_mask`` marks the parity groups present in the batch."""
        raise NotImplementedError

    def aggregate_columns(self, objectives: Sequence["GroupObjective"], utility: torch.Tensor, means: torch.Tensor,
                          counts: torch.Tensor, parity_mask: torch.Tensor,
                          group: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(loss [T], parity_term [T])`` of ``objectives`` (teacher t's is column t of ``means`` [G, T]): one
        :meth:`aggregate` call over every column when :meth:`one_call` allows, else one call per column."""
        if self.one_call(objectives):
            return self.aggregate(utility, means, counts, parity_mask, group)
        outs = [o.aggregate(utility[i], means[:, i], counts[:, i], parity_mask[:, i], group)
                for i, o in enumerate(objectives)]
        return torch.stack([a for a, _ in outs]), torch.stack([b for _, b in outs])

    def one_call(self, objectives: Sequence["GroupObjective"]) -> bool:
        """Whether one :meth:`aggregate` call may run every objective's column: the class itself declares
        ``columnwise`` (its aggregate reduces over dim 0 and reads no state but ``lam``; a subclass that overrides
        it is run a column at a time unless it declares it too) and every objective is of it, with its ``lam``."""
        return bool(type(self).__dict__.get("columnwise", False)) and \
            all(type(o) is type(self) and o.lam == self.lam for o in objectives)

    def extra_terms(self) -> Terms:
        return {}

    def extra_repr(self) -> str:
        return (f"num_groups={self.num_groups}, unknown_index={self.unknown_index}, "
                f"exclude_unknown={self.exclude_unknown}, lam={self.lam}")


@register_group_objective("erm")
class ERM(GroupObjective):
    columnwise = True

    def aggregate(self, utility, means, counts, parity_mask, group):
        return utility, torch.zeros_like(utility)


@register_group_objective("balanced")
class Balanced(GroupObjective):
    note = "mean of group means"
    columnwise = True

    def aggregate(self, utility, means, counts, parity_mask, group):
        m = parity_mask.to(means.dtype)
        n = m.sum(0)
        loss = torch.where(n > 0, (means * m).sum(0) / n.clamp_min(1), utility)  # no parity group: the utility
        return loss, loss - utility


@register_group_objective("variance")
class Variance(GroupObjective):
    """mean + λ·population variance of the present parity groups' mean losses."""

    note = "symmetric: can level down"
    columnwise = True

    def aggregate(self, utility, means, counts, parity_mask, group):
        m = parity_mask.to(means.dtype)
        n = m.sum(0).clamp_min(1)  # no parity group present: m is all 0, so the penalty is 0
        mu = (means * m).sum(0) / n
        var = (((means - mu) ** 2) * m).sum(0) / n
        penalty = self.lam * var
        loss = utility if self.lam == 0 else utility + penalty
        return loss, penalty


@register_group_objective("gap")
class Gap(GroupObjective):
    """mean + λ·(max − min) of the present parity groups' mean losses."""

    note = "symmetric: can level down"
    columnwise = True

    def aggregate(self, utility, means, counts, parity_mask, group):
        inf = torch.full_like(means, float("inf"))
        hi = torch.where(parity_mask, means, -inf).amax(0)
        lo = torch.where(parity_mask, means, inf).amin(0)
        spread = torch.where(parity_mask.any(0), hi - lo, torch.zeros_like(utility))  # no parity group: 0
        penalty = self.lam * spread
        loss = utility if self.lam == 0 else utility + penalty
        return loss, penalty


@register_group_objective("excess")
class Excess(GroupObjective):
    """mean + λ·(1/|G*|)·Σ relu(L_g − r_g): one-sided, only groups above their reference (or the group mean)."""

    note = "one-sided: pushes only groups above their reference"
    columnwise = True

    def aggregate(self, utility, means, counts, parity_mask, group):
        return self._penalised(utility, means, parity_mask, self.reference)

    def aggregate_columns(self, objectives, utility, means, counts, parity_mask, group):
        if not self.one_call(objectives):
            return super().aggregate_columns(objectives, utility, means, counts, parity_mask, group)
        reference = torch.stack([o.reference for o in objectives], 1)  # each teacher's own references, [G, T]
        return self._penalised(utility, means, parity_mask, reference)

    def _penalised(self, utility, means, parity_mask, reference):
        if self.lam == 0:
            return utility, torch.zeros_like(utility)
        m = parity_mask.to(means.dtype)
        n = m.sum(0).clamp_min(1)  # no parity group present: every term below is masked to 0
        mean_of_groups = ((means * m).sum(0) / n).detach()
        ref = self.targets(reference.to(device=means.device, dtype=means.dtype), mean_of_groups.expand_as(means))
        excess = torch.relu(means - ref) * m
        penalty = self.lam * excess.sum(0) / n
        return utility + penalty, penalty

    @staticmethod
    def targets(ref: torch.Tensor, mean_of_groups: torch.Tensor) -> torch.Tensor:
        """The loss each group is held to: its reference, or the group mean where it has none."""
        return torch.where(torch.isnan(ref), mean_of_groups, ref)


@register_group_objective("catchup")
class CatchUp(Excess):
    """mean + λ·(1/|G*|)·Σ relu(L_g − min(r_g, mean of groups)): one-sided like ``excess``, but a group worse than
    the others is pushed towards the group mean even where its reference (its ERM loss) is no better."""

    note = "one-sided: pushes groups above the group mean or above their reference"
    columnwise = True

    @staticmethod
    def targets(ref: torch.Tensor, mean_of_groups: torch.Tensor) -> torch.Tensor:
        """The lower of a group's reference and the group mean (the mean where it has no reference)."""
        return torch.where(torch.isnan(ref), mean_of_groups, torch.minimum(ref, mean_of_groups))


@register_group_objective("groupdro")
class GroupDRO(GroupObjective):
    """Online GroupDRO (Sagawa et al. 2020) with optional size adjustment C/√n_g; q and n_g are buffers."""

    note = "online worst-group weights; with a reference, excess-loss weights"

    def __init__(self, num_groups: int, unknown_index: Optional[int] = None, exclude_unknown: bool = True,
                 lam: float = 0.0, eta: float = 0.01, size_adjust: float = 0.0, **kw: Any) -> None:
        super().__init__(num_groups, unknown_index, exclude_unknown, lam, **kw)
        self.eta = float(eta)
        self.size_adjust = float(size_adjust)
        q = self.parity_groups.to(torch.float32)
        if q.sum() == 0:  # only the unknown group exists and it is excluded: nothing to weight
            q = torch.ones(num_groups)
        self.register_buffer("q", q / q.sum())
        self.register_buffer("counts", torch.zeros(num_groups, dtype=torch.float64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        # from the constructor arguments, kept on the host so the step never reads them back from the device
        self._parity_indices = [i for i in range(num_groups) if bool(self.parity_groups[i])]
        self._any_allowed = bool(self._parity_indices)

    def aggregate(self, utility, means, counts, parity_mask, group):
        # without a host sync: a batch with no parity group leaves q, counts and steps as they were (each update
        # is gated by `any_parity` on the device) and its loss is the utility
        any_parity = parity_mask.any()
        if self.training:
            with torch.no_grad():
                n = self.counts.new_zeros(self.num_groups).index_add(
                    0, group.long().reshape(-1).to(self.counts.device),
                    torch.ones(group.numel(), dtype=self.counts.dtype, device=self.counts.device))
                self.counts.add_(n * any_parity.to(self.counts.device))
                adj = means.detach().to(torch.float32)
                ref = self.reference.to(adj.device)
                adj = adj - torch.where(torch.isnan(ref), torch.zeros_like(ref), ref)
                if self.size_adjust:
                    adj = adj + self.size_adjust / self.counts.clamp_min(1).sqrt().to(torch.float32)
                # q_g <- q_g exp(η adj_g) for present parity groups, in log space for stability; normalise
                logq = self.q.clamp_min(torch.finfo(torch.float32).tiny).log()
                logq = torch.where(parity_mask, logq + self.eta * adj, logq)
                if self._any_allowed:
                    allowed = self.parity_groups.to(logq.device)
                    logq = torch.where(allowed, logq, torch.full_like(logq, float("-inf")))
                else:
                    logq = torch.zeros_like(logq)
                self.q.copy_(torch.where(any_parity, torch.softmax(logq, dim=0), self.q))
                self.steps.add_(any_parity.long())
        qp = self.q.to(means.dtype) * parity_mask.to(means.dtype)
        loss = (qp * means).sum() / qp.sum().clamp_min(torch.finfo(means.dtype).tiny)
        loss = torch.where(any_parity, loss, utility)
        return loss, loss - utility

    def extra_terms(self) -> Terms:
        return {f"q/{i}": self.q[i].detach() for i in self._parity_indices}

    def extra_repr(self) -> str:
        return super().extra_repr() + f", eta={self.eta}, size_adjust={self.size_adjust}"


def build_group_objective(cfg_objective: Any, num_groups: int, unknown_index: Optional[int] = None,
                          exclude_unknown: bool = True,
                          reference: Optional[Sequence[Optional[float]]] = None) -> GroupObjective:
    """Build ``cfg_objective.group`` (one of :func:`list_group_objectives`).

    ``cfg_objective`` is the ``objective`` section (DictConfig, dataclass or dict): reads ``group``, ``lam``,
    ``groupdro_eta``, ``groupdro_size_adjust``. ``exclude_unknown`` should be
    ``cfg.groups.unknown != "include"``; ``unknown_index`` is ``GroupIndexer.names.index("unknown")``;
    ``reference``: per-group reference losses (None entries: no reference for that group) for ``excess`` and
    ``groupdro``.
    """
    name = str(cfg_get(cfg_objective, "group", "erm"))
    return GROUP_OBJECTIVES.lookup(name)(
        num_groups=int(num_groups),
        unknown_index=unknown_index,
        exclude_unknown=exclude_unknown,
        lam=float(cfg_get(cfg_objective, "lam", 0.0)),
        eta=float(cfg_get(cfg_objective, "groupdro_eta", 0.01)),
        size_adjust=float(cfg_get(cfg_objective, "groupdro_size_adjust", 0.0)),
        reference=reference,
    )
