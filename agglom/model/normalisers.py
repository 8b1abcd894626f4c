"""Per-teacher feature normalisers (registry): modules with buffers, saved with the run, invertible.

Targets are normalised before the loss so teachers of very different scales (SAM necks vs CLIP embeddings)
are comparable and a shared component does not dominate cosine fidelity. ``forward``/``inverse``/``update`` work on
channel-last ``[..., C]``; ``*_spatial`` work on a teacher's dense map ``[B, C, h, w]`` as it comes, without the
transposes to and from channel-last (ZScore broadcasts over the channel axis, PHIS multiplies from the left).

No host sync in the step: whether a normaliser is fitted is a buffer (saved with the run), but once it is known to
be fitted a Python flag remembers it, so ``update`` does not read the buffer back from the device every step.
"""
from __future__ import annotations

import math
from typing import Callable, Type

import torch
from torch import nn

from agglom.registry import Registry

NORMALISERS: Registry[Type["Normaliser"]] = Registry("normaliser", key="heads.normaliser")


def register_normaliser(name: str) -> Callable[[Type["Normaliser"]], Type["Normaliser"]]:
    """Class decorator: the normaliser class is ``heads.normaliser: <name>``."""
    return NORMALISERS.register(name)


def build_normaliser(name: str, dim: int, momentum: float = 0.01) -> "Normaliser":
    return NORMALISERS.lookup(name)(dim, momentum)


class Normaliser(nn.Module):
    """`fit` on a stats pass, `update` (optional EMA) during training, `forward`/`inverse` on [..., C]."""

    def __init__(self, dim: int, momentum: float = 0.01) -> None:
        super().__init__()
        self.dim, self.momentum = dim, momentum
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self._known_fitted = False  # host-side cache of `fitted` once it is True (never a stale True)

    def is_fitted(self) -> bool:
        """Whether `fit` has run (here or in the run this state was loaded from); reads the buffer back from the
        device only until it is first seen True."""
        if not self._known_fitted:
            self._known_fitted = bool(self.fitted)
        return self._known_fitted

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # loaded state may be unfitted: ask the buffer again
        self._known_fitted = False
        super()._load_from_state_dict(*args, **kwargs)

    def fit(self, x: torch.Tensor) -> None:  # x: [N, C]
        self.fitted.fill_(True)

    def update(self, x: torch.Tensor) -> None:
        """Running update from a training batch (no-op unless the normaliser tracks statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y

    def update_spatial(self, x: torch.Tensor) -> None:
        """`update` from a dense map ``[B, C, h, w]`` (its tokens are the samples)."""
        self.update(x.flatten(2).transpose(1, 2))

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` on ``[B, C, h, w]``, returning ``[B, C, h, w]``."""
        return self(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(x.shape)

    def inverse_spatial(self, y: torch.Tensor) -> torch.Tensor:
        """`inverse` on ``[B, C, h, w]``, returning ``[B, C, h, w]``."""
        return self.inverse(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(y.shape)


@register_normaliser("none")
class Identity(Normaliser):
    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse_spatial(self, y: torch.Tensor) -> torch.Tensor:
        return y


#: z-score's variance floor, relative to the mean channel variance, and its absolute epsilon (float32 features
#: vary by far more than 1e-12 in variance, so only an exactly constant output meets it)
VAR_FLOOR = 1e-4
VAR_EPS = 1e-12


@register_normaliser("zscore")
class ZScore(Normaliser):
    """Per-channel mean/std, fitted on the stats pass then tracked by an EMA of batch moments."""

    def __init__(self, dim: int, momentum: float = 0.01) -> None:
        super().__init__(dim, momentum)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.dim).double()
        self.mean.copy_(x.mean(0).float())
        self.var.copy_(x.var(0, unbiased=False).float())
        self.fitted.fill_(True)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.dim).float()
        if not self.is_fitted():
            return self.fit(x)
        if self.momentum:
            self._blend(x.mean(0), x.var(0, unbiased=False))

    @torch.no_grad()
    def update_spatial(self, x: torch.Tensor) -> None:
        if not self.is_fitted():
            return self.fit(x.flatten(2).transpose(1, 2))
        if self.momentum:
            # two passes (the mean, then the centred squares' mean) rather than torch.var_mean, whose one-pass
            # (Welford) kernel reduces over the batch and token axes about 6x slower on the CPU
            x = x.float()
            dims = (0, *range(2, x.dim()))
            mean = x.mean(dims, keepdim=True)
            self._blend(mean.flatten(), (x - mean).square_().mean(dims))

    def _blend(self, mean: torch.Tensor, var: torch.Tensor) -> None:
        self.mean.lerp_(mean, self.momentum)
        self.var.lerp_(var, self.momentum)

    def std(self) -> torch.Tensor:
        """Per-channel std with a floor that scales with the output: ``VAR_FLOOR`` × the mean channel variance
        (a dead channel is not blown up), and an absolute ``VAR_EPS`` below any real feature's variance. An absolute
        1e-6 on the variance, as before, swamped a teacher whose features are ~1e-3 in size (a random tiny DINOv2's
        summary has a variance of ~1e-9): its normalised targets had a variance of 0.002 and the student learned
        nothing of them."""
        return torch.sqrt(torch.maximum(self.var, VAR_FLOOR * self.var.mean()) + VAR_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std()

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.std() + self.mean

    # the same element-wise maths broadcast over the channel axis: equal, bit for bit, to the channel-last path
    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """A map ``[B, C, h, w]`` comes back token-major in memory (channels_last: ``[B, h, w, C]``), written so by
        the subtraction itself: the distillation loss reads the channels of each token contiguously, as the spatial
        heads lay out their predictions (agglom/objective/losses.py), without a copy."""
        shape = (1, self.dim) + (1,) * (x.dim() - 2)
        if x.dim() == 4 and not x.requires_grad:
            out = torch.empty_like(x, memory_format=torch.channels_last)
            return torch.sub(x, self.mean.view(shape), out=out).div_(self.std().view(shape))
        return (x - self.mean.view(shape)) / self.std().view(shape)

    def inverse_spatial(self, y: torch.Tensor) -> torch.Tensor:
        shape = (1, self.dim) + (1,) * (y.dim() - 2)
        return y * self.std().view(shape) + self.mean.view(shape)


def _mixing_matrix(dim: int, seed: int = 0) -> torch.Tensor:
    """An orthogonal matrix that spreads variance evenly: normalised Hadamard where dim is a power of 2,
    else a seeded random orthogonal matrix (QR of a Gaussian)."""
    if dim & (dim - 1) == 0:
        h = torch.ones(1, 1, dtype=torch.float64)
        while h.shape[0] < dim:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        return h / math.sqrt(dim)
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


@register_normaliser("phis")
class PHIS(Normaliser):
    """Isotropic standardisation in the spirit of PHI-S (Ranzinger et al. 2024): subtract the mean, rotate
    into the PCA basis, mix with an orthogonal (Hadamard) matrix so every channel gets the same variance, and
    divide by one scalar. Being a rotation + one scale, it keeps the geometry of the teacher's space."""

    def __init__(self, dim: int, momentum: float = 0.01) -> None:
        super().__init__(dim, momentum)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("rotation", torch.eye(dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.dim).double()
        mean = x.mean(0)
        cov = torch.cov((x - mean).T, correction=0) if x.shape[0] > 1 else torch.eye(self.dim, dtype=torch.float64)
        cov = torch.atleast_2d(cov)
        evals, evecs = torch.linalg.eigh(cov)
        rot = _mixing_matrix(self.dim) @ evecs.T  # [C, C]: y = rot @ (x - mean)
        self.mean.copy_(mean.float())
        self.rotation.copy_(rot.float())
        self.scale.fill_(float(torch.sqrt(evals.clamp_min(0).mean()).clamp_min(1e-9)))
        self.fitted.fill_(True)

    def update(self, x: torch.Tensor) -> None:
        if not self.is_fitted():
            self.fit(x)

    def update_spatial(self, x: torch.Tensor) -> None:
        if not self.is_fitted():
            self.fit(x.flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x - self.mean) @ self.rotation.T) / self.scale

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return (y * self.scale) @ self.rotation + self.mean

    def forward_spatial(self, x: torch.Tensor) -> torch.Tensor:
        # rot @ (x - mean) per token, on [B, C, N]: one batched matmul from the left, no transposes
        flat = x.flatten(2) - self.mean.view(1, -1, 1)
        return (torch.matmul(self.rotation, flat) / self.scale).reshape(x.shape)

    def inverse_spatial(self, y: torch.Tensor) -> torch.Tensor:
        flat = torch.matmul(self.rotation.T, y.flatten(2) * self.scale) + self.mean.view(1, -1, 1)
        return flat.reshape(y.shape)
