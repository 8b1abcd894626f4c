"""Supervised fine-tuning with group objectives -> fairness-tuned encoders exported as `agglom` teachers.

`agglom finetune` (see :mod:`agglom.commands.finetune`) trains an encoder + linear head on the labelled training
shards with the same group objectives as distillation (erm / balanced / variance / gap / groupdro), validates
per group, and exports the encoder (head dropped) as a timm folder + ``card.yaml`` + ``finetune.json`` that the
teacher zoo loads with ``teachers.load_card(<folder>)`` and a recipe names as a teacher.
"""
from agglom.finetune.export import export_encoder
from agglom.finetune.loop import finetune_loop, group_metrics
from agglom.finetune.model import SUPPORTED_FAMILIES, Encoder, build_encoder

__all__ = ["Encoder", "build_encoder", "finetune_loop", "group_metrics", "export_encoder", "SUPPORTED_FAMILIES"]
