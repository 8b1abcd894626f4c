"""What `agglom monitor` reads: the model (an export folder, an exported ONNX graph, a plain timm folder or a run)
as an ``x -> features`` encoder with the recipe its reader needs, the reference split and the arriving batches.

Batches arrive as folders of shards under ``incoming/``, one per date (``incoming/2026-11-01/*.tar``), read in the
order of their names (ISO dates sort in time); ``incoming/`` itself is one batch when its shards lie directly in it.
They are read with the model's preprocessing and without any datasheet: a sample's label is used where its json
has one and it is read label-free otherwise (what a deployment sees). Every sample's attributes come with it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import OmegaConf

from agglom.errors import ConfigError


@dataclass
class Sample:
    """The features, labels (-1: none) and attributes of one reading."""

    features: np.ndarray
    labels: np.ndarray
    attrs: List[Dict[str, Any]]
    read: Optional[Dict[str, Any]] = None


class _TimmFeatures:
    """A plain timm folder's ``features(x, kind)``: its CLS token or its mean patch token."""

    def __init__(self, student: Any) -> None:
        self.student = student.eval()

    def to(self, device: Any) -> "_TimmFeatures":
        self.student.to(device)
        return self

    def features(self, x: torch.Tensor, kind: str = "summary") -> torch.Tensor:
        from agglom.model.student import student_tokens

        if kind == "adapters":
            raise ConfigError("embedding=adapters needs the adapter heads (an agglom export or its ONNX graph); this "
                              "is a plain timm folder: choose embedding=summary or pooled")
        prefix, patches, _ = student_tokens(self.student, x)
        return prefix[:, 0] if kind == "summary" else patches.mean(1)


def _recipe(student: Dict[str, Any], data: Dict[str, Any]) -> Any:
    from agglom.config.schema import Recipe

    return OmegaConf.merge(OmegaConf.structured(Recipe), {"student": student, "data": data})


def load_model(path: Path, device: torch.device) -> Tuple[Any, Any, str]:
    """(model with ``features(x, kind)``, recipe for its reader, name) of an exported ONNX graph, an export folder, a
    plain timm folder or a run folder."""
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        from agglom.eval.onnx_encoder import load_onnx_model, onnx_recipe

        model = load_onnx_model(path)
        return model, onnx_recipe(model.meta), path.name
    if (path / "adapters.json").is_file():
        from agglom.export import load_adapter_pack

        meta = json.loads((path / "adapters.json").read_text())["recipe"]
        return load_adapter_pack(path).model.to(device).eval(), _recipe(meta["student"], meta["data"]), path.name
    if (path / "config.yaml").is_file():
        from agglom.runs import load_run_model, run_config

        return load_run_model(path).to(device).eval(), run_config(path), path.name
    if (path / "config.json").is_file():
        import timm

        student = timm.create_model(f"local-dir:{path.resolve()}", pretrained=True, num_classes=0)
        pc = student.pretrained_cfg
        c, size = int(pc["input_size"][0]), int(pc["input_size"][-1])
        data = {"image_size": size, "grayscale": "keep" if c == 1 else "replicate"}
        return _TimmFeatures(student).to(device), _recipe({"mean": list(pc["mean"]), "std": list(pc["std"])}, data), path.name
    raise ConfigError(f"model={path}: not an agglom export (adapters.json), an exported ONNX graph (.onnx), a timm "
                      "folder (config.json) nor a run (config.yaml)")


def batch_folders(incoming: Path) -> List[Path]:
    """The batch folders of ``incoming`` in name order: its subfolders holding shards, or ``incoming`` itself."""
    incoming = Path(incoming)
    if not incoming.is_dir():
        raise ConfigError(f"incoming={incoming}: no such folder (give the folder that holds one folder of shards per "
                          "date, e.g. incoming/2026-11-01/*.tar)")
    found = sorted(p for p in incoming.iterdir() if p.is_dir() and any(p.glob("*.tar")))
    if not found and any(incoming.glob("*.tar")):
        return [incoming]
    if not found:
        raise ConfigError(f"incoming={incoming}: no folder of shards in it (expected incoming/<date>/*.tar)")
    return found


def reader_config(recipe: Any, root: Path, split: str, image_size: Optional[int], num_workers: int) -> Any:
    """The recipe's reader settings pointed at ``root/<split>/*.tar``, every sample in one group (attributes kept)."""
    cfg = OmegaConf.create(OmegaConf.to_container(recipe, resolve=True))
    cfg.data.root, cfg.data.shards, cfg.data.test_split = str(root), None, split
    cfg.data.sidecars = []
    cfg.groups.by, cfg.groups.specs = "none", []
    if image_size:
        cfg.data.image_size = int(image_size)
    cfg.data.num_workers = int(num_workers)
    return cfg


def read_features(model: Any, cfg: Any, kind: str, device: torch.device, batch_size: int, what: str) -> Sample:
    """One pass over ``cfg.data.test_split`` through the model (features of ``kind``)."""
    from agglom.data.readers import eval_loader
    from agglom.eval.extract import extract

    try:
        loader = eval_loader(cfg, cfg.data.test_split, batch_size=batch_size)
        with torch.no_grad():
            sf = extract(loader, lambda x, keys: model.features(x, kind), device, desc=what)
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from None
    labels = np.asarray(sf.labels)
    return Sample(np.asarray(sf.features, dtype=np.float64), labels, list(sf.attrs), sf.data)


__all__ = ["Sample", "load_model", "batch_folders", "reader_config", "read_features"]
