"""DICOM -> PNG for `agglom data pack`, saying what it did and why a file was skipped.

Grayscale (MONOCHROME1/2): RescaleSlope/Intercept, then the WindowCenter/Width window if present, else the image's
min/max, MONOCHROME1 inverted, stored as a 16-bit PNG. PALETTE COLOR: the palette is applied (pydicom's
``apply_color_lut``) and the RGB result stored as an 8-bit PNG — not the raw indices. RGB/YBR: stored as RGB
(pydicom converts YBR). Multi-frame: the middle frame is kept. Every such conversion is counted (``DICOM_NOTES``)
and each skipped file is counted under its own reason:

- ``dicom_unreadable``: not parseable as DICOM;
- ``dicom_no_pixels``: no pixel data (a structured report, a presentation state, ...);
- ``dicom_codec``: compressed with a transfer syntax no installed decoder handles (the message names it and the
  plugin to install: pylibjpeg, python-gdcm, ...);
- ``dicom_unsupported``: a layout not handled (e.g. more than 3 samples per pixel), or Rows x Columns over the
  readers' pixel limit (:data:`~agglom.data.limits.MAX_PIXELS`), checked before any pixel is decoded.

Of a multi-frame file only the middle frame is decoded (pydicom's ``pixel_array_options(index=...)``), so its
frame count does not multiply the memory a conversion takes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np

from agglom.data.limits import MAX_PIXELS
from agglom.data.paths import shown
from agglom.data.png_io import SkipImage, png_bytes

DICOM_REASONS = ("dicom_unreadable", "dicom_no_pixels", "dicom_codec", "dicom_unsupported")
DICOM_NOTES = ("multiframe_middle_frame", "palette_color_applied", "color_kept")


class DicomSkip(SkipImage):
    """A DICOM file that cannot be packed; ``reason`` is one of :data:`DICOM_REASONS`."""


def _first(v: Any) -> Optional[float]:
    if v is None:
        return None
    try:
        return float(v[0]) if hasattr(v, "__len__") and not isinstance(v, (str, bytes)) else float(v)
    except (TypeError, ValueError, IndexError):
        return None


def _read(path: Path) -> Tuple[Any, np.ndarray]:
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), force=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for a file that is not DICOM
        raise DicomSkip("dicom_unreadable", f"{shown(path)}: not a readable DICOM file: {e}") from e
    with open(path, "rb") as f:
        preamble = f.read(132)[128:132] == b"DICM"
    if not (preamble or "SOPClassUID" in ds or "PixelData" in ds):  # force=True reads any bytes as some dataset
        raise DicomSkip("dicom_unreadable", f"{shown(path)}: not a DICOM file (no 'DICM' preamble, no SOP class)")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = getattr(ds, "SOPClassUID", None)
        raise DicomSkip("dicom_no_pixels", f"{shown(path)}: no pixel data (SOP class {getattr(kind, 'name', kind)})")
    frames, _ = _geometry(path, ds)
    if frames > 1 and hasattr(ds, "pixel_array_options"):
        ds.pixel_array_options(index=frames // 2)  # the middle frame only
    try:
        return ds, np.asarray(ds.pixel_array)
    except Exception as e:  # noqa: BLE001 - missing decoder plugins raise RuntimeError/NotImplementedError
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if ts is not None and getattr(ts, "is_compressed", False):
            raise DicomSkip("dicom_codec", f"{shown(path)}: pixel data compressed as {getattr(ts, 'name', ts)} and no "
                                           f"installed decoder handles it ({msg}); install the pydicom plugin for "
                                           "it (e.g. pip install pylibjpeg pylibjpeg-openjpeg, or python-gdcm)") from e
        raise DicomSkip("dicom_unreadable", f"{shown(path)}: cannot read the pixel data: {msg}") from e


def _geometry(path: Path, ds: Any) -> Tuple[int, int]:
    """(frames, samples per pixel) of the file, after checking its Rows x Columns against the pixel limit (from the
    header alone)."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        spp = int(getattr(ds, "SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as e:
        raise DicomSkip("dicom_unreadable", f"{shown(path)}: no usable Rows/Columns/NumberOfFrames/SamplesPerPixel: "
                                            f"{e}") from e
    if rows * cols > MAX_PIXELS:
        raise DicomSkip("dicom_unsupported", f"{shown(path)}: {cols}x{rows} pixels ({rows * cols / 1e6:.0f} MP) is over the "
                                             f"readers' limit of {MAX_PIXELS / 1e6:.0f} MP (agglom.data.limits)")
    return max(1, frames), spp


def _grayscale(ds: Any, arr: np.ndarray) -> bytes:
    arr = arr.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1.0) or 1.0) \
        + float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    wc, ww = _first(getattr(ds, "WindowCenter", None)), _first(getattr(ds, "WindowWidth", None))
    if wc is not None and ww is not None and ww > 0:
        lo, hi = wc - ww / 2.0, wc + ww / 2.0
    else:
        lo, hi = float(arr.min()), float(arr.max())
    scaled = np.clip((arr - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(arr)
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        scaled = 1.0 - scaled
    return png_bytes(np.round(scaled * 65535.0).astype(np.uint16))


def _rgb8(arr: np.ndarray) -> bytes:
    top = 65535.0 if arr.dtype.itemsize > 1 or arr.max() > 255 else 255.0
    return png_bytes(np.clip(np.round(arr.astype(np.float64) / top * 255.0), 0, 255).astype(np.uint8))


def dicom_to_png(path: Path) -> Tuple[bytes, List[str]]:
    """A DICOM file -> (PNG bytes, notes from :data:`DICOM_NOTES`); raises :class:`DicomSkip` with a reason."""
    from pydicom.pixels import apply_color_lut

    ds, arr = _read(path)
    notes: List[str] = []
    frames, spp = _geometry(path, ds)
    if frames > 1:  # multi-frame: the middle frame (decoded alone where pydicom can)
        if arr.ndim == (3 if spp == 1 else 4):
            arr = arr[arr.shape[0] // 2]
        notes.append("multiframe_middle_frame")
    photometric = str(getattr(ds, "PhotometricInterpretation", "")).upper()
    if spp == 1 and arr.ndim == 2 and photometric == "PALETTE COLOR":
        notes.append("palette_color_applied")
        return _rgb8(np.asarray(apply_color_lut(arr, ds))), notes
    if spp == 1 and arr.ndim == 2:
        return _grayscale(ds, arr), notes
    if spp == 3 and arr.ndim == 3 and arr.shape[-1] == 3:
        notes.append("color_kept")
        return _rgb8(arr), notes
    raise DicomSkip("dicom_unsupported", f"{shown(path)}: only grayscale, palette-colour and RGB 2D images are supported "
                                         f"(SamplesPerPixel={spp}, Photometric={photometric}, shape={arr.shape})")


__all__ = ["dicom_to_png", "DicomSkip", "DICOM_REASONS", "DICOM_NOTES"]
