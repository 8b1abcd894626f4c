"""`agglom` family: an encoder exported by agglom (timm local-dir folder: config.json + model.safetensors).

The folder's `pretrained_cfg` gives the preprocessing (input size, mean, std, interpolation) unless its optional
`card.yaml` overrides it; summary = the first prefix token (CLS, or the first register) or the mean of the patch
tokens; spatial = the patch tokens. Only timm is needed to load it; the weights go through the safe loader.
"""
from __future__ import annotations

from ..cards import CardError, TeacherCard
from ..registry import register_family
from .timm_vit import TimmTeacher


@register_family("agglom")
class AgglomTeacher(TimmTeacher):
    default_summary = "cls"
    summary_kinds = ("cls", "mean", "pooled")

    @classmethod
    def validate_card(cls, card: TeacherCard) -> None:
        super().validate_card(card)
        if card.weights.source != "folder":
            raise CardError(f"bad value for field 'weights.source' in card {card.source_path or card.name}: "
                            f"family agglom loads an export folder (weights.source: folder), got {card.weights.source!r}")
