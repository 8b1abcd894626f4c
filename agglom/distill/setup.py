"""What a distillation run builds and writes from its recipe: the frozen teachers (built, or opened from their
feature caches), the few batches the target normalisers are fitted on, and the run's files (config.yaml,
teachers.json, groups.json, routing.json). What every task of the loop reads from a recipe (group names, input
channels) is in :mod:`agglom.train.setup`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from omegaconf import DictConfig

from agglom.config.load import ConfigError
from agglom.train.setup import in_chans_of


def build_teachers(cfg: DictConfig, device: torch.device) -> Dict[str, torch.nn.Module]:
    """Frozen teachers by card name or path. A teacher with `cache:` is served from its feature cache and never
    built: its dims come from the cache manifest, so big teachers cost nothing at training time."""
    import teachers as zoo

    if not cfg.teachers:
        raise ConfigError("teachers: the recipe names no teacher; add e.g. teachers=[{name: tiny-clip}] "
                          f"(known cards: {', '.join(zoo.list_cards())})")
    out: Dict[str, torch.nn.Module] = {}
    c = in_chans_of(cfg)
    for entry in cfg.teachers:
        if entry.name in out:
            raise ConfigError(f"teachers: {entry.name!r} is listed twice")
        try:
            card = zoo.load_card(entry.name)
        except (FileNotFoundError, KeyError, ValueError) as e:
            msg = str(e)
            if "cards" not in msg:  # the zoo's own message usually lists the cards already
                msg += f"; known cards: {', '.join(zoo.list_cards())}"
            raise ConfigError(f"teachers: cannot load teacher {entry.name!r}: {msg}") from e
        if entry.cache:
            from agglom.cache import open_cache

            if any(float(v) for k, v in cfg.data.augment.items() if k != "scale_min") or cfg.data.augment.scale_min < 1:
                print(f"agglom: warning: teacher {entry.name} is cached on un-augmented images while data.augment is "
                      "on; its targets will not see the augmentation", flush=True)
            from agglom.data.shards import training_splits

            # every split the stream reads must be covered: an uncovered one is named here, not a key error later
            cached = open_cache(entry.cache, entry.name, cfg, card.digest(), split=training_splits(cfg))
            cached.name, cached.digest = entry.name, card.digest()
            out[entry.name] = cached
            continue
        try:
            teacher = zoo.build_teacher(card, input_mean=list(cfg.student.mean)[:c], input_std=list(cfg.student.std)[:c],
                                        device=str(device))
        except (FileNotFoundError, RuntimeError, ValueError) as e:
            raise ConfigError(f"teachers: cannot build teacher {entry.name!r}: {e}") from e
        teacher.name = entry.name
        teacher.digest = card.digest()
        out[entry.name] = teacher
    return out


def stats_batches(cfg: DictConfig) -> List[Dict[str, Any]]:
    """A few training-split batches (deterministic, no augmentation) for the normalisers' stats pass."""
    from agglom.data.readers import eval_loader

    batches, n = [], 0
    loader = eval_loader(cfg, cfg.data.train_split)
    for batch in loader:
        batches.append(batch)
        n += int(batch["image"].shape[0])
        if n >= cfg.heads.stats_samples:
            break
    if not batches:
        from agglom.data.shards import shard_pattern

        where = shard_pattern(cfg, cfg.data.train_split) or f"{cfg.data.root}/{cfg.data.train_split}/*.tar"
        raise ConfigError(f"data: no usable training sample in {where} (split {cfg.data.train_split!r}; "
                          f"skipped: {loader.stats.describe()})")
    return batches


def write_run_files(cfg: DictConfig, run_dir: Path, specs: list, groups: List[str], routing: Optional[Dict]) -> None:
    """config.yaml, teachers.json, groups.json (+ routing.json) of a distillation run that starts."""
    import json

    from agglom.config.load import save_config, to_yaml

    save_config(cfg, run_dir / "config.yaml")
    print(to_yaml(cfg), flush=True)
    (run_dir / "teachers.json").write_text(json.dumps([s.to_dict() for s in specs], indent=1))
    (run_dir / "groups.json").write_text(json.dumps({"by": cfg.groups.by, "names": list(groups)}, indent=1))
    if routing:
        (run_dir / "routing.json").write_text(json.dumps(routing, indent=1))
        print("agglom: routing from the teacher audit (val AUC -> weight): " + "; ".join(
            f"{t}: " + ", ".join(f"{g} {a if a is None else round(a, 3)} -> {w:.2f}"
                                 for g, a, w in zip(routing["groups"], au, ws))
            for t, au, ws in zip(routing["teachers"], routing["auc"], routing["weights"])), flush=True)
