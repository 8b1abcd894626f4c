"""Deterministic stratified train/val/test assignment (per stratum, seeded, independent of input order), of images
(:func:`stratified_split`) or of whole patients (:func:`grouped_split`)."""
from __future__ import annotations

import hashlib
import random
from collections import Counter, defaultdict
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


def grouped_split(keys: Sequence[str], groups: Sequence[Hashable], strata: Sequence[Hashable],
                  fractions: Mapping[str, float], seed: int = 0) -> Dict[str, str]:
    """:func:`stratified_split` of whole groups (patients): every key of a group gets one split, so no patient is in
    two splits.

    A group is one unit named by its smallest key and stratified by the stratum its keys show most often (a tie
    goes to the smallest by ``repr``); the units are then split exactly as :func:`stratified_split` splits keys.
    So a group of one key is its key with its own stratum: with one image per patient the assignment is the
    image-level one, key for key. The result depends only on the keys, groups, strata, fractions and seed, never
    on their order. ``groups``: one id per key (a key whose patient is unknown needs an id of its own).
    """
    if len(set(keys)) != len(keys):
        raise ValueError("grouped_split: keys must be unique")
    members: Dict[Hashable, List[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        members[g].append(i)
    unit_of: Dict[int, str] = {}
    unit_keys: List[str] = []
    unit_strata: List[Hashable] = []
    for idx in members.values():
        votes = Counter(strata[i] for i in idx)
        top = max(votes.values())
        name = min(keys[i] for i in idx)
        unit_keys.append(name)
        unit_strata.append(min((s for s, n in votes.items() if n == top), key=repr))
        unit_of.update((i, name) for i in idx)
    unit = stratified_split(unit_keys, unit_strata, fractions, seed=seed)
    return {k: unit[unit_of[i]] for i, k in enumerate(keys)}


def default_fractions(val_frac: float, test_frac: float) -> Dict[str, float]:
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise ValueError(f"val_frac + test_frac must be in [0, 1), got {val_frac} + {test_frac}")
    return {"train": 1.0 - val_frac - test_frac, "val": val_frac, "test": test_frac}


def split_counts(assign: Mapping[str, str]) -> Tuple[Tuple[str, int], ...]:
    c: Dict[str, int] = defaultdict(int)
    for v in assign.values():
        c[v] += 1
    return tuple(sorted(c.items()))


__all__ = ["stratified_split", "grouped_split", "default_fractions", "split_counts"]
