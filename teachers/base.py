"""The frozen `Teacher` every family builds, and its output."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .cards import SUMMARY_KINDS, CardError, TeacherCard


class TeacherOutput(NamedTuple):
    summary: torch.Tensor  # [B, Ds] fp32
    spatial: torch.Tensor  # [B, Cs, h, w] fp32


def pick_dtype(device: torch.device, gpu_dtype: str) -> torch.dtype:
    """fp32 on CPU (bf16 autocast is slower there); on GPU the card's `gpu_dtype` where the card supports it."""
    if device.type == "cuda":
        if gpu_dtype == "bf16" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        if gpu_dtype == "fp16":
            return torch.float16
    return torch.float32


def _stats(values: Sequence[float], name: str) -> torch.Tensor:
    t = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    if t.ndim != 1 or t.numel() not in (1, 3):
        raise ValueError(f"{name} must have 1 or 3 values, got {list(values)}")
    return t.view(1, -1, 1, 1)


class Teacher(nn.Module):
    """A frozen teacher. Subclasses (one per family) implement `build_model` and `features`.

    `forward(x)` takes the *student-normalised* batch [B, 1|3, H, W]: it un-normalises with the student's mean/std,
    replicates one channel to three, normalises with the teacher's own mean/std, resizes (squash) or resizes the
    long side and pads bottom/right (longest, as SAM does) to `input_size`, and returns fp32
    `TeacherOutput(summary [B, summary_dim], spatial [B, spatial_dim, *grid])`.
    """

    family: str = ""
    default_summary: str = "cls"
    default_spatial: str = "patch"
    summary_kinds: Tuple[str, ...] = SUMMARY_KINDS
    spatial_kinds: Tuple[str, ...] = ("patch",)

    #: the most images one frozen forward takes; a larger batch runs in chunks of this many, with the same outputs
    #: (a teacher in eval mode treats each image alone). 0: no cap. A family sets it where a batch that suits the
    #: student would not fit in memory (LiteMedSAM: teachers/families/sam.py)
    max_batch: int = 0

    # set by build_model
    summary_dim: int
    spatial_dim: int
    patch_size: Tuple[int, int]
    grid: Tuple[int, int]

    @classmethod
    def validate_card(cls, card: TeacherCard) -> None:
        if card.summary is not None and card.summary not in cls.summary_kinds:
            raise CardError(f"bad value for field 'summary' in card {card.source_path or card.name}: "
                            f"{card.summary!r}; family {cls.family} supports: {', '.join(cls.summary_kinds)}")
        if card.spatial is not None and card.spatial not in cls.spatial_kinds:
            raise CardError(f"bad value for field 'spatial' in card {card.source_path or card.name}: "
                            f"{card.spatial!r}; family {cls.family} supports: {', '.join(cls.spatial_kinds)}")

    def __init__(self, card: TeacherCard, input_mean: Sequence[float] = (0.5,), input_std: Sequence[float] = (0.5,),
                 device: Any = "cpu", load_weights: bool = True) -> None:
        super().__init__()
        self.validate_card(card)
        self.card = card
        self.name = card.name
        self.input_size: Tuple[int, int] = (int(card.input_size[0]), int(card.input_size[1]))
        self.resize_policy = card.resize
        self.interpolation = card.interpolation
        self.summary_kind = card.summary or self.default_summary
        self.spatial_kind = card.spatial or self.default_spatial
        self.register_buffer("input_mean", _stats(input_mean, "input_mean"), persistent=False)
        self.register_buffer("input_std", _stats(input_std, "input_std"), persistent=False)
        self.register_buffer("mean", _stats(card.norm_mean, "card mean"), persistent=False)
        self.register_buffer("std", _stats(card.norm_std, "card std"), persistent=False)
        device = torch.device(device)
        if load_weights and card.weights.source in ("file", "folder"):
            card.require_weights()  # fail before building anything, saying which file to place where
        # random init is seeded by the card, inside a forked RNG: the same card always gives the same teacher
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(card.seed))
            self.model = self.build_model(card, load_weights=load_weights)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = pick_dtype(device, card.gpu_dtype)
        if device.type != "meta":
            self.to(device)
            self.model.to(self.dtype)
        super().train(False)

    # ------------------------------------------------------------------ family hooks
    def build_model(self, card: TeacherCard, load_weights: bool) -> nn.Module:  # pragma: no cover - abstract
        raise NotImplementedError

    def features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        """x: the teacher-normalised batch at input_size -> (summary [B, Ds], spatial [B, Cs, h, w])."""
        raise NotImplementedError

    # ------------------------------------------------------------------ frozen
    def train(self, mode: bool = True) -> "Teacher":
        """A teacher stays in eval mode whatever the caller asks."""
        return super().train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Teacher":
        """A teacher's parameters never require grad."""
        return super().requires_grad_(False)

    # ------------------------------------------------------------------ preprocessing
    @staticmethod
    def _match(stats: torch.Tensor, channels: int) -> torch.Tensor:
        if stats.shape[1] == channels or stats.shape[1] == 1:
            return stats
        if channels == 1:  # a grey batch normalised with a 3-value mean: the first value applies
            return stats[:, :1]
        raise ValueError(f"input has {channels} channels but the student mean/std has {stats.shape[1]} values")

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Student-normalised [B, 1|3, H, W] -> the teacher's own normalisation at input_size (fp32)."""
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"teacher '{self.name}' expects [B, 1|3, H, W], got {tuple(x.shape)}")
        x = x.to(device=self.mean.device, dtype=torch.float32)
        c = x.shape[1]
        x = x * self._match(self.input_std, c) + self._match(self.input_mean, c)  # pixels in [0, 1]
        if c == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        return self.resize(x)

    def resize(self, x: torch.Tensor) -> torch.Tensor:
        th, tw = self.input_size
        h, w = x.shape[-2:]
        if self.resize_policy == "longest":
            # SAM's ResizeLongestSide.get_preprocess_shape, then zero padding (= the mean colour) bottom/right
            scale = min(th / h, tw / w) if th != tw else th / max(h, w)
            nh, nw = int(h * scale + 0.5), int(w * scale + 0.5)
            x = self._interp(x, (nh, nw))
            return F.pad(x, (0, tw - nw, 0, th - nh))
        return self._interp(x, (th, tw))

    def _interp(self, x: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        mode = self.interpolation
        if mode in ("bilinear", "bicubic"):  # antialias: PIL's kernels (what timm/open_clip/SAM transforms use)
            return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
        return F.interpolate(x, size=size, mode=mode)

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> TeacherOutput:
        if self.max_batch and x.shape[0] > self.max_batch:
            parts = [self(chunk) for chunk in x.split(self.max_batch)]
            return TeacherOutput(torch.cat([p.summary for p in parts]), torch.cat([p.spatial for p in parts]))
        with torch.inference_mode():
            y = self.preprocess(x).to(self.dtype)
            summary, spatial = self.features(y)
            summary, spatial = summary.float(), spatial.float()
        # clone outside inference mode: targets must be ordinary tensors that autograd may save
        return TeacherOutput(summary.clone(), spatial.clone())

    # ------------------------------------------------------------------ description
    def contract(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "model": self.card.model,
            "summary": self.summary_kind,
            "spatial": self.spatial_kind,
            "summary_dim": int(self.summary_dim),
            "spatial_dim": int(self.spatial_dim),
            "grid": [int(g) for g in self.grid],
            "patch_size": [int(p) for p in self.patch_size],
            "input_size": list(self.input_size),
            "resize": self.resize_policy,
            "interpolation": self.interpolation,
            "mean": [round(float(v), 8) for v in self.card.norm_mean],
            "std": [round(float(v), 8) for v in self.card.norm_std],
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, family={self.family}, input_size={self.input_size}, "
                f"summary_dim={self.summary_dim}, spatial_dim={self.spatial_dim}, grid={self.grid}")


def to_pair(v: Any) -> Tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1]))
    return (int(v), int(v))


def grid_of(input_size: Tuple[int, int], patch: Tuple[int, int]) -> Tuple[int, int]:
    return (input_size[0] // patch[0], input_size[1] // patch[1])


def load_into(module: nn.Module, state_dict: Dict[str, torch.Tensor], what: str, strict: bool = True,
              source: Optional[str] = None) -> None:
    """load_state_dict with an error that says which keys were missing/unexpected."""
    missing, unexpected = module.load_state_dict(state_dict, strict=False)
    if strict and (missing or unexpected):
        src = f" from {source}" if source else ""
        raise RuntimeError(f"weights{src} do not fit {what}: {len(missing)} missing keys {missing[:5]}, "
                           f"{len(unexpected)} unexpected keys {unexpected[:5]}")
