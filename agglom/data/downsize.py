"""`agglom data pack max_side=N`: shrink an image whose longer side exceeds N before it goes into a shard, keeping
its precision: a 16-bit source stays a 16-bit PNG, an 8-bit one an 8-bit PNG, an ``.npy`` keeps its dtype.

Why: radiographs arrive at 2-3k px while SAM/MedSAM take 1024 px and CLIP/DINOv2 224-518 px. Shards at the largest
size any teacher will read keep the bytes (and the reader's decode time) in proportion, and the reader still
resizes on the fly to each run's ``data.image_size``. The rule: the aspect ratio is kept, the longer side becomes N
(each side rounded, at least 1 px); intensities are resampled in float32 with an antialiased Lanczos filter, then
clipped to the source's range and rounded back to its integer type; a mask follows with nearest-neighbour, so its
labels stay labels.
"""
from __future__ import annotations

import io
from typing import Optional, Tuple

import numpy as np

from agglom.data.decode import DecodeError


def target_size(height: int, width: int, max_side: int) -> Optional[Tuple[int, int]]:
    """(height, width) with the longer side ``max_side``, or None when the image already fits (or max_side is 0)."""
    longest = max(height, width)
    if max_side <= 0 or longest <= max_side:
        return None
    scale = max_side / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def _resample(arr: np.ndarray, size: Tuple[int, int], nearest: bool = False) -> np.ndarray:
    """HW or HWC array -> the same dtype at ``size`` (float32 Lanczos per channel; nearest for label maps)."""
    from PIL import Image

    if arr.ndim == 3:
        return np.stack([_resample(arr[..., c], size, nearest) for c in range(arr.shape[-1])], axis=-1)
    h, w = size
    if nearest:
        return np.asarray(Image.fromarray(arr.astype(np.int32)).resize((w, h), Image.Resampling.NEAREST)).astype(arr.dtype)
    out = np.asarray(Image.fromarray(arr.astype(np.float32), mode="F").resize((w, h), Image.Resampling.LANCZOS))
    if arr.dtype.kind in "ui":
        info = np.iinfo(arr.dtype)
        return np.clip(np.rint(out), info.min, info.max).astype(arr.dtype)
    if arr.dtype.kind == "b":
        return out >= 0.5
    lo, hi = float(arr.min()), float(arr.max())  # no overshoot beyond the source's range (Lanczos rings)
    return np.clip(out, lo, hi).astype(arr.dtype)


def _native_array(data: bytes, ext: str) -> np.ndarray:
    """The stored pixel values at their own dtype (uint8 / uint16 / the npy's), not scaled to [0, 1]."""
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    img.load()
    if img.mode.startswith("I;16"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":  # 16-bit PNGs often open as 32-bit "I"; the values say what they hold
        arr = np.asarray(img)
        return arr.astype(np.uint16 if int(arr.max(initial=0)) <= 65535 else np.int32)
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB")
    return np.asarray(img)


def _encode(arr: np.ndarray, ext: str) -> Tuple[bytes, str]:
    """An array as shard bytes: ``.npy`` stays ``.npy``; everything else becomes a PNG of the array's bit depth."""
    if ext == "npy":
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue(), "npy"
    from agglom.data.png_io import png_bytes

    return png_bytes(arr), "png"


def _header_size(data: bytes, ext: str) -> Optional[Tuple[int, int]]:
    """(h, w) from the file header alone (no pixel decode), or None where the format needs a full read (npy)."""
    if ext == "npy":
        return None
    from PIL import Image

    w, h = Image.open(io.BytesIO(data)).size  # lazy: reads the header only
    return h, w


def downsize_image(data: bytes, ext: str, max_side: int) -> Tuple[bytes, str, Optional[Tuple[int, int]]]:
    """(bytes, ext, new (h, w) or None): the image shrunk to ``max_side`` when larger, else returned untouched
    (decided from the header, so an image that fits is not decoded again)."""
    if max_side <= 0:
        return data, ext, None
    head = _header_size(data, ext)
    if head is not None and target_size(*head, max_side) is None:
        return data, ext, None
    try:
        arr = _native_array(data, ext)
    except Exception as e:  # the bytes passed the pack's decode check; anything here is a real problem
        raise DecodeError(f"{ext}: cannot re-read for max_side: {e}") from e
    size = target_size(arr.shape[0], arr.shape[1], max_side)
    if size is None:
        return data, ext, None
    out, new_ext = _encode(_resample(arr, size), ext)
    return out, new_ext, size


def downsize_mask(mask: bytes, size: Tuple[int, int]) -> bytes:
    """A ``mask.png`` resized to the downsized image's (h, w) with nearest-neighbour (labels stay labels)."""
    from agglom.data.masks import decode_mask, encode_mask

    label_map = decode_mask(mask)
    binary = bool(label_map.max() <= 1)
    return encode_mask(_resample(label_map, size, nearest=True), binary_255=binary)


__all__ = ["target_size", "downsize_image", "downsize_mask"]
