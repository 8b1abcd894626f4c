"""Deterministic stratified train/val/test assignment (per stratum, seeded, independent of input order)."""
from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from typing import Dict, Hashable, List, Mapping, Sequence, Tuple


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()[:8], "little")


def stratified_split(keys: Sequence[str], strata: Sequence[Hashable], fractions: Mapping[str, float],
                     seed: int = 0) -> Dict[str, str]:
    """Assign each key a split so every stratum is divided by ``fractions`` (e.g. train .7, val .15, test .15).

    Within a stratum, keys are sorted then shuffled with a seed derived from (seed, stratum), and cut by
    cumulative rounding, so the result depends only on the keys, strata, fractions and seed.
    """
    names = list(fractions)
    fr = [float(fractions[n]) for n in names]
    if any(f < 0 for f in fr) or sum(fr) <= 0:
        raise ValueError(f"split fractions must be non-negative and sum to > 0, got {dict(fractions)}")
    total = sum(fr)
    cum = []
    acc = 0.0
    for f in fr:
        acc += f / total
        cum.append(acc)
    groups: Dict[Hashable, List[str]] = defaultdict(list)
    for k, s in zip(keys, strata):
        groups[s].append(k)
    out: Dict[str, str] = {}
    for s, ks in groups.items():
        ks = sorted(ks)
        random.Random(_seed(seed, repr(s))).shuffle(ks)
        n = len(ks)
        bounds = [int(round(c * n)) for c in cum]
        start = 0
        for name, end in zip(names, bounds):
            for k in ks[start:end]:
                out[k] = name
            start = end
    return out


def default_fractions(val_frac: float, test_frac: float) -> Dict[str, float]:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac + test_frac must be in [0, 1), got {val_frac} + {test_frac}")
    return {"train": 1.0 - val_frac - test_frac, "val": val_frac, "test": test_frac}


def split_counts(assign: Mapping[str, str]) -> Tuple[Tuple[str, int], ...]:
    c: Dict[str, int] = defaultdict(int)
    for v in assign.values():
        c[v] += 1
    return tuple(sorted(c.items()))


__all__ = ["stratified_split", "default_fractions", "split_counts"]
