"""An exponential moving average of the trainable module (the student and its heads)."""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEMA(nn.Module):
    def __init__(self, model: nn.Module, decay: float) -> None:
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, m in zip(self.module.parameters(), model.parameters()):
            e.lerp_(m.detach(), 1.0 - self.decay)
        for e, m in zip(self.module.buffers(), model.buffers()):
            e.copy_(m)
