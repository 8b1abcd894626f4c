"""`agglom finetune`'s arguments (torch-free, so a bad value fails before anything heavy is imported).

The data section is the recipe's (``data.*``) with the image size and normalisation optional (a teacher card or an
init folder brings its own); ``engine``, ``optim`` and the logging keys map onto the shared training loop's config
(:func:`agglom.finetune.run.loop_cfg`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from agglom.config.schema import DataConfig, EngineConfig, GroupsConfig


def _teacher_help() -> str:
    """The shipped card names, read from teachers/cards/ without importing the zoo (which needs torch)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("teachers")
    where = [Path(p) / "cards" for p in (spec.submodule_search_locations or [])] if spec else []
    names = sorted(f.stem for d in where for f in d.glob("*.yaml"))
    return ("a teacher card of any family (open_clip, sam, transformers, timm, agglom): " + " | ".join(names)
            + " | a card .yaml path | an export folder")


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
    accum_steps: int = 1


@dataclass
class FinetuneMethod:
    """What is trained: every encoder weight (full) or low-rank adapters on the attention projections (lora, with
    peft; merged into the encoder before export). The linear head is trained either way."""

    method: str = "full"  # full | lora
    lora_rank: int = 8  # r: the adapters' rank
    lora_alpha: float = 16.0  # scaling alpha / r
    lora_dropout: float = 0.0  # dropout on the adapters' input
    lora_targets: List[str] = field(default_factory=list)  # module-name suffixes; empty: the family's attention
    # q/k/v/proj linears (agglom.finetune.lora.DEFAULT_TARGETS)


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
    teacher: Optional[str] = field(default=None, metadata={"help": _teacher_help})  # a card of any family by name,
    # YAML path or export folder: a trainable copy of its image encoder, built by the family's own loader
    init: Optional[str] = None  # an agglom export / timm save_for_hf folder
    data: FinetuneData = field(default_factory=FinetuneData)
    groups: GroupsConfig = field(default_factory=GroupsConfig)
    objective: FinetuneObjective = field(default_factory=FinetuneObjective)
    optim: FinetuneOptim = field(default_factory=FinetuneOptim)
    finetune: FinetuneMethod = field(default_factory=FinetuneMethod)  # full | lora (rank, alpha, dropout, targets)
    engine: EngineConfig = field(default_factory=EngineConfig)  # torch (single/DDP) | deepspeed, as for train
    resume: str = "auto"  # auto (the run dir's last checkpoint) | never | PATH to a checkpoint
    run_dir: Optional[str] = None  # config, metrics.jsonl, checkpoints/; default <out>.run beside the export
    checkpoint_interval: int = 100
    keep: int = 1  # checkpoints kept
    val_interval: int = 50  # validate every N steps (and at the end); 0 = only at the end
    log_interval: int = 25
    progress: Any = "auto"  # auto (tqdm on a TTY) | on | off
    device: str = "auto"  # auto | cpu | cuda[:i] (engine.device, when that is auto)
    threads: int = 0  # CPU threads for torch; 0 = auto (on CPU: cores minus data workers, at least 1)
    licence: Optional[str] = None  # the export card's licence; default derived from the base and the data
    description: str = ""  # prepended to the card's generated description
