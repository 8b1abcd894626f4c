"""Agglomeration: distilling several frozen teachers into one timm student, as a task of the shared training loop.

- :mod:`agglom.distill.run`: `agglom train` (:func:`train`): checks, the run's lock, the resume point, the task,
  then :class:`agglom.train.loop.Loop`;
- :mod:`agglom.distill.task`: :class:`~agglom.distill.task.AgglomTask`, the distillation task between the model
  and the loop (frozen teachers -> targets; student + heads -> predictions; losses -> one scalar);
- :mod:`agglom.distill.setup`: the frozen teachers, the normalisers' stats batches and the run's files;
- :mod:`agglom.distill.audit`: the teacher audit on the validation split (``objective.route_by_audit``).

It sits on its own floor (docs/ARCHITECTURE.md): above the loop (:mod:`agglom.train`) it hands the task to, below
the evaluation and sweeps (:mod:`agglom.eval`) that train through it.
"""
from agglom.distill.run import build_task, train

__all__ = ["train", "build_task"]
