"""Per-sample x per-teacher distillation losses, in fp32 (ANCHORS: granularity must be explicit).

summary: cos_w * (1 - cos(pred, target)) + (1 - cos_w) * smooth-L1, one value per sample (cos_w = summary_cos;
1 = cosine only).
spatial: cos_w * (1 - cos) + (1 - cos_w) * smooth-L1, computed per token then averaged over the tokens of a
sample (granularity "token"), or on the token-mean feature of each sample (granularity "image").
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F


def summary_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """[B, D] x [B, D] -> [B]: cos_w * (1 - cos) + (1 - cos_w) * smooth-L1 (cos_w = 1: cosine only, RADIO's form,
    which leaves the prediction's norm free; a smooth-L1 share makes the student match magnitudes too)."""
    p, t = pred.float(), target.float()
    loss = 1.0 - F.cosine_similarity(p, t, dim=-1, eps=1e-6)
    if cos_weight == 1.0:
        return loss
    return cos_weight * loss + (1.0 - cos_weight) * F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(-1)


def spatial_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float, beta: float,
                 granularity: str) -> torch.Tensor:
    """[B, C, h, w] x [B, C, h, w] -> [B]."""
    p, t = pred.float().flatten(2), target.float().flatten(2)  # [B, C, N]
    if granularity == "image":
        p, t = p.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
    elif granularity != "token":
        raise ValueError(f"objective.granularity must be 'token' or 'image', got {granularity!r}")
    cos = 1.0 - F.cosine_similarity(p, t, dim=1, eps=1e-6)  # [B, N]
    if cos_weight == 1.0:  # cosine only: the smooth-L1 term would be computed to be multiplied by 0
        return cos.mean(-1)
    l1 = F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(1)  # [B, N]
    return (cos_weight * cos + (1.0 - cos_weight) * l1).mean(-1)


def distillation_losses(preds: Dict[str, Dict[str, torch.Tensor]], targets: Dict[str, Dict[str, torch.Tensor]],
                        teacher_names: List[str], cfg: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Loss matrix [B, T] (summary_weight * summary + spatial_weight * spatial per teacher) and its parts."""
    cols, parts = [], {}
    for name in teacher_names:
        p, t = preds[name], targets[name]
        total = None
        if "summary" in p and "summary" in t:
            ls = summary_loss(p["summary"], t["summary"], getattr(cfg, "summary_cos", 1.0), cfg.smooth_l1_beta)
            parts[f"{name}/summary"] = ls
            total = cfg.summary_weight * ls
        if "spatial" in p and "spatial" in t:
            lp = spatial_loss(p["spatial"], t["spatial"], cfg.spatial_cos, cfg.smooth_l1_beta, cfg.granularity)
            parts[f"{name}/spatial"] = lp
            total = cfg.spatial_weight * lp if total is None else total + cfg.spatial_weight * lp
        if total is None:
            raise ValueError(f"teacher {name!r} has neither summary nor spatial targets enabled")
        cols.append(total)
    return torch.stack(cols, 1), parts
