"""The encoder to fine-tune: a fresh timm model, a trainable copy of a teacher card of any family, or an export.

Supported sources:

* ``model=<timm name>`` (+ ``model_args``): ``timm.create_model(name, num_classes=0, img_size=..., **model_args)``;
* ``teacher=<card>`` of family ``timm`` or ``agglom``: the card's timm model with its weights, loaded through the
  zoo's safe loader (position embeddings are resampled when ``data.image_size`` differs from the card's input
  size); exported as a timm ``local-dir`` folder (family ``agglom``);
* ``teacher=<card>`` of family ``open_clip``, ``sam`` or ``transformers``: the family's own teacher, made trainable
  (:mod:`agglom.finetune.family`), preprocessing included; exported in the family's own format
  (:mod:`agglom.finetune.family_export`);
* ``init=<folder>``: an agglom export / any timm ``save_for_hf`` folder (``config.json`` + ``model.safetensors``).

For timm models the feature the linear head reads — and the summary the exported card declares — is the CLS
token for models with prefix tokens (``summary: cls``) and timm's pooled pre-logits otherwise (``summary:
pooled``); for the other families it is the card's summary (open_clip ``embed``, SAM ``pooled``, ...).

``finetune.method=lora`` then injects peft adapters into the encoder (:mod:`agglom.finetune.lora`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from agglom.config.load import ConfigError
from agglom.finetune.family import FAMILY_PATH

SUPPORTED_FAMILIES = ("timm", "agglom")  # built as plain timm models (FAMILY_PATH: as trainable teachers)


@dataclass
class Encoder:
    model: nn.Module  # timm, num_classes=0, trainable
    source: Dict[str, Any]  # what it was built from (for finetune.json and the card)
    image_size: int
    mean: Tuple[float, ...]  # the normalisation it is trained (and exported) with, [0,1] units, 3 values
    std: Tuple[float, ...]
    interpolation: str = "bicubic"
    base_card: Optional[Any] = field(default=None, repr=False)  # teachers.TeacherCard when built from one
    family_path: bool = False  # model is a trainable teacher (open_clip/sam/transformers), not a timm model
    lora: Optional[Any] = field(default=None, repr=False)  # agglom.finetune.lora.LoraInfo with method=lora
    params: Dict[str, int] = field(default_factory=dict)  # trainable/total encoder parameters (set when built)

    @property
    def family(self) -> str:
        return str(self.source.get("family") or "timm")

    @property
    def adapted(self) -> nn.Module:
        """The module LoRA adapts and the export saves: the family's own model, or the timm model."""
        return self.model.model if self.family_path else self.model

    @property
    def summary_kind(self) -> str:
        if self.family_path:
            return str(self.model.summary_kind)
        return "cls" if int(getattr(self.model, "num_prefix_tokens", 0)) > 0 and self.is_vit else "pooled"

    @property
    def is_vit(self) -> bool:
        return hasattr(self.model, "patch_embed") and hasattr(self.model, "num_prefix_tokens")

    @property
    def width(self) -> int:
        if self.family_path:
            return int(self.model.summary_dim)
        return int(getattr(self.model, "head_hidden_size", None) or self.model.num_features) \
            if self.summary_kind == "pooled" else int(self.model.num_features)


def three(values: Any, what: str) -> Tuple[float, ...]:
    v = tuple(float(x) for x in values)
    if len(v) == 1:
        return v * 3
    if len(v) != 3:
        raise ConfigError(f"{what} must have 1 or 3 values, got {list(values)}")
    return v


def features(enc: Encoder, x: torch.Tensor) -> torch.Tensor:
    """The vector the head reads (and the exported card's summary): CLS token, or pooled pre-logits."""
    feats = enc.model.forward_features(x)
    if enc.summary_kind == "cls":
        return feats[:, 0]
    return enc.model.forward_head(feats, pre_logits=True)


def _card_size(card: Any, image_size: Optional[int], what: str) -> int:
    h, w = card.input_size
    if not image_size and h != w:
        raise ConfigError(f"{what}: card {card.name!r} has a non-square input size {card.input_size}; "
                          "set data.image_size")
    return int(image_size) if image_size else int(h)


def _from_card(card: Any, image_size: Optional[int], what: str) -> Tuple[nn.Module, int, Any]:
    from teachers.families.timm_vit import create_timm

    if card.family not in SUPPORTED_FAMILIES:
        raise ConfigError(f"{what}: card {card.name!r} is of family {card.family!r}; finetune supports "
                          f"{', '.join(SUPPORTED_FAMILIES + FAMILY_PATH)} cards")
    h, w = card.input_size
    size = int(image_size) if image_size else int(h)
    if not image_size and h != w:
        raise ConfigError(f"{what}: card {card.name!r} has a non-square input size {card.input_size}; "
                          "set data.image_size")
    if size != h or size != w:
        card = dataclasses.replace(card, input_size=(size, size))
    try:
        model = create_timm(card, load_weights=True)
    except FileNotFoundError as e:
        raise ConfigError(f"{what}: {e}") from e
    return model, size, card


def _timm_encoder(a: Any) -> Encoder:
    """``model=<timm name>``: a fresh timm model (random or timm-pretrained weights)."""
    import timm

    data = a.data
    args = dict(a.model_args or {})
    size = int(data.image_size or args.get("img_size") or 64)
    args.setdefault("img_size", size)
    args.setdefault("in_chans", 3)
    try:
        model = timm.create_model(str(a.model), pretrained=bool(a.pretrained), num_classes=0, **args)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"model: unknown timm model {a.model!r} (timm.list_models() lists them)") from e
        raise
    except TypeError as e:
        raise ConfigError(f"model_args: {e}") from e
    mean = three(data.mean if data.mean else (0.5, 0.5, 0.5), "data.mean")
    std = three(data.std if data.std else (0.5, 0.5, 0.5), "data.std")
    return Encoder(model, {"kind": "model", "model": str(a.model), "model_args": dict(a.model_args or {}),
                           "pretrained": bool(a.pretrained)}, size, mean, std)


def _source(card: Any, what: str) -> Dict[str, Any]:
    return {"kind": what, "card": card.name, "family": card.family, "model": card.model,
            "digest": card.digest(), "licence": card.licence, "provenance": card.provenance}


def _card_encoder(a: Any) -> Encoder:
    """``teacher=<card>`` / ``init=<folder>``: a trainable copy of the card's encoder."""
    import teachers as zoo

    data = a.data
    what = "teacher" if a.teacher else "init"
    ref = a.teacher or a.init
    if a.init and not (Path(a.init) / "config.json").is_file():
        raise ConfigError(f"init: {a.init} is not a timm/agglom export folder (no config.json)")
    try:
        card = zoo.load_card(ref)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise ConfigError(f"{what}: cannot load {ref!r}: {e}") from e
    if card.family in FAMILY_PATH:
        from agglom.finetune.family import build_trainable, freeze_unused

        size = _card_size(card, data.image_size, what)
        mean = three(data.mean if data.mean else card.norm_mean, "data.mean")
        std = three(data.std if data.std else card.norm_std, "data.std")
        interp = card.interpolation if card.interpolation in ("bicubic", "bilinear") else "bicubic"
        model = build_trainable(card, mean, std, what)
        freeze_unused(model, size)
        return Encoder(model, _source(card, what), size, mean, std, interp, base_card=card, family_path=True)
    model, size, card = _from_card(card, data.image_size, what)
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    mean = three(data.mean if data.mean else card.norm_mean, "data.mean")
    std = three(data.std if data.std else card.norm_std, "data.std")
    interp = card.interpolation if card.interpolation in ("bicubic", "bilinear") else "bicubic"
    return Encoder(model, _source(card, what), size, mean, std, interp, base_card=card)


def build_encoder(a: Any) -> Encoder:
    """From the finetune args (``model`` | ``teacher`` | ``init``); seeded by ``a.seed``; with
    ``finetune.method=lora`` the adapters are injected (base weights frozen)."""
    from agglom.finetune.lora import apply_lora, count_params

    given = [k for k in ("model", "teacher", "init") if getattr(a, k)]
    if len(given) != 1:
        raise ConfigError("finetune: give exactly one of model=<timm name>, teacher=<card name|path> or "
                          f"init=<export folder> (got {', '.join(given) or 'none'})")
    torch.manual_seed(int(a.seed))
    enc = _timm_encoder(a) if a.model else _card_encoder(a)
    method = getattr(a, "finetune", None)
    if method is not None and method.method == "lora":
        enc.lora = apply_lora(enc.adapted, enc.family, method)
    enc.params = count_params(enc.adapted)
    return enc


__all__ = ["Encoder", "build_encoder", "features", "SUPPORTED_FAMILIES", "FAMILY_PATH"]
