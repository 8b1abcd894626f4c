"""Text towers of CLIP-family teachers: what zero-shot classification needs besides the image embedding.

A CLIP-family teacher (an open_clip model, a transformers SigLIP or CLIP) embeds images and text in one space; the
teacher itself is only the image tower. :func:`build_text_tower` builds the text side of the same checkpoint (its
own library's modules, weights, tokenizer and logit scale), frozen; :meth:`TextTower.save` writes it to a folder
that :func:`load_text_tower` reads back without the teacher's card or original weights (the adapter pack carries
one per CLIP-family teacher, so a distilled student can classify from prompts on a machine that has neither).

    tower = build_text_tower(load_card("tiny-clip"))
    emb = tower(["a scan of a healthy organ", "a scan with a lesion"])   # [2, D] fp32, the library's own output
    logits = tower.logit_scale * cos(image_embedding, emb) + (tower.logit_bias or 0)

Folder layout: ``text_tower.json`` (schema ``agglom.text/1``: family, teacher name and card digest, embedding
dim, logit scale and bias, the family's rebuild spec) + the weights (safetensors) + tokenizer files where the
tokenizer is not part of the library.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import torch
from torch import nn

from .card_loader import load_card
from .cards import CardError, TeacherCard

TEXT_SCHEMA = "agglom.text/1"
META_FILE = "text_tower.json"
# family -> module holding `build(card, device)` and `load(folder, meta, device)`
TEXT_FAMILIES = {"open_clip": "teachers.families.oclip_text", "transformers": "teachers.families.hf_text"}


class TextTowerUnavailable(CardError):
    """The teacher has no text tower that zero-shot can use; the message says why."""


class TextTower(nn.Module):
    """A frozen text tower: ``tower(prompts) -> [N, D]`` fp32 embeddings (unnormalised, as the library returns
    them). ``logit_scale`` is the multiplier of cosine similarities (exp of the stored log-scale),
    ``logit_bias`` SigLIP's bias (None for CLIP). Subclasses implement ``tokenize``, ``encode`` and ``save``."""

    family: str = ""

    def __init__(self, name: str, digest: str, embed_dim: int, logit_scale: float,
                 logit_bias: Optional[float]) -> None:
        super().__init__()
        self.name = name
        self.digest = digest
        self.embed_dim = int(embed_dim)
        self.logit_scale = float(logit_scale)
        self.logit_bias = None if logit_bias is None else float(logit_bias)

    def tokenize(self, prompts: Sequence[str]) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, tokens: Dict[str, torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def save_weights(self, folder: Path) -> Dict[str, Any]:  # pragma: no cover - abstract
        """Write the family's files into ``folder``; returns its rebuild spec (JSON)."""
        raise NotImplementedError

    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("a text tower takes a list of prompt strings")
        device = next(self.parameters()).device
        with torch.inference_mode():
            tokens = {k: v.to(device) for k, v in self.tokenize(list(prompts)).items()}
            out = self.encode(tokens).float()
        return out.clone()

    def train(self, mode: bool = True) -> "TextTower":
        return super().train(False)

    def save(self, folder: Union[str, Path]) -> Path:
        """Write the tower to ``folder`` (created); :func:`load_text_tower` reads it back."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        spec = self.save_weights(folder)
        meta = {"schema": TEXT_SCHEMA, "family": self.family, "teacher": self.name, "card_digest": self.digest,
                "embed_dim": self.embed_dim, "logit_scale": self.logit_scale, "logit_bias": self.logit_bias,
                "spec": spec}
        (folder / META_FILE).write_text(json.dumps(meta, indent=1))
        return folder


def freeze(tower: TextTower) -> TextTower:
    tower.eval()
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower


def _family_module(family: str) -> Any:
    if family not in TEXT_FAMILIES:
        raise TextTowerUnavailable(f"family {family} has no text tower (zero-shot needs a CLIP-family teacher: "
                                   f"{', '.join(TEXT_FAMILIES)})")
    return importlib.import_module(TEXT_FAMILIES[family])


def has_text_tower(card: Union[str, TeacherCard]) -> bool:
    """Whether the card's family and architecture have a text side (cheap: no weights, no download for tiny
    cards; a hub card's config may be fetched)."""
    card = load_card(card)
    if card.family not in TEXT_FAMILIES:
        return False
    return bool(_family_module(card.family).has_text(card))


def build_text_tower(card: Union[str, TeacherCard], device: Any = "cpu") -> TextTower:
    """The frozen text tower of a CLIP-family teacher card (weights from the same source as its image tower;
    random-init cards get the text tower of the same seeded model). Raises :class:`TextTowerUnavailable`."""
    card = load_card(card)
    return freeze(_family_module(card.family).build(card, torch.device(device))).to(device)


def load_text_tower(folder: Union[str, Path], device: Any = "cpu") -> TextTower:
    """A text tower written by :meth:`TextTower.save`."""
    folder = Path(folder)
    path = folder / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {META_FILE} (not a saved text tower)")
    meta = json.loads(path.read_text())
    if meta.get("schema") != TEXT_SCHEMA:
        raise ValueError(f"{path}: unsupported schema {meta.get('schema')!r} (expected {TEXT_SCHEMA})")
    return freeze(_family_module(meta["family"]).load(folder, meta, torch.device(device))).to(device)


__all__ = ["TEXT_SCHEMA", "TextTower", "TextTowerUnavailable", "build_text_tower", "load_text_tower",
           "has_text_tower"]
