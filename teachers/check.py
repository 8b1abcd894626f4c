"""What `agglom teachers check` verifies of a teacher: one random batch through it, its output against the card's
contract, and that it is frozen (no trainable parameter, eval mode kept, same output after ``.train()``)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Dict, Sequence

import torch


@dataclass
class TeacherCheck:
    """The outcome of :func:`check_teacher`: the built teacher, its outputs on the batch, timings and checks."""

    teacher: Any
    batch_shape: tuple
    summary: torch.Tensor
    spatial: torch.Tensor
    build_s: float
    samples_per_s: float
    checks: Dict[str, bool]

    @property
    def ok(self) -> bool:
        return all(self.checks.values())


def check_teacher(card: Any, mean: Sequence[float], std: Sequence[float], device: str = "cpu", batch_size: int = 4,
                  image_size: int = 64, channels: int = 1, iters: int = 3, seed: int = 0) -> TeacherCheck:
    """Build ``card``'s teacher for student normalisation (``mean``, ``std``), run a seeded random batch of
    ``batch_size`` images of ``channels`` x ``image_size``² (one warm-up, ``iters`` timed forwards) and check it."""
    from . import build_teacher

    t0 = time.perf_counter()
    teacher = build_teacher(card, list(mean), list(std), device=device)
    build_s = time.perf_counter() - t0
    g = torch.Generator().manual_seed(int(seed))
    x = torch.rand(batch_size, channels, image_size, image_size, generator=g)
    x = ((x - torch.tensor(list(mean)).view(1, -1, 1, 1)) / torch.tensor(list(std)).view(1, -1, 1, 1)).to(device)
    out = teacher(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(max(1, iters)):
        out = teacher(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize()
    rate = batch_size * max(1, iters) / (time.perf_counter() - t0)
    grads = [n for n, p in teacher.named_parameters() if p.requires_grad]
    teacher.train()
    still_eval = not any(m.training for m in teacher.modules())
    out2 = teacher(x)
    checks = {
        "shapes match the contract": (tuple(out.summary.shape) == (batch_size, teacher.summary_dim)
                                      and tuple(out.spatial.shape) == (batch_size, teacher.spatial_dim,
                                                                       *teacher.grid)),
        "outputs finite": bool(torch.isfinite(out.summary).all() and torch.isfinite(out.spatial).all()),
        "no parameter requires grad": not grads,
        "stays in eval after .train()": still_eval,
        "output unchanged after .train()": torch.equal(out.summary, out2.summary)
        and torch.equal(out.spatial, out2.spatial),
    }
    return TeacherCheck(teacher, tuple(x.shape), out.summary, out.spatial, build_s, rate, checks)


__all__ = ["TeacherCheck", "check_teacher"]
