"""Per-sample x per-teacher distillation losses, in fp32 (the granularity, token or image, is explicit).

summary: cos_w * (1 - cos(pred, target)) + (1 - cos_w) * smooth-L1, one value per sample (cos_w = summary_cos;
1 = cosine only).
spatial: cos_w * (1 - cos) + (1 - cos_w) * smooth-L1, computed per token then averaged over the tokens of a
sample (granularity "token"), or on the token-mean feature of each sample (granularity "image").

The spatial loss runs through one autograd function (:class:`CosSmoothL1`) with a hand-written backward: the cosine
as ``p·t / (max(|p|, eps) max(|t|, eps))`` (``F.cosine_similarity``'s value) and the smooth-L1 share in one pass
each, on token-major views (the heads' layout, read contiguously), a few times faster than ``F.cosine_similarity`` +
``F.smooth_l1_loss`` under autograd on channel-first views, with the same values and gradients to float rounding
(``tests/distill/test_step_fused.py``). A term whose weight is 0 (a part's weight, a cosine or smooth-L1 share) is not
computed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

import torch
import torch.nn.functional as F

#: the cosine's norm floor, as ``F.cosine_similarity(eps=1e-6)``
COS_EPS = 1e-6


class CosSmoothL1(torch.autograd.Function):
    """``[..., M, C] x [..., M, C] -> [...]``: the mean over M of ``cw (1 - cos) + (1 - cw) smooth-L1`` over C.

    The target gets no gradient (teacher features never need one); :func:`cos_smooth_l1` routes a target that
    requires one through plain autograd instead."""

    @staticmethod
    def forward(ctx: Any, p: torch.Tensor, t: torch.Tensor, cos_weight: float, beta: float) -> torch.Tensor:
        loss, saved = _cos_l1_forward(p, t, cos_weight, beta)
        ctx.cos_weight, ctx.beta = cos_weight, beta
        ctx.save_for_backward(p, t, *saved)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Tuple[Any, ...]:
        p, t, *saved = ctx.saved_tensors
        return _cos_l1_backward(grad, p, t, saved, ctx.cos_weight, ctx.beta), None, None, None


def _cos_l1_forward(p: torch.Tensor, t: torch.Tensor, cw: float,
                    beta: float) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    loss = None
    saved: Tuple[torch.Tensor, ...] = ()
    if cw != 0.0:
        pn = torch.linalg.vector_norm(p, dim=-1)
        inv = 1.0 / (pn.clamp_min(COS_EPS) * torch.linalg.vector_norm(t, dim=-1).clamp_min(COS_EPS))
        cos = torch.linalg.vecdot(p, t, dim=-1) * inv
        loss = (1.0 - cos) if cw == 1.0 else (1.0 - cos) * cw
        saved = (pn, inv, cos)
    if cw != 1.0:
        l1 = F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(-1)
        loss = l1 * (1.0 - cw) if loss is None else torch.add(loss, l1, alpha=1.0 - cw)
    assert loss is not None
    return loss.mean(-1), saved


def _cos_l1_backward(grad: torch.Tensor, p: torch.Tensor, t: torch.Tensor, saved: List[torch.Tensor], cw: float,
                     beta: float) -> torch.Tensor:
    g = (grad / p.shape[-2]).unsqueeze(-1)  # [..., 1]: the mean over M
    out = None
    if cw != 0.0:
        pn, inv, cos = saved
        # d(1 - cos)/dp = -t inv + cos p / |p|^2 (the second term only where |p| is above the floor, as torch's)
        a = (g * inv).mul_(-cw).unsqueeze(-1)
        b = torch.where(pn >= COS_EPS, cos / pn.square(), torch.zeros_like(pn)).mul_(g).mul_(cw).unsqueeze(-1)
        out = torch.addcmul(t * a, p, b)
    if cw != 1.0:
        d = p - t  # smooth-L1's derivative: clamp(d, -beta, beta) / beta (sign(d) at beta = 0)
        step = torch.sign(d) if beta == 0 else d.clamp_(-beta, beta).div_(beta)
        scale = (g * ((1.0 - cw) / p.shape[-1])).unsqueeze(-1)
        out = step.mul_(scale) if out is None else out.addcmul_(step, scale)
    assert out is not None
    return out


def cos_smooth_l1(p: torch.Tensor, t: torch.Tensor, cos_weight: float, beta: float) -> torch.Tensor:
    """``[..., M, C]`` pairs -> ``[...]`` (:class:`CosSmoothL1`), in fp32."""
    p, t = p.float(), t.float()
    if t.requires_grad:  # not a frozen teacher's target: let autograd differentiate both sides
        return _cos_l1_forward(p, t, cos_weight, beta)[0]
    return CosSmoothL1.apply(p, t, float(cos_weight), float(beta))


def summary_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """[B, D] x [B, D] -> [B]: cos_w * (1 - cos) + (1 - cos_w) * smooth-L1 (cos_w = 1: cosine only, RADIO's form,
    which leaves the prediction's norm free; a smooth-L1 share makes the student match magnitudes too). One vector
    per sample: torch's own ops, whose few calls cost less here than :class:`CosSmoothL1`'s Python backward."""
    p, t = pred.float(), target.float()
    if cos_weight == 0.0:
        return F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(-1)
    loss = 1.0 - F.cosine_similarity(p, t, dim=-1, eps=COS_EPS)
    if cos_weight == 1.0:
        return loss
    return cos_weight * loss + (1.0 - cos_weight) * F.smooth_l1_loss(p, t, beta=beta, reduction="none").mean(-1)


def spatial_loss(pred: torch.Tensor, target: torch.Tensor, cos_weight: float, beta: float,
                 granularity: str) -> torch.Tensor:
    """[B, C, h, w] x [B, C, h, w] -> [B]. Reduced over the channel axis as token-major views ``[B, N, C]``: the
    spatial heads' output is laid out that way, so its side reads contiguously."""
    p, t = pred.flatten(2), target.flatten(2)  # [B, C, N]
    if granularity == "image":
        p, t = p.mean(-1, keepdim=True), t.mean(-1, keepdim=True)
    elif granularity != "token":
        raise ValueError(f"objective.granularity must be 'token' or 'image', got {granularity!r}")
    return cos_smooth_l1(p.transpose(1, 2), t.transpose(1, 2).contiguous(), cos_weight, beta)


def _tie(pred: torch.Tensor) -> torch.Tensor:
    """0 x ``pred`` as a [1] term: a loss part with weight 0 is not computed, but its head still gets a (zero)
    gradient, as it did from ``0 * loss``, so the optimiser and DDP see the same parameters."""
    return pred.sum().reshape(1) * 0.0


@dataclass(frozen=True)
class LossSettings:
    """The ``objective`` keys the losses read, as plain Python values: read once, not from the config (whose every
    attribute access costs far more than a dict's) for each teacher at each step."""

    summary_weight: float
    spatial_weight: float
    summary_cos: float
    spatial_cos: float
    smooth_l1_beta: float
    granularity: str

    @classmethod
    def of(cls, cfg: Any) -> "LossSettings":
        """From the ``objective`` section (a config, dataclass, or a LossSettings already)."""
        if isinstance(cfg, cls):
            return cfg
        return cls(float(cfg.summary_weight), float(cfg.spatial_weight), float(getattr(cfg, "summary_cos", 1.0)),
                   float(cfg.spatial_cos), float(cfg.smooth_l1_beta), str(cfg.granularity))


def distillation_losses(preds: Dict[str, Dict[str, torch.Tensor]], targets: Dict[str, Dict[str, torch.Tensor]],
                        teacher_names: List[str], cfg: Any) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Loss matrix [B, T] (summary_weight * summary + spatial_weight * spatial per teacher) and its parts (the
    parts whose weight is not 0: the others are not computed). ``cfg``: the ``objective`` section or its
    :class:`LossSettings`."""
    cols, parts = [], {}
    c = LossSettings.of(cfg)
    w_sum, w_sp = c.summary_weight, c.spatial_weight
    for name in teacher_names:
        p, t = preds[name], targets[name]
        total = None
        if "summary" in p and "summary" in t:
            if w_sum == 0.0:
                total = _tie(p["summary"])
            else:
                ls = summary_loss(p["summary"], t["summary"], c.summary_cos, c.smooth_l1_beta)
                parts[f"{name}/summary"] = ls
                total = ls if w_sum == 1.0 else w_sum * ls
        if "spatial" in p and "spatial" in t:
            if w_sp == 0.0:
                lp = _tie(p["spatial"])
            else:
                lp = spatial_loss(p["spatial"], t["spatial"], c.spatial_cos, c.smooth_l1_beta, c.granularity)
                parts[f"{name}/spatial"] = lp
                lp = lp if w_sp == 1.0 else w_sp * lp
            total = lp if total is None else total + lp
        if total is None:
            raise ValueError(f"teacher {name!r} has neither summary nor spatial targets enabled")
        cols.append(total)
    batch = next(v.shape[0] for name in teacher_names for v in preds[name].values())
    return torch.stack([c.expand(batch) for c in cols], 1), parts
