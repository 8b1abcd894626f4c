"""Curation over frozen-teacher embeddings: proxy-group clustering, near-duplicates, validation."""
from agglom.curate.cluster import (
    Clustering,
    HKMeansTree,
    PerClassClustering,
    balanced_sample,
    hierarchical_kmeans,
    kmeans,
    per_class_kmeans,
    prepare,
)
from agglom.curate.dedup import Duplicates, near_duplicates
from agglom.curate.validate import ClusterReport, cluster_report, render_report

__all__ = [
    "ClusterReport",
    "Clustering",
    "Duplicates",
    "HKMeansTree",
    "PerClassClustering",
    "balanced_sample",
    "cluster_report",
    "hierarchical_kmeans",
    "kmeans",
    "near_duplicates",
    "per_class_kmeans",
    "prepare",
    "render_report",
]
