"""Supervised fine-tuning of an encoder + linear head with the group objectives of distillation.

Per-sample losses (binary label: BCE with logits; multi-class: cross-entropy; multi-label: mean BCE over labels)
are aggregated across groups by :func:`agglom.objective.groups.build_group_objective` — the same
erm / balanced / variance / gap / groupdro objectives a distillation recipe uses. Validation on the val split
reports ROC-AUC overall and within each group of ``groups.by`` (scikit-learn ``roc_auc_score``; a group where
only one class is present has an *undefined* AUC, reported as None, never 0). The worst-group AUC is the
minimum over the defined parity groups (the unknown group counts only with ``groups.unknown=include``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from agglom.config.load import ConfigError
from agglom.finetune.model import Encoder, features

TASKS = ("binary", "multiclass", "multilabel")


@dataclass
class Task:
    kind: str  # binary | multiclass | multilabel
    outputs: int  # logits per sample (1 for binary)


def data_cfg(a: Any, enc: Encoder) -> Any:
    """The recipe-shaped config the data layer reads (data, student mean/std, groups, seed)."""
    from agglom.config.schema import Recipe

    cfg = OmegaConf.structured(Recipe)
    d = OmegaConf.to_container(a.data, resolve=True)
    d.pop("mean", None)
    d.pop("std", None)
    d["image_size"] = int(enc.image_size)
    d["interpolation"] = enc.interpolation
    cfg.data = OmegaConf.merge(cfg.data, d)
    cfg.student.mean = list(enc.mean)
    cfg.student.std = list(enc.std)
    cfg.groups = OmegaConf.merge(cfg.groups, OmegaConf.to_container(a.groups, resolve=True))
    cfg.seed = int(a.seed)
    cfg.name = str(a.name)
    return cfg


def task_of(datasheet: Dict[str, Any]) -> Optional[Task]:
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


def _scores_targets(task: Task, logits: np.ndarray, labels: np.ndarray) -> tuple:
    """Per-column scores and binary targets [N, K] for one-vs-rest AUC."""
    if task.kind == "binary":
        return 1 / (1 + np.exp(-logits[:, :1])), labels.reshape(-1, 1).astype(int)
    if task.kind == "multiclass":
        z = logits - logits.max(1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
        return p, np.eye(task.outputs, dtype=int)[labels.reshape(-1).astype(int)]
    return 1 / (1 + np.exp(-logits)), labels.astype(int)


def auc(scores: np.ndarray, targets: np.ndarray) -> Optional[float]:
    """ROC-AUC (macro over columns where both classes occur); None when undefined everywhere."""
    from sklearn.metrics import roc_auc_score

    vals = []
    for j in range(targets.shape[1]):
        y = targets[:, j]
        if y.size and 0 < y.sum() < y.size:
            vals.append(float(roc_auc_score(y, scores[:, j])))
    return float(np.mean(vals)) if vals else None


def group_metrics(task: Task, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray, names: List[str],
                  parity: List[bool]) -> Dict[str, Any]:
    s, t = _scores_targets(task, logits, labels)
    out: Dict[str, Any] = {"n": int(len(groups)), "auc": auc(s, t), "groups": {}}
    for gi, name in enumerate(names):
        m = groups == gi
        if not m.any():
            continue
        pos = int(t[m].sum()) if task.kind != "multiclass" else None
        out["groups"][name] = {"n": int(m.sum()), "positives": pos, "auc": auc(s[m], t[m])}
    defined = [(n, g["auc"]) for gi, (n, g) in enumerate(out["groups"].items())
               if g["auc"] is not None and parity[names.index(n)]]
    if defined:
        worst = min(defined, key=lambda v: v[1])
        best = max(defined, key=lambda v: v[1])
        out["worst_group"], out["worst_group_auc"] = worst
        out["auc_gap"] = best[1] - worst[1]
    else:
        out["worst_group"], out["worst_group_auc"], out["auc_gap"] = None, None, None
    return out


@torch.inference_mode()
def validate(cfg: Any, enc: Encoder, head: nn.Module, task: Task, device: torch.device, names: List[str],
             parity: List[bool]) -> Dict[str, Any]:
    from agglom.data.readers import eval_loader

    was = enc.model.training
    enc.model.eval()
    head.eval()
    L, Y, G = [], [], []
    for batch in eval_loader(cfg, cfg.data.val_split):
        x = batch["image"].to(device)
        L.append(head(features(enc, x)).float().cpu().numpy())
        Y.append(batch["label"].cpu().numpy())
        G.append(batch["group"].cpu().numpy())
    enc.model.train(was)
    head.train(was)
    if not L:
        raise ConfigError(f"data: the validation split {cfg.data.val_split!r} under {cfg.data.root} is empty")
    return group_metrics(task, np.concatenate(L), np.concatenate(Y), np.concatenate(G), names, parity)


def _fmt(x: Optional[float]) -> str:
    return "undef" if x is None else f"{x:.3f}"


def _bar(total: int, mode: str):
    if mode == "off" or (mode == "auto" and not sys.stderr.isatty()):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="finetune", unit="step", leave=False)


def finetune_loop(a: Any, enc: Encoder, device: torch.device, log=print) -> Dict[str, Any]:
    """Train ``enc`` + a linear head for ``a.optim.steps`` steps; returns the history and final metrics."""
    from agglom.data.readers import group_indexer, train_loader
    from agglom.data.shards import dataset_datasheet
    from agglom.objective.groups import build_group_objective
    from agglom.train.optim import param_groups, warmup_cosine

    cfg = data_cfg(a, enc)
    if cfg.data.grayscale != "replicate":
        raise ConfigError("data.grayscale: finetune trains and exports a 3-channel encoder (the teacher zoo feeds "
                          "3 channels); use data.grayscale=replicate")
    sheet = dataset_datasheet(cfg) or {}
    if not sheet.get("label"):
        raise ConfigError("finetune trains a supervised head, so it needs labelled data, and this dataset's "
                          "datasheet (dataset.json) declares no labels; pack labelled data with `agglom data pack`")
    gidx = group_indexer(cfg)  # datasheet + sidecars: the same indexer the readers use
    names = list(gidx.names)
    exclude_unknown = cfg.groups.unknown != "include"
    parity = [not (exclude_unknown and i == gidx.unknown_index) for i in range(len(names))]
    objective = build_group_objective(a.objective, len(names), gidx.unknown_index, exclude_unknown).to(device)
    objective.train()

    task = task_of(sheet)
    torch.manual_seed(int(a.seed))
    model = enc.model.to(device).train()
    head: Optional[nn.Module] = None
    opt = sched = None
    o = a.optim
    steps = int(o.steps)
    if steps < 1:
        raise ConfigError(f"optim.steps must be >= 1, got {steps}")

    def make_head(t: Task) -> None:
        nonlocal head, opt, sched
        head = nn.Linear(enc.width, t.outputs).to(device)
        nn.init.zeros_(head.bias)
        nn.init.trunc_normal_(head.weight, std=0.01)
        groups_ = param_groups(model, float(o.weight_decay))
        head_lr = float(o.head_lr) if o.head_lr else float(o.lr)
        groups_ += [{"params": [head.weight], "weight_decay": float(o.weight_decay), "lr": head_lr},
                    {"params": [head.bias], "weight_decay": 0.0, "lr": head_lr}]
        for g in groups_:
            g.setdefault("lr", float(o.lr))
        opt = torch.optim.AdamW(groups_, lr=float(o.lr), betas=(float(o.beta1), float(o.beta2)))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(o))

    if task is not None:
        make_head(task)

    history: List[Dict[str, Any]] = []
    val_history: List[Dict[str, Any]] = []
    step, epoch, bad, seen = 0, 0, 0, 0
    t0 = time.perf_counter()
    t_val = t_data = 0.0
    bar = _bar(steps, str(a.progress))
    run_loss, run_n = 0.0, 0
    val_every = int(a.val_interval)
    final: Dict[str, Any] = {}
    while step < steps:
        got_any = False
        td = time.perf_counter()
        for batch in train_loader(cfg, epoch=epoch):
            t_data += time.perf_counter() - td
            got_any = True
            x = batch["image"].to(device, non_blocking=True)
            y = batch["label"].to(device)
            g = batch["group"].to(device)
            if head is None:
                task = task_from_batch(batch["label"])
                make_head(task)
            logits = head(features(enc, x))
            ls = per_sample_loss(task, logits, y)
            loss, terms = objective(ls, g)
            if not torch.isfinite(loss):
                bad += 1
                opt.zero_grad(set_to_none=True)
                if bad >= int(o.max_bad_steps):
                    raise FloatingPointError(f"finetune: {bad} consecutive non-finite losses at step {step}; "
                                             "lower optim.lr")
                continue
            bad = 0
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = None
            if o.grad_clip and o.grad_clip > 0:
                gnorm = float(torch.nn.utils.clip_grad_norm_(list(model.parameters()) + list(head.parameters()),
                                                             float(o.grad_clip)))
            opt.step()
            sched.step()
            step += 1
            seen += int(x.shape[0])
            run_loss += float(loss.detach())
            run_n += 1
            if bar is not None:
                bar.update(1)
            if step % max(1, int(a.log_interval)) == 0 or step == steps:
                rec: Dict[str, Any] = {"step": step, "loss": run_loss / run_n, "lr": opt.param_groups[0]["lr"],
                                       "utility": float(terms["utility"]), "parity": float(terms["parity"]),
                                       "seconds": round(time.perf_counter() - t0, 3)}
                if gnorm is not None:
                    rec["grad_norm"] = gnorm
                for k, v in terms.items():
                    if k.startswith("group/"):
                        rec[f"loss/{names[int(k.split('/')[1])]}"] = float(v)
                    elif k.startswith("q/"):
                        rec[f"q/{names[int(k.split('/')[1])]}"] = float(v)
                history.append(rec)
                run_loss, run_n = 0.0, 0
                if bar is None:
                    log(f"step {step:>5}/{steps}  loss {rec['loss']:.4f}  lr {rec['lr']:.2e}  "
                        f"{rec['seconds']:.1f}s")
            if (val_every > 0 and step % val_every == 0) or step == steps:
                tv = time.perf_counter()
                m = validate(cfg, enc, head, task, device, names, parity)
                t_val += time.perf_counter() - tv
                val_history.append({"step": step, "auc": m["auc"], "worst_group_auc": m["worst_group_auc"],
                                    "groups": {n: v["auc"] for n, v in m["groups"].items()}})
                if bar is None:
                    log(f"val @ {step}: AUC {_fmt(m['auc'])}  worst-group {_fmt(m['worst_group_auc'])} "
                        f"({m['worst_group']})  " + "  ".join(f"{n} {_fmt(v['auc'])}" for n, v in m["groups"].items()))
                final = m
            if step >= steps:
                break
            td = time.perf_counter()
        if not got_any:
            raise ConfigError(f"data: no training samples under {cfg.data.root} (split {cfg.data.train_split!r})")
        epoch += 1
    if bar is not None:
        bar.close()
    total = time.perf_counter() - t0
    return {"cfg": cfg, "head": head, "task": task, "objective": objective, "group_names": names,
            "history": history, "val_history": val_history, "final": final, "datasheet": sheet,
            "seconds": {"total": round(total, 3), "validation": round(t_val, 3), "data_wait": round(t_data, 3),
                        "train_steps_per_s": round(steps / max(1e-9, total - t_val), 3)},
            "samples_seen": seen, "epochs": epoch}


__all__ = ["finetune_loop", "validate", "group_metrics", "auc", "per_sample_loss", "Task", "data_cfg"]
