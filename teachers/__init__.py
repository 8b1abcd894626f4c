"""The teacher zoo: frozen foundation-model teachers described by cards. Never imports `agglom`.

    card = load_card("tiny-dinov2")                      # a name, a card .yaml path, or an agglom export folder
    teacher = build_teacher(card, input_mean=[0.5], input_std=[0.5])
    out = teacher(x)                                     # x: the student-normalised batch [B, 1|3, H, W]
    out.summary  # [B, teacher.summary_dim]      out.spatial  # [B, teacher.spatial_dim, *teacher.grid]
    text = build_text_tower("tiny-clip")                 # CLIP-family teachers: the text side, for zero-shot

The package imports lazily: ``import teachers`` (or a torch-free submodule such as :mod:`teachers.safe_yaml`) costs
nothing until a name below is used; the first use imports torch and registers the built-in families.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Teacher": "base", "TeacherOutput": "base",
    "CardError": "cards", "MissingWeightsError": "cards", "TeacherCard": "cards", "WeightsDigestError": "cards",
    "WeightsSpec": "cards", "WeightsUnavailableError": "cards", "card_from_dict": "cards", "list_cards": "cards",
    "load_card": "card_loader", "weights_root": "cards",
    "FAMILIES": "registry", "ensure_families": "registry", "get_family": "registry", "register_family": "registry",
    "CheckpointFormatError": "safe_load", "UnsafeCheckpointError": "safe_load", "load_state_dict": "safe_load",
    "TextTower": "text", "TextTowerUnavailable": "text", "build_text_tower": "text", "has_text_tower": "text",
    "load_text_tower": "text",
    "build_teacher": "build", "describe_teacher": "build", "USER_ERRORS": "build",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:  # a submodule (`teachers.cards`), as a package that imported it eagerly would have
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError:
            raise AttributeError(f"module 'teachers' has no attribute {name!r}") from None
    importlib.import_module(".build", __name__)  # the families are registered before any name is handed out
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return sorted(list(globals()) + list(_WHERE))


__all__ = ["Teacher", "TeacherOutput", "TeacherCard", "WeightsSpec", "FAMILIES", "register_family", "load_card",
           "list_cards", "card_from_dict", "build_teacher", "describe_teacher", "load_state_dict", "weights_root",
           "CardError", "MissingWeightsError", "WeightsDigestError", "WeightsUnavailableError", "UnsafeCheckpointError",
           "CheckpointFormatError", "USER_ERRORS", "TextTower", "TextTowerUnavailable", "build_text_tower", "has_text_tower",
           "load_text_tower"]
