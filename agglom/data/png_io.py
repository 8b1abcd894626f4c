"""What packing an image needs on both sides of the source formats: PNG bytes from an array, and the exception that
skips a source image with a counted reason (:mod:`agglom.data.pack`, :mod:`agglom.data.dicom`,
:mod:`agglom.data.downsize`)."""
from __future__ import annotations

import io

import numpy as np


class SkipImage(Exception):
    """A source image that cannot be packed (reason in ``.reason``)."""

    def __init__(self, reason: str, msg: str):
        super().__init__(msg)
        self.reason = reason


def png_bytes(arr: np.ndarray) -> bytes:
    """An image array as PNG bytes (8- or 16-bit grey, RGB)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


__all__ = ["SkipImage", "png_bytes"]
