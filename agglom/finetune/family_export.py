"""Export a fine-tuned open_clip / SAM / transformers encoder as a teacher in its family's own format.

The base card's preprocessing contract (input size, mean/std, resize policy, interpolation, summary, spatial) is
copied unchanged: fine-tuning ran through that same preprocessing (:mod:`agglom.finetune.family`), so the exported
teacher sees images exactly as it was trained on them. LoRA adapters are merged into the base weights before
this is called, so every export is a plain encoder of its family. What each folder holds:

* ``open_clip``: ``open_clip_config.json`` (``model_cfg`` = the base's config without ``text_cfg``,
  ``quick_gelu`` made explicit; ``preprocess_cfg``) + ``open_clip_model.safetensors`` (the image tower, open_clip's
  own ``visual.*`` keys) + ``card.yaml`` (family open_clip, ``weights: {source: folder, path: ./}``);
* ``sam``: ``model.safetensors`` (the ``ImageEncoderViT`` state dict, SAM's encoder keys) + ``card.yaml`` (family
  sam, the base's model/model_args, ``weights: {source: file, path: ./model.safetensors}``);
* ``transformers``: a ``save_pretrained`` folder of the vision model (a two-tower SigLIP's image side as
  ``SiglipVisionModel``: its pooled output is the two-tower's image embedding) + ``card.yaml`` (the preprocessing;
  the base folder's ``preprocessor_config.json`` is copied when it has one).

The text tower of a CLIP-family base is not exported: supervised fine-tuning moves the image embedding away from
the space the text tower was trained for, so zero-shot stays with the base card. Every folder also holds
``finetune.json`` (:func:`agglom.finetune.export.finetune_record`); ``teachers.load_card(<folder>)`` reads it back.
"""
from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from agglom.finetune.model import Encoder


def _cpu_state(module: nn.Module, prefix: str = "") -> Dict[str, torch.Tensor]:
    return {prefix + k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def _open_clip(enc: Encoder, folder: Path) -> Dict[str, Any]:
    from open_clip.transformer import QuickGELU
    from safetensors.torch import save_file

    from teachers.families.oclip import FOLDER_CONFIG, model_config

    card = enc.base_card
    visual = enc.adapted
    cfg = copy.deepcopy(model_config(card))
    cfg.pop("text_cfg", None)
    cfg["quick_gelu"] = bool(cfg.get("quick_gelu")) or any(isinstance(m, QuickGELU) for m in visual.modules())
    if cfg["vision_cfg"].get("timm_model_name"):
        cfg["vision_cfg"]["timm_model_pretrained"] = False  # the weights are in this folder
    pre = {"mean": list(card.norm_mean), "std": list(card.norm_std), "interpolation": card.interpolation,
           "resize_mode": card.resize}
    (folder / FOLDER_CONFIG).write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": pre}, indent=1))
    save_file(_cpu_state(visual, "visual."), str(folder / "open_clip_model.safetensors"))
    return {"model": card.model, "model_args": {}, "weights": {"source": "folder", "path": "./"}}


def _sam(enc: Encoder, folder: Path) -> Dict[str, Any]:
    from safetensors.torch import save_file

    card = enc.base_card
    save_file(_cpu_state(enc.adapted), str(folder / "model.safetensors"))
    return {"model": card.model, "model_args": copy.deepcopy(dict(card.model_args)),
            "weights": {"source": "file", "path": "./model.safetensors"}}


def _transformers(enc: Encoder, folder: Path) -> Dict[str, Any]:
    card = enc.base_card
    model = enc.adapted
    fields: Dict[str, Any] = {}
    if getattr(enc.model, "two_tower", False):  # SigLIP: the image side alone, as its own vision model class
        from transformers import SiglipVisionModel

        full = model.full
        vision = SiglipVisionModel(full.config.vision_config)
        vision.load_state_dict(full.vision_model.state_dict(), strict=True)
        vision.save_pretrained(str(folder))
        if card.summary in (None, "embed"):
            fields["summary"] = "pooled"  # SigLIP's image embedding is its vision tower's pooled output
    else:
        model.save_pretrained(str(folder))
    base = card.weights_path() if card.weights.source == "folder" else None
    if base is not None and (Path(base) / "preprocessor_config.json").is_file():
        shutil.copy2(Path(base) / "preprocessor_config.json", folder / "preprocessor_config.json")
    return fields


WRITERS = {"open_clip": _open_clip, "sam": _sam, "transformers": _transformers}


def family_card(a: Any, enc: Encoder, result: Dict[str, Any], weights: Dict[str, Any]) -> Dict[str, Any]:
    """card.yaml content: the base card's family and preprocessing contract, the documentation of this run
    (:func:`agglom.finetune.export.card_docs`) and its ``finetune`` record."""
    from agglom.finetune.export import card_docs, card_finetune

    base = enc.base_card
    card: Dict[str, Any] = {"name": str(a.name), "family": base.family}
    card.update({k: v for k, v in weights.items() if k != "summary"})
    card.update({"input_size": list(base.input_size), "mean": list(base.mean), "std": list(base.std),
                 "resize": base.resize, "interpolation": base.interpolation,
                 "summary": weights.get("summary", base.summary), "spatial": base.spatial,
                 "gpu_dtype": base.gpu_dtype, "tiny": bool(base.tiny)})
    card.update(card_docs(a, enc, result))
    card["finetune"] = card_finetune(a, enc)
    return {k: v for k, v in card.items() if v is not None}


def export_family(a: Any, enc: Encoder, result: Dict[str, Any], out: Path, force: bool = True) -> Path:
    """Write the folder (to a temporary name, then renamed into place) and return it."""
    from agglom.finetune.export import finetune_record, publish, staging_dir

    out = Path(out)
    tmp = staging_dir(out, force)
    tmp.mkdir()
    enc.model.cpu().eval()
    try:
        weights = WRITERS[enc.family](enc, tmp)
    except BaseException:  # a half-written export is never left behind (a full disk, Ctrl-C)
        from agglom.export.folder import discard

        discard(tmp)
        raise
    return publish(tmp, out, family_card(a, enc, result, weights), finetune_record(a, enc, result))


__all__ = ["export_family", "family_card", "WRITERS"]
