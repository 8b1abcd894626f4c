"""Supervised fine-tuning with group objectives -> fairness-tuned encoders exported as `agglom` teachers.

`agglom finetune` (see :mod:`agglom.commands.finetune`, driver :mod:`agglom.finetune.run`) trains an encoder +
linear head on the labelled training shards as a task of the shared training loop (:mod:`agglom.finetune.task`:
the same engines, checkpoints and exact resume as `agglom train`), with the same group objectives as
distillation (erm / balanced / variance / gap / groupdro); validates per group (:mod:`agglom.metrics.group_auc`); and
exports the encoder (head dropped) with ``card.yaml`` + ``finetune.json`` as a folder that the teacher zoo loads
with ``teachers.load_card(<folder>)`` and a recipe names as a teacher: a timm folder for timm models
(:mod:`agglom.finetune.export`), the family's own format for open_clip / SAM / transformers cards
(:mod:`agglom.finetune.family`, :mod:`agglom.finetune.family_export`). ``finetune.method=lora`` trains low-rank
adapters instead of every weight (:mod:`agglom.finetune.lora`), merged into the encoder before export.

Nothing is imported here, so the command's schema loads without torch.
"""
