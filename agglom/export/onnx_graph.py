"""The student and its adapter heads as one traceable module with named outputs, for `agglom export format=onnx`.

:class:`OnnxStudent` computes what :class:`agglom.model.AgglomModel` computes (``features(x, kind)`` and every
teacher's adapter outputs mapped back to that teacher's space by ``denormalise``), written so that
``torch.export`` keeps the batch *and* the image size symbolic:

- the token grid is read from the input's shape without turning it into Python ints;
- a teacher's spatial map is brought to the teacher's grid by :func:`resize_to_grid`, which does what
  :func:`agglom.model.agglomerator.to_grid` does (area-average when the token grid is at least the teacher's on both
  sides, bilinear otherwise) as two small matrix products, so the choice is made in the graph at run time instead
  of being fixed at the size the graph was traced at.

The export checks the ONNX graph against the real model, not against this module (:mod:`agglom.export.onnx_export`).
"""
from __future__ import annotations

import re
from typing import Any, Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from agglom.model.agglomerator import module_key

#: the outputs every export has: the three probe features of ``AgglomModel.features`` (eval.features)
FEATURE_OUTPUTS = {"summary": "cls", "pooled": "pooled", "adapters": "adapters"}


def output_key(name: str) -> str:
    """A teacher name as part of an ONNX output name (letters, digits, ``_`` and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", module_key(name)).strip("_") or "teacher"


def teacher_keys(specs: Sequence[Any]) -> Dict[str, str]:
    """Teacher name -> its part of the output names (:func:`output_key`, numbered when two names would clash)."""
    out: Dict[str, str] = {}
    for i, s in enumerate(specs):
        key = output_key(s.name)
        out[s.name] = key if key not in out.values() else f"{key}-{i}"
    return out


def output_names(model: Any) -> List[str]:
    """The graph's outputs, in order: ``cls``, ``pooled``, ``adapters`` (when a teacher has a summary head), then
    ``summary.<teacher>`` / ``spatial.<teacher>`` in each teacher's own feature space."""
    names = ["cls", "pooled"] + (["adapters"] if any(s.summary for s in model.specs) else [])
    keys = teacher_keys(model.specs)
    for s in model.specs:
        names += [f"{kind}.{keys[s.name]}" for kind, on in (("summary", s.summary), ("spatial", s.spatial)) if on]
    return names


def _count(n: Any, like: torch.Tensor) -> torch.Tensor:
    """A symbolic size as a 0-d float tensor (kept in the graph, not specialised to the traced value)."""
    return torch.ones(n, dtype=like.dtype, device=like.device).sum()


def _axis_weights(n_in: Any, n_out: int, shrink: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n_out, n_in] weights of one axis: adaptive average pooling where ``shrink``, else bilinear interpolation
    (align_corners=False, no antialias), each as torch computes it."""
    i = torch.arange(n_out, device=like.device)
    j = torch.arange(n_in, device=like.device).unsqueeze(0)
    start = ((i * n_in) // n_out).unsqueeze(1)
    end = (((i + 1) * n_in + n_out - 1) // n_out).unsqueeze(1)
    inside = ((j >= start) & (j < end)).to(like.dtype)
    pool = inside / inside.sum(1, keepdim=True)
    size = _count(n_in, like)
    src = ((i.to(like.dtype) + 0.5) * (size / n_out) - 0.5).clamp(min=0.0)
    i0 = src.floor()
    i1 = torch.minimum(i0 + 1, size - 1)
    frac = (src - i0).unsqueeze(1)
    jf = j.to(like.dtype)
    linear = (1 - frac) * (jf == i0.unsqueeze(1)).to(like.dtype) + frac * (jf == i1.unsqueeze(1)).to(like.dtype)
    return torch.where(shrink, pool, linear)


def resize_to_grid(x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """A [B, C, h, w] map on the teacher's ``grid``, as :func:`agglom.model.agglomerator.to_grid` gives it, for a
    symbolic h and w (identity when the sides match: the pooling weights are then the identity)."""
    h, w = x.shape[-2], x.shape[-1]
    shrink = (_count(h, x) >= grid[0]) & (_count(w, x) >= grid[1])
    rows = _axis_weights(h, int(grid[0]), shrink, x)
    cols = _axis_weights(w, int(grid[1]), shrink, x)
    return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


class OnnxStudent(nn.Module):
    """``forward(image) -> tuple`` in the order of :func:`output_names`."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def _grid(self, x: torch.Tensor) -> Tuple[Any, Any]:
        student = self.model.student
        if getattr(student, "dynamic_img_size", False):
            g = student.patch_embed.dynamic_feat_size(x.shape[-2:])
            return g[0], g[1]
        return tuple(student.patch_embed.grid_size)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        m = self.model
        feats = m.student.forward_features(x)
        p = m.student.num_prefix_tokens
        prefix, patches = feats[:, :p], feats[:, p:]
        h, w = self._grid(x)
        summaries: List[torch.Tensor] = []
        per_teacher: List[torch.Tensor] = []
        for s in m.specs:
            key = module_key(s.name)
            if s.summary:
                head = m.summary_heads[key]
                tok = prefix[:, m.summary_token_index[s.name]].unsqueeze(1)
                y = head(torch.cat([tok, patches], 1) if head.uses_context else tok)[:, 0]
                summaries.append(y)
                per_teacher.append(m.summary_norms[key].inverse(y.float()))
            if s.spatial:
                y = m.spatial_heads[key](patches)
                y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], h, w)
                if m.upsample > 1:
                    y = F.pixel_shuffle(y, m.upsample)
                per_teacher.append(m.spatial_norms[key].inverse_spatial(resize_to_grid(y, s.grid).float()))
        head_outputs = [torch.cat(summaries, 1)] if summaries else []
        return (prefix[:, 0], patches.mean(1), *head_outputs, *per_teacher)


@torch.no_grad()
def reference_outputs(model: Any, x: torch.Tensor) -> Dict[str, torch.Tensor]:
    """What the real model gives for ``x``, by output name: the check's ground truth (:func:`output_names`)."""
    out = {"cls": model.features(x, "summary"), "pooled": model.features(x, "pooled")}
    if any(s.summary for s in model.specs):
        out["adapters"] = model.features(x, "adapters")
    preds, keys = model(x), teacher_keys(model.specs)
    for s in model.specs:
        for kind, value in model.denormalise(s.name, preds[s.name]).items():
            out[f"{kind}.{keys[s.name]}"] = value
    return out


__all__ = ["OnnxStudent", "FEATURE_OUTPUTS", "output_names", "output_key", "teacher_keys", "reference_outputs", "resize_to_grid"]
