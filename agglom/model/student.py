"""The student: a stock timm ViT whose pretrained_cfg carries our preprocessing, so it exports as plain timm."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import timm
import torch
from torch import nn

from agglom.config.load import ConfigError


def build_student(student_cfg: Any, image_size: int, in_chans: int, num_summary_tokens: int) -> nn.Module:
    """`timm.create_model(name, num_classes=0, **model_args)` with our mean/std/input size recorded.

    `num_summary_tokens` extra register tokens (one per teacher) are added as timm `reg_tokens`, so the
    exported model remains a stock timm architecture.
    """
    args: Dict[str, Any] = dict(student_cfg.model_args or {})
    args.setdefault("img_size", image_size)
    args.setdefault("in_chans", in_chans)
    if num_summary_tokens:
        args["reg_tokens"] = int(args.get("reg_tokens", 0)) + num_summary_tokens
    mean, std = tuple(student_cfg.mean), tuple(student_cfg.std)
    if in_chans == 1:
        mean, std = mean[:1], std[:1]
    overlay = dict(mean=mean, std=std, input_size=(in_chans, image_size, image_size), interpolation="bicubic",
                   crop_pct=1.0, crop_mode="center", num_classes=0, tag="agglom", license="apache-2.0",
                   url="", hf_hub_id="", description="agglom student (knowledge agglomeration with subgroup parity)")
    try:
        model = timm.create_model(student_cfg.model, pretrained=bool(student_cfg.pretrained), num_classes=0,
                                  pretrained_cfg_overlay=overlay, **args)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"student.model: unknown timm model {student_cfg.model!r}") from e
        raise
    if not hasattr(model, "num_prefix_tokens") or not hasattr(model, "patch_embed"):
        raise ConfigError(f"student.model: {student_cfg.model!r} is not a ViT with prefix/patch tokens")
    if student_cfg.checkpoint:
        from teachers.safe_load import CheckpointFormatError, UnsafeCheckpointError, load_state_dict

        try:
            weights = load_state_dict(student_cfg.checkpoint)
        except (FileNotFoundError, UnsafeCheckpointError, CheckpointFormatError) as e:
            raise ConfigError(f"student.checkpoint: {e}") from None
        missing, unexpected = model.load_state_dict(weights, strict=False)
        if unexpected:
            raise ConfigError(f"student.checkpoint: unexpected keys {unexpected[:5]} for {student_cfg.model}")
    model.agglom_model_args = args  # what export records in config.json
    return model


def student_tokens(model: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, Tuple[int, int]]:
    """(prefix tokens [B, P, D], patch tokens [B, N, D], grid) through timm's own forward_features. One split, not
    two slices: backward then writes the two gradients into one tensor, rather than zero-filling a full-size
    gradient for each slice and adding them."""
    feats = model.forward_features(x)
    p = model.num_prefix_tokens
    grid = model.patch_embed.dynamic_feat_size(x.shape[-2:]) if getattr(model, "dynamic_img_size", False) \
        else tuple(model.patch_embed.grid_size)
    prefix, patches = feats.split([p, feats.shape[1] - p], 1)
    return prefix, patches, (int(grid[0]), int(grid[1]))


def resize_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """A student-normalised batch [B, C, H, W] at ``size`` x ``size`` (antialiased bilinear; unchanged when it is).

    The one rule for feeding the student another size than the reader's, in training (``data.resolutions``) and in
    the resolution evaluation (``eval.resolutions``), so both see the same pixels for the same size."""
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                           antialias=True)
