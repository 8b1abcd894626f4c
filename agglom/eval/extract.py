"""Frozen features (+ labels, attributes, keys, and optionally fidelity) from a student, export or teacher.

The encoders evaluated here are all "x -> features" functions over the same eval reader, so the probe
protocol is identical for the student and for each teacher (the audit baseline). :func:`collect_splits` is the
evaluation's shared pass: train/val/test read once for every encoder (every section reads its features).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from agglom.cache.reader import teacher_output


@dataclass
class SplitFeatures:
    features: np.ndarray  # [N, D]
    labels: np.ndarray  # [N] or [N, L]
    keys: List[str]
    attrs: List[Dict[str, Any]]
    data: Optional[Dict[str, Any]] = None  # what the reader read, skipped and noted (see data_summary)
    spatial: Optional[np.ndarray] = None  # [N, C, h, w] float16: spatial features (dense evaluation only)
    masks: Optional[np.ndarray] = None  # [N, H, W] int16 label maps, IGNORE where none (dense evaluation only)


def data_summary(loader: Any) -> Optional[Dict[str, Any]]:
    """``{"samples": read, "expected": from the datasheet or None, "skipped": {reason: n}, "noted": {...},
    "examples": {...}}`` of an eval loader's last pass (None for a reader that keeps no counts)."""
    stats = getattr(loader, "stats", None)
    if stats is None or not hasattr(stats, "summary"):
        return None
    return {"samples": int(loader.samples), "expected": getattr(loader, "expected_samples", None), **stats.summary()}


Encoder = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]  # (images, sample keys) -> features


class LastOutput:
    """A teacher's outputs for the batch last asked for, computed once: the probe's and the dense probe's encoders
    of one teacher share it, so a dense evaluation costs no second teacher forward."""

    def __init__(self, teacher: Any):
        self.teacher = teacher
        self._key: Optional[tuple] = None
        self._out: Any = None

    def __call__(self, x: torch.Tensor, keys: Sequence[str]) -> Any:
        key = (x.data_ptr(), tuple(x.shape), tuple(keys))
        if key != self._key:
            self._out, self._key = teacher_output(self.teacher, x, keys), key
        return self._out


def student_encoder(model: Any, kind: str) -> Encoder:
    return lambda x, keys: model.features(x, kind)


def student_spatial_encoder(model: Any, kind: str = "tokens") -> Encoder:
    """The student's spatial features for dense probes: its final patch tokens as a map [B, D, h, w] (from the
    model's per-batch token memo when it has one, so the probe features' backbone pass is reused); with ``kind``
    "adapters" (``eval.dense_features=adapters``), its spatial adapters' maps instead, each teacher's on the finest
    adapter grid, stacked along channels: the student as the teachers it emulates."""
    from agglom.model.student import student_tokens

    if kind == "adapters" and any(s.spatial for s in getattr(model, "specs", [])):
        def adapters(x: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
            maps = [p["spatial"] for p in model(x).values() if "spatial" in p]
            grid = max((m.shape[-2:] for m in maps), key=lambda g: g[0] * g[1])
            return torch.cat([m if m.shape[-2:] == grid else torch.nn.functional.interpolate(
                m, size=tuple(grid), mode="bilinear", align_corners=False) for m in maps], 1)

        return adapters

    def enc(x: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        _, patches, (h, w) = model.tokens(x) if hasattr(model, "tokens") else student_tokens(model.student, x)
        return patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], h, w)

    return enc


def teacher_encoder(teacher: Any, kind: str, outputs: Optional[Callable[..., Any]] = None) -> Encoder:
    """A teacher's probe features: its summary embedding ("summary", and "adapters": the student's adapters
    emulate exactly these), or the mean of its spatial map ("pooled"). ``outputs``: where its outputs come from
    (a shared :class:`LastOutput`; default: :func:`teacher_output`)."""

    def enc(x: torch.Tensor, keys: Sequence[str]) -> torch.Tensor:
        out = outputs(x, keys) if outputs is not None else teacher_output(teacher, x, keys)
        return out.spatial.flatten(2).mean(-1) if kind == "pooled" else out.summary

    return enc


def teacher_spatial_encoder(outputs: Callable[..., Any]) -> Encoder:
    """A teacher's spatial map [B, C, h, w] for dense probes, from ``outputs`` (a :class:`LastOutput`)."""
    return lambda x, keys: outputs(x, keys).spatial


@torch.no_grad()
def pool_to(maps: torch.Tensor, max_side: int) -> torch.Tensor:
    """Average-pool a [B, C, h, w] map so that neither side exceeds ``max_side`` (unchanged when it fits; 0: never
    pooled): bounds what a dense evaluation keeps in memory (a SAM neck map is 256 x 64 x 64 per image)."""
    h, w = maps.shape[-2:]
    if max_side <= 0 or max(h, w) <= max_side:
        return maps
    return torch.nn.functional.adaptive_avg_pool2d(maps, (min(h, max_side), min(w, max_side)))


def extract_all(loader: Any, encoders: Dict[str, Encoder], device: torch.device, desc: str = "features",
                fidelity: Any = None, dense: Optional[Dict[str, Encoder]] = None,
                dense_grid: int = 0) -> Dict[str, SplitFeatures]:
    """One pass over a split for every encoder: ``{name: SplitFeatures}`` (labels, keys and attrs shared), so the
    images are read and decoded once however many models are evaluated; ``fidelity`` (a
    :class:`~agglom.eval.fidelity.fidelity.FidelityAccumulator`) sees every batch too. ``dense`` (names of ``encoders`` ->
    spatial encoders; the loader must read masks): their maps (float16, pooled to at most ``dense_grid`` cells a
    side) and the batch masks are kept as well."""
    feats: Dict[str, List[np.ndarray]] = {n: [] for n in encoders}
    spatial: Dict[str, List[np.ndarray]] = {n: [] for n in (dense or {})}
    masks: List[np.ndarray] = []
    labels, keys, attrs = [], [], []
    bar = None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=desc, unit="img", leave=False)
    for batch in loader:
        x = batch["image"].to(device)
        for name, encoder in encoders.items():
            feats[name].append(encoder(x, batch["key"]).float().cpu().numpy())
        for name, encoder in (dense or {}).items():
            maps = pool_to(encoder(x, batch["key"]).float(), dense_grid)
            spatial[name].append(maps.cpu().numpy().astype(np.float16))
        if dense:
            masks.append(batch["mask"].cpu().numpy().astype(np.int16))
        labels.append(batch["label"].cpu().numpy())
        keys += list(batch["key"])
        attrs += list(batch["attrs"])
        if fidelity is not None:
            fidelity.update(x, batch["key"])
        if bar is not None:
            bar.update(x.shape[0])
    if bar is not None:
        bar.close()
    if not labels:
        from agglom.config.load import ConfigError

        summary = data_summary(loader)
        raise ConfigError(f"{desc}: no usable sample in the split"
                          + (f" (skipped: {loader.stats.describe()})" if summary else ""))
    # one order whatever the loader's workers interleaved: sorted by sample key, so a report's bootstrap draws
    # (and every interval) do not depend on num_workers
    order = np.argsort(np.asarray(keys), kind="stable")
    y = np.concatenate(labels)[order]
    keys, attrs = [keys[i] for i in order], [attrs[i] for i in order]
    data = data_summary(loader)
    m = np.concatenate(masks)[order] if masks else None
    return {n: SplitFeatures(np.concatenate(f)[order], y, keys, attrs, data,
                             spatial=np.concatenate(spatial[n])[order] if n in spatial else None,
                             masks=m if n in spatial else None) for n, f in feats.items()}


def collect_splits(cfg: Any, encoders: Dict[str, Any], device: torch.device, fidelity: Any = None,
                   batch_size: Optional[int] = None,
                   dense: Optional[Dict[str, Any]] = None, dense_grid: int = 0) -> Dict[str, Dict[str, SplitFeatures]]:
    """``{encoder name: {"train"|"val"|"test": SplitFeatures}}``: one pass over each split for all encoders;
    ``fidelity`` sees the test split. The probe is supervised: a split with unlabelled samples is refused.
    ``dense`` (encoder name -> spatial encoder): the same pass reads masks and keeps those models' spatial maps
    (average-pooled to at most ``dense_grid`` cells a side)."""
    from agglom.config.load import ConfigError
    from agglom.data.pipeline import NO_LABEL
    from agglom.data.readers import eval_loader

    out: Dict[str, Dict[str, SplitFeatures]] = {n: {} for n in encoders}
    for role, split in (("train", cfg.data.train_split), ("val", cfg.data.val_split), ("test", cfg.data.test_split)):
        loader = eval_loader(cfg, split, batch_size=batch_size, masks=bool(dense))
        got = extract_all(loader, encoders, device, desc=split, fidelity=fidelity if role == "test" else None,
                          dense=dense, dense_grid=dense_grid)
        labels = next(iter(got.values())).labels
        unlabelled = int((labels == NO_LABEL).reshape(len(labels), -1).any(1).sum())
        if unlabelled:
            raise ConfigError(f"eval: {unlabelled} of {len(labels)} samples of the {split!r} split have no "
                              "label; the evaluation fits a supervised probe, so it needs labelled train/val/test "
                              "splits (distillation itself does not)")
        for n, f in got.items():
            out[n][role] = f
    return out


def extract(loader: Any, encoder: Encoder, device: torch.device, desc: str = "features",
            fidelity: Any = None) -> SplitFeatures:
    """Features, labels, keys and attrs of one split for one encoder (see :func:`extract_all`)."""
    return extract_all(loader, {"_": encoder}, device, desc, fidelity)["_"]


def attribute_groups(attrs: List[Dict[str, Any]], names: Optional[List[str]] = None,
                     reference: Optional[List[Dict[str, Any]]] = None, indexer: Any = None,
                     specs: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """{attribute or group spec: [N] group names}.

    Attributes: numeric ones are binned, `age` as MEDFAIR's <60 / >=60, any other at the median of `reference`
    (the training split), so every split uses the same cut. Group specs of the recipe (`groups.specs`, e.g.
    declared bins or intersections such as sex x site) are evaluated as declared, through the same `indexer`
    training used. A sample without the attribute is in the explicit "unknown" group."""
    from agglom.data.patients import PATIENT

    reference = reference if reference is not None else attrs
    if not names:  # every attribute but the patient id, which clusters the bootstrap instead of grouping
        names = sorted({k for a in reference for k in a} - {PATIENT})
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
    """'run' for a training run dir, 'export' for an agglom export folder, 'onnx' for an exported ONNX graph
    (:mod:`agglom.eval.onnx_encoder`)."""
    path = Path(path)
    if path.suffix.lower() == ".onnx" and path.is_file():
        return "onnx"
    if (path / "adapters.json").is_file():
        return "export"
    if (path / "config.yaml").is_file():
        return "run"
    raise FileNotFoundError(f"{path} is neither an agglom run dir (config.yaml), an export (adapters.json) nor an "
                            "exported ONNX file (.onnx)")
