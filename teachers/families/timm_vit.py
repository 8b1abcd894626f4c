"""`timm` family: any timm ViT (DINOv2 with or without registers, ...): CLS/mean/pooled summary + patch tokens."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..base import Teacher, grid_of, load_into, to_pair
from ..cards import CardError, TeacherCard, WeightsUnavailableError, offline_hint
from ..registry import register_family
from ..safe_load import load_state_dict

_FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


def filter_checkpoint(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The model module's own timm checkpoint filter (pos-embed resampling, foreign layouts) when it has one."""
    fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if fn is None:
        return state_dict
    try:
        return fn(state_dict, model)
    except Exception:  # a filter that does not apply to this layout: keep the dict as it is
        return state_dict


def folder_weights(folder: Path) -> Path:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"no weights in {folder}: expected one of {', '.join(_FOLDER_WEIGHTS)}")


def create_timm(card: TeacherCard, load_weights: bool) -> nn.Module:
    import timm

    kwargs: Dict[str, Any] = dict(num_classes=0)
    kwargs.update(card.model_args)
    kwargs.setdefault("img_size", card.input_size)
    w = card.weights
    if w.source == "folder":
        folder = card.require_weights() if load_weights else card.weights_path()
        name = "local-dir:" + str(folder)
        if not (Path(str(folder)) / "config.json").is_file():
            raise CardError(f"teacher '{card.name}': weights folder {folder} has no config.json "
                            "(expected timm's save_for_hf layout: config.json + model.safetensors)")
    else:
        name = card.model
        if w.source == "tag" and "." not in name.split("/")[-1] and not name.startswith("hf-hub:"):
            name = f"{name}.{w.tag}"
    if w.source == "tag" and load_weights:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as e:
            raise WeightsUnavailableError(offline_hint(card) + f". Detail: {str(e).splitlines()[0][:300]}") from e
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise CardError(f"bad value for field 'model' in card {card.source_path or card.name}: "
                            f"{card.model!r} is not a timm model (timm.list_models() lists them)") from e
        raise
    if load_weights and w.source in ("file", "folder"):
        path = card.require_weights()
        path = folder_weights(path) if w.source == "folder" else path
        sd = filter_checkpoint(model, load_state_dict(path))
        load_into(model, sd, f"timm model {card.model}", source=str(path))
    return model


@register_family("timm")
class TimmTeacher(Teacher):
    """timm ViT: the last block's normed tokens from ``forward_intermediates`` (prefix tokens split off, patches as
    an NCHW grid); a CNN: ``forward_features``' map."""

    default_summary = "cls"
    summary_kinds = ("cls", "mean", "pooled")
    spatial_kinds = ("patch",)

    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:
        model = create_timm(card, load_weights)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        # ViT family: class/register tokens + patch tokens, read through timm's forward_intermediates
        self.token_model = hasattr(model, "num_prefix_tokens") and hasattr(model, "forward_intermediates")
        if self.summary_kind == "cls" and self.num_prefix_tokens == 0:
            raise CardError(f"teacher '{card.name}': summary 'cls' needs a prefix token, but {card.model} has none; "
                            "use summary: mean")
        self.num_features = int(model.num_features)
        self.spatial_dim = self.num_features
        self.summary_dim = int(getattr(model, "head_hidden_size", self.num_features)) \
            if self.summary_kind == "pooled" else self.num_features
        pe = getattr(model, "patch_embed", None)
        if pe is not None and hasattr(pe, "patch_size"):
            self.patch_size = to_pair(pe.patch_size)
        else:  # a CNN: the last feature stage's stride
            self.patch_size = to_pair(model.feature_info[-1]["reduction"])
        self.grid = grid_of(self.input_size, self.patch_size)
        return model

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        if self.token_model:  # timm splits off the prefix tokens and lays the patch tokens out as the grid
            feats, (spatial,) = self.model.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW")
            # channels-last: the tokens' own layout, which a view of them had before forward_intermediates; the
            # downstream reductions, and so the trained numbers, depend on it
            spatial = spatial.contiguous(memory_format=torch.channels_last)
            if tuple(spatial.shape[-2:]) != tuple(self.grid):
                raise RuntimeError(f"teacher '{self.name}': a {tuple(spatial.shape[-2:])} token grid, not the "
                                   f"card's {self.grid[0]}x{self.grid[1]}")
            if self.summary_kind == "cls":
                return feats[:, 0], spatial
            if self.summary_kind == "mean":
                return feats[:, self.num_prefix_tokens:].mean(1), spatial
            return self.model.forward_head(feats, pre_logits=True), spatial
        feats = self.model.forward_features(x)
        if feats.ndim != 4:
            raise RuntimeError(f"teacher '{self.name}': timm model {type(self.model).__name__} gives tokens but no "
                               "forward_intermediates (prefix tokens unknown); use a ViT-family or a CNN model")
        summary = self.model.forward_head(feats, pre_logits=True) if self.summary_kind == "pooled" \
            else feats.flatten(2).transpose(1, 2).mean(1)  # NCHW (CNN): the map is the spatial output
        return summary, feats
