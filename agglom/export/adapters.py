"""The adapter pack: per-teacher heads + normalisers + the teacher roster, beside the timm folder.

`adapters.safetensors` holds the weights; `adapters.json` what is needed to rebuild them (recipe subset,
teacher specs with card digests). `load_adapter_pack(dir)` gives per-teacher predictions from the exported
student, in each teacher's own feature space (normalisers inverted).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from torch import nn

from agglom.config.schema import Recipe
from agglom.model import AgglomModel, TeacherSpec
from teachers.safe_load import load_safetensors

ADAPTER_SCHEMA = "agglom.adapters/1"


def write_adapter_pack(model: AgglomModel, cfg: Any, out: Path) -> None:
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if not k.startswith("student.")}
    save_file(state, str(out / "adapters.safetensors"))
    meta = {
        "schema": ADAPTER_SCHEMA,
        "teachers": [s.to_dict() for s in model.specs],
        "summary_token_index": model.summary_token_index,
        "recipe": {
            "student": OmegaConf.to_container(cfg.student, resolve=True),
            "heads": OmegaConf.to_container(cfg.heads, resolve=True),
            "data": {"image_size": cfg.data.image_size, "grayscale": cfg.data.grayscale},
        },
    }
    (out / "adapters.json").write_text(json.dumps(meta, indent=1))


class AdapterPack(nn.Module):
    """A timm student + its adapter heads: `forward(x)` -> {teacher: {summary, spatial}} in teacher space."""

    def __init__(self, model: AgglomModel) -> None:
        super().__init__()
        self.model = model

    @property
    def teacher_names(self):
        return self.model.teacher_names

    @torch.no_grad()
    def forward(self, x: torch.Tensor, normalised: bool = False) -> Dict[str, Dict[str, torch.Tensor]]:
        preds = self.model(x)
        if normalised:
            return preds
        return {name: self.model.denormalise(name, p) for name, p in preds.items()}


def load_adapter_pack(export_dir: Path, student: nn.Module = None) -> AdapterPack:
    """Load `<export_dir>` (timm folder + adapter pack); `student` may be a timm model loaded already."""
    import timm

    export_dir = Path(export_dir)
    meta = json.loads((export_dir / "adapters.json").read_text())
    if meta.get("schema") != ADAPTER_SCHEMA:
        raise ValueError(f"{export_dir}/adapters.json: unsupported schema {meta.get('schema')!r}")
    if student is None:
        student = timm.create_model(f"local-dir:{export_dir.resolve()}", pretrained=True, num_classes=0)
    cfg = OmegaConf.structured(Recipe)
    cfg = OmegaConf.merge(cfg, {"student": meta["recipe"]["student"], "heads": meta["recipe"]["heads"],
                                "data": meta["recipe"]["data"]})
    specs = [TeacherSpec.from_dict(d) for d in meta["teachers"]]
    model = AgglomModel(cfg, specs, in_chans=student.patch_embed.proj.in_channels, student=student)
    model.summary_token_index = {k: int(v) for k, v in meta["summary_token_index"].items()}
    missing, unexpected = model.load_state_dict(load_safetensors(export_dir / "adapters.safetensors"), strict=False)
    missing = [k for k in missing if not k.startswith("student.")]
    if missing or unexpected:
        raise ValueError(f"adapter pack mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return AdapterPack(model.eval())
