"""`agglom monitor`'s options (a torch-free schema, beside the other commands'; the values are checked by the config
rules, :mod:`agglom.config.rules`, before anything is read); :func:`agglom.monitor.run.run_monitor` takes them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional


@dataclass
class MonitorArgs:
    model: str = ""  # an export folder (timm + adapter pack), its ONNX graph (.onnx), a timm folder or a run
    reference: str = ""  # the dataset the model was validated on (dataset.json + <split>/*.tar)
    reference_split: str = "test"  # the split of it the model was validated on
    incoming: str = ""  # a folder with one folder of shards per batch (incoming/2026-11-01/*.tar), read in name order
    out: Optional[str] = None  # default <incoming>/monitor
    embedding: str = "adapters"  # the features watched: summary (CLS) | pooled | adapters (eval.features)
    attributes: List[str] = field(default_factory=list)  # attributes whose groups are tested; empty: all of them
    pca_dims: int = 10  # the reference's principal components the drift test runs on
    permutations: int = 1000  # of the MMD test (the smallest p-value is 1 / (permutations + 1))
    max_samples: int = 500  # per side and group, drawn at random above it (the MMD is quadratic in samples)
    min_group: int = 20  # a group with fewer samples on either side is not tested
    alpha: float = 0.05  # family-wise level of each batch's drift tests, and of its score tests (Bonferroni)
    auc_drop: float = 0.05  # an AUC fall beyond this, with its interval below 0, is a degradation
    bootstrap: int = 500  # resamples behind each AUC interval
    alarm_on: List[str] = field(default_factory=lambda: ["drift", "score", "prevalence", "auc"])  # + proportions
    label_index: int = 0  # the label column of a multi-label dataset
    image_size: Optional[int] = None  # default: the model's training size
    batch_size: int = 64
    num_workers: int = 0
    device: Optional[str] = None
    seed: int = 0


__all__ = ["MonitorArgs"]
