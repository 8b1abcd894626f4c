"""Proxy groups from embeddings: k-means, per-class k-means (GEORGE), hierarchical k-means with resampling.

All functions take an embedding matrix ``X [N, D]`` (numpy) and are pure (numpy + scikit-learn). Features are
L2-normalised by default (``normalize=True``) and may be PCA-whitened (``whiten=True``, ``pca_dim``) before
clustering; centroids live in that prepared space (:func:`prepare` reproduces it).

* :func:`kmeans` — plain k-means (scikit-learn ``KMeans``).
* :func:`per_class_kmeans` — GEORGE (Sohoni et al. 2020): cluster within each class so clusters capture
  subclasses; cluster ids are unique across classes; ``k`` per class optionally chosen by silhouette score.
* :func:`hierarchical_kmeans` + :func:`balanced_sample` — re-implemented from the description in Vo et al. 2024,
  "Automatic Data Curation for Self-Supervised Learning: A Clustering-Based Approach" (not from their code):
  level 1 clusters the data, level t > 1 clusters level t-1's centroids; after each level's k-means a
  resampling step repeatedly draws the same number of points nearest each centroid and re-runs k-means steps on
  that balanced draw, which moves centroids away from dense modes so they spread over the data's support.
  Sampling then draws a set balanced over the top-level clusters, recursively down the tree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score


# --------------------------------------------------------------------------- preparation
@dataclass
class Prep:
    """How features were prepared (so new points can be mapped into the same space)."""

    normalize: bool = True
    pca: Optional[PCA] = None

    def __call__(self, X: np.ndarray) -> np.ndarray:
        Z = _as_float(X)
        if self.normalize:
            Z = _l2(Z)
        if self.pca is not None:
            Z = self.pca.transform(Z).astype(np.float32)
        return Z


def _as_float(X) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ValueError(f"expected an embedding matrix [N, D], got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.floating):
        X = X.astype(np.float32)
    if not np.isfinite(X).all():
        raise ValueError("embeddings contain NaN or inf")
    return X.astype(np.float32, copy=False)


def _l2(X: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(n, 1e-12)


def prepare(X, normalize: bool = True, whiten: bool = False, pca_dim: Optional[int] = None,
            seed: int = 0) -> tuple:
    """L2-normalise (optional) then PCA(-whiten) (optional). Returns ``(Z, Prep)``."""
    X = _as_float(X)
    prep = Prep(normalize=normalize)
    Z = _l2(X) if normalize else X
    if whiten or pca_dim is not None:
        n_comp = min(pca_dim or Z.shape[1], Z.shape[0], Z.shape[1])
        prep.pca = PCA(n_components=n_comp, whiten=whiten, random_state=seed).fit(Z)
        Z = prep.pca.transform(Z).astype(np.float32)
    return Z, prep


# --------------------------------------------------------------------------- plain k-means
@dataclass
class Clustering:
    labels: np.ndarray  # [N] int64
    centers: np.ndarray  # [k, D'] in the prepared space
    inertia: float
    prep: Prep = field(default_factory=Prep)

    @property
    def k(self) -> int:
        return int(self.centers.shape[0])

    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.k)

    def predict(self, X) -> np.ndarray:
        return _nearest(self.prep(X), self.centers)[0]


def _nearest(Z: np.ndarray, C: np.ndarray, block: int = 8192) -> tuple:
    """Index of and squared distance to the nearest centroid, blockwise."""
    idx = np.empty(Z.shape[0], dtype=np.int64)
    dist = np.empty(Z.shape[0], dtype=np.float64)
    cc = (C.astype(np.float64) ** 2).sum(1)
    for a in range(0, Z.shape[0], block):
        z = Z[a:a + block].astype(np.float64)
        d = (z ** 2).sum(1, keepdims=True) - 2 * z @ C.T.astype(np.float64) + cc[None]
        idx[a:a + block] = d.argmin(1)
        dist[a:a + block] = np.maximum(d[np.arange(len(z)), idx[a:a + block]], 0.0)
    return idx, dist


def _fit_kmeans(Z: np.ndarray, k: int, seed: int, n_init: int, max_iter: int = 300) -> KMeans:
    k = int(min(k, Z.shape[0]))
    if k < 1:
        raise ValueError("k must be >= 1 and there must be at least one point")
    return KMeans(n_clusters=k, n_init=n_init, random_state=seed, max_iter=max_iter).fit(Z)


def kmeans(X, k: int, seed: int = 0, n_init: int = 10, normalize: bool = True, whiten: bool = False,
           pca_dim: Optional[int] = None) -> Clustering:
    """k-means on L2-normalised (and optionally PCA-whitened) features; ``k`` is clamped to N."""
    Z, prep = prepare(X, normalize=normalize, whiten=whiten, pca_dim=pca_dim, seed=seed)
    km = _fit_kmeans(Z, k, seed, n_init)
    return Clustering(km.labels_.astype(np.int64), km.cluster_centers_.astype(np.float32), float(km.inertia_), prep)


# --------------------------------------------------------------------------- per-class (GEORGE)
@dataclass
class PerClassClustering:
    labels: np.ndarray  # [N] cluster ids, unique across classes (contiguous 0..K-1)
    cluster_class: np.ndarray  # [K] the class each cluster belongs to
    k_per_class: Dict[object, int]
    silhouette: Dict[object, Dict[int, float]]  # class -> {k: score} when k was chosen by silhouette
    centers: np.ndarray  # [K, D'] in the prepared space
    prep: Prep = field(default_factory=Prep)


def per_class_kmeans(X, labels: Sequence, k: Union[int, Sequence[int]] = 2, seed: int = 0, n_init: int = 10,
                     normalize: bool = True, whiten: bool = False, pca_dim: Optional[int] = None,
                     silhouette_sample: int = 5000) -> PerClassClustering:
    """Cluster within each class (GEORGE, Sohoni et al. 2020).

    ``k`` is an int (same for every class, clamped to the class size) or a range/list of candidates, in which
    case each class gets the candidate with the best silhouette score (candidates outside ``[2, n_c - 1]``
    are skipped; a class too small for any gets one cluster). Classes are visited in sorted order and cluster
    ids run contiguously, so ids are unique across classes.
    """
    Z, prep = prepare(X, normalize=normalize, whiten=whiten, pca_dim=pca_dim, seed=seed)
    y = np.asarray(labels)
    if y.shape[0] != Z.shape[0]:
        raise ValueError(f"{y.shape[0]} labels for {Z.shape[0]} embeddings")
    out = np.full(Z.shape[0], -1, dtype=np.int64)
    cluster_class: List[object] = []
    centers: List[np.ndarray] = []
    k_per_class: Dict[object, int] = {}
    sil: Dict[object, Dict[int, float]] = {}
    rng = np.random.default_rng(seed)
    offset = 0
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        Zc = Z[idx]
        key = c.item() if hasattr(c, "item") else c
        if isinstance(k, (int, np.integer)):
            kc = int(max(1, min(int(k), len(idx))))
            km = _fit_kmeans(Zc, kc, seed, n_init)
        else:
            cands = [int(v) for v in k if 2 <= int(v) <= len(idx) - 1]
            best, km, scores = None, None, {}
            for kc in cands:
                m = _fit_kmeans(Zc, kc, seed, n_init)
                if len(np.unique(m.labels_)) < 2:
                    continue
                n_s = min(silhouette_sample, len(idx))
                s = float(silhouette_score(Zc, m.labels_, sample_size=n_s if n_s < len(idx) else None,
                                           random_state=int(rng.integers(2 ** 31))))
                scores[kc] = s
                if best is None or s > best:
                    best, km = s, m
            sil[key] = scores
            if km is None:
                km = _fit_kmeans(Zc, 1, seed, 1)
        # relabel to the clusters actually used, contiguously
        used, local = np.unique(km.labels_, return_inverse=True)
        out[idx] = offset + local
        centers.append(km.cluster_centers_[used].astype(np.float32))
        cluster_class.extend([key] * len(used))
        k_per_class[key] = int(len(used))
        offset += len(used)
    return PerClassClustering(out, np.asarray(cluster_class), k_per_class, sil,
                              np.concatenate(centers, 0) if centers else np.zeros((0, Z.shape[1]), np.float32),
                              prep)


# --------------------------------------------------------------------------- hierarchical (Vo et al. 2024)
@dataclass
class HKMeansTree:
    """Hierarchical k-means result. Level 0 is the finest (clusters of data points), the last the coarsest."""

    centers: List[np.ndarray]  # per level: [k_l, D'] centroids
    parents: List[np.ndarray]  # per level l < L-1: [k_l] index of the parent cluster at level l+1
    assignments: List[np.ndarray]  # per level: [N] cluster of every data point at that level
    dist: np.ndarray  # [N] distance of each point to its level-0 centroid
    prep: Prep = field(default_factory=Prep)

    @property
    def n_levels(self) -> int:
        return len(self.centers)

    def sizes(self, level: int) -> np.ndarray:
        return np.bincount(self.assignments[level], minlength=self.centers[level].shape[0])


def _resample(P: np.ndarray, C: np.ndarray, n_resample: int, sample_size: int, seed: int,
              n_init: int) -> np.ndarray:
    """Vo et al.'s resampling-clustering step.

    Repeat ``n_resample`` times: assign the points to the current centroids; from each cluster take its
    ``sample_size`` points closest to the centroid (all of them if the cluster is smaller); run k-means afresh
    on the union of these draws. Each cluster contributes (at most) the same number of points, so the union is
    about as dense as the centroids were rather than as the data: dense modes lose their pull and the new
    centroids spread over the support (tested: on a 2-D dense mode + uniform background, the share of
    centroids in the mode falls round after round). Fresh k-means, not Lloyd steps from the current centroids:
    the current centroids are (nearly) a fixed point of Lloyd's iteration on such a draw.
    """
    k = C.shape[0]
    for i in range(n_resample):
        a, d = _nearest(P, C)
        chosen = []
        for j in range(k):
            members = np.flatnonzero(a == j)
            if members.size:
                chosen.append(members[np.argsort(d[members], kind="stable")[:sample_size]])
        S = P[np.concatenate(chosen)]
        if len(np.unique(S, axis=0)) < k:  # too few distinct points to place k centroids: stop here
            break
        C = KMeans(n_clusters=k, n_init=n_init, random_state=seed + 1000 * (i + 1)).fit(S).cluster_centers_
        C = C.astype(np.float32)
    return C


def hierarchical_kmeans(X, levels: Sequence[int], n_resample: int = 10, seed: int = 0, n_init: int = 3,
                        sample_size: int = 10, normalize: bool = True,
                        whiten: bool = False, pca_dim: Optional[int] = None) -> HKMeansTree:
    """Hierarchical k-means with resampling (Vo et al. 2024), ``levels = [k1, k2, ...]`` finest first.

    Level 1 runs k-means on the data, level t > 1 on level t-1's centroids; each level is followed by
    :func:`_resample` (``n_resample`` rounds of ``sample_size`` points nearest each centroid; ``n_resample=0``
    gives plain hierarchical k-means). Points (data or lower centroids) are then assigned to the nearest final centroid;
    clusters left empty are dropped, so a level may end with fewer than ``k_t`` clusters. Assignments are nested
    by construction: a data point's level-t cluster is the parent of its level-(t-1) cluster.
    """
    if not levels:
        raise ValueError("levels must name at least one k")
    Z, prep = prepare(X, normalize=normalize, whiten=whiten, pca_dim=pca_dim, seed=seed)
    centers: List[np.ndarray] = []
    parents: List[np.ndarray] = []
    assignments: List[np.ndarray] = []
    dist0 = None
    P = Z
    for t, k in enumerate(levels):
        km = _fit_kmeans(P, int(k), seed + t, n_init)
        C = km.cluster_centers_.astype(np.float32)
        if n_resample > 0 and C.shape[0] > 1:
            C = _resample(P, C, n_resample, max(1, int(sample_size)), seed + t, n_init)
        a, d = _nearest(P, C)
        used, a = np.unique(a, return_inverse=True)
        C = C[used]
        if t == 0:
            assignments.append(a.astype(np.int64))
            dist0 = np.sqrt(d)
        else:
            parents.append(a.astype(np.int64))
            assignments.append(a[assignments[-1]].astype(np.int64))
        centers.append(C)
        P = C
    return HKMeansTree(centers, parents, assignments, dist0, prep)


def _allocate(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` as evenly as possible over bins with the given capacities (water-filling)."""
    capacity = np.asarray(capacity, dtype=np.int64)
    alloc = np.zeros_like(capacity)
    n = int(min(n, capacity.sum()))
    while n > 0:
        open_ = np.flatnonzero(alloc < capacity)
        share = n // len(open_)
        if share == 0:  # fewer left than open bins: one more to a random subset
            pick = rng.choice(open_, size=n, replace=False)
            alloc[pick] += 1
            break
        add = np.minimum(share, capacity[open_] - alloc[open_])
        alloc[open_] += add
        n -= int(add.sum())
    return alloc


def balanced_sample(X, tree: HKMeansTree, n: int, seed: int = 0, strategy: str = "random") -> np.ndarray:
    """Draw ``n`` point indices balanced over the top-level clusters, recursively down the tree (Vo et al.).

    The budget is split evenly over the top-level clusters (a cluster with fewer points gives its share to the
    others), then within each cluster evenly over its child clusters, down to level 0, where points are drawn
    at random (``strategy="random"``) or nearest the centroid first (``"closest"``). ``X`` is only used to check
    that it matches the tree (pass None to skip). Returns sorted unique indices.
    """
    N = tree.assignments[0].shape[0]
    if X is not None and len(X) != N:
        raise ValueError(f"X has {len(X)} rows; the tree was built on {N}")
    if strategy not in ("random", "closest"):
        raise ValueError(f"strategy must be 'random' or 'closest', got {strategy!r}")
    rng = np.random.default_rng(seed)
    L = tree.n_levels
    members0 = [np.flatnonzero(tree.assignments[0] == j) for j in range(tree.centers[0].shape[0])]
    # children[l][j]: clusters at level l-1 whose parent is j at level l
    children = [None] + [[np.flatnonzero(tree.parents[lv - 1] == j) for j in range(tree.centers[lv].shape[0])]
                         for lv in range(1, L)]
    sizes = [tree.sizes(level) for level in range(L)]
    picked: List[np.ndarray] = []

    def draw(level: int, clusters: np.ndarray, budget: int) -> None:
        alloc = _allocate(sizes[level][clusters], budget, rng)
        for c, b in zip(clusters, alloc):
            if b == 0:
                continue
            if level == 0:
                m = members0[c]
                if strategy == "random":
                    picked.append(rng.choice(m, size=int(b), replace=False))
                else:
                    picked.append(m[np.argsort(tree.dist[m], kind="stable")[: int(b)]])
            else:
                draw(level - 1, children[level][c], int(b))

    draw(L - 1, np.arange(tree.centers[L - 1].shape[0]), int(n))
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
