"""Segmentation masks beside the images: the ``mask.png`` member of a sample, how it is stored and read.

A mask is an integer map of the image's size: 0 is background, any other value a foreground class (a binary mask
is 0/1, or 0/255 as image editors write it: a mask whose only non-zero value is 255 is read as 0/1). It is stored
as an 8-bit grayscale PNG (16-bit when a label exceeds 255) under the member name :data:`MASK_MEMBER`, so that a
sample's tar entries are ``<key>.png``, ``<key>.json`` and ``<key>.mask.png``; shards without masks are read as
before. Readers ask for masks explicitly (``eval_loader(..., masks=True)``); a sample without one carries
:data:`IGNORE` everywhere, and a mask that cannot be used (undecodable, colour, another size than its image) is
dropped with the note ``bad_mask`` while the sample itself is still used.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Optional

import numpy as np

from agglom.data.decode import DecodeError, check_npy, open_pil
from agglom.data.paths import shown

MASK_MEMBER = "mask.png"  # the member's extension in a WebDataset sample: <key>.mask.png
IGNORE = -1  # mask value of pixels without ground truth (a sample without a mask, or outside a rotated image)
MASK_SUFFIXES = (".png", ".npy", ".bmp", ".tif", ".tiff", ".gif", ".webp")


class MaskError(ValueError):
    """A mask that cannot be used; the message says why."""


def as_label_map(arr: np.ndarray) -> np.ndarray:
    """An integer [H, W] map from a decoded mask array: 2D, integral values >= 0; a 0/255 mask becomes 0/1.

    Colour masks are accepted only when their channels agree (a grey mask saved as RGB); a float array must hold
    whole numbers (a probability map is not a mask)."""
    a = np.asarray(arr)
    if a.ndim == 3:
        if a.shape[-1] == 4:
            a = a[..., :3]
        if a.shape[-1] == 1 or bool(np.all(a == a[..., :1])):
            a = a[..., 0]
        else:
            raise MaskError(f"a colour mask of shape {tuple(arr.shape)}: store one label per pixel (grayscale)")
    if a.ndim != 2 or a.size == 0:
        raise MaskError(f"a mask must be a 2D map, got shape {tuple(arr.shape)}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise MaskError("a mask must hold whole class numbers (a float map with fractions is not a mask)")
    elif a.dtype.kind not in "iub":
        raise MaskError(f"a mask must be numeric, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if a.min() < 0:
        raise MaskError(f"mask values must be >= 0, got {int(a.min())}")
    values = set(np.unique(a).tolist())
    if 255 in values and values <= {0, 255}:
        a = (a == 255).astype(np.int64)
    return a


def decode_mask(data: bytes) -> np.ndarray:
    """The bytes of a ``mask.png`` (or of any image file PIL reads, or an ``.npy``) -> int64 [H, W] label map."""
    if not data:
        raise MaskError("empty mask bytes")
    data = bytes(data)
    try:
        if data[:6] == b"\x93NUMPY":
            check_npy(data, "npy mask")  # the size limits of the image decoder (agglom.data.limits), before loading
            try:
                arr = np.load(io.BytesIO(data), allow_pickle=False)
            except Exception as e:  # numpy raises ValueError/EOFError/OSError for bad bytes
                raise MaskError(f"npy mask: {e}") from e
            return as_label_map(arr)
        img = open_pil(data, "mask")
    except DecodeError as e:
        raise MaskError(f"cannot decode the mask: {e}") from e
    if img.mode == "P":  # a palette mask: the palette indices are the labels
        return as_label_map(np.asarray(img))
    if img.mode == "1":
        img = img.convert("L")
    return as_label_map(np.asarray(img))


def read_mask_file(path: Path) -> np.ndarray:
    """A mask file on disk -> int64 [H, W] label map (PNG and the other PIL formats, or ``.npy``)."""
    if not Path(path).is_file():
        raise MaskError(f"{shown(path)}: no such file")
    return decode_mask(Path(path).read_bytes())


def encode_mask(label_map: np.ndarray, binary_255: bool = False) -> bytes:
    """An integer [H, W] map -> PNG bytes (8-bit grayscale; 16-bit when a label exceeds 255). ``binary_255``
    writes a 0/1 mask as 0/255, visible in an image viewer (read back as 0/1)."""
    from PIL import Image

    a = as_label_map(label_map)
    if binary_255 and a.max() <= 1:
        a = a * 255
    buf = io.BytesIO()
    if a.max() > 255:
        Image.fromarray(a.astype(np.uint16)).save(buf, format="PNG")
    else:
        Image.fromarray(a.astype(np.uint8), mode="L").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def foreground_fraction(label_map: np.ndarray) -> float:
    """The share of pixels with a foreground label (> 0): the datasheet's mask area."""
    a = np.asarray(label_map)
    valid = a != IGNORE
    return float((a[valid] > 0).sum()) / max(1, int(valid.sum()))


def find_mask(folder: Path, rel: str) -> Optional[Path]:
    """The mask of an image at relative path ``rel`` in a masks folder: the same relative path with a mask suffix
    (``<folder>/<rel without suffix>.png``, ...), else a file of the same stem at the folder's top level."""
    rel_path = Path(rel)
    stem_rel = rel_path.with_suffix("") if rel_path.suffix else rel_path
    for base in (folder / stem_rel, folder / rel_path.stem):
        for suf in MASK_SUFFIXES:
            cand = base.with_name(base.name + suf)
            if cand.is_file():
                return cand
    return None


__all__ = ["MASK_MEMBER", "IGNORE", "MaskError", "as_label_map", "decode_mask", "read_mask_file", "encode_mask",
           "foreground_fraction", "find_mask"]
