"""`agglom teachers list|show|check`: the teacher zoo's cards, their contracts, and a frozen-forward check."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List

import yaml

from agglom.commands import Command
from agglom.config.load import ConfigError


def _zoo():
    import teachers

    return teachers


def _user_errors():
    t = _zoo()
    return (t.CardError, t.MissingWeightsError, t.WeightsUnavailableError, t.UnsafeCheckpointError,
            t.CheckpointFormatError)


def _present(card: Any) -> str:
    ok = card.weights_present()
    if ok is None:
        return "random" if card.weights.source == "none" else f"{card.weights.source} (download)"
    return "yes" if ok else "MISSING"


# --------------------------------------------------------------------------- list
@dataclass
class ListOptions:
    tiny: bool = True  # include the tiny random-weight cards


def run_list(cfg: Any) -> int:
    t = _zoo()
    rows: List[List[str]] = [["name", "family", "model", "input", "weights", "licence"]]
    for name in t.list_cards():
        card = t.load_card(name)
        if card.tiny and not cfg.tiny:
            continue
        size = f"{card.input_size[0]}x{card.input_size[1]}"
        model = card.model if len(card.model) <= 48 else card.model[:45] + "..."
        rows.append([card.name, card.family, model, size, _present(card), card.licence])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    print(f"\nweights folder: {t.weights_root()}  (set AGGLOM_WEIGHTS to change it)")
    return 0


# --------------------------------------------------------------------------- show
@dataclass
class ShowOptions:
    name: str = ""  # card name, card .yaml path, or agglom export folder


def _load(name: str) -> Any:
    if not name:
        raise ConfigError("give a teacher card: agglom teachers show <name> (agglom teachers list shows them)")
    try:
        return _zoo().load_card(name)
    except _user_errors() as e:
        raise ConfigError(str(e)) from e


def run_show(cfg: Any) -> int:
    t = _zoo()
    card = _load(cfg.name)
    print(f"# card {card.name}  ({card.source_path})")
    print(yaml.safe_dump(card.to_dict(), sort_keys=False, width=120, default_flow_style=None).rstrip())
    print(f"weights present: {_present(card)}" + (f"  ({card.weights_path()})" if card.weights_path() else ""))
    print(f"digest: {card.digest()}")
    print("\n# contract (architecture built without weights)")
    try:
        info: Dict[str, Any] = t.describe_teacher(card)
    except _user_errors() as e:
        print(f"unavailable: {e}")
        return 0
    for k in ("summary", "summary_dim", "spatial", "spatial_dim", "grid", "patch_size", "input_size", "resize",
              "interpolation", "mean", "std"):
        print(f"{k:<14} {info[k]}")
    for k, v in info.get("differs_from_processor", {}).items():  # transformers folders: the card vs the processor
        print(f"note           {k}: the card says {v['card']}, the model's image processor {v['processor']}")
    return 0


# --------------------------------------------------------------------------- check
@dataclass
class CheckOptions:
    name: str = ""  # card name, card .yaml path, or agglom export folder
    device: str = "cpu"
    batch_size: int = 4
    image_size: int = 64  # the student-side image given to the teacher (it resizes to its own input size)
    channels: int = 1  # 1 (grey, replicated) or 3
    mean: List[float] = field(default_factory=lambda: [0.5])  # the student normalisation of the random batch
    std: List[float] = field(default_factory=lambda: [0.5])
    iters: int = 3  # timed forwards after one warm-up
    seed: int = 0


def run_check(cfg: Any) -> int:
    from teachers.check import check_teacher

    card = _load(cfg.name)
    if cfg.channels not in (1, 3):
        raise ConfigError(f"channels must be 1 or 3, got {cfg.channels}")
    try:
        r = check_teacher(card, cfg.mean, cfg.std, cfg.device, cfg.batch_size, cfg.image_size, cfg.channels,
                          cfg.iters, cfg.seed)
    except _user_errors() as e:
        raise ConfigError(str(e)) from e
    teacher, rate = r.teacher, r.samples_per_s
    print(f"teacher {teacher.name} ({teacher.family}: {card.model}) on {cfg.device}, built in {r.build_s:.2f} s")
    print(f"input         {r.batch_shape} -> {teacher.input_size[0]}x{teacher.input_size[1]} "
          f"({teacher.resize_policy})")
    print(f"summary       {tuple(r.summary.shape)}  dim {teacher.summary_dim} ({teacher.summary_kind})")
    print(f"spatial       {tuple(r.spatial.shape)}  dim {teacher.spatial_dim}, grid {teacher.grid[0]}x"
          f"{teacher.grid[1]}, patch {teacher.patch_size[0]}x{teacher.patch_size[1]}")
    print(f"dtype         compute {str(teacher.dtype).replace('torch.', '')}, outputs "
          f"{str(r.summary.dtype).replace('torch.', '')}")
    print(f"speed         {rate:.3g} samples/s (batch {cfg.batch_size}; "
          f"{1 / rate if rate > 0 else float('inf'):.3g} s per sample)")
    for k, ok in r.checks.items():
        print(f"{'ok  ' if ok else 'FAIL'}  {k}")
    return 0 if r.ok else 1


list_cmd = Command(schema=ListOptions, run=run_list, help="list the teacher cards (family, model, weights, licence)")
show = Command(schema=ShowOptions, run=run_show, help="show a teacher card and its contract (dims, grid, preprocessing)",
               positional="name")
check = Command(schema=CheckOptions, run=run_check,
                help="build a teacher, run a random batch, report dims/dtype/speed and verify it is frozen",
                positional="name")
