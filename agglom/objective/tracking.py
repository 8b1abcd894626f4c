"""Running (EMA) per-group, per-teacher distillation losses for ``metrics.jsonl``.

State lives in buffers (saved with the run). Each rank tracks its own batches (nothing is all-reduced); rank 0's
values are what get logged and checkpointed.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn


class GroupTeacherTracker(nn.Module):
    """EMA of the mean loss of each (group, teacher) cell.

    ``ema <- (1 - momentum) * ema + momentum * batch_mean`` for every cell that has samples in the batch; the
    first batch that reaches a cell sets it directly (no bias toward 0). ``count`` is the total number of
    (unmasked) samples each cell has seen.
    """

    def __init__(self, num_groups: int, teacher_names: Sequence[str], group_names: Optional[Sequence[str]] = None,
                 momentum: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.num_groups = int(num_groups)
        self.teacher_names = [str(t) for t in teacher_names]
        self.group_names = ([str(g) for g in group_names] if group_names is not None
                            else [str(i) for i in range(num_groups)])
        if len(self.group_names) != self.num_groups:
            raise ValueError(f"{len(self.group_names)} group names for {num_groups} groups")
        self.momentum = float(momentum)
        t = len(self.teacher_names)
        self.register_buffer("ema", torch.zeros(self.num_groups, t, dtype=torch.float32))
        self.register_buffer("count", torch.zeros(self.num_groups, t, dtype=torch.float64))

    @torch.no_grad()
    def update(self, loss_bt: torch.Tensor, mask: Optional[torch.Tensor], group: torch.Tensor) -> None:
        """``loss_bt [B, T]``; ``mask [B, T]`` (True/1 where the teacher's loss counts; None = all)."""
        if loss_bt.dim() != 2 or loss_bt.shape[1] != len(self.teacher_names):
            raise ValueError(f"expected losses [B, {len(self.teacher_names)}], got {tuple(loss_bt.shape)}")
        loss = loss_bt.detach().to(device=self.ema.device, dtype=torch.float32)
        m = (torch.ones_like(loss) if mask is None
             else mask.detach().to(device=self.ema.device, dtype=torch.float32))
        loss = torch.where(m > 0, loss, torch.zeros_like(loss))  # a masked NaN/inf must not leak in
        g = group.long().reshape(-1).to(self.ema.device)
        sums = torch.zeros_like(self.ema).index_add_(0, g, loss * m)
        n = torch.zeros_like(self.ema).index_add_(0, g, m)
        seen = n > 0
        batch_mean = sums / n.clamp_min(1e-12)
        first = seen & (self.count == 0)
        blended = (1 - self.momentum) * self.ema + self.momentum * batch_mean
        new = torch.where(first, batch_mean, torch.where(seen, blended, self.ema))
        self.ema.copy_(new)
        self.count.add_(n.to(self.count.dtype))

    def as_dict(self) -> Dict[str, float]:
        """``{"<teacher>/<group>": ema}`` for the cells seen so far (unseen cells are left out, never NaN)."""
        ema = self.ema.detach().cpu()
        count = self.count.detach().cpu()
        out: Dict[str, float] = {}
        for gi, gname in enumerate(self.group_names):
            for ti, tname in enumerate(self.teacher_names):
                if count[gi, ti] > 0:
                    out[f"{tname}/{gname}"] = float(ema[gi, ti])
        return out

    def extra_repr(self) -> str:
        return f"groups={self.group_names}, teachers={self.teacher_names}, momentum={self.momentum}"
