"""`transformers` family: a vision encoder loaded with Hugging Face `transformers` (`AutoModel`).

Any model whose forward returns `last_hidden_state` tokens works: Dinov2Model (RAD-DINO), Dinov2WithRegistersModel,
DINOv3ViTModel, SiglipVisionModel, CLIPVisionModel, ...; two-tower image-text checkpoints (SigLIP such as MedSigLIP,
CLIP) are loaded whole and their image tower used through the model's own `get_image_features` (the text tower is
dropped here; :mod:`teachers.families.hf_text` builds it for zero-shot).

Where the weights come from (`weights.source`):
- `tag`: `model` is a hub id, `weights.tag` its revision (`main`, a commit); downloaded by `from_pretrained`, and
  offline (`HF_HUB_OFFLINE=1`, no network, a gated repository) the error says how to place a local copy;
- `folder`: a `save_pretrained` folder (config.json + model.safetensors [+ preprocessor_config.json]);
  `load_card(folder)` derives the whole card from it, preprocessing from its image processor;
- `none`: random init of `model` = a config `model_type` (`dinov2`, `siglip`, `dinov3_vit`, ...) with `model_args`
  as the config's arguments (tiny cards for tests and CI), seeded by the card.

Outputs: summary = `cls` (first token), `pooled` (the model's pooler output), `embed` (two-tower models: the
image-text embedding, projected for CLIP) or `mean` (of the patch tokens); the default is `embed` for two-tower
models, `pooled` for a tower without a CLS token (SigLIP) and `cls` otherwise. spatial = the patch tokens of
`last_hidden_state` as a [B, hidden, h, w] grid (CLS and register tokens dropped). Position embeddings are
interpolated by the model when the card's input size differs from the config's.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from ..base import Teacher, grid_of, to_pair
from ..cards import CardError, TeacherCard, WeightsUnavailableError
from ..hf_processor import contract_differences, processor_contract, read_processor
from ..registry import register_family

TWO_TOWER = ("siglip", "clip")  # model types whose checkpoint holds an image and a text tower
NO_CLS = ("siglip", "siglip_vision_model")  # towers whose tokens are patches only


def hf_hint(card: TeacherCard) -> str:
    rev = f" --revision {card.weights.tag}" if card.weights.tag and card.weights.tag != "main" else ""
    return (f"could not fetch teacher '{card.name}' ({card.model}) from the Hugging Face hub: this machine may be "
            f"offline (HF_HUB_OFFLINE set, or no network), or the repository is gated (accept its terms on "
            f"huggingface.co/{card.model} and log in with `hf auth login`). Where there is a network, run "
            f"`hf download {card.model}{rev} --local-dir $AGGLOM_WEIGHTS/{card.name}` and point the card at the copy "
            f"(weights: {{source: folder, path: {card.name}}})")


def hf_source(card: TeacherCard) -> Tuple[str, Dict[str, Any]]:
    """(what `from_pretrained` takes, its keyword arguments) for a tag or folder card."""
    if card.weights.source == "folder":
        return str(card.weights_path()), {}
    return card.model, ({"revision": card.weights.tag} if card.weights.tag else {})


def _fetch(card: TeacherCard, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a `from_pretrained`; a hub or file failure becomes a WeightsUnavailableError saying what to do."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        if card.weights.source == "folder":
            raise WeightsUnavailableError(f"teacher '{card.name}': could not read the {what} in "
                                          f"{card.weights_path()} (a save_pretrained folder): "
                                          f"{str(e).splitlines()[0][:300]}") from e
        raise WeightsUnavailableError(hf_hint(card) + f". Detail: {str(e).splitlines()[0][:300]}") from e


def hf_config(card: TeacherCard) -> Any:
    """The model config: built from `model_args` for random init, else read from the folder or the hub."""
    from transformers import AutoConfig

    if card.weights.source == "none":
        try:
            return AutoConfig.for_model(card.model, **dict(card.model_args))
        except ValueError as e:
            raise CardError(f"bad value for field 'model' in card {card.source_path or card.name}: {card.model!r} is "
                            f"not a transformers model_type (a random-init card names one, e.g. dinov2, siglip, "
                            f"dinov3_vit): {str(e).splitlines()[0][:200]}") from e
    src, kw = hf_source(card)
    return _fetch(card, "config", AutoConfig.from_pretrained, src, **kw)


def full_model(card: TeacherCard, config: Any, load_weights: bool) -> nn.Module:
    """What the checkpoint holds, as `AutoModel` builds it: loaded for tag/folder cards, random (seeded by the
    caller) for `none` or when no weights are wanted."""
    from transformers import AutoModel

    if load_weights and card.weights.source in ("tag", "folder"):
        src, kw = hf_source(card)
        return _fetch(card, "weights", AutoModel.from_pretrained, src, config=config, **kw)
    return AutoModel.from_config(config)


def vision_config(config: Any) -> Any:
    return config.vision_config if config.model_type in TWO_TOWER else config


def processor_check(card: TeacherCard) -> Dict[str, Tuple[Any, Any]]:
    """Where the card departs from the model's own image processor (folder cards only: a hub card's processor is
    not fetched for this). Mean/std differences are errors; input size and interpolation may be chosen."""
    folder = card.weights_path() if card.weights.source == "folder" else None
    pp = read_processor(folder) if folder is not None and folder.is_dir() else None
    return contract_differences(card, processor_contract(pp)) if pp else {}


class _ImageTower(nn.Module):
    """A two-tower model reduced to its image side: forward = the model's own `get_image_features`."""

    def __init__(self, full: nn.Module) -> None:
        super().__init__()
        for name in ("text_model", "text_projection"):  # the text side is not needed to see images
            if hasattr(full, name):
                setattr(full, name, None)
        self.full = full

    def forward(self, pixel_values: torch.Tensor, **kw: Any) -> Any:
        return self.full.get_image_features(pixel_values=pixel_values, **kw)


@register_family("transformers")
class TransformersTeacher(Teacher):
    default_summary = "cls"
    summary_kinds = ("cls", "pooled", "embed", "mean")
    spatial_kinds = ("patch",)

    @classmethod
    def validate_card(cls, card: TeacherCard) -> None:
        super().validate_card(card)
        src = card.source_path or card.name
        if card.weights.source == "file":
            raise CardError(f"bad value for field 'weights.source' in card {src}: the transformers family loads a "
                            "save_pretrained folder (folder), a hub id (tag) or random init (none), not a file")
        if card.model_args and card.weights.source != "none":
            raise CardError(f"bad value for field 'model_args' in card {src}: model_args build a random-init config "
                            "(weights.source: none); a published or saved model brings its own config.json")

    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:
        bad = {k: v for k, v in processor_check(card).items() if k in ("mean", "std")}
        if bad:
            k, (ours, theirs) = next(iter(bad.items()))
            raise CardError(f"bad value for field '{k}' in card {card.source_path or card.name}: {ours}, but the "
                            f"model's image processor normalises with {theirs}")
        config = hf_config(card)
        vcfg = vision_config(config)
        self.two_tower = config.model_type in TWO_TOWER
        full = full_model(card, config, load_weights)
        model = _ImageTower(full) if self.two_tower else full
        self.patch_size = to_pair(vcfg.patch_size)
        self.grid = grid_of(self.input_size, self.patch_size)
        self.has_cls = vcfg.model_type not in NO_CLS and config.model_type not in NO_CLS
        self.num_prefix_tokens = (1 if self.has_cls else 0) + int(getattr(vcfg, "num_register_tokens", 0) or 0)
        self.spatial_dim = int(vcfg.hidden_size)
        if card.summary is None:
            self.summary_kind = "embed" if self.two_tower else ("cls" if self.has_cls else "pooled")
        kind = self.summary_kind
        if kind == "embed" and not self.two_tower:
            raise CardError(f"teacher '{card.name}': summary 'embed' is the image-text embedding of a two-tower model "
                            f"(siglip, clip); {config.model_type} has none: use cls, pooled or mean")
        if kind == "pooled" and self.two_tower:
            raise CardError(f"teacher '{card.name}': a two-tower model's pooled output is its embedding: use embed")
        if kind == "cls" and not self.has_cls:
            raise CardError(f"teacher '{card.name}': summary 'cls' needs a CLS token, but {vcfg.model_type} has none; "
                            "use pooled (or embed) or mean")
        self.summary_dim = int(getattr(config, "projection_dim", vcfg.hidden_size)) \
            if kind == "embed" and config.model_type == "clip" else self.spatial_dim
        size = to_pair(getattr(vcfg, "image_size", self.input_size[0]))
        takes = "interpolate_pos_encoding" in inspect.signature(
            full.get_image_features if self.two_tower else full.forward).parameters
        self.forward_kwargs = {"interpolate_pos_encoding": True} if takes and size != self.input_size else {}
        return model

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=x, **self.forward_kwargs)
        tokens = out.last_hidden_state
        h, w = self.grid
        npt = tokens.shape[1] - h * w
        if npt != self.num_prefix_tokens:
            raise RuntimeError(f"teacher '{self.name}': {tokens.shape[1]} tokens for a {h}x{w} grid and "
                               f"{self.num_prefix_tokens} prefix tokens")
        patches = tokens[:, npt:]
        spatial = patches.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)
        if self.summary_kind == "cls":
            summary = tokens[:, 0]
        elif self.summary_kind == "mean":
            summary = patches.mean(1)
        else:  # pooled (single tower) or embed (two-tower: get_image_features' pooler output is the embedding)
            summary = out.pooler_output
        return summary, spatial

    def contract(self) -> Dict[str, Any]:
        info = super().contract()
        diff: Optional[Dict[str, Any]] = processor_check(self.card) or None
        if diff:
            info["differs_from_processor"] = {k: {"card": a, "processor": b} for k, (a, b) in diff.items()}
        return info
