"""`agglom curate`'s arguments (here, not in ``agglom.curate``, whose package imports scikit-learn: `agglom --help`
and a bad value fail before anything heavy loads). The command (:mod:`agglom.commands.curate`) parses them;
:func:`agglom.curate.run.run_curate` does the work."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional


@dataclass
class CurateArgs:
    # data
    root: str = "data/synth"  # dataset folder (holds dataset.json)
    shards: Optional[str] = None  # explicit brace pattern instead of root/<split>/*.tar
    splits: List[str] = field(default_factory=lambda: ["train", "val", "test"])  # curated together; missing ones skipped
    image_size: Optional[int] = None  # None: 64, or the run's data.image_size with run=
    grayscale: Optional[str] = None  # replicate | keep; None: replicate, or the run's
    mean: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])  # input normalisation (ignored with run=)
    std: List[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    batch_size: int = 64
    num_workers: int = 2
    # encoder: one of
    teacher: Optional[str] = None  # a teacher card name, card path or agglom export folder
    run: Optional[str] = None  # a trained agglom run directory (student features)
    features: str = "summary"  # summary (CLS / embedding) | pooled (mean patch feature) | both (concatenated)
    device: str = "auto"  # auto | cpu | cuda[:i]
    # clustering
    method: str = "kmeans"  # kmeans | per_class (GEORGE: within each label) | hierarchical (Vo et al. 2024)
    k: int = 2  # clusters (per class for per_class; the top level for hierarchical unless levels are given)
    levels: List[int] = field(default_factory=list)  # hierarchical: k per level, finest first (default [10k, k])
    n_resample: int = 10  # hierarchical: resampling rounds per level
    sample_size: int = 10  # hierarchical: points drawn per centroid in a resampling round
    normalize: bool = True  # L2-normalise features before clustering
    whiten: bool = False  # PCA-whiten before clustering
    pca_dim: Optional[int] = None
    n_init: int = 10
    seed: int = 0
    dedup_threshold: float = 0.0  # cosine threshold for near-duplicate removal; 0 = off
    dedup_space: str = "zscore"  # raw | center | zscore: features compared after centring (and per-dim scaling)
    # output
    attr: str = "proxy"  # the attribute name the sidecar adds
    out: Optional[str] = None  # sidecar path; default <root>/<attr>_groups.json
    validate: List[str] = field(default_factory=list)  # attributes to score NMI/ARI against; empty = all present
    progress: Any = "auto"  # auto (tqdm on a TTY) | on | off
