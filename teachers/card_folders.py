"""Cards for folders: an agglom export (timm local-dir layout), a transformers ``save_pretrained`` folder, and a
card folder (a complete ``card.yaml`` whose weights lie beside it, named ``./...``: `agglom finetune`'s open_clip
and SAM exports).

Each reads what the folder says about itself (timm's ``pretrained_cfg``; the image processor), then an optional
``card.yaml`` beside it (licence, provenance, summary, ...), and validates the result with
:func:`teachers.cards.card_from_dict`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Union

from .cards import INTERPOLATIONS, CardError, TeacherCard, _read_yaml, card_from_dict


def _card_yaml(folder: Path, family: str, what: str) -> Dict[str, Any]:
    """The fields of ``folder/card.yaml`` (empty without one); its family, if given, must be ``family``, and
    its weights are the folder's, so a weights field there is ignored."""
    path = folder / "card.yaml"
    if not path.is_file():
        return {}
    extra = _read_yaml(path)
    if not isinstance(extra, dict):
        raise CardError(f"card {path} must be a mapping of fields")
    if extra.get("family", family) != family:
        raise CardError(f"bad value for field 'family' in card {path}: {what} is '{family}'")
    extra.pop("weights", None)
    extra.pop("family", None)
    return extra


def _source(folder: Path) -> str:
    return str(folder / "card.yaml" if (folder / "card.yaml").is_file() else folder)


def card_from_export(folder: Union[str, Path]) -> TeacherCard:
    """A card for an agglom export folder (timm local-dir layout: config.json + model.safetensors [+ card.yaml])."""
    folder = Path(folder).resolve()
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CardError(f"{folder} is not an agglom export folder: config.json is missing "
                        "(expected config.json + model.safetensors, as written by timm save_for_hf)")
    cfg = json.loads(cfg_path.read_text())
    pcfg = cfg.get("pretrained_cfg", cfg)
    size = pcfg.get("input_size", [3, 224, 224])
    data: Dict[str, Any] = {
        "name": folder.name,
        "family": "agglom",
        "model": cfg.get("architecture", ""),
        "input_size": [int(size[-2]), int(size[-1])],
        "mean": list(pcfg.get("mean", (0.485, 0.456, 0.406))),
        "std": list(pcfg.get("std", (0.229, 0.224, 0.225))),
        "interpolation": pcfg.get("interpolation", "bicubic") if pcfg.get("interpolation") in INTERPOLATIONS
        else "bicubic",
        "licence": str(pcfg.get("license", "unknown")),
        "description": str(pcfg.get("description", "")),
    }
    data.update(_card_yaml(folder, "agglom", "an export folder"))
    data["model"] = data.get("model") or cfg.get("architecture", "")
    data["weights"] = {"source": "folder", "path": str(folder)}
    return card_from_dict(data, source=_source(folder))


def card_from_hf_folder(folder: Union[str, Path]) -> TeacherCard:
    """A card for a Hugging Face `save_pretrained` folder (config.json with a `model_type`): family
    `transformers`, preprocessing from the folder's image processor (:mod:`teachers.hf_processor`), anything else
    from an optional `card.yaml` beside it (licence, provenance, summary, ...)."""
    from .hf_processor import PROCESSOR_FILE, processor_contract, read_processor

    folder = Path(folder).resolve()
    cfg = json.loads((folder / "config.json").read_text())
    data: Dict[str, Any] = {"name": folder.name, "family": "transformers",
                            "model": (cfg.get("architectures") or [cfg.get("model_type", "")])[0],
                            "description": f"transformers save_pretrained folder ({cfg.get('model_type')})"}
    pp = read_processor(folder)
    if pp is not None:
        try:
            contract = processor_contract(pp)
        except ValueError as e:
            raise CardError(f"{folder / PROCESSOR_FILE}: {e}") from e
        data.update({k: contract[k] for k in ("input_size", "mean", "std", "interpolation", "resize")})
    data.update(_card_yaml(folder, "transformers", "a save_pretrained folder"))
    if "input_size" not in data:
        raise CardError(f"{folder} has no {PROCESSOR_FILE}: save the model's image processor beside it "
                        "(processor.save_pretrained(folder)) or write a card.yaml there with input_size, mean and std")
    data["weights"] = {"source": "folder", "path": str(folder)}
    return card_from_dict(data, source=_source(folder))


def is_hf_folder(folder: Path) -> bool:
    """A transformers save_pretrained folder (its config.json names a model_type), not a timm export."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and "pretrained_cfg" not in cfg


def is_card_folder(folder: Path) -> bool:
    """A folder whose ``card.yaml`` is the whole card: no config.json (neither a timm export nor a transformers
    folder), a family named in the card."""
    path = folder / "card.yaml"
    if (folder / "config.json").is_file() or not path.is_file():
        return False
    try:
        data = _read_yaml(path)
    except CardError:
        return True  # let card_from_card_folder report the YAML error
    return isinstance(data, dict) and bool(data.get("family"))


def card_from_card_folder(folder: Union[str, Path]) -> TeacherCard:
    """The card in ``folder/card.yaml``; its ``./`` weight paths resolve inside the folder, so the folder can be
    moved or copied whole."""
    path = Path(folder).resolve() / "card.yaml"
    return card_from_dict(_read_yaml(path), source=str(path))


__all__ = ["card_from_export", "card_from_hf_folder", "is_hf_folder", "is_card_folder", "card_from_card_folder"]
