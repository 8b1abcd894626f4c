"""Compact storage of teacher features: fp16, or int8 with per-channel scales; optional spatial pooling."""
from __future__ import annotations

import io
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

DTYPES = ("fp16", "int8", "fp32")


def pool_spatial(x: torch.Tensor, pool: int) -> torch.Tensor:
    """Average-pool a [B, C, h, w] map by `pool` (1 = keep the full grid)."""
    return x if pool <= 1 else F.avg_pool2d(x, pool, ceil_mode=True)


def encode(x: np.ndarray, dtype: str, channel_axis: int) -> Dict[str, np.ndarray]:
    """One sample's feature array -> arrays to store. int8: symmetric, one fp16 scale per channel (over the
    spatial positions; a summary vector, having one value per channel, gets one scale for the vector)."""
    if dtype == "fp32":
        return {"": x.astype(np.float32)}
    if dtype == "fp16":
        return {"": x.astype(np.float16)}
    if dtype != "int8":
        raise ValueError(f"cache dtype must be one of {DTYPES}, got {dtype!r}")
    if x.ndim == 1:
        scale = np.array([np.abs(x).max() / 127.0], dtype=np.float32)
    else:
        axes = tuple(i for i in range(x.ndim) if i != channel_axis)
        scale = (np.abs(x).max(axis=axes) / 127.0).astype(np.float32)
    scale = np.maximum(scale, 1e-12)
    shape = [1] * x.ndim
    shape[channel_axis if x.ndim > 1 else 0] = -1
    q = np.clip(np.rint(x / scale.reshape(shape)), -127, 127).astype(np.int8)
    return {"": q, "_scale": scale.astype(np.float16)}


def decode(parts: Dict[str, np.ndarray], channel_axis: int) -> np.ndarray:
    x = parts[""]
    if "_scale" not in parts:
        return x.astype(np.float32)
    scale = parts["_scale"].astype(np.float32)
    shape = [1] * x.ndim
    shape[channel_axis if x.ndim > 1 else 0] = -1
    return x.astype(np.float32) * scale.reshape(shape)


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def npy_load(b: bytes) -> np.ndarray:
    return np.load(io.BytesIO(b), allow_pickle=False)


def stored_bytes(parts: Dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in parts.values()))


def grid_after_pool(grid: Tuple[int, int], pool: int) -> Tuple[int, int]:
    return (-(-grid[0] // pool), -(-grid[1] // pool)) if pool > 1 else tuple(grid)
