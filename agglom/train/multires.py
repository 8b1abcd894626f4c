"""Multi-resolution training (``data.resolutions=[48, 64, 80]``): the student's input size for each optimiser step.

The size is a pure function of ``(seed, step)`` — a hash of the recipe's seed and the step counter, no stateful
RNG — so a run resumed after kill -9 draws the same size at every step as an uninterrupted one, and every rank of
a DDP/DeepSpeed run (same recipe seed, same step counter) uses the same size at the same step by construction:
no broadcast is needed. All micro-batches of one optimiser step (``optim.accum_steps``) share its size.

Batch size (``data.scale_batch``, default on): the reader yields ``data.batch_size`` samples per micro-batch at
``data.image_size``; at student size ``s`` the step uses the first ``round(batch_size · (min(sizes) / s)²)`` of
them (at least one), so the student's tokens per step stay roughly constant (the batch size is the one for the
smallest size). The reader itself keeps a fixed batch: its position in the stream is counted in whole batches,
which is what makes resume exact; the samples left over at larger sizes are not used (the stream is shuffled, so
the ones kept are a random subset). With ``scale_batch=false`` every step uses the whole batch.

Teachers always see the reader's image at ``data.image_size`` (each resizes it to its own input size, so a
cached teacher's features stay valid); only the student's input is resized
(:func:`agglom.model.student.resize_input`), and its spatial predictions are brought to each teacher's grid as at
any size (:func:`agglom.model.agglomerator.to_grid`).
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Sequence

import torch


def size_at(seed: int, step: int, sizes: Sequence[int]) -> int:
    """The student's input size at optimiser step ``step`` (0-based): one of ``sizes`` (ascending order is used,
    so the order they are written in does not matter), chosen by a hash of ``(seed, step)``."""
    choices = sorted(int(s) for s in sizes)
    if not choices:
        raise ValueError("size_at needs at least one size")
    digest = hashlib.blake2b(f"agglom.multires:{int(seed)}:{int(step)}".encode(), digest_size=8).digest()
    return choices[int.from_bytes(digest, "little") % len(choices)]


def batch_at(batch_size: int, size: int, sizes: Sequence[int], scale: bool = True) -> int:
    """Samples used at ``size``: ``round(batch_size · (min(sizes) / size)²)`` (at least 1) when ``scale``, else all."""
    if not scale:
        return int(batch_size)
    return max(1, min(int(batch_size), int(round(batch_size * (min(sizes) / size) ** 2))))


def schedule(seed: int, steps: int, sizes: Sequence[int], batch_size: int, scale: bool = True) -> list:
    """``[(size, samples)]`` for steps ``0 .. steps-1`` (what a run will draw; for logs and tests)."""
    return [(s, batch_at(batch_size, s, sizes, scale)) for s in (size_at(seed, i, sizes) for i in range(steps))]


def take(batch: Dict[str, Any], n: int) -> Dict[str, Any]:
    """The first ``n`` samples of a batch dict (tensors and per-sample lists alike)."""
    out: Dict[str, Any] = {}
    for k, v in batch.items():
        out[k] = v[:n] if isinstance(v, (torch.Tensor, list, tuple)) else v
    return out


def step_batch(cfg: Any, batch: Dict[str, Any], step: int) -> Dict[str, Any]:
    """The batch for optimiser step ``step`` under ``data.resolutions``: cut to that size's sample count, with
    ``"student_size"`` set (unchanged when the recipe trains at one size)."""
    sizes = list(cfg.data.get("resolutions") or [])
    if not sizes:
        return batch
    size = size_at(int(cfg.seed), step, sizes)
    n = batch_at(int(batch["image"].shape[0]), size, sizes, bool(cfg.data.get("scale_batch", True)))
    out = take(batch, n) if n < batch["image"].shape[0] else dict(batch)
    out["student_size"] = size
    return out


__all__ = ["size_at", "batch_at", "schedule", "take", "step_batch"]
