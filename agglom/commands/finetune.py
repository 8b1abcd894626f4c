"""`agglom finetune model=<timm>|teacher=<card>|init=<folder> [finetune.method=lora] [objective.group=groupdro ...]`.

Supervised fine-tuning of an encoder + linear head on the labelled training shards, the per-sample loss
aggregated over groups by the same objectives as distillation; per-group validation AUC; the encoder (without
the head) exported as a teacher folder with card.yaml + finetune.json at ``out`` (default ``<out_dir>/<name>``):
an `agglom` timm local-dir for timm models, the family's own format for open_clip / SAM / transformers cards.
``finetune.method=lora`` trains rank-``finetune.lora_rank`` adapters on the attention projections (merged before
export). Name that folder as a teacher: ``teachers=[{name: <folder>}]``.
"""
from __future__ import annotations

from typing import Any

from agglom.commands import Command
from agglom.finetune.args import FinetuneArgs


def _run(cfg: Any) -> int:
    from agglom.finetune.run import run_finetune

    result = run_finetune(cfg)
    if "table" in result:  # rank 0 exports and reports; other DDP ranks only train
        print(result["table"])
    return 0


finetune = Command(schema=FinetuneArgs, run=_run,
                   help="fine-tune an encoder (any teacher card, full or LoRA) + linear head with a group objective; "
                        "export it as a teacher")
