"""Compact storage of teacher features: fp16, or int8 with per-channel scales; optional spatial pooling."""
from __future__ import annotations

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


_STORE = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8}


def pack(summary: Dict[str, np.ndarray], spatial: Dict[str, np.ndarray]) -> bytes:
    """One sample's encoded arrays as one raw blob (one tar member per sample: tar pads every member to 512 B,
    so separate small .npy members would cost more than the features themselves): summary, [its scale],
    spatial, [its per-channel scales]. Shapes and dtypes live in the manifest."""
    parts = [summary[""], summary.get("_scale"), spatial[""], spatial.get("_scale")]
    return b"".join(np.ascontiguousarray(a).tobytes() for a in parts if a is not None)


def unpack(buf: bytes, dtype: str, summary_dim: int, spatial_shape: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of `pack` + `decode`: (summary [Ds], spatial [C, h, w]) as float32."""
    store = np.dtype(_STORE[dtype])
    n_sp = int(np.prod(spatial_shape))
    off = 0

    def take(n: int, dt: np.dtype) -> np.ndarray:
        nonlocal off
        a = np.frombuffer(buf, dtype=dt, count=n, offset=off)
        off += n * dt.itemsize
        return a

    summ = take(summary_dim, store)
    s_scale = take(1, np.dtype(np.float16)) if dtype == "int8" else None
    spat = take(n_sp, store).reshape(spatial_shape)
    p_scale = take(spatial_shape[0], np.dtype(np.float16)) if dtype == "int8" else None
    if off != len(buf):
        raise ValueError(f"cache entry of {len(buf)} bytes, expected {off} for {dtype} {summary_dim} + {spatial_shape}")
    if dtype != "int8":
        return summ.astype(np.float32), spat.astype(np.float32)
    return (summ.astype(np.float32) * s_scale.astype(np.float32),
            spat.astype(np.float32) * p_scale.astype(np.float32).reshape(-1, 1, 1))


def stored_bytes(parts: Dict[str, np.ndarray]) -> int:
    return int(sum(a.nbytes for a in parts.values()))


def grid_after_pool(grid: Tuple[int, int], pool: int) -> Tuple[int, int]:
    return (-(-grid[0] // pool), -(-grid[1] // pool)) if pool > 1 else tuple(grid)
