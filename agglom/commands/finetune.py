"""`agglom finetune model=<timm>|teacher=<card>|init=<folder> [objective.group=groupdro ...]`.

Supervised fine-tuning of an encoder + linear head on the labelled training shards, the per-sample loss
aggregated over groups by the same objectives as distillation; per-group validation AUC; the encoder (without
the head) exported as an `agglom` teacher folder (timm local-dir + card.yaml + finetune.json) at
``out`` (default ``<out_dir>/<name>``). Name that folder as a teacher: ``teachers=[{name: <folder>}]``.
"""
from __future__ import annotations

from typing import Any

from agglom.commands import Command
from agglom.finetune.args import FinetuneArgs


def _run(cfg: Any) -> int:
    from agglom.finetune.run import run_finetune

    print(run_finetune(cfg)["table"])
    return 0


finetune = Command(schema=FinetuneArgs, run=_run,
                   help="fine-tune an encoder + linear head with a group objective; export it as an agglom teacher")
