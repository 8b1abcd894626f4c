"""`agglom finetune model=<timm>|teacher=<card>|init=<folder> [objective.group=groupdro ...]`.

Supervised fine-tuning of an encoder + linear head on the labelled training shards, the per-sample loss
aggregated over groups by the same objectives as distillation; per-group validation AUC; the encoder (without
the head) exported as an `agglom` teacher folder (timm local-dir + card.yaml + finetune.json) at
``out`` (default ``<out_dir>/<name>``). Name that folder as a teacher: ``teachers=[{name: <folder>}]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from agglom.commands import Command
from agglom.commands.curate import progress_mode
from agglom.config.schema import DataConfig, GroupsConfig


@dataclass
class FinetuneData(DataConfig):
    image_size: Optional[int] = None  # None: the card's input size (teacher/init), model_args.img_size or 64
    mean: List[float] = field(default_factory=list)  # input normalisation; empty: the card's (teacher/init), else 0.5
    std: List[float] = field(default_factory=list)


@dataclass
class FinetuneObjective:
    group: str = "erm"  # erm | balanced | variance | gap | groupdro
    lam: float = 0.0  # variance/gap strength
    groupdro_eta: float = 0.01
    groupdro_size_adjust: float = 0.0


@dataclass
class FinetuneOptim:
    lr: float = 1e-3
    head_lr: Optional[float] = None  # None: same as lr
    min_lr_ratio: float = 0.01
    weight_decay: float = 0.05
    beta1: float = 0.9
    beta2: float = 0.999
    warmup_steps: int = 20
    steps: int = 200
    grad_clip: float = 1.0
    max_bad_steps: int = 5


@dataclass
class FinetuneArgs:
    name: str = "finetune"
    out_dir: str = "runs"
    out: Optional[str] = None  # the export folder; default <out_dir>/<name>
    force: bool = True  # replace an existing export folder
    seed: int = 0
    # the encoder: exactly one of
    model: Optional[str] = None  # a timm model name (+ model_args)
    model_args: Dict[str, Any] = field(default_factory=dict)
    pretrained: bool = False  # timm pretrained weights for model= (needs them cached offline)
    teacher: Optional[str] = None  # a teacher card (family timm or agglom) by name or path: a trainable copy
    init: Optional[str] = None  # an agglom export / timm save_for_hf folder
    data: FinetuneData = field(default_factory=FinetuneData)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    objective: FinetuneObjective = field(default_factory=FinetuneObjective)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    val_interval: int = 50  # validate every N steps (and at the end); 0 = only at the end
    log_interval: int = 25
    progress: Any = "auto"  # auto (tqdm on a TTY) | on | off
    device: str = "auto"  # auto | cpu | cuda[:i]
    threads: int = 0  # CPU threads for torch; 0 = auto (on CPU: cores minus data workers, at least 1)
    licence: Optional[str] = None  # the export card's licence; default derived from the base and the data
    description: str = ""  # prepended to the card's generated description


def _fmt(x: Optional[float]) -> str:
    return "undefined" if x is None else f"{x:.3f}"


def summary_table(a: Any, result: Dict[str, Any], out: Any) -> str:
    final = result["final"]
    obj = a.objective
    lam = f", λ={obj.lam}"
    lines = [f"agglom finetune {a.name}: objective {obj.group}{lam}, {a.optim.steps} steps in "
             f"{result['seconds']['total']:.1f} s ({result['seconds']['train_steps_per_s']:.1f} steps/s), "
             f"groups by {a.groups.by}", "",
             f"| {'group':<12} | {'n':>6} | {'pos':>6} | {'AUC':>9} |", f"|{'-' * 14}|{'-' * 8}|{'-' * 8}|{'-' * 11}|",
             f"| {'overall':<12} | {final['n']:>6} | {'':>6} | {_fmt(final['auc']):>9} |"]
    for n, g in final["groups"].items():
        pos = "" if g["positives"] is None else g["positives"]
        lines.append(f"| {n:<12} | {g['n']:>6} | {pos:>6} | {_fmt(g['auc']):>9} |")
    lines += ["", f"worst-group AUC: {_fmt(final['worst_group_auc'])} ({final['worst_group']}); "
                  f"AUC gap (max - min, lower is better): {_fmt(final['auc_gap'])}",
              f"export: {out}  (teacher: teachers=[{{name: {out}}}]; timm: "
              f"timm.create_model('local-dir:{out}', pretrained=True))"]
    return "\n".join(lines)


def run_finetune(a: Any) -> Dict[str, Any]:
    import os
    from pathlib import Path

    import torch

    from agglom.config.load import ConfigError
    from agglom.curate.embed import pick_device
    from agglom.finetune.export import export_encoder
    from agglom.finetune.loop import finetune_loop
    from agglom.finetune.model import build_encoder
    from agglom.objective.groups import list_group_objectives

    if a.objective.group not in list_group_objectives():
        raise ConfigError(f"objective.group: {a.objective.group!r} is not one of {', '.join(list_group_objectives())}")
    a.progress = progress_mode(a.progress)
    if a.progress not in ("auto", "on", "off"):
        raise ConfigError(f"progress must be auto|on|off, got {a.progress!r}")
    if not (Path(a.data.root) / "dataset.json").is_file() and not a.data.shards:
        raise ConfigError(f"data.root: no dataset.json under {a.data.root} (write one with `agglom data synth|pack`)")
    out = Path(a.out) if a.out else Path(a.out_dir) / str(a.name)
    if out.exists() and not a.force:
        raise ConfigError(f"out: {out} exists; pass force=true to replace it")
    device = pick_device(str(a.device))
    threads = int(a.threads)
    if threads == 0 and device.type == "cpu":
        # a small model gains little from a second thread, and oversubscribed OpenMP threads (data workers on the
        # same cores) slowed 150 demo steps ~10x on 2 shared cores; measured: 1 thread ~21 steps/s steadily
        threads = max(1, (os.cpu_count() or 1) - int(a.data.num_workers))
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        enc = build_encoder(a)
        result = finetune_loop(a, enc, device)
        path = export_encoder(a, enc, result, out, force=bool(a.force))
    finally:
        torch.set_num_threads(before)
    result["out"] = path
    result["table"] = summary_table(a, result, path)
    return result


def _run(cfg: Any) -> int:
    result = run_finetune(cfg)
    print(result["table"])
    return 0


finetune = Command(schema=FinetuneArgs, run=_run,
                   help="fine-tune an encoder + linear head with a group objective; export it as an agglom teacher")
