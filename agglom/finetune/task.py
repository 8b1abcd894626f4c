"""Fine-tuning as a task of the shared loop: an encoder + linear head, per-sample supervised losses aggregated
over groups by the distillation objectives (erm / balanced / variance / gap / groupdro).

Per-sample losses: binary label: BCE with logits; multi-class: cross-entropy; multi-label: mean BCE over labels.
The loop (:mod:`agglom.train.loop`) owns the engine, checkpoints and resume; :class:`Validation` looks in after
each logged step and validates per group with :mod:`agglom.metrics.group_auc`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from agglom.config.load import ConfigError
from agglom.finetune.model import Encoder
from agglom.metrics.group_auc import group_auc_metrics
from agglom.train.loop import LoopHooks
from agglom.train.task_protocol import LoopTask


@dataclass
class Task:
    """The supervised label task the head is trained for."""

    kind: str  # binary | multiclass | multilabel
    outputs: int  # logits per sample (1 for binary)


def task_of(datasheet: Dict[str, Any]) -> Optional[Task]:
    """The label task a datasheet declares; None when it does not say enough (then the first batch decides)."""
    info = (datasheet or {}).get("label") or {}
    kind, n = info.get("type"), info.get("num_classes")
    if kind == "binary":
        return Task("binary", 1)
    if kind == "multiclass" and n:
        return Task("multiclass", int(n))
    if kind == "multilabel" and n:
        return Task("multilabel", int(n))
    return None


def task_from_batch(label: torch.Tensor) -> Task:
    if label.ndim == 2:
        return Task("multilabel", int(label.shape[1]))
    n = int(label.max()) + 1 if label.numel() else 2
    return Task("binary", 1) if n <= 2 else Task("multiclass", n)


def per_sample_loss(task: Task, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    logits = logits.float()
    if task.kind == "binary":
        return F.binary_cross_entropy_with_logits(logits[:, 0], label.float().reshape(-1), reduction="none")
    if task.kind == "multiclass":
        return F.cross_entropy(logits, label.long().reshape(-1), reduction="none")
    return F.binary_cross_entropy_with_logits(logits, label.float(), reduction="none").mean(1)


class Classifier(nn.Module):
    """The trainable module the engine wraps: the encoder and a linear head on its summary (a timm model's CLS
    token or pooled pre-logits; a trainable teacher's own summary: open_clip embed, SAM pooled neck, ...); the
    head is dropped on export."""

    def __init__(self, enc: Encoder, outputs: int, seed: int) -> None:
        super().__init__()
        self.encoder = enc.model.train()
        self.summary_kind = enc.summary_kind
        self.family_path = bool(enc.family_path)
        torch.manual_seed(int(seed))  # the head's initial weights depend on the seed alone
        self.head = nn.Linear(enc.width, outputs)
        nn.init.zeros_(self.head.bias)
        nn.init.trunc_normal_(self.head.weight, std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.family_path:  # the teacher's preprocessing + features: its summary
            return self.head(self.encoder(x))
        feats = self.encoder.forward_features(x)
        summary = feats[:, 0] if self.summary_kind == "cls" else self.encoder.forward_head(feats, pre_logits=True)
        return self.head(summary)


class FinetuneTask(LoopTask):
    """``forward(batch) -> {"loss", "utility", "parity", "group/<name>", "q/<name>"}``: a task of the shared loop
    (:class:`~agglom.train.task_protocol.LoopTask`); of its optional hooks it needs only :meth:`stateful` (nothing
    to fit before the first step, nothing tracked, batches used as read)."""

    def __init__(self, cfg: Any, args: Any, enc: Encoder, task: Task, names: List[str], unknown_index: int) -> None:
        from agglom.objective.groups import build_group_objective

        super().__init__()
        self.cfg, self.args, self.task, self.group_names = cfg, args, task, list(names)
        exclude_unknown = cfg.groups.unknown != "include"
        self.parity = [not (exclude_unknown and i == unknown_index) for i in range(len(names))]
        self.model = Classifier(enc, task.outputs, int(args.seed))
        self.objective = build_group_objective(args.objective, len(names), unknown_index, exclude_unknown)
        object.__setattr__(self, "forward_model", self.model)
        self.device = torch.device("cpu")
        self.autocast: Any = torch.autocast("cpu", enabled=False)

    # what the shared loop asks of a task (agglom.train.task_protocol.LoopTask) --------------------------------
    def param_groups(self) -> List[dict]:
        """AdamW groups: the encoder's (no decay on norms, biases, tokens) at optim.lr, the head's at head_lr."""
        from agglom.train.optim import param_groups

        o = self.args.optim
        head_lr = float(o.head_lr) if o.head_lr else float(o.lr)
        groups = param_groups(self.model.encoder, float(o.weight_decay))
        head = self.model.head
        return groups + [{"params": [head.weight], "weight_decay": float(o.weight_decay), "base_lr": head_lr},
                         {"params": [head.bias], "weight_decay": 0.0, "base_lr": head_lr}]

    def attach(self, forward_model: nn.Module, device: torch.device, autocast: Any) -> None:
        """Forward passes through the engine-wrapped classifier; the group objective on ``device``."""
        object.__setattr__(self, "forward_model", forward_model)
        self.device, self.autocast = device, autocast
        self.objective.to(device)

    def stateful(self) -> Dict[str, nn.Module]:
        """The group objective, checkpointed beside the model: GroupDRO's group weights."""
        return {"objective": self.objective}

    def write_run_files(self, run_dir: Path) -> None:
        """config.yaml (the finetune arguments: the run is reproduced from it) and groups.json."""
        import json

        from agglom.config.load import save_config

        save_config(self.args, Path(run_dir) / "config.yaml")
        (Path(run_dir) / "groups.json").write_text(json.dumps({"by": self.cfg.groups.by, "names": self.group_names},
                                                              indent=1))

    def flops_per_sample(self, batch: Dict[str, Any]) -> float:
        """3x the forward (fwd + bwd)."""
        from torch.utils.flop_counter import FlopCounterMode

        image = batch["image"][:2].to(self.device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            self.model(image)
        return 3 * counter.get_total_flops() / image.shape[0]

    def forward(self, batch: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """One micro-batch: per-sample supervised losses aggregated over groups by the group objective."""
        x = batch["image"].to(self.device, non_blocking=True)
        y = batch["label"].to(self.device)
        g = batch["group"].to(self.device)
        with self.autocast:
            logits = self.forward_model(x)
        loss, terms = self.objective(per_sample_loss(self.task, logits, y), g)
        out = {"loss": loss}
        for k, v in terms.items():  # `group/3` -> `group/<name>`, GroupDRO's `q/3` -> `q/<name>`
            kind, _, idx = k.partition("/")
            out[f"{kind}/{self.group_names[int(idx)]}" if idx.isdigit() else k] = v
        return out

    # validation ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def validate(self) -> Dict[str, Any]:
        """Per-group AUC on the whole val split (this process reads all of it); the global RNG is left as found,
        so validating does not change training."""
        from agglom.data.readers import eval_loader

        model, was = self.model, self.model.training
        model.eval()
        logits, labels, groups = [], [], []
        with torch.random.fork_rng(devices=[]):
            for batch in eval_loader(self.cfg, self.cfg.data.val_split, whole=True):
                with self.autocast:
                    out = model(batch["image"].to(self.device))
                logits.append(out.float().cpu().numpy())
                labels.append(batch["label"].cpu().numpy())
                groups.append(batch["group"].cpu().numpy())
        model.train(was)
        if not logits:
            raise ConfigError(f"data: the validation split {self.cfg.data.val_split!r} under {self.cfg.data.root} "
                              "is empty")
        return group_auc_metrics(self.task.kind, np.concatenate(logits), np.concatenate(labels),
                                 np.concatenate(groups), self.group_names, self.parity)


def _fmt(x: Optional[float]) -> str:
    return "undef" if x is None else f"{x:.3f}"


class Validation(LoopHooks):
    """Validates every ``every`` steps and at the last one (rank 0), as a ``validation`` event in metrics.jsonl
    (logged before the step's checkpoint, so a resumed run's log matches an uninterrupted one)."""

    def __init__(self, task: FinetuneTask, every: int, is_main: bool) -> None:
        self.task, self.every, self.is_main = task, int(every), is_main
        self.seconds = 0.0

    def on_step(self, step: int, total: int, logger: Any) -> None:
        if not self.is_main or not ((self.every > 0 and step % self.every == 0) or step == total):
            return
        t = time.perf_counter()
        m = self.task.validate()
        self.seconds += time.perf_counter() - t
        logger.event({"event": "validation", "step": step, "metrics": m})
        print(f"val @ {step}: AUC {_fmt(m['auc'])}  worst-group {_fmt(m['worst_group_auc'])} ({m['worst_group']})  "
              + "  ".join(f"{n} {_fmt(v['auc'])}" for n, v in m["groups"].items()), flush=True)


__all__ = ["Task", "task_of", "task_from_batch", "per_sample_loss", "Classifier", "FinetuneTask", "Validation"]
