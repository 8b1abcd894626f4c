"""Where a card comes from: a shipped name (``teachers/cards/<name>.yaml``), a YAML path, or a folder (an agglom
export, a card folder, a transformers ``save_pretrained`` folder). :func:`load_card` is the zoo's one way in."""
from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Union

from .card_folders import card_from_card_folder, card_from_export, card_from_hf_folder, is_card_folder, is_hf_folder
from .cards import CARDS_DIR, CardError, TeacherCard, _read_yaml, card_from_dict, list_cards


def load_card(name_or_path: Union[str, Path, TeacherCard]) -> TeacherCard:
    """A card by name (teachers/cards/<name>.yaml), by YAML path, from an agglom export folder, or from a
    transformers `save_pretrained` folder."""
    if isinstance(name_or_path, TeacherCard):
        return name_or_path
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        if is_card_folder(p):
            return card_from_card_folder(p)
        return card_from_hf_folder(p) if is_hf_folder(p) else card_from_export(p)
    if p.suffix in (".yaml", ".yml") or os.sep in s:
        if not p.exists():
            raise CardError(f"card file not found: {p}")
        if p.suffix not in (".yaml", ".yml"):  # never read (and quote) an arbitrary file as a card
            raise CardError(f"card path {p}: a card file ends in .yaml or .yml (or give a card name or a folder)")
        return card_from_dict(_read_yaml(p), source=str(p.resolve()))
    path = CARDS_DIR / f"{s}.yaml"
    if not path.is_file():
        names = list_cards()
        close = difflib.get_close_matches(s, names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise CardError(f"unknown teacher card '{s}'{hint}; available cards: {', '.join(names)} "
                        "(or give a card .yaml path, an agglom export folder, a card folder or a transformers save_pretrained "
                        "folder)")
    return card_from_dict(_read_yaml(path), source=str(path))


__all__ = ["load_card"]
