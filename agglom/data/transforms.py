"""Tensor transforms from a timm-style data config: eval = resize + normalise; train adds augmentation.

Randomness comes from an explicit ``torch.Generator`` (never the global RNG), so a batch's augmentation is a
pure function of its seed: the training reader seeds one generator per batch, which is what lets a resumed
reader skip batches without running their augmentation and still produce identical later batches.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from agglom.config.access import cfg_get
from agglom.config.choices import input_channels

_INTERP = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
           "nearest": InterpolationMode.NEAREST}


def _channel_stats(values: Sequence[float], channels: int) -> List[float]:
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return [sum(values) / len(values)]
    raise ValueError(f"mean/std has {len(values)} entries for {channels}-channel images")


def data_config(cfg: Any) -> Dict[str, Any]:
    """timm-style data config (input_size, interpolation, mean, std, crop_pct) for the student's input."""
    data = cfg.data
    channels = input_channels(cfg_get(data, "grayscale", "replicate"))
    size = int(cfg_get(data, "image_size", 64))
    student = cfg_get(cfg, "student")
    mean = cfg_get(student, "mean", [0.5, 0.5, 0.5])
    std = cfg_get(student, "std", [0.5, 0.5, 0.5])
    return {"input_size": (channels, size, size), "interpolation": str(cfg_get(data, "interpolation", "bicubic")),
            "mean": tuple(_channel_stats(list(mean), channels)), "std": tuple(_channel_stats(list(std), channels)),
            "crop_pct": 1.0, "crop_mode": "center"}


class ImageTransform:
    """Callable ``(img [C,H,W] float in [0,1], generator=None) -> normalised [C,size,size]``. A one-channel image
    given to a three-channel transform (the reader keeps grayscale sources at one channel) is augmented as one
    channel and replicated at the end: every step acts on each channel alike, so the result is the same image, bit
    for bit."""

    def __init__(self, dcfg: Dict[str, Any], augment: Any = None, train: bool = False):
        self.channels, self.h, self.w = dcfg["input_size"]
        interp = dcfg.get("interpolation", "bicubic")
        if interp not in _INTERP:
            raise ValueError(f"interpolation must be one of {sorted(_INTERP)}, got {interp!r}")
        self.interp = _INTERP[interp]
        self.mean = torch.tensor(dcfg["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(dcfg["std"], dtype=torch.float32).view(-1, 1, 1)
        self.train = bool(train)
        a = augment
        self.hflip = float(cfg_get(a, "hflip", 0.0)) if train else 0.0
        self.scale_min = float(cfg_get(a, "scale_min", 1.0)) if train else 1.0
        self.ratio_jitter = float(cfg_get(a, "ratio_jitter", 0.0)) if train else 0.0
        self.brightness = float(cfg_get(a, "brightness", 0.0)) if train else 0.0
        self.contrast = float(cfg_get(a, "contrast", 0.0)) if train else 0.0
        self.rotate = float(cfg_get(a, "rotate", 0.0)) if train else 0.0

    def _rand(self, g: Optional[torch.Generator]) -> float:
        return float(torch.rand((), generator=g))

    def _uniform(self, g: Optional[torch.Generator], lo: float, hi: float) -> float:
        return lo + (hi - lo) * self._rand(g)

    def _crop_params(self, h: int, w: int, g: Optional[torch.Generator]) -> tuple:
        area = h * w
        log_r = (math.log(1.0 / (1.0 + self.ratio_jitter)), math.log(1.0 + self.ratio_jitter))
        for _ in range(10):
            target = area * self._uniform(g, self.scale_min, 1.0)
            ratio = (w / h) * math.exp(self._uniform(g, *log_r))
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=g))
                left = int(torch.randint(0, w - cw + 1, (), generator=g))
                return top, left, ch, cw
        return 0, 0, h, w

    def __call__(self, img: torch.Tensor, generator: Optional[torch.Generator] = None,
                 mask: Optional[torch.Tensor] = None) -> Any:
        """The transformed image, or ``(image, mask)`` when a ``mask`` (float [1, H, W] label map) is given: the
        mask goes through the same crop, resize, flip and rotation (nearest neighbour, so labels stay labels;
        pixels rotated in from outside are :data:`~agglom.data.masks.IGNORE`) and none of the intensity changes.
        The random draws are the same with or without a mask, so a mask never changes the image."""
        if img.ndim != 3:
            raise ValueError(f"expected an image [C,H,W], got shape {tuple(img.shape)}")
        h, w = img.shape[-2:]
        if mask is not None and tuple(mask.shape[-2:]) != (h, w):
            raise ValueError(f"mask {tuple(mask.shape[-2:])} and image {(h, w)} differ in size")
        size = [self.h, self.w]
        g = generator
        near = InterpolationMode.NEAREST
        if self.train and (self.scale_min < 1.0 or self.ratio_jitter > 0):
            top, left, ch, cw = self._crop_params(h, w, g)
            img = TF.resized_crop(img, top, left, ch, cw, size, interpolation=self.interp, antialias=True)
            if mask is not None:
                mask = TF.resized_crop(mask, top, left, ch, cw, size, interpolation=near, antialias=False)
        elif (h, w) != (self.h, self.w):
            img = TF.resize(img, size, interpolation=self.interp, antialias=True)
            if mask is not None:
                mask = TF.resize(mask, size, interpolation=near, antialias=False)
        if self.hflip > 0 and self._rand(g) < self.hflip:
            img = TF.horizontal_flip(img)
            if mask is not None:
                mask = TF.horizontal_flip(mask)
        if self.rotate > 0:
            angle = self._uniform(g, -self.rotate, self.rotate)
            img = TF.rotate(img, angle, interpolation=InterpolationMode.BILINEAR)
            if mask is not None:
                mask = TF.rotate(mask + 1.0, angle, interpolation=near) - 1.0  # outside: 0 + (-1) = IGNORE
        if self.brightness > 0:
            img = img * self._uniform(g, max(0.0, 1 - self.brightness), 1 + self.brightness)
        if self.contrast > 0:
            factor = self._uniform(g, max(0.0, 1 - self.contrast), 1 + self.contrast)
            # the mean of the image as replicated: one channel's mean sums in another order (not bitwise the same)
            m = (img if img.shape[0] == self.channels else img.expand(self.channels, -1, -1).contiguous()).mean()
            img = (img - m) * factor + m
        if self.brightness > 0 or self.contrast > 0:
            img = img.clamp(0.0, 1.0)
        img = img.clamp(0.0, 1.0) if self.interp == InterpolationMode.BICUBIC else img
        out = (img - self.mean) / self.std  # [channels, 1, 1] statistics broadcast a one-channel image to all
        return out if mask is None else (out, mask)


def build_transform(cfg: Any, train: bool = False) -> ImageTransform:
    """The reader's transform: eval/caching = deterministic resize + normalise; train adds cfg.data.augment."""
    return ImageTransform(data_config(cfg), cfg_get(cfg.data, "augment"), train=train)


def denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    c = x.shape[-3]
    m = torch.tensor(_channel_stats(list(mean), c), dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(_channel_stats(list(std), c), dtype=x.dtype).view(-1, 1, 1)
    return x * s + m


__all__ = ["data_config", "build_transform", "ImageTransform", "denormalise"]
