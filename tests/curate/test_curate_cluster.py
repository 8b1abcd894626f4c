"""Curation: k-means / per-class (GEORGE) / hierarchical k-means with resampling, near-duplicates, reports."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from agglom.curate import (
    balanced_sample,
    cluster_report,
    hierarchical_kmeans,
    kmeans,
    near_duplicates,
    per_class_kmeans,
    render_report,
)


def _blobs(n_per=60, k=4, d=16, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, d))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    X = np.concatenate([c + spread * rng.normal(size=(n_per, d)) for c in centers]).astype(np.float32)
    y = np.repeat(np.arange(k), n_per)
    return X, y


@pytest.mark.parametrize("whiten", [False, True])
def test_kmeans_recovers_blobs(whiten):
    X, y = _blobs()
    res = kmeans(X, 4, seed=0, n_init=4, whiten=whiten, pca_dim=8 if whiten else None)
    assert res.labels.shape == (X.shape[0],)
    assert adjusted_rand_score(y, res.labels) > 0.9
    assert res.sizes().sum() == X.shape[0]
    assert np.array_equal(res.predict(X), res.labels)


def test_per_class_ids_unique_and_recover_subclasses():
    X, sub = _blobs(n_per=40, k=6, seed=1)
    cls = sub // 3  # two classes, three subclasses each
    res = per_class_kmeans(X, cls, k=3, seed=0)
    # each cluster id belongs to exactly one class
    for cid in np.unique(res.labels):
        assert len(np.unique(cls[res.labels == cid])) == 1
    assert set(res.k_per_class.values()) == {3}
    assert len(np.unique(res.labels)) == 6 and res.labels.min() == 0 and res.labels.max() == 5
    assert list(res.cluster_class) == [0, 0, 0, 1, 1, 1]
    assert adjusted_rand_score(sub, res.labels) > 0.9
    # k chosen per class by silhouette
    res2 = per_class_kmeans(X, cls, k=range(2, 6), seed=0, n_init=3)
    assert res2.k_per_class == {0: 3, 1: 3}
    assert set(res2.silhouette[0]) == {2, 3, 4, 5}
    # a tiny class gets at most as many clusters as points
    labels = np.array(["a"] * (len(X) - 2) + ["b", "b"])
    res3 = per_class_kmeans(X, labels, k=3)
    assert res3.k_per_class["b"] <= 2


def test_hierarchical_nested_and_sizes_sum():
    X, y = _blobs(n_per=50, k=6, d=8, spread=0.1, seed=2)
    tree = hierarchical_kmeans(X, levels=[20, 6, 2], n_resample=5, seed=0)
    N = X.shape[0]
    assert tree.n_levels == 3
    for lv in range(3):
        assert tree.assignments[lv].shape == (N,)
        assert tree.sizes(lv).sum() == N
        assert (tree.sizes(lv) > 0).all()  # empty clusters dropped
    for lv in range(2):
        # nested: all points of a level-lv cluster share one parent, and it is the recorded one
        for c in np.unique(tree.assignments[lv]):
            parent = np.unique(tree.assignments[lv + 1][tree.assignments[lv] == c])
            assert parent.tolist() == [tree.parents[lv][c]]
    # coarse level 2 of 6 blobs; level 1 should recover the blobs
    assert adjusted_rand_score(y, tree.assignments[1]) > 0.8


def test_resampling_centroids_within_support_and_spread():
    rng = np.random.default_rng(0)
    # long-tailed 2-D data: a dense mode on a sparse uniform background
    sd = 0.15
    dense = sd * rng.normal(size=(5000, 2)) + np.array([0.5, 0.5])
    sparse = rng.uniform(-1, 1, size=(500, 2))
    X = np.concatenate([dense, sparse]).astype(np.float32)
    plain = hierarchical_kmeans(X, levels=[30], n_resample=0, seed=0, normalize=False)
    res = hierarchical_kmeans(X, levels=[30], n_resample=8, seed=0, normalize=False)
    C = res.centers[0]
    # inside the data's bounding box and near some data point
    assert (C >= X.min(0) - 1e-6).all() and (C <= X.max(0) + 1e-6).all()
    d = np.sqrt(((C[:, None, :] - X[None]) ** 2).sum(-1)).min(1)
    assert d.max() < 0.2

    def in_mode(c):
        return int((np.linalg.norm(c - np.array([0.5, 0.5]), axis=1) < 2 * sd).sum())

    # resampling moves centroids out of the dense mode, toward a uniform cover of the support
    assert in_mode(C) < in_mode(plain.centers[0]) - 2
    assert res.sizes(0).sum() == X.shape[0]


def test_balanced_sample_is_balanced_over_top_clusters():
    rng = np.random.default_rng(0)
    big = 0.05 * rng.normal(size=(900, 4)) + np.array([1, 0, 0, 0])
    small = 0.05 * rng.normal(size=(100, 4)) + np.array([0, 1, 0, 0])
    X = np.concatenate([big, small]).astype(np.float32)
    tree = hierarchical_kmeans(X, levels=[10, 2], n_resample=3, seed=0)
    idx = balanced_sample(X, tree, 100, seed=0)
    assert len(idx) == 100 and len(np.unique(idx)) == 100
    top = tree.assignments[1][idx]
    assert np.bincount(top).tolist() == [50, 50]
    # budget larger than the small cluster: it gives all it has, the rest goes elsewhere
    idx = balanced_sample(X, tree, 400, seed=0, strategy="closest")
    counts = np.bincount(tree.assignments[1][idx])
    assert len(idx) == 400 and sorted(counts.tolist()) == [100, 300]
    assert len(balanced_sample(None, tree, 5000)) == 1000


def test_near_duplicates_found():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 32)).astype(np.float32)
    X[50] = X[10] * 2.0  # exact direction (cosine 1)
    X[200] = X[10] + 0.01 * rng.normal(size=32)
    X[120] = X[7] + 0.01 * rng.normal(size=32)
    keys = [f"k{i}" for i in range(300)]
    res = near_duplicates(X, keys, threshold=0.98, block=64)  # several blocks
    assert res.remove == ["k50", "k120", "k200"]
    pair_set = {(a, b) for a, b, _ in res.pairs}
    assert {("k10", "k50"), ("k10", "k200"), ("k50", "k200"), ("k7", "k120")} == pair_set
    assert all(s >= 0.98 for _, _, s in res.pairs)
    res2 = near_duplicates(X, keys, threshold=0.98, block=1000)
    assert res2.remove == res.remove and res2.pairs == res.pairs
    assert near_duplicates(X[:5], threshold=0.999).remove == []


def test_cluster_report_matches_sklearn():
    clusters = [0, 0, 1, 1, 2, 2, 2, 0]
    sex = ["F", "F", "M", "M", "M", "F", None, "unknown"]
    age = [10, 20, 30, 40, float("nan"), 60, 70, 80]
    rep = cluster_report(clusters, {"sex": sex, "age": age})
    assert rep.sizes == {0: 3, 1: 2, 2: 3} and rep.n == 8
    s = {a.attr: a for a in rep.scores}
    keep = [i for i in range(8) if sex[i] not in (None, "unknown")]
    yc = [clusters[i] for i in keep]
    ys = [sex[i] for i in keep]
    assert s["sex"].n == 6 and s["sex"].n_missing == 2
    assert s["sex"].nmi == pytest.approx(normalized_mutual_info_score(ys, yc))
    assert s["sex"].ari == pytest.approx(adjusted_rand_score(ys, yc))
    keep = [i for i in range(8) if i != 4]
    assert s["age"].n == 7
    assert s["age"].nmi == pytest.approx(normalized_mutual_info_score([str(age[i]) for i in keep],
                                                                      [clusters[i] for i in keep]))
    text = render_report(rep)
    assert "| sex | 6 | 2 | 2 |" in text and "NMI" in text
    assert rep.to_dict()["attributes"]["sex"]["n"] == 6
    none = cluster_report(clusters, {"x": [None] * 8})
    assert "undefined" in none.to_markdown()
