"""PNG / JPEG / TIFF / BMP through Pillow, keeping 16-bit depth and honouring EXIF."""

from __future__ import annotations

import io
import logging
import warnings

import numpy as np

from ..errors import CorruptImageError, ImageTooLargeError, UnsupportedImageError
from .types import ImageMetadata, PatientInfo, XRayImage
from .windowing import percentile_window, range_window, render_display

log = logging.getLogger(__name__)

# A pixel is coloured when its channels still differ by more than this after removing a tint.
COLOUR_CHROMA = 24


def load_raster(data: bytes, source: str, fmt: str, *, max_pixels: int) -> XRayImage:
    """Decode a raster image; colour -> grey with a warning, first frame of multi-frame."""
    from PIL import Image, ImageOps

    notes: list[str] = []
    try:
        with warnings.catch_warnings():
            # Pillow's bomb guard raises above 2x its limit; between 1x and 2x it warns.
            # Make the warning an error here (locally) so we never decode a bomb silently.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageTooLargeError(
                    f"image is {w}x{h} = {w * h:,} pixels, above the {max_pixels:,}-pixel limit", source
                )
            if w == 0 or h == 0:
                raise CorruptImageError(f"image has zero size ({w}x{h})", source)
            n_frames = int(getattr(img, "n_frames", 1) or 1)
            if n_frames > 1:
                notes.append(f"{n_frames} frames in file; showing the first frame only")
                img.seek(0)
            img.load()
            img = ImageOps.exif_transpose(img)
    except ImageTooLargeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"refused as a possible decompression bomb ({exc})", source) from exc
    except Exception as exc:  # Pillow's plugins raise many types on malformed files (TypeError, KeyError, ...)
        raise CorruptImageError(f"{fmt} data could not be decoded ({_short(exc)})", source) from exc

    mode = img.mode
    try:
        arr, bits, note = _to_grey_array(img, source)
    except (CorruptImageError, UnsupportedImageError):
        raise
    except Exception as exc:  # a mode Pillow decoded but cannot convert
        raise UnsupportedImageError(f"pixel mode {mode} could not be converted ({_short(exc)})", source) from exc
    colour = None
    if note:
        notes.append(note)
        colour = _colour_fraction_of(data, source)
    if arr.ndim != 2:
        raise UnsupportedImageError(f"unexpected pixel layout {arr.shape} (mode {mode})", source)

    if arr.dtype == np.uint8:
        from .types import WindowPreset

        default = WindowPreset(name="Full 8-bit range", center=128.0, width=256.0)
        windows = (default, percentile_window(arr))
    else:
        default = range_window(arr, name="Full data range")
        windows = (default, percentile_window(arr))
    display = render_display(arr, default)
    meta = ImageMetadata(
        format=fmt,
        rows=int(arr.shape[0]),
        columns=int(arr.shape[1]),
        bits_stored=bits,
        bits_allocated=arr.dtype.itemsize * 8,
        photometric=mode,
        number_of_frames=n_frames,
        file_size=len(data),
        colour_fraction=colour,
    )
    return XRayImage(
        source=source,
        values=arr,
        display=display,
        metadata=meta,
        windows=windows,
        default_window=default,
        invert=False,
        patient=PatientInfo(),
        warnings=tuple(notes),
    )


def colour_fraction(rgb: np.ndarray) -> float:
    """Fraction of pixels with real colour: channels differ by more than :data:`COLOUR_CHROMA`
    *after* removing a per-channel linear fit on brightness.

    The fit absorbs a uniform tint (films photographed or printed blue/purple, common in
    ieee8023), which is still a grey radiograph; a photo or a colour texture has channels
    that vary independently and keeps large residuals.
    """
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] < 3:
        return 0.0
    px = a[..., :3].reshape(-1, 3).astype(np.float64)
    design = np.stack([px.mean(axis=1), np.ones(len(px))], axis=1)
    coef, *_ = np.linalg.lstsq(design, px, rcond=None)
    res = px - design @ coef
    chroma = res.max(axis=1) - res.min(axis=1)
    return float((chroma > COLOUR_CHROMA).mean())


def _colour_fraction_of(data: bytes, source: str) -> float | None:
    """:func:`colour_fraction` of a colour file at most 512 px on a side (it is only a
    statistic: JPEG decodes at reduced size); None if it cannot be measured."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.draft("RGB", (512, 512))
            im = im.convert("RGB")
            im.thumbnail((512, 512))
            return colour_fraction(np.asarray(im))
    except Exception as exc:  # noqa: BLE001 - the statistic is optional
        log.debug("cannot measure the colour of %s: %s", source, exc)
        return None


def _to_grey_array(img, source: str) -> tuple[np.ndarray, int, str | None]:
    """Pillow image -> (2-D array, significant bits, warning or None)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(img).astype(np.uint16)
        return arr, 16, None
    if mode == "I":
        arr = np.asarray(img)
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi <= 0xFFFF:
            return arr.astype(np.uint16), 16, None
        return arr.astype(np.float32), 32, None
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.all(np.isfinite(arr)):
            raise CorruptImageError("floating-point image contains NaN or infinity", source)
        return arr, 32, None
    if mode == "L":
        return np.asarray(img, dtype=np.uint8), 8, None
    if mode == "1":
        return np.asarray(img.convert("L"), dtype=np.uint8), 1, None
    if mode in ("LA", "La"):
        return np.asarray(img.getchannel(0), dtype=np.uint8), 8, None
    # Colour (RGB, RGBA, P, CMYK, YCbCr, ...): convert, and say so if it really was colour.
    rgb = np.asarray(img.convert("RGB"), dtype=np.int16)
    grey = np.asarray(img.convert("L"), dtype=np.uint8)
    spread = int(np.max(np.abs(rgb - rgb.mean(axis=2, keepdims=True)))) if rgb.size else 0
    if spread > 8:
        return grey, 8, f"colour image ({mode}) converted to greyscale"
    return grey, 8, None


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
