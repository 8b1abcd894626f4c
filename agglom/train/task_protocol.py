"""What the shared training loop (:mod:`agglom.train.loop`) needs from a task, stated once.

A task is the part of a run that knows what is trained and how the loss is made: distillation
(:class:`agglom.distill.task.AgglomTask`) and fine-tuning (:class:`agglom.finetune.task.FinetuneTask`) are the two.
The loop owns everything else (engine, optimiser, EMA, checkpoints, resume, logging). :class:`LoopTask` is the
contract between them: the methods every task must write are abstract (a task that lacks one fails when it is
built, not mid-run), and the hooks only some tasks need have defaults that do nothing, so the loop calls every one
of them unconditionally instead of asking ``hasattr``.
"""
from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from agglom.phases import PhaseTimer

Batch = Dict[str, Any]
#: what a task may give the reader's data workers to apply to each batch (``train_loader(attach=...)``): picklable
WorkerRead = Callable[[Batch], Batch]


class LoopTask(nn.Module, metaclass=abc.ABCMeta):
    """A task of the shared loop: an ``nn.Module`` whose ``model`` is the trainable module (what the engine wraps,
    checkpoints and averages) and whose ``task(batch)`` returns ``{"loss": scalar, **named terms}``.

    Called by the loop in this order: :meth:`param_groups` and :meth:`attach` (setup), :meth:`stateful` (what is
    checkpointed beside the model), :meth:`prepare` (first data read), :meth:`write_run_files` (a run that starts),
    ``train()``; then for each epoch :meth:`worker_reads`, and for each micro-batch :meth:`step_batch`,
    :meth:`flops_per_sample` (once), ``task(batch)``; :meth:`tracked` at each logged step. The loop sets
    :attr:`phases` (its timer, enabled by ``log.phases``) before the first step, for the task to mark its phases.
    """

    model: nn.Module  # the trainable module: the engine wraps it, checkpoints hold it, EMA averages it
    phases: PhaseTimer  # set by the loop; a task marks its phases on it (a no-op unless log.phases)

    # what every task writes ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def param_groups(self) -> List[Dict[str, Any]]:
        """The optimiser's parameter groups over ``self.model`` (weight decay, per-group ``base_lr``)."""

    @abc.abstractmethod
    def attach(self, forward_model: nn.Module, device: torch.device, autocast: Any) -> None:
        """Use ``forward_model`` (the engine-wrapped, maybe compiled, ``self.model``) for forward passes, on
        ``device`` under the engine's ``autocast`` context; move the task's own state there."""

    @abc.abstractmethod
    def write_run_files(self, run_dir: Path) -> None:
        """Write the files that describe a run that starts (config.yaml, ...): once, on the main process."""

    @abc.abstractmethod
    def flops_per_sample(self, batch: Batch) -> float:
        """Training FLOPs per sample, measured on the first batch (run.json's ``train_flops``)."""

    @abc.abstractmethod
    def forward(self, batch: Batch) -> Dict[str, torch.Tensor]:
        """One micro-batch: ``{"loss": scalar to backpropagate, **terms logged by name}``."""

    # hooks with defaults: a task overrides what it needs ------------------------------------------------------
    def stateful(self) -> Dict[str, nn.Module]:
        """Modules checkpointed and restored beside the model (e.g. group weights); default: none."""
        return {}

    def prepare(self, fresh: bool) -> None:
        """Called before the run files are written and before resuming: a ``fresh`` run may fit state on data
        here (the distillation normalisers' stats pass); default: nothing."""

    def tracked(self) -> Dict[str, float]:
        """Extra numbers logged at each logged step (e.g. per-group moving averages); default: none."""
        return {}

    def worker_reads(self) -> Optional[WorkerRead]:
        """A picklable callable the training reader's workers apply to each batch (e.g. reading cached teacher
        features off the step's critical path), asked once per epoch; default: None (batches as read)."""
        return None

    def step_batch(self, batch: Batch, step: int) -> Batch:
        """The micro-batch the step at optimiser step ``step`` trains on (e.g. a per-step input size, a pure
        function of the step so a resumed run repeats it); default: the batch unchanged."""
        return batch


__all__ = ["LoopTask", "Batch", "WorkerRead"]
