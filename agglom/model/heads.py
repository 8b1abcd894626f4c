"""Adapter heads (registry): map student tokens to one teacher's summary or spatial features."""
from __future__ import annotations

from typing import Callable, Type

import torch
from torch import nn

from agglom.registry import Registry

HEADS: Registry[Type[nn.Module]] = Registry("head", key="heads")


def register_head(name: str) -> Callable[[Type[nn.Module]], Type[nn.Module]]:
    """Class decorator: the head class is ``heads.summary: <name>`` / ``heads.spatial: <name>``."""
    return HEADS.register(name)


def build_head(name: str, in_dim: int, out_dim: int, hidden: int = 0) -> nn.Module:
    return HEADS.lookup(name)(in_dim, out_dim, hidden or 2 * in_dim)


class Head(nn.Module):
    """Tokens [B, N, D] -> [B, N, out]. `uses_context`: the summary head also sees the patch tokens."""

    uses_context = False


@register_head("mlp")
class MLPHead(Head):
    """Two-layer MLP (LayerNorm in front, as the student's tokens are already normed but of any scale)."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class _ResBlock(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.act(self.fc1(self.norm(x))))


@register_head("resmlp")
class ResMLPHead(Head):
    """Pre-norm residual MLP (two blocks) and a final norm + linear projection."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, blocks: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[_ResBlock(in_dim, hidden) for _ in range(blocks)])
        self.norm, self.proj = nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(self.blocks(x)))


@register_head("attn")
class AttnHead(Head):
    """One light pre-norm transformer block over the token sequence, then a linear projection."""

    uses_context = True

    def __init__(self, in_dim: int, out_dim: int, hidden: int) -> None:
        super().__init__()
        heads = max(1, in_dim // 64) if in_dim % 64 == 0 else next(h for h in (4, 3, 2, 1) if in_dim % h == 0)
        self.norm1 = nn.LayerNorm(in_dim)
        self.attn = nn.MultiheadAttention(in_dim, heads, batch_first=True)
        self.mlp = _ResBlock(in_dim, hidden)
        self.norm, self.proj = nn.LayerNorm(in_dim), nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return self.proj(self.norm(self.mlp(x)))
