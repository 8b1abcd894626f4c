"""Embeddings for curation: every sample of the chosen split(s) exactly once, through a frozen encoder.

The encoder is a teacher card (``teachers.build_teacher``) or a trained agglom run (the student's CLS token or
mean patch token via ``AgglomModel.features``). Batches come from the data layer's exact single-pass eval
reader, so keys are unique and the order is fixed.

Feature kinds:

* ``summary``: the teacher's summary vector (CLS / pooled embedding) or the student's CLS token;
* ``pooled``: the mean of the spatial (patch) features;
* ``both``: the two, each L2-normalised, concatenated (equal weight whatever their widths).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

FEATURE_KINDS = ("summary", "pooled", "both")

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Embeddings:
    keys: List[str]
    X: np.ndarray  # [N, D] float32
    labels: List[Any]  # int, or a tuple for multi-label
    attrs: List[Dict[str, Any]]
    splits: List[str]
    source: Dict[str, Any] = field(default_factory=dict)  # what encoder made them

    def __len__(self) -> int:
        return len(self.keys)

    def subset(self, index: Sequence[int]) -> "Embeddings":
        idx = list(int(i) for i in index)
        return Embeddings([self.keys[i] for i in idx], self.X[idx], [self.labels[i] for i in idx],
                          [self.attrs[i] for i in idx], [self.splits[i] for i in idx], dict(self.source))


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t / t.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _combine(summary: torch.Tensor, pooled: Callable[[], torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "summary":
        return summary
    if kind == "pooled":
        return pooled()
    return torch.cat([_l2(summary.float()), _l2(pooled().float())], 1)


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def teacher_encoder(card_name: str, input_mean: Sequence[float], input_std: Sequence[float], kind: str,
                    device: torch.device) -> tuple:
    """(encoder fn, source info) for a teacher card name / card path / export folder."""
    import teachers as zoo

    card = zoo.load_card(card_name)
    teacher = zoo.build_teacher(card, input_mean=list(input_mean), input_std=list(input_std), device=device)

    def enc(x: torch.Tensor) -> torch.Tensor:
        out = teacher(x)
        return _combine(out.summary, lambda: out.spatial.flatten(2).mean(2), kind)

    info = {"teacher": card.name, "family": card.family, "model": card.model, "digest": card.digest(),
            "features": kind, "summary_kind": teacher.summary_kind}
    return enc, info


def run_encoder(run_dir: str, kind: str, device: torch.device) -> tuple:
    """(encoder fn, source info, run config) for a trained agglom run: its student's features."""
    from agglom.runs import load_run_model, run_config

    cfg = run_config(Path(run_dir))
    model = load_run_model(Path(run_dir)).to(device).eval()

    def enc(x: torch.Tensor) -> torch.Tensor:
        if kind == "both":
            return _combine(model.features(x, "summary"), lambda: model.features(x, "pooled"), kind)
        return model.features(x, kind)

    info = {"run": str(Path(run_dir).resolve()), "student": str(cfg.student.model), "features": kind}
    return enc, info, cfg


def _label_of(t: torch.Tensor, i: int) -> Any:
    v = t[i]
    return int(v) if v.ndim == 0 else tuple(int(a) for a in v.tolist())


def _progress(total: Optional[int], desc: str, mode: str):
    """A tqdm bar on a TTY (``auto``), always (``on``) or never (``off``)."""
    enabled = mode == "on" or (mode == "auto" and sys.stderr.isatty())
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False)


def _repeated_key(key: str, first: str, split: str) -> None:
    """A key on two samples: the sidecar (keyed by sample key) could not tell them apart, so refuse by name."""
    from agglom.config.load import ConfigError

    where = f"twice in split {split!r}" if first == split else f"in split {first!r} and in split {split!r}"
    raise ConfigError(f"sample key {key!r} is {where}; a proxy-group sidecar is keyed by sample key, so each key "
                      f"must name one sample: curate one split at a time (splits=[{split}]) or repack the data "
                      "with unique keys")


@torch.inference_mode()
def embed_splits(cfg: Any, splits: Sequence[str], encoder: Encoder, device: torch.device,
                 progress: str = "auto", totals: Optional[Dict[str, int]] = None,
                 batch_size: Optional[int] = None) -> Embeddings:
    """Run ``encoder`` over every sample of each split once (``agglom.data.readers.eval_loader``).

    ``cfg`` is a recipe-shaped config (data + student + groups sections); ``totals`` (split -> sample count,
    from the datasheet) only sizes the progress bar. A key seen twice (in two splits, or twice in one) is a
    ConfigError naming it and the splits: the sidecar written from these embeddings is keyed by sample key.
    """
    from agglom.data.readers import eval_loader

    keys: List[str] = []
    feats: List[np.ndarray] = []
    labels: List[Any] = []
    attrs: List[Dict[str, Any]] = []
    where: List[str] = []
    seen: Dict[str, str] = {}
    for split in splits:
        bar = _progress((totals or {}).get(split), f"embed {split}", progress)
        try:
            for batch in eval_loader(cfg, split, batch_size=batch_size):
                x = batch["image"].to(device, non_blocking=True)
                f = encoder(x).float().cpu().numpy()
                for i, k in enumerate(batch["key"]):
                    if k in seen:
                        _repeated_key(k, seen[k], split)
                    seen[k] = split
                    keys.append(str(k))
                    labels.append(_label_of(batch["label"], i))
                    attrs.append(dict(batch["attrs"][i]))
                    where.append(split)
                feats.append(f)
                if bar is not None:
                    bar.update(len(batch["key"]))
        finally:
            if bar is not None:
                bar.close()
    X = np.concatenate(feats, 0).astype(np.float32) if feats else np.zeros((0, 0), np.float32)
    return Embeddings(keys, X, labels, attrs, where)


__all__ = ["Embeddings", "FEATURE_KINDS", "embed_splits", "teacher_encoder", "run_encoder", "pick_device"]
