"""What any training run reads from the recipe: its group names and the student's input channels.

The distillation-only parts (frozen teachers, the normalisers' stats batches, a distillation run's files) are in
:mod:`agglom.distill.setup`.
"""
from __future__ import annotations

from typing import List

from omegaconf import DictConfig

from agglom.config.choices import input_channels
from agglom.config.load import ConfigError


def in_chans_of(cfg: DictConfig) -> int:
    """Input channels of the student (and of the teachers' preprocessing) from ``data.grayscale``."""
    from agglom.config.choices import GRAYSCALE

    if cfg.data.grayscale not in GRAYSCALE:
        raise ConfigError(f"data.grayscale must be one of {', '.join(GRAYSCALE)}, got {cfg.data.grayscale!r}")
    return input_channels(cfg.data.grayscale)


def group_names(cfg: DictConfig) -> List[str]:
    """The run's group names: :func:`agglom.data.readers.group_indexer` (datasheet + sidecars), as the readers."""
    from agglom.data.readers import group_indexer

    return list(group_indexer(cfg).names)
