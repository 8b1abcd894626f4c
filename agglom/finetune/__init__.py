"""Supervised fine-tuning with group objectives -> fairness-tuned encoders exported as `agglom` teachers.

`agglom finetune` (see :mod:`agglom.commands.finetune`, driver :mod:`agglom.finetune.run`) trains an encoder +
linear head on the labelled training shards as a task of the shared training loop (:mod:`agglom.finetune.task`:
the same engines, checkpoints and exact resume as `agglom train`), with the same group objectives as
distillation (erm / balanced / variance / gap / groupdro); validates per group (:mod:`agglom.eval.group_auc`); and
exports the encoder (head dropped) as a timm folder + ``card.yaml`` + ``finetune.json`` that the teacher zoo
loads with ``teachers.load_card(<folder>)`` and a recipe names as a teacher.

Nothing is imported here, so the command's schema loads without torch.
"""
