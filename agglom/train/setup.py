"""Building what the loop needs from the recipe: teachers, group names, input channels, stats batches."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import torch
from omegaconf import DictConfig

from agglom.config.load import ConfigError


def in_chans_of(cfg: DictConfig) -> int:
    if cfg.data.grayscale not in ("replicate", "keep"):
        raise ConfigError(f"data.grayscale must be replicate|keep, got {cfg.data.grayscale!r}")
    return 1 if cfg.data.grayscale == "keep" else 3


def load_datasheet(cfg: DictConfig) -> Dict[str, Any]:
    path = Path(cfg.data.root) / "dataset.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def group_indexer(cfg: DictConfig):
    from agglom.data.groups import GroupIndexer

    return GroupIndexer(list(cfg.groups.specs), cfg.groups.by, load_datasheet(cfg))


def group_names(cfg: DictConfig) -> List[str]:
    return list(group_indexer(cfg).names)


def build_teachers(cfg: DictConfig, device: torch.device) -> Dict[str, torch.nn.Module]:
    """Frozen teachers by card name; a cached teacher is still built (cheaply) for its dims unless the cache
    manifest carries them."""
    import teachers as zoo

    if not cfg.teachers:
        raise ConfigError("teachers: the recipe names no teacher; add e.g. teachers=[{name: tiny-clip}] "
                          f"(known cards: {', '.join(c.name for c in zoo.list_cards())})")
    out: Dict[str, torch.nn.Module] = {}
    for entry in cfg.teachers:
        try:
            card = zoo.load_card(entry.name)
        except (FileNotFoundError, KeyError, ValueError) as e:
            known = ", ".join(c.name for c in zoo.list_cards())
            raise ConfigError(f"teachers: cannot load teacher {entry.name!r} ({e}); known cards: {known}") from e
        c = in_chans_of(cfg)
        teacher = zoo.build_teacher(card, input_mean=list(cfg.student.mean)[:c], input_std=list(cfg.student.std)[:c],
                                    device=str(device))
        teacher.name = entry.name
        teacher.digest = card.digest()
        if entry.name in out:
            raise ConfigError(f"teachers: {entry.name!r} is listed twice")
        out[entry.name] = teacher
    return out


def stats_batches(cfg: DictConfig) -> List[Dict[str, Any]]:
    """A few training-split batches (deterministic, no augmentation) for the normalisers' stats pass."""
    from agglom.data.readers import eval_loader

    batches, n = [], 0
    for batch in eval_loader(cfg, cfg.data.train_split):
        batches.append(batch)
        n += int(batch["image"].shape[0])
        if n >= cfg.heads.stats_samples:
            break
    if not batches:
        raise ConfigError(f"data: no training samples found under {cfg.data.root} (split {cfg.data.train_split!r})")
    return batches
