"""Image bytes -> float tensors in [0, 1] (png 8/16-bit, jpg, npy), with the grayscale policy applied.

Every image's size is checked from its header before a pixel is decoded (:func:`open_pil`, :func:`check_npy`):
over :data:`~agglom.data.limits.MAX_PIXELS` it is a :class:`DecodeError` naming the size and the limit, which the
readers count as ``bad_image`` and ``agglom data pack`` skips. A 30000 x 30000 PNG is under 1 MB on disk and
900 MP decoded; PIL's own guard only warns up to ~179 MP (a 12000 x 12000 image took 3.3 GB) and raises its own
error type above.
"""
from __future__ import annotations

import io
import re
import struct
import warnings
from typing import Any, Optional, Tuple

import numpy as np
import torch

from agglom.config.choices import GRAYSCALE
from agglom.data.limits import MAX_PIXELS

IMAGE_EXTS = ("png", "jpg", "jpeg", "npy", "webp", "bmp", "tif", "tiff", "gif")  # what a sample's image may be
_PIL_EXTS = ("webp", "bmp", "tif", "tiff", "gif")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class DecodeError(ValueError):
    """The bytes of one image could not be turned into a tensor; the message says which format and why."""


def png_bit_depth(data: bytes) -> int:
    """The bit depth stored in a PNG's IHDR chunk (1, 2, 4, 8 or 16)."""
    if len(data) < 33 or not data.startswith(_PNG_MAGIC) or data[12:16] != b"IHDR":
        raise DecodeError("png: not a PNG stream (bad signature or missing IHDR)")
    return int(data[24])


def check_pixels(width: int, height: int, fmt: str) -> None:
    """DecodeError when a ``width`` x ``height`` image is over :data:`~agglom.data.limits.MAX_PIXELS`."""
    if width * height > MAX_PIXELS:
        raise DecodeError(f"{fmt}: {width}x{height} pixels ({width * height / 1e6:.0f} MP) is over the readers' limit "
                          f"of {MAX_PIXELS / 1e6:.0f} MP (agglom.data.limits.MAX_PIXELS)")


def open_pil(data: bytes, fmt: str) -> Any:
    """A PIL image of ``data``, loaded only after its header's size passed :func:`check_pixels` (a PNG's is read
    from its IHDR before PIL sees the bytes). PIL's decompression-bomb warning is not let out (the limit here is
    lower) and its error becomes a DecodeError; so does anything PIL raises for bytes it cannot read."""
    from PIL import Image, UnidentifiedImageError

    if data[:8] == _PNG_MAGIC and data[12:16] == b"IHDR" and len(data) >= 24:
        check_pixels(*struct.unpack(">II", data[16:24]), fmt)
    try:
        with warnings.catch_warnings():  # per call: a process-wide filter set once is undone by any caller's own
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
        check_pixels(*img.size, fmt)
        img.load()
    except Image.DecompressionBombError as e:
        raise DecodeError(f"{fmt}: {e} (the readers' limit is {MAX_PIXELS / 1e6:.0f} MP)") from None
    except DecodeError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL's plugins raise many types on hostile bytes (struct.error, ...)
        what = "" if isinstance(e, (UnidentifiedImageError, OSError, SyntaxError, ValueError)) else f"{type(e).__name__}: "
        detail = re.sub(r"<_io\.BytesIO object at 0x[0-9a-f]+>", "the image bytes", str(e))  # PIL names its buffer
        raise DecodeError(f"{fmt}: cannot decode {len(data)} bytes: {what}{detail}") from e
    return img


def check_npy(data: bytes, fmt: str = "npy") -> Tuple[int, ...]:
    """The shape in an ``.npy`` header, checked before the array is loaded (see :func:`_npy_header`)."""
    return _npy_header(data, fmt)[0]


def _npy_header(data: bytes, fmt: str = "npy") -> Tuple[Tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, data offset) of an ``.npy``, checked before any array is built: a numeric
    dtype, no more data declared than the bytes hold, and at most :data:`~agglom.data.limits.MAX_PIXELS` pixels
    (the channel axis, first or last, of up to 4 values not counted). The header is parsed once per sample."""
    from numpy.lib import format as npf

    f = io.BytesIO(data)
    try:
        version = npf.read_magic(f)
        read = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, fortran, dtype = read(f)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError/EOFError/SyntaxError for a bad header
        raise DecodeError(f"{fmt}: bad .npy header: {e}") from e
    if dtype.hasobject or dtype.kind not in "fiub":
        raise DecodeError(f"{fmt}: expected a numeric array, got dtype {dtype}")
    count = int(np.prod(shape, dtype=object)) if shape else 1
    if count * dtype.itemsize > len(data) - f.tell():
        raise DecodeError(f"{fmt}: the header declares shape {tuple(shape)} of {dtype} ({count * dtype.itemsize} "
                          f"bytes) but {len(data) - f.tell()} bytes follow it (truncated)")
    channels = max(1, min(4, shape[0], shape[-1])) if len(shape) == 3 else 1
    if count // channels > MAX_PIXELS:
        if len(shape) in (2, 3):
            h, w = (shape[1], shape[2]) if len(shape) == 3 and channels == shape[0] else (shape[0], shape[1])
            check_pixels(int(w), int(h), fmt)
        raise DecodeError(f"{fmt}: shape {tuple(shape)} holds over {MAX_PIXELS / 1e6:.0f} MP "
                          "(agglom.data.limits.MAX_PIXELS)")
    return tuple(shape), bool(fortran), dtype, f.tell()


def _pil_to_array(data: bytes, fmt: str) -> np.ndarray:
    img = open_pil(data, fmt)
    mode = img.mode
    if fmt == "png":
        depth = png_bit_depth(data)
    else:
        depth = 16 if mode.startswith("I;16") else 8
    if mode in ("I;16", "I;16B", "I;16L", "I", "I;16N"):
        arr = np.asarray(img).astype(np.float32)
        scale = float(2 ** depth - 1) if depth in (8, 16) else float(max(arr.max(), 1.0))
        return arr / scale
    if mode == "F":
        return np.asarray(img).astype(np.float32)
    if mode in ("1", "L", "P", "LA", "PA", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "1":
            img = img.convert("L")
        elif mode in ("LA",):
            img = img.convert("L")
        elif mode not in ("L", "RGB"):
            img = img.convert("RGB")
        return np.asarray(img).astype(np.float32) / 255.0
    raise DecodeError(f"{fmt}: unsupported image mode {mode!r}")


def _npy_to_array(data: bytes) -> np.ndarray:
    shape, fortran, dtype, offset = _npy_header(data)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    try:  # the checked header, read once: the array is a view of the bytes that follow it
        arr = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError for bytes that do not fit the header
        raise DecodeError(f"npy: cannot load {len(data)} bytes: {e}") from e
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiub":
        raise DecodeError(f"npy: expected a numeric array, got dtype {getattr(arr, 'dtype', type(arr))}")
    if arr.dtype.kind in "ub" and arr.dtype.itemsize <= 2:
        arr = arr.astype(np.float32) / float(np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else 1)
    arr = arr.astype(np.float32)
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3:
        if arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
            arr = np.moveaxis(arr, 0, -1)  # CHW -> HWC
        if arr.shape[-1] not in (1, 3, 4):
            raise DecodeError(f"npy: cannot tell the channel axis of shape {tuple(arr.shape)}")
        return arr
    raise DecodeError(f"npy: expected a 2D or 3D array, got shape {tuple(arr.shape)}")


def to_channels(arr: np.ndarray, grayscale: str = "replicate", expand: bool = True) -> torch.Tensor:
    """HW or HWC array -> float32 tensor [C,H,W]; 'replicate' gives 3 channels, 'keep' gives 1. ``expand=False``
    leaves a one-channel image at one channel under 'replicate' (the reader: its checks and augmentation then do a
    third of the work, and the transform's normalisation broadcasts it to the three channels)."""
    if grayscale not in GRAYSCALE:
        raise ValueError(f"grayscale must be one of {', '.join(GRAYSCALE)}, got {grayscale!r}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[-1] == 4:  # drop alpha
        arr = arr[:, :, :3]
    if arr.shape[-1] == 3 and grayscale == "keep":
        arr = (arr @ np.asarray([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    t = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1), dtype=np.float32))
    if t.shape[0] == 1 and grayscale == "replicate" and expand:
        t = t.expand(3, -1, -1).contiguous()
    if not torch.isfinite(t).all():
        raise DecodeError("image contains non-finite values")
    return t


def decode_array(data: bytes, ext: str) -> np.ndarray:
    """Bytes -> float32 array HW or HWC (png/jpg in [0,1] by true bit depth; npy as stored)."""
    ext = ext.lower().lstrip(".")
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise DecodeError(f"{ext}: empty image bytes")
    if ext == "png":
        png_bit_depth(bytes(data[:33]))
        return _pil_to_array(bytes(data), "png")
    if ext in ("jpg", "jpeg"):
        return _pil_to_array(bytes(data), "jpg")
    if ext == "npy":
        return _npy_to_array(bytes(data))
    if ext in _PIL_EXTS:
        return _pil_to_array(bytes(data), ext)
    raise DecodeError(f"unsupported image extension {ext!r} (expected one of {IMAGE_EXTS})")


def decode_image(data: bytes, ext: str, grayscale: str = "replicate") -> torch.Tensor:
    """Bytes of one image -> float32 tensor [C,H,W] (C=3 for 'replicate', 1 for 'keep')."""
    return to_channels(decode_array(data, ext), grayscale)


def find_image(sample: dict) -> Optional[str]:
    """The image extension present in a webdataset sample dict, if any."""
    for ext in IMAGE_EXTS:
        if ext in sample:
            return ext
    return None


__all__ = ["DecodeError", "decode_image", "decode_array", "to_channels", "png_bit_depth", "find_image", "IMAGE_EXTS",
           "check_pixels", "open_pil", "check_npy"]
