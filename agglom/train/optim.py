"""AdamW parameter groups (no decay on norms, biases, tokens) and the warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import Any, Callable, List

import torch
from torch import nn

_NO_DECAY_NAMES = ("cls_token", "reg_token", "pos_embed", "dist_token", "mask_token")


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias") or any(t in name for t in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(param_groups: List[dict], optim_cfg: Any, device: torch.device) -> torch.optim.AdamW:
    """The one AdamW every engine builds: the recipe's lr, betas and weight decay over ``param_groups`` (each
    group's ``base_lr``, default ``optim.lr``, is what the schedule scales); torch's implementation (nothing to
    JIT-compile), ``foreach`` on GPU."""
    for g in param_groups:
        g.setdefault("base_lr", optim_cfg.lr)
    return torch.optim.AdamW(param_groups, lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2),
                             weight_decay=optim_cfg.weight_decay, foreach=device.type == "cuda")


def warmup_cosine(optim_cfg: Any) -> Callable[[int], float]:
    """lr multiplier for optimiser step s (0-based): linear warm-up, then cosine to min_lr_ratio."""
    warm, total, floor = int(optim_cfg.warmup_steps), max(1, int(optim_cfg.steps)), float(optim_cfg.min_lr_ratio)

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
