"""AdamW parameter groups (no decay on norms, biases, tokens) and the warm-up + cosine schedule."""
from __future__ import annotations

import math
from typing import Any, Callable, List

import torch
from torch import nn

#: never decayed, wherever they sit in the model (timm's ``no_weight_decay`` names, as patterns)
NO_DECAY_PATTERNS = tuple(f"*{n}*" for n in ("cls_token", "reg_token", "pos_embed", "dist_token", "mask_token"))


def param_groups(model: nn.Module, weight_decay: float) -> List[dict]:
    """``[decay, no_decay]``: timm's split (:func:`timm.optim.param_groups_weight_decay`: no decay on 1-d tensors,
    biases and the token/position parameters), always both groups in this order whatever the decay, so an
    optimiser state saved by one run loads into another of the same model."""
    from timm.optim import param_groups_weight_decay

    split = param_groups_weight_decay(model, 1.0, no_weight_decay_list=NO_DECAY_PATTERNS)  # 1.0: only to classify
    decay = [p for g in split if g["weight_decay"] for p in g["params"]]
    no_decay = [p for g in split if not g["weight_decay"] for p in g["params"]]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def adamw(param_groups: List[dict], optim_cfg: Any, device: torch.device) -> torch.optim.AdamW:
    """The one AdamW every engine builds: the recipe's lr, betas and weight decay over ``param_groups`` (each
    group's ``base_lr``, default ``optim.lr``, is what the schedule scales); torch's implementation (nothing to
    JIT-compile). Its fused kernel where torch has one for the parameters (CPU and CUDA, float parameters): one
    kernel over all tensors instead of a dozen element-wise ops per tensor, which on the demo's student makes the
    optimiser step several times faster on CPU (`make bench`, section h); else ``foreach`` on GPU."""
    for g in param_groups:
        g.setdefault("base_lr", optim_cfg.lr)
    kw = dict(lr=optim_cfg.lr, betas=(optim_cfg.beta1, optim_cfg.beta2), weight_decay=optim_cfg.weight_decay)
    if _fusable(param_groups, device):
        return torch.optim.AdamW(param_groups, fused=True, **kw)
    return torch.optim.AdamW(param_groups, foreach=device.type == "cuda", **kw)


def _fusable(param_groups: List[dict], device: torch.device) -> bool:
    """Whether torch's fused AdamW takes these parameters: all on one CPU or CUDA device, floating point."""
    params = [p for g in param_groups for p in g["params"]]
    kinds = {(p.device.type, p.dtype) for p in params}
    fused_dtypes = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    return bool(params) and all(d in ("cpu", "cuda") and t in fused_dtypes for d, t in kinds) \
        and len({p.device for p in params}) == 1


def warmup_cosine(optim_cfg: Any) -> Callable[[int], float]:
    """lr multiplier for optimiser step s (0-based): linear warm-up, then cosine to min_lr_ratio."""
    warm, total, floor = int(optim_cfg.warmup_steps), max(1, int(optim_cfg.steps)), float(optim_cfg.min_lr_ratio)

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor
