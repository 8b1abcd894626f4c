"""The per-sample stages both readers run, each skipping and counting what it cannot use.

parse (json -> label, attrs + sidecars, group) -> load_image (decode, size check, finite values, [0, 1] range)
-> transform. Training and evaluation call the same functions, so a sample the eval reader skips is skipped by
the training reader for the same reason and counted under the same name (:mod:`agglom.data.counts`).
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional

import torch

from agglom.data.counts import SkipCounts
from agglom.data.decode import IMAGE_EXTS, DecodeError, decode_array, find_image, to_channels
from agglom.data.groups import GroupIndexer
from agglom.data.limits import sample_json, unsafe_key
from agglom.data.masks import IGNORE, MASK_MEMBER, MaskError, decode_mask
from agglom.data.shards import shard_id

NO_LABEL = -1  # the label of a sample read label-free
_RANGE_TOL = 1e-4  # decoders give [0, 1]; npy floats outside it by more than this are clamped and noted


def sample_id(sample: Mapping[str, Any]) -> str:
    """``<split folder>/<shard>:<key>``: how a sample is named in counts and messages."""
    url = sample.get("__url__")
    return f"{shard_id(url)}:{sample.get('__key__')}" if url else str(sample.get("__key__"))


def parse(sample: Dict[str, Any], counts: SkipCounts, indexer: GroupIndexer,
          sidecars: Mapping[str, Mapping[str, Any]], label_len: List[Optional[int]]) -> Optional[Dict[str, Any]]:
    """A tar sample -> ``{key, id, label, attrs, group, ext, bytes}``, or None (skipped and counted). A key that
    names a path (absolute, a ``..`` part: :func:`~agglom.data.limits.unsafe_key`) is ``bad_key``; a json over the
    size or nesting limit (:func:`~agglom.data.limits.sample_json`) is ``bad_json``.

    ``label_len`` is ``[expected from the datasheet, first seen]``: -1 for a single int label, L for a list of L.
    A dataset whose datasheet declares labels (``label_len[0]`` set) needs a label in every sample; one without
    (web-style shards: an image, maybe a caption and a json without label) is read label-free: the json is
    optional and a missing label becomes :data:`NO_LABEL` (noted ``no_label``) — distillation needs none."""
    key, ident = sample.get("__key__"), sample_id(sample)
    labelled = label_len[0] is not None
    why = unsafe_key(key)
    if why is not None:  # it would name a path in the feature cache's tars (agglom.cache.writer)
        counts.skip("bad_key", ident, why)
        return None
    ext = find_image(sample)
    if ext is None:
        other = sorted(k for k in sample if not k.startswith("__"))
        counts.skip("missing_field", ident, f"no image member (.{'/.'.join(IMAGE_EXTS)}; found {other or 'none'})")
        return None
    if "json" not in sample and labelled:
        counts.skip("missing_field", ident, "no .json member (metadata with the label)")
        return None
    try:
        meta = sample_json(sample["json"]) if "json" in sample else {}  # size and depth bounded
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
            "bytes": sample[ext], "mask_bytes": sample.get(MASK_MEMBER)}


def load_image(rec: Dict[str, Any], counts: SkipCounts, grayscale: str, min_side: int) -> Optional[torch.Tensor]:
    """Decode -> [C, H, W] float in [0, 1] (C = 1 for a grayscale source whatever ``grayscale`` says: the
    transform replicates it), or None (skipped and counted): undecodable, empty or non-finite
    (``bad_image``), a side under ``min_side`` pixels (``too_small``). Values outside [0, 1] (npy) are clamped
    and noted (``clamped``)."""
    try:
        arr = decode_array(rec["bytes"], rec["ext"])
        if arr.ndim < 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
            raise DecodeError(f"{rec['ext']}: empty image of shape {tuple(arr.shape)}")
        img = to_channels(arr, grayscale, expand=False)  # grayscale stays one channel until the transform's end
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


def load_mask(rec: Dict[str, Any], counts: SkipCounts, img: torch.Tensor) -> torch.Tensor:
    """The sample's mask as float [1, H, W] in the image's geometry, stored in ``rec["mask"]`` and returned:
    its label map, or :data:`~agglom.data.masks.IGNORE` everywhere for a sample without one. A mask that cannot
    be used (undecodable, colour, not the image's size) is dropped and noted (``bad_mask``); the sample stays.
    Float, so that the transform's geometry (nearest neighbour) runs on it as on the image."""
    h, w = img.shape[-2:]
    data = rec.get("mask_bytes")
    arr = None
    if data is not None:
        try:
            arr = decode_mask(data)
            if arr.shape != (h, w):
                raise MaskError(f"mask of {arr.shape[0]}x{arr.shape[1]} pixels for an image of {h}x{w}")
        except MaskError:
            counts.note("bad_mask")
            arr = None
    m = torch.full((1, h, w), float(IGNORE)) if arr is None else torch.from_numpy(arr.astype("float32"))[None]
    rec["mask"] = m
    return m


def transform(rec: Dict[str, Any], img: torch.Tensor, fn: Any, counts: SkipCounts,
              generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
    """``fn(img, generator)``, or None when it fails on this image (``bad_image``, with the error). A record
    holding a mask (:func:`load_mask`) has it transformed with the same geometry (``fn(img, generator,
    mask=...)``), and ``rec["mask"]`` replaced by the result: long [H', W']."""
    try:
        if rec.get("mask") is None:
            return fn(img, generator)
        out, mask = fn(img, generator, mask=rec["mask"])
        rec["mask"] = mask[0].round().long()
        return out
    except (RuntimeError, ValueError) as e:
        counts.skip("bad_image", rec["id"], f"transform: {e}")
        return None


def collate(recs: List[Dict[str, Any]], images: List[torch.Tensor], masks: bool = False) -> Dict[str, Any]:
    """A batch dict; ``masks``: with ``"mask"``, long [B, H, W] (:data:`~agglom.data.masks.IGNORE` where a sample
    has no mask)."""
    batch = {"image": torch.stack(images), "label": torch.tensor([r["label"] for r in recs], dtype=torch.long),
             "group": torch.tensor([r["group"] for r in recs], dtype=torch.long),
             "attrs": [r["attrs"] for r in recs], "key": [r["key"] for r in recs]}
    if masks:
        batch["mask"] = torch.stack([r["mask"] for r in recs])
    return batch


__all__ = ["parse", "load_image", "load_mask", "transform", "collate", "sample_id"]
