"""`agglom cache recipe=... [cache.dtype=int8 cache.pool=2]` and `agglom cache check recipe=...`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from agglom.commands import Command
from agglom.config.schema import Recipe


@dataclass
class CacheConfig:
    teachers: List[str] = field(default_factory=list)  # default: every teacher of the recipe
    out: Optional[str] = None  # default: <data.root>/cache
    dtype: str = "fp16"  # fp16 | int8 (per-channel scales) | fp32
    pool: int = 1  # average-pool spatial maps by this factor (1 = full teacher grid)
    splits: List[str] = field(default_factory=list)  # default: train, data.distill_splits, val, test
    batch_size: int = 64
    device: str = "cpu"
    n: int = 128  # cache check: samples compared


@dataclass
class CacheRecipe(Recipe):
    cache: CacheConfig = field(default_factory=CacheConfig)


def _write(cfg) -> int:
    from agglom.cache.writer import write_cache

    c = cfg.cache
    write_cache(cfg, list(c.teachers) or None, c.out, c.dtype, c.pool, list(c.splits) or None, c.batch_size, c.device)
    print("agglom cache: train with teachers=[{name: NAME, cache: DIR}] (the manifest is checked on use)")
    return 0


def _check(cfg) -> int:
    from agglom.cache.check import check_cache

    c = cfg.cache
    check_cache(cfg, c.out, list(c.teachers) or None, c.n, device=c.device)
    return 0


cache = Command(schema=CacheRecipe, run=_write, help="precompute teacher features (fp16/int8, optional pooling); resumable")
check = Command(schema=CacheRecipe, run=_check, help="cosine of cached vs online teacher features, per teacher")
