"""`sam` family: segment-anything's image encoder (vit_b / vit_l / vit_h; MedSAM uses the same format).

spatial = the neck features [B, out_chans, img/16, img/16]; summary = their spatial mean. Preprocessing is SAM's:
resize the long side to img_size, normalise with SAM's pixel mean/std, pad bottom/right with zeros.
Model `image_encoder` builds `ImageEncoderViT(**model_args)` directly (tiny test encoders).
`sam_prompt_decoder(card)` gives the card's own prompt encoder + mask decoder (from its full checkpoint, or seeded
random init), which agglom's export packs so that a student can take the image encoder's place.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..base import Teacher, grid_of, load_into, to_pair
from ..cards import CardError, TeacherCard
from ..registry import register_family
from ..safe_load import CheckpointFormatError, load_state_dict

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


# --------------------------------------------------------------------------- the prompt encoder + mask decoder
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def decoder_args(card: TeacherCard) -> Dict[str, Any]:
    """segment-anything's prompt encoder + mask decoder configuration for a SAM card: the registry's own for
    vit_b/l/h (256 channels, a 64x64 embedding at 1024 px, `build_sam._build_sam`); for a custom encoder the same
    recipe at its neck width (transformer MLP 8x the width, IoU head as wide as it), so a tiny card gets a tiny,
    real decoder."""
    args = dict(card.model_args or {})
    registry = card.model in REGISTRY_MODELS
    dim = 256 if registry else int(args.get("out_chans", 256))
    patch = 16 if registry else int(args.get("patch_size", 16))
    img = int(card.input_size[0])
    heads = next(h for h in (8, 4, 2, 1) if (dim // 2) % h == 0)  # the decoder's attention halves the width
    return {"embed_dim": dim, "image_size": img, "image_embedding_size": img // patch, "mask_in_chans": 16,
            "num_multimask_outputs": 3, "transformer_depth": 2, "transformer_mlp_dim": 8 * dim,
            "transformer_num_heads": heads, "iou_head_depth": 3, "iou_head_hidden_dim": dim}


def build_prompt_decoder(args: Dict[str, Any]) -> Tuple[nn.Module, nn.Module]:
    """``(PromptEncoder, MaskDecoder)`` of segment-anything, built from :func:`decoder_args`' dict."""
    from segment_anything.modeling import MaskDecoder, PromptEncoder, TwoWayTransformer

    e, img = int(args["image_embedding_size"]), int(args["image_size"])
    prompt = PromptEncoder(embed_dim=int(args["embed_dim"]), image_embedding_size=(e, e), input_image_size=(img, img),
                           mask_in_chans=int(args["mask_in_chans"]))
    transformer = TwoWayTransformer(depth=int(args["transformer_depth"]), embedding_dim=int(args["embed_dim"]),
                                    mlp_dim=int(args["transformer_mlp_dim"]),
                                    num_heads=int(args["transformer_num_heads"]))
    decoder = MaskDecoder(num_multimask_outputs=int(args["num_multimask_outputs"]), transformer=transformer,
                          transformer_dim=int(args["embed_dim"]), iou_head_depth=int(args["iou_head_depth"]),
                          iou_head_hidden_dim=int(args["iou_head_hidden_dim"]))
    return prompt.eval(), decoder.eval()


def sam_prompt_decoder(card: TeacherCard, load_weights: bool = True) -> Tuple[nn.Module, nn.Module, str]:
    """``(prompt encoder, mask decoder, source)`` of a SAM card: the weights of its checkpoint file (read through
    :func:`teachers.safe_load.load_state_dict`: safetensors, or a pickle of tensors only), or for a card without
    weights a random init seeded by the card (the same card always gives the same decoder). An encoder-only
    checkpoint holds no decoder: :class:`CheckpointFormatError` says so."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(card.seed) + 1)  # not the encoder's draws: building a decoder never changes them
        prompt, decoder = build_prompt_decoder(decoder_args(card))
    if not (load_weights and card.weights.source == "file"):
        return prompt, decoder, f"random init (card seed {int(card.seed)})"
    path = card.require_weights()
    sd = load_state_dict(path)
    parts = {p: {k[len(p):]: v for k, v in sd.items() if k.startswith(p)} for p in DECODER_PREFIXES}
    if not all(parts.values()):
        raise CheckpointFormatError(f"{path} holds no SAM prompt encoder / mask decoder (keys prompt_encoder.*, "
                                    "mask_decoder.*): it is an image-encoder-only checkpoint. The SAM-encoder swap "
                                    "needs the full segment-anything checkpoint (e.g. sam_vit_b_01ec64.pth, "
                                    "medsam_vit_b.pth)")
    load_into(prompt, parts["prompt_encoder."], f"SAM prompt encoder of {card.name}", source=str(path))
    load_into(decoder, parts["mask_decoder."], f"SAM mask decoder of {card.name}", source=str(path))
    return prompt, decoder, f"checkpoint {path.name}"
