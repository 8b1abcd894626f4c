"""A trainable copy of a teacher of any zoo family (open_clip, sam, transformers) for `agglom finetune teacher=...`.

The encoder is built by the family's own :class:`teachers.Teacher` subclass — the same loader, weights and random
seed as the frozen teacher the card describes — and only unfrozen here (a subclass that lets ``train()`` and
``requires_grad_`` through). Its forward is the teacher's own: the student-normalised batch re-normalised and
resized to the card's contract (``Teacher.preprocess``), then the family's ``features``; the head reads the
summary. So fine-tuning sees exactly what the exported teacher will see inside `agglom train`, and the export keeps
the base card's preprocessing unchanged (:mod:`agglom.finetune.family_export`).

timm and agglom cards keep their original path (:mod:`agglom.finetune.model`: a plain timm model).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from agglom.config.load import ConfigError

FAMILY_PATH = ("open_clip", "sam", "transformers")  # built as trainable teachers; timm/agglom stay timm models
_TRAINABLE: Dict[type, type] = {}


def train_keeping_batch_norm_stats(module: nn.Module, mode: bool = True) -> nn.Module:
    """``nn.Module.train``, except that batch-norm layers stay in eval mode: their running statistics are the
    pretrained encoder's and do not move (LiteMedSAM's TinyViT has 27; fine-tuning batches of a few images would
    overwrite them, and a LoRA fine-tune would change weights it claims to keep). Their affine weights still train
    when unfrozen. ViT encoders have none, so this changes nothing for them."""
    nn.Module.train(module, mode)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(False)
    return module


def trainable_class(family_cls: type) -> type:
    """``family_cls`` with the teacher's freezing lifted: ``train(mode)`` and ``requires_grad_`` behave as for any
    module, and ``forward(x)`` returns the summary (with autograd) instead of a frozen ``TeacherOutput``."""
    if family_cls not in _TRAINABLE:
        def forward(self: Any, x: torch.Tensor) -> torch.Tensor:
            return self.features(self.preprocess(x))[0]

        _TRAINABLE[family_cls] = type(f"Trainable{family_cls.__name__}", (family_cls,),
                                      {"train": train_keeping_batch_norm_stats,
                                       "requires_grad_": nn.Module.requires_grad_, "forward": forward,
                                       "__module__": __name__})
    return _TRAINABLE[family_cls]


def check_supported(card: Any, what: str) -> None:
    """The families and shapes this path fine-tunes; a clear ConfigError otherwise."""
    if card.family not in FAMILY_PATH:
        raise ConfigError(f"{what}: card {card.name!r} is of family {card.family!r}; finetune builds "
                          f"{', '.join(FAMILY_PATH)}, timm and agglom cards")


def build_trainable(card: Any, mean: Tuple[float, ...], std: Tuple[float, ...], what: str) -> nn.Module:
    """The family's teacher for ``card`` (weights through the family's loader), trainable, fp32 on CPU."""
    import teachers as zoo
    from teachers.registry import get_family

    check_supported(card, what)
    cls = trainable_class(get_family(card.family))
    try:
        enc = cls(card, input_mean=mean, input_std=std, device="cpu", load_weights=True)
    except (FileNotFoundError, zoo.CardError, zoo.WeightsUnavailableError) as e:
        raise ConfigError(f"{what}: {e}") from e
    if getattr(enc, "two_tower", False) and card.family == "transformers" and \
            getattr(enc.model.full.config, "model_type", "") == "clip":
        raise ConfigError(f"{what}: card {card.name!r} is a transformers two-tower CLIP; its projected embedding "
                          "would not export as a vision model: fine-tune its open_clip card, or a SigLIP/DINO card")
    enc.model.float()
    enc.train(True)
    enc.requires_grad_(True)
    return enc


def freeze_unused(enc: nn.Module, image_size: int) -> List[str]:
    """Freeze the parameters the summary does not depend on (found by one backward pass on a blank batch, in
    eval mode and a forked RNG, so nothing else changes): e.g. DINOv2's mask token, SigLIP's logit scale/bias, a
    projection the card's summary skips. They would not train anyway, and DDP wants a gradient for every
    trainable parameter. Returns their names."""
    was = enc.training
    enc.eval()
    with torch.random.fork_rng(devices=[]):
        enc(torch.zeros(1, 3, int(image_size), int(image_size))).float().sum().backward()
    unused = [n for n, p in enc.named_parameters() if p.requires_grad and p.grad is None]
    for n, p in enc.named_parameters():
        p.grad = None
        if n in unused:
            p.requires_grad_(False)
    enc.train(was)
    return unused


__all__ = ["FAMILY_PATH", "trainable_class", "check_supported", "build_trainable", "freeze_unused"]
