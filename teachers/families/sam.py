"""`sam` family: segment-anything's image encoder (vit_b / vit_l / vit_h; MedSAM uses the same format).

spatial = the neck features [B, out_chans, img/16, img/16]; summary = their spatial mean. Preprocessing is SAM's:
resize the long side to img_size, normalise with SAM's pixel mean/std, pad bottom/right with zeros.
Model `image_encoder` builds `ImageEncoderViT(**model_args)` directly (tiny test encoders).
"""
from __future__ import annotations

from functools import partial
from typing import Dict, Tuple

import torch
from torch import nn

from ..base import Teacher, grid_of, load_into, to_pair
from ..cards import CardError, TeacherCard
from ..registry import register_family
from ..safe_load import load_state_dict

REGISTRY_MODELS = ("vit_b", "vit_l", "vit_h", "default")
CUSTOM_MODELS = ("image_encoder", "ImageEncoderViT")
ENCODER_ARGS = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "out_chans", "qkv_bias", "use_abs_pos",
                "use_rel_pos", "rel_pos_zero_init", "window_size", "global_attn_indexes", "in_chans")


def encoder_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A full SAM checkpoint (image_encoder.*, prompt_encoder.*, mask_decoder.*) or an encoder-only state dict."""
    if any(k.startswith("image_encoder.") for k in sd):
        return {k[len("image_encoder."):]: v for k, v in sd.items() if k.startswith("image_encoder.")}
    return sd


@register_family("sam")
class SamTeacher(Teacher):
    default_summary = "pooled"
    default_spatial = "neck"
    summary_kinds = ("pooled", "mean")
    spatial_kinds = ("neck",)

    @classmethod
    def validate_card(cls, card: TeacherCard) -> None:
        super().validate_card(card)
        src = card.source_path or card.name
        if card.model not in REGISTRY_MODELS + CUSTOM_MODELS:
            raise CardError(f"bad value for field 'model' in card {src}: {card.model!r}; valid SAM models: "
                            f"{', '.join(REGISTRY_MODELS + CUSTOM_MODELS)}")
        if card.model in REGISTRY_MODELS and tuple(card.input_size) != (1024, 1024):
            raise CardError(f"bad value for field 'input_size' in card {src}: SAM {card.model} takes 1024 px")
        if card.input_size[0] != card.input_size[1]:
            raise CardError(f"bad value for field 'input_size' in card {src}: SAM encoders are square")
        bad = [k for k in card.model_args if k not in ENCODER_ARGS]
        if bad:
            raise CardError(f"unknown field 'model_args.{bad[0]}' in card {src}; valid model_args for SAM: "
                            f"{', '.join(ENCODER_ARGS)}")
        if card.weights.source in ("tag", "folder"):
            raise CardError(f"bad value for field 'weights.source' in card {src}: SAM loads a checkpoint file "
                            "(file) or random init (none)")

    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:
        from segment_anything import sam_model_registry
        from segment_anything.modeling import ImageEncoderViT

        if card.model in REGISTRY_MODELS:
            # the registry's own builder (checkpoint=None: it would torch.load unsafely); weights loaded below
            encoder = sam_model_registry[card.model](checkpoint=None).image_encoder
        else:
            args = dict(card.model_args)
            if "global_attn_indexes" in args:
                args["global_attn_indexes"] = tuple(args["global_attn_indexes"])
            encoder = ImageEncoderViT(img_size=card.input_size[0], norm_layer=partial(nn.LayerNorm, eps=1e-6),
                                      **args)
        if load_weights and card.weights.source == "file":
            path = card.require_weights()
            load_into(encoder, encoder_state_dict(load_state_dict(path)), f"SAM image encoder {card.model}",
                      source=str(path))
        self.patch_size = to_pair(encoder.patch_embed.proj.kernel_size)
        self.grid = grid_of(self.input_size, self.patch_size)
        self.spatial_dim = int(encoder.neck[0].out_channels)
        self.summary_dim = self.spatial_dim
        return encoder

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        spatial = self.model(x)
        return spatial.mean(dim=(2, 3)), spatial
