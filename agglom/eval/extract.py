"""Frozen features (+ labels, attributes, keys, and optionally fidelity) from a student, export or teacher.

The encoders evaluated here are all "x -> features" functions over the same eval reader, so the probe
protocol is identical for the student and for each teacher (the audit baseline).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class SplitFeatures:
    features: np.ndarray  # [N, D]
    labels: np.ndarray  # [N] or [N, L]
    keys: List[str]
    attrs: List[Dict[str, Any]]
    fidelity: Dict[str, np.ndarray] = field(default_factory=dict)  # "<teacher>/<summary|spatial>" -> [N] cosine


Encoder = Callable[[torch.Tensor], torch.Tensor]


def student_encoder(model: Any, kind: str) -> Encoder:
    return lambda x: model.features(x, kind)


def teacher_encoder(teacher: Any, kind: str) -> Encoder:
    def enc(x: torch.Tensor) -> torch.Tensor:
        out = teacher(x)
        return out.summary if kind == "summary" else out.spatial.flatten(2).mean(-1)

    return enc


def fidelity_fn(model: Any, teachers: Dict[str, Any]) -> Callable[[torch.Tensor], Dict[str, torch.Tensor]]:
    """Per-sample cosine between the student's head output and the teacher's *normalised* features
    (FAIRNESS.md: raw ViT features share a large component that hides every gap)."""

    def fid(x: torch.Tensor) -> Dict[str, torch.Tensor]:
        preds = model(x)
        out: Dict[str, torch.Tensor] = {}
        for name, teacher in teachers.items():
            o = teacher(x)
            tgt = model.normalise_targets(name, o.summary.clone(), o.spatial.clone(), update=False)
            if "summary" in tgt and "summary" in preds[name]:
                out[f"{name}/summary"] = F.cosine_similarity(preds[name]["summary"].float(), tgt["summary"], dim=-1)
            if "spatial" in tgt and "spatial" in preds[name]:
                out[f"{name}/spatial"] = F.cosine_similarity(preds[name]["spatial"].float(), tgt["spatial"],
                                                             dim=1).flatten(1).mean(1)
        return out

    return fid


@torch.no_grad()
def extract(loader: Any, encoder: Encoder, device: torch.device, desc: str = "features",
            fidelity: Optional[Callable[[torch.Tensor], Dict[str, torch.Tensor]]] = None) -> SplitFeatures:
    feats, labels, keys, attrs = [], [], [], []
    fid: Dict[str, List[np.ndarray]] = {}
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="img", leave=False)
    for batch in loader:
        x = batch["image"].to(device)
        feats.append(encoder(x).float().cpu().numpy())
        labels.append(batch["label"].cpu().numpy())
        keys += list(batch["key"])
        attrs += list(batch["attrs"])
        if fidelity is not None:
            for k, v in fidelity(x).items():
                fid.setdefault(k, []).append(v.float().cpu().numpy())
        if bar is not None:
            bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    if not feats:
        raise RuntimeError(f"{desc}: the split is empty")
    return SplitFeatures(np.concatenate(feats), np.concatenate(labels), keys, attrs,
                         {k: np.concatenate(v) for k, v in fid.items()})


def attribute_groups(attrs: List[Dict[str, Any]], names: Optional[List[str]] = None,
                     reference: Optional[List[Dict[str, Any]]] = None, indexer: Any = None,
                     specs: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """{attribute or group spec: [N] group names}.

    Attributes: numeric ones are binned, `age` as MEDFAIR's <60 / >=60, any other at the median of `reference`
    (the training split), so every split uses the same cut. Group specs of the recipe (`groups.specs`, e.g.
    declared bins or intersections such as sex x site) are evaluated as declared, through the same `indexer`
    training used. A sample without the attribute is in the explicit "unknown" group."""
    reference = reference if reference is not None else attrs
    if not names:
        names = sorted({k for a in reference for k in a})
    out: Dict[str, np.ndarray] = {}
    for spec in specs:
        out[spec] = np.asarray([indexer.values_of(spec, a) for a in attrs], dtype=object)
    for name in names:
        if name in out:
            continue
        ref_vals = [a.get(name) for a in reference if a.get(name) not in (None, "")]
        numeric = bool(ref_vals) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ref_vals)
        if numeric and len(set(ref_vals)) > 10:
            cut = 60.0 if name.lower() == "age" else float(np.median(ref_vals))
            lo, hi = f"<{cut:g}", f">={cut:g}"
            vals = [("unknown" if a.get(name) in (None, "") else (lo if float(a[name]) < cut else hi)) for a in attrs]
        else:
            vals = ["unknown" if a.get(name) in (None, "") else str(a[name]) for a in attrs]
        out[name] = np.asarray(vals, dtype=object)
    return out


def resolve_model_dir(path: Path) -> str:
    """'run' for a training run dir, 'export' for an agglom export folder."""
    path = Path(path)
    if (path / "adapters.json").is_file():
        return "export"
    if (path / "config.yaml").is_file():
        return "run"
    raise FileNotFoundError(f"{path} is neither an agglom run dir (config.yaml) nor an export (adapters.json)")
