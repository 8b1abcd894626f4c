"""Aggregation across teachers, in one place: fixed weights, loss-scale normalisation, teacher dropping."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn


class TeacherBalance(nn.Module):
    """[B, T] losses -> [B] per-sample loss.

    - fixed: Σ_t w_t M_bt L_bt / Σ_t w_t M_bt (dropping a teacher does not change the loss scale);
    - loss_scale: each teacher's loss is first divided by its running mean (a buffer, saved on resume), so
      a teacher with a large loss scale does not drown the others;
    - teacher_drop: each teacher is masked per sample with probability p; one teacher is always kept.
    """

    def __init__(self, cfg: Any, teacher_names: List[str], weights: List[float]) -> None:
        super().__init__()
        from agglom.config.choices import TEACHER_BALANCE

        if cfg.teacher_balance not in TEACHER_BALANCE:
            from agglom.config.load import ConfigError

            raise ConfigError(f"objective.teacher_balance must be one of {', '.join(TEACHER_BALANCE)}, "
                              f"got {cfg.teacher_balance!r}")
        self.mode, self.drop, self.momentum = cfg.teacher_balance, float(cfg.teacher_drop), 0.01
        self.teacher_names = list(teacher_names)
        self.register_buffer("weights", torch.tensor(weights, dtype=torch.float32))
        self.register_buffer("running", torch.ones(len(teacher_names)))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self._known_seen = False  # host-side cache of `seen` once True: the step does not read the buffer back

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # a loaded state may not have seen a batch yet
        self._known_seen = False
        super()._load_from_state_dict(*args, **kwargs)

    def mask(self, batch_size: int, device: torch.device) -> torch.Tensor:
        m = torch.ones(batch_size, len(self.teacher_names), device=device)
        if self.training and self.drop > 0 and len(self.teacher_names) > 1:
            m = (torch.rand(batch_size, len(self.teacher_names), device=device) >= self.drop).float()
            keep = torch.randint(len(self.teacher_names), (batch_size,), device=device)
            m[torch.arange(batch_size, device=device), keep] = 1.0
        return m

    def _scale(self, cur: torch.Tensor) -> torch.Tensor:
        """Loss-scale normalisation: track each teacher's mean loss; returns the divisor per teacher."""
        if self.mode != "loss_scale":
            return torch.ones_like(self.running)
        with torch.no_grad():
            if self.training:
                if not self._known_seen:  # read the buffer back only until it is first seen True
                    self._known_seen = bool(self.seen)
                if self._known_seen:
                    self.running.lerp_(cur, self.momentum)
                else:
                    self.running.copy_(cur)
                    self.seen.fill_(True)
                    self._known_seen = True
        return self.running.clamp_min(1e-6)

    def combine(self, per_teacher: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
        """[T] already-aggregated teacher losses -> scalar: Σ_t w_t ℓ_t / Σ_t w_t over teachers present."""
        cur = torch.where(present, per_teacher.detach(), self.running)  # an absent teacher keeps its scale
        per_teacher = per_teacher / self._scale(cur)
        w = self.weights.to(per_teacher.device) * present.float()
        return (per_teacher * w).sum() / w.sum().clamp_min(1e-12)

    def forward(self, loss_bt: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        cur = (loss_bt.detach() * mask).sum(0) / mask.sum(0).clamp_min(1)
        loss_bt = loss_bt / self._scale(cur)
        w = self.weights.to(loss_bt.device) * mask
        per_sample = (loss_bt * w).sum(1) / w.sum(1).clamp_min(1e-12)
        terms = {f"teacher/{n}": (loss_bt[:, i] * mask[:, i]).sum() / mask[:, i].sum().clamp_min(1)
                 for i, n in enumerate(self.teacher_names)}
        return per_sample, terms
