"""Image loading: one entry point, :func:`load_image`, for every later feature.

Format is recognised by content (never by extension). Every failure is an
:class:`~xrayviewer.errors.ImageLoadError` subclass naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from pathlib import Path
from typing import Union

from ..errors import CorruptImageError, ImageLoadError, ImageTooLargeError, NotAnImageError
from .detect import describe_other, sniff_format
from .types import ImageMetadata, PatientInfo, WindowPreset, XRayImage
from .windowing import apply_window, render_display, to_uint8

# A 4k x 4k 16-bit chest film is 17 MP; 80 MP leaves room for large detectors and
# long-leg stitches while refusing hostile headers before they allocate gigabytes.
MAX_PIXELS = 80_000_000
# Files larger than this are not read into memory at all.
MAX_FILE_BYTES = 1 << 30

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview]

SUPPORTED_FORMATS = ("DICOM", "PNG", "JPEG", "TIFF", "BMP")


def load_image(path_or_bytes: PathOrBytes, *, name: str | None = None, max_pixels: int = MAX_PIXELS) -> XRayImage:
    """Load a DICOM or raster X-ray from a path or from bytes.

    ``name`` labels bytes input in error messages (defaults to ``<bytes>``).
    """
    data, source = _read(path_or_bytes, name)
    if not data:
        raise NotAnImageError("file is empty", source)
    fmt = sniff_format(data[:512])
    if fmt is None:
        other = describe_other(data[:64])
        if other:
            raise NotAnImageError(f"{other} is not a supported image format (use DICOM, PNG, JPEG, TIFF or BMP)", source)
        raise NotAnImageError("not an image: content is neither DICOM nor PNG/JPEG/TIFF/BMP", source)
    if fmt == "DICOM":
        from .dicom import load_dicom

        image = load_dicom(data, source, max_pixels=max_pixels)
    else:
        from .raster import load_raster

        image = load_raster(data, source, fmt, max_pixels=max_pixels)
    return replace(image, file_sha256=hashlib.sha256(data).hexdigest())


def _read(path_or_bytes: PathOrBytes, name: str | None) -> tuple[bytes, str]:
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        data = bytes(path_or_bytes)
        if len(data) > MAX_FILE_BYTES:
            raise ImageTooLargeError(f"input is {len(data):,} bytes, above the {MAX_FILE_BYTES:,}-byte limit", name or "<bytes>")
        return data, name or "<bytes>"
    path = Path(os.fspath(path_or_bytes))
    source = name or str(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageLoadError("file not found", source) from exc
    except OSError as exc:
        raise ImageLoadError(f"cannot access file ({exc.strerror or exc})", source) from exc
    if path.is_dir():
        raise ImageLoadError("is a folder, not an image file", source)
    if size > MAX_FILE_BYTES:
        raise ImageTooLargeError(f"file is {size:,} bytes, above the {MAX_FILE_BYTES:,}-byte limit", source)
    try:
        with open(path, "rb") as fh:
            return fh.read(MAX_FILE_BYTES + 1), source
    except PermissionError as exc:
        raise ImageLoadError("permission denied", source) from exc
    except OSError as exc:
        raise CorruptImageError(f"file could not be read ({exc.strerror or exc})", source) from exc


__all__ = [
    "load_image",
    "XRayImage",
    "ImageMetadata",
    "PatientInfo",
    "WindowPreset",
    "apply_window",
    "render_display",
    "to_uint8",
    "MAX_PIXELS",
    "SUPPORTED_FORMATS",
]
