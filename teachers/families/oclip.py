"""`open_clip` family: the image tower of any open_clip model (built-in names, `hf-hub:` names such as BiomedCLIP,
or custom configs given in the card's model_args). Only the vision tower is built here; the text tower is built
apart, for zero-shot only (:mod:`teachers.families.oclip_text`).

summary = the projected image embedding (`embed`) or the mean of the patch tokens; spatial = the last block's
patch tokens after the final norm (tower width, not projection width), as a [B, width, h, w] grid.
"""
from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from ..base import Teacher, grid_of, load_into, to_pair
from ..cards import CardError, TeacherCard, WeightsUnavailableError, offline_hint
from ..registry import register_family
from ..safe_load import load_state_dict

FOLDER_CONFIG = "open_clip_config.json"
FOLDER_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin", "model.safetensors",
                  "pytorch_model.bin")


def register_open_clip_config(name: str, cfg: Dict[str, Any]) -> None:
    """Make a custom config (embed_dim + vision_cfg + text_cfg) known to open_clip.create_model(name)."""
    from open_clip import factory

    if all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
        factory._MODEL_CONFIGS[name] = copy.deepcopy(cfg)


def model_config(card: TeacherCard) -> Dict[str, Any]:
    """The open_clip model config for the card: library/hub/folder config, deep-merged with model_args."""
    from open_clip.factory import _get_hf_config, get_model_config

    name, args = card.model, dict(card.model_args)
    cfg: Optional[Dict[str, Any]] = None
    folder = card.weights_path() if card.weights.source == "folder" else None
    if folder is not None and (folder / FOLDER_CONFIG).is_file():
        cfg = json.loads((folder / FOLDER_CONFIG).read_text())
        cfg = cfg.get("model_cfg", cfg)
    elif name.startswith("hf-hub:"):
        try:
            cfg = _get_hf_config(name[len("hf-hub:"):]).get("model_cfg")
        except Exception as e:
            raise WeightsUnavailableError(
                f"could not fetch the open_clip config of teacher '{card.name}' from the Hugging Face hub "
                f"({name}); offline? Download the repository (open_clip_config.json + weights) into a folder and "
                f"use weights.source: folder. Detail: {str(e).splitlines()[0][:300]}") from e
    else:
        cfg = get_model_config(name)
    if cfg is None:
        if "embed_dim" in args and "vision_cfg" in args:
            cfg = {}
        else:
            raise CardError(f"bad value for field 'model' in card {card.source_path or card.name}: {name!r} is not "
                            "an open_clip model (open_clip.list_models()); a custom tower needs model_args with "
                            "embed_dim and vision_cfg")
    cfg = OmegaConf.to_container(OmegaConf.merge(cfg, args), resolve=False)  # dicts merge, the rest replaces
    if ":" not in name:
        register_open_clip_config(name, cfg)
    return cfg


def _weights_file(card: TeacherCard) -> Tuple[Optional[Path], bool]:
    """(path, from_tag) of the full CLIP or image-tower weights; quick_gelu comes from a tag's config."""
    import open_clip
    from open_clip.pretrained import download_pretrained, download_pretrained_from_hf

    w = card.weights
    if w.source == "file":
        return card.require_weights(), False
    if w.source == "folder":
        folder = card.require_weights()
        for f in FOLDER_WEIGHTS:
            if (folder / f).is_file():
                return folder / f, False
        raise FileNotFoundError(f"no open_clip weights in {folder}: expected one of {', '.join(FOLDER_WEIGHTS)}")
    if w.source == "tag":
        try:
            if card.model.startswith("hf-hub:"):
                return Path(download_pretrained_from_hf(card.model[len("hf-hub:"):])), False
            pcfg = open_clip.get_pretrained_cfg(card.model, w.tag)
            if not pcfg:
                tags = open_clip.list_pretrained_tags_by_model(card.model)
                raise CardError(f"bad value for field 'weights.tag' in card {card.source_path or card.name}: "
                                f"{w.tag!r}; open_clip tags for {card.model}: {', '.join(tags) or 'none'}")
            return Path(download_pretrained(pcfg)), bool(pcfg.get("quick_gelu", False))
        except CardError:
            raise
        except Exception as e:
            raise WeightsUnavailableError(offline_hint(card) + f". Detail: {str(e).splitlines()[0][:300]}") from e
    return None, False


def load_visual(visual: nn.Module, sd: Dict[str, torch.Tensor], source: str = "") -> None:
    """Load a full CLIP state dict (visual.* keys) or an image-tower-only one into the vision tower."""
    from open_clip.model import resize_pos_embed

    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    if "positional_embedding" in sd:  # open_clip's own grid resampling, when the card's size differs
        tmp = {"visual.positional_embedding": sd["positional_embedding"]}
        resize_pos_embed(tmp, types.SimpleNamespace(visual=visual))
        sd = dict(sd, positional_embedding=tmp["visual.positional_embedding"])
    load_into(visual, sd, "open_clip image tower", source=source)


@register_family("open_clip")
class OpenClipTeacher(Teacher):
    default_summary = "embed"
    summary_kinds = ("embed", "pooled", "mean")
    spatial_kinds = ("patch",)

    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:
        from open_clip.model import CLIPVisionCfg, _build_vision_tower
        from open_clip.timm_model import TimmModel

        cfg = model_config(card)
        path, tag_quick_gelu = _weights_file(card) if load_weights else (None, False)
        vision_cfg = dict(cfg["vision_cfg"])
        if isinstance(vision_cfg.get("layers"), (list, tuple)):
            raise CardError(f"teacher '{card.name}': {card.model} has a ResNet image tower; the open_clip family "
                            "supports ViT towers (patch tokens)")
        is_timm = bool(vision_cfg.get("timm_model_name"))
        if not is_timm:
            vision_cfg["image_size"] = tuple(card.input_size)
        quick_gelu = bool(cfg.get("quick_gelu", False) or tag_quick_gelu)
        visual = _build_vision_tower(cfg["embed_dim"], CLIPVisionCfg(**vision_cfg), quick_gelu=quick_gelu)
        if path is not None:
            load_visual(visual, load_state_dict(path), source=str(path))
        if isinstance(visual, TimmModel):
            if tuple(visual.image_size) != tuple(card.input_size):
                visual.set_input_size(tuple(card.input_size))
            self.patch_size = to_pair(visual.trunk.patch_embed.patch_size)
            self.spatial_dim = int(visual.trunk.num_features)
            linears = [m for m in visual.head.modules() if isinstance(m, nn.Linear)]
            self.summary_dim = linears[-1].out_features if linears else self.spatial_dim
        else:
            self.patch_size = to_pair(visual.patch_size)
            self.spatial_dim = int(visual.transformer.width)
            self.summary_dim = int(visual.output_dim)
        if self.summary_kind == "mean":
            self.summary_dim = self.spatial_dim
        self.grid = grid_of(self.input_size, self.patch_size)
        return visual

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.model.forward_intermediates(x, indices=1, normalize_intermediates=True)
        spatial = out["image_intermediates"][-1]
        summary = spatial.mean(dim=(2, 3)) if self.summary_kind == "mean" else out["image_features"]
        return summary, spatial
