"""What `agglom train` checks on disk before it builds or writes anything (the values were checked at load).

The data (shard files exist, the datasheet and groups resolve, sampling weights name real groups), the teacher
cards, the checkpoint named by ``resume=`` and the run named by ``objective.reference``. Each failure is a
:class:`ConfigError` (exit 2) that names the file and what to do; nothing is created on the way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

from agglom.config.load import ConfigError


def checkpoint_of(path: Path) -> Optional[Path]:
    """The checkpoint folder a ``resume=`` path means (a checkpoint, a checkpoints/ folder or a run dir)."""
    if (path / "latest").is_file():
        path = path / (path / "latest").read_text().strip()
    elif (path / "checkpoints" / "latest").is_file():
        path = path / "checkpoints" / (path / "checkpoints" / "latest").read_text().strip()
    return path if (path / "state.json").is_file() else None


def check_data(cfg: Any) -> List[str]:
    """The training shards and the group names (raises ConfigError naming what is wrong)."""
    from agglom.data.readers import shard_urls
    from agglom.data.shards import training_splits
    from agglom.train.setup import group_names

    for split in training_splits(cfg):  # a missing distill split is named like a missing train split
        shard_urls(cfg, split)
    names = group_names(cfg)
    if cfg.objective.route_by_audit > 0:
        from agglom.data.shards import dataset_datasheet

        if not (dataset_datasheet(cfg) or {}).get("label"):
            raise ConfigError("objective.route_by_audit needs labelled train/val splits (each teacher's probe is "
                              "fitted on labels) and this dataset's datasheet declares none; set it to 0")
    unknown = [g for g in (cfg.data.group_weights or {}) if g not in names]
    if unknown:
        raise ConfigError(f"data.group_weights: unknown group(s) {unknown}; the groups of {cfg.groups.by!r} are "
                          f"{names}")
    return names


def check_teachers(cfg: Any) -> None:
    import teachers as zoo

    if not cfg.teachers:
        raise ConfigError("teachers: the recipe names no teacher; add e.g. teachers=[{name: tiny-clip}] "
                          f"(known cards: {', '.join(zoo.list_cards())})")
    for e in cfg.teachers:
        try:
            zoo.load_card(e.name)
        except (FileNotFoundError, KeyError, ValueError) as err:
            msg = str(err)
            if "cards" not in msg:
                msg += f"; known cards: {', '.join(zoo.list_cards())}"
            raise ConfigError(f"teachers: cannot load teacher {e.name!r}: {msg}") from err
        if e.cache and not Path(e.cache).is_dir():
            raise ConfigError(f"teachers: {e.name}: cache folder {e.cache} does not exist (write it with "
                              f"`agglom cache recipe=...`)")


def check_paths(cfg: Any) -> None:
    if cfg.resume not in ("auto", "never") and checkpoint_of(Path(cfg.resume)) is None:
        raise ConfigError(f"resume={cfg.resume}: not a checkpoint, a checkpoints/ folder or a run dir with a "
                          "checkpoint (use resume=auto to continue this run, resume=never for a fresh one)")
    ref = cfg.objective.reference
    if ref and not (Path(ref) / "metrics.jsonl").is_file():
        raise ConfigError(f"objective.reference={ref}: no metrics.jsonl there (give the folder of a finished "
                          "λ = 0 run)")


def preflight(cfg: Any) -> None:
    """Every check above, in the order a user would fix them."""
    check_paths(cfg)
    check_data(cfg)
    check_teachers(cfg)


__all__ = ["preflight", "checkpoint_of", "check_data", "check_teachers", "check_paths"]
