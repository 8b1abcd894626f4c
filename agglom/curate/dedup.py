"""Near-duplicate detection by cosine similarity of embeddings (blockwise, memory-bounded)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class Duplicates:
    remove: List[object]  # keys to drop (every duplicate except the first kept one)
    remove_index: np.ndarray  # their row indices, sorted
    pairs: List[Tuple[object, object, float]]  # (key_i, key_j, cosine) with i < j and cosine >= threshold


def near_duplicates(X, keys: Optional[Sequence] = None, threshold: float = 0.95, block: int = 2048,
                    max_pairs: Optional[int] = None) -> Duplicates:
    """Find pairs with cosine similarity >= ``threshold``; keep the first of each duplicate set.

    Similarities are computed block × block (memory ~ ``block² · 4`` bytes). Rows are visited in order: a row
    is removed when it is a near-duplicate of an earlier row that is kept (greedy, so a chain a~b~c with
    a≁c keeps a and c and removes b). ``keys`` default to row indices. ``max_pairs`` caps the pairs kept in
    memory (a ValueError says to raise the threshold).
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2:
        raise ValueError(f"expected an embedding matrix [N, D], got shape {X.shape}")
    N = X.shape[0]
    keys = list(range(N)) if keys is None else list(keys)
    if len(keys) != N:
        raise ValueError(f"{len(keys)} keys for {N} embeddings")
    Z = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    ii: List[np.ndarray] = []
    jj: List[np.ndarray] = []
    ss: List[np.ndarray] = []
    total = 0
    for a in range(0, N, block):
        za = Z[a:a + block]
        for b in range(a, N, block):
            s = za @ Z[b:b + block].T
            if a == b:
                s = np.triu(s, k=1) + np.tril(np.full_like(s, -np.inf))  # only j > i
            i, j = np.nonzero(s >= threshold)
            if i.size:
                ii.append(i + a)
                jj.append(j + b)
                ss.append(s[i, j])
                total += i.size
                if max_pairs is not None and total > max_pairs:
                    raise ValueError(f"more than {max_pairs} near-duplicate pairs at threshold {threshold}; "
                                     "raise the threshold or max_pairs")
    if ii:
        pi, pj, ps = np.concatenate(ii), np.concatenate(jj), np.concatenate(ss)
        order = np.lexsort((pj, pi))
        pi, pj, ps = pi[order], pj[order], ps[order]
    else:
        pi = pj = np.zeros(0, dtype=np.int64)
        ps = np.zeros(0, dtype=np.float32)
    removed = np.zeros(N, dtype=bool)
    starts = np.searchsorted(pi, np.arange(N + 1))
    for i in np.unique(pi):
        if removed[i]:
            continue
        removed[pj[starts[i]:starts[i + 1]]] = True
    remove_index = np.flatnonzero(removed)
    pairs = [(keys[int(i)], keys[int(j)], float(s)) for i, j, s in zip(pi, pj, ps)]
    return Duplicates([keys[int(i)] for i in remove_index], remove_index, pairs)
