"""The per-sample stages both readers run, each skipping and counting what it cannot use.

parse (json -> label, attrs + sidecars, group) -> load_image (decode, size check, finite values, [0, 1] range)
-> transform. Training and evaluation call the same functions, so a sample the eval reader skips is skipped by
the training reader for the same reason and counted under the same name (:mod:`agglom.data.counts`).
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional

import torch

from agglom.data.counts import SkipCounts
from agglom.data.decode import IMAGE_EXTS, DecodeError, decode_array, find_image, to_channels
from agglom.data.groups import GroupIndexer
from agglom.data.shards import shard_id

NO_LABEL = -1  # the label of a sample read label-free
_RANGE_TOL = 1e-4  # decoders give [0, 1]; npy floats outside it by more than this are clamped and noted


def sample_id(sample: Mapping[str, Any]) -> str:
    """``<split folder>/<shard>:<key>``: how a sample is named in counts and messages."""
    url = sample.get("__url__")
    return f"{shard_id(url)}:{sample.get('__key__')}" if url else str(sample.get("__key__"))


def parse(sample: Dict[str, Any], counts: SkipCounts, indexer: GroupIndexer,
          sidecars: Mapping[str, Mapping[str, Any]], label_len: List[Optional[int]]) -> Optional[Dict[str, Any]]:
    """A tar sample -> ``{key, id, label, attrs, group, ext, bytes}``, or None (skipped and counted).

    ``label_len`` is ``[expected from the datasheet, first seen]``: -1 for a single int label, L for a list of L.
    A dataset whose datasheet declares labels (``label_len[0]`` set) needs a label in every sample; one without
    (web-style shards: an image, maybe a caption and a json without label) is read label-free: the json is
    optional and a missing label becomes :data:`NO_LABEL` (noted ``no_label``) — distillation needs none."""
    key, ident = sample.get("__key__"), sample_id(sample)
    labelled = label_len[0] is not None
    ext = find_image(sample)
    if ext is None:
        other = sorted(k for k in sample if not k.startswith("__"))
        counts.skip("missing_field", ident, f"no image member (.{'/.'.join(IMAGE_EXTS)}; found {other or 'none'})")
        return None
    if "json" not in sample and labelled:
        counts.skip("missing_field", ident, "no .json member (metadata with the label)")
        return None
    try:
        meta = json.loads(sample["json"]) if "json" in sample else {}
    except (ValueError, UnicodeDecodeError) as e:
        counts.skip("bad_json", ident, e)
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("attrs", {}) or {}, dict):
        counts.skip("bad_json", ident, "json is not an object {label, attrs, split}")
        return None
    if "label" not in meta and labelled:
        counts.skip("missing_field", ident, "no 'label' in the json (the datasheet declares labels)")
        return None
    if "label" not in meta:
        counts.note("no_label")
    label = meta.get("label", NO_LABEL)
    if isinstance(label, bool) or not (isinstance(label, int) or (
            isinstance(label, list) and label and all(isinstance(v, int) and not isinstance(v, bool) for v in label))):
        counts.skip("bad_label", ident, f"label {label!r} is not an int or a non-empty list of ints")
        return None
    n = len(label) if isinstance(label, list) else -1
    if label_len[0] is None and label_len[1] is None:
        label_len[1] = n
    expected = label_len[0] if label_len[0] is not None else label_len[1]
    if n != expected:
        counts.skip("bad_label", ident, f"label {label!r} does not match the dataset's label shape")
        return None
    attrs = dict(meta.get("attrs") or {})
    if sidecars and key in sidecars:
        attrs.update(sidecars[key])
    group = indexer.index(attrs)
    if group == indexer.unknown_index:
        counts.note("unknown_group")
    return {"key": key, "id": ident, "label": label, "attrs": attrs, "group": group, "ext": ext,
            "bytes": sample[ext]}


def load_image(rec: Dict[str, Any], counts: SkipCounts, grayscale: str, min_side: int) -> Optional[torch.Tensor]:
    """Decode -> [C, H, W] float in [0, 1], or None (skipped and counted): undecodable, empty or non-finite
    (``bad_image``), a side under ``min_side`` pixels (``too_small``). Values outside [0, 1] (npy) are clamped
    and noted (``clamped``)."""
    try:
        arr = decode_array(rec["bytes"], rec["ext"])
        if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DecodeError(f"{rec['ext']}: empty image of shape {tuple(arr.shape)}")
        img = to_channels(arr, grayscale)
    except DecodeError as e:
        counts.skip("bad_image", rec["id"], e)
        return None
    h, w = img.shape[-2:]
    if min(h, w) < min_side:
        counts.skip("too_small", rec["id"], f"{h}x{w} pixels, under data.min_image_side={min_side}")
        return None
    lo, hi = float(img.min()), float(img.max())
    if lo < -_RANGE_TOL or hi > 1 + _RANGE_TOL:
        counts.note("clamped")
        img = img.clamp(0.0, 1.0)
    return img


def transform(rec: Dict[str, Any], img: torch.Tensor, fn: Any, counts: SkipCounts,
              generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """``fn(img, generator)``, or None when it fails on this image (``bad_image``, with the error)."""
    try:
        return fn(img, generator)
    except (RuntimeError, ValueError) as e:
        counts.skip("bad_image", rec["id"], f"transform: {e}")
        return None


def collate(recs: List[Dict[str, Any]], images: List[torch.Tensor]) -> Dict[str, Any]:
    return {"image": torch.stack(images), "label": torch.tensor([r["label"] for r in recs], dtype=torch.long),
            "group": torch.tensor([r["group"] for r in recs], dtype=torch.long),
            "attrs": [r["attrs"] for r in recs], "key": [r["key"] for r in recs]}


__all__ = ["parse", "load_image", "transform", "collate", "sample_id"]
