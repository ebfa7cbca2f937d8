"""DICOM decoding through pydicom 3 + pylibjpeg, with the display pipeline in the
standard's order: Modality LUT -> VOI LUT / window -> MONOCHROME1 / INVERSE inversion.

Size is checked from the header before any pixel is decoded, only the first frame of a
multi-frame object is decoded, and no file path is ever taken from the file's content.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np

from ..errors import (
    CodecMissingError,
    CorruptImageError,
    ImageTooLargeError,
    NoPixelDataError,
    NotAnImageError,
    NotARadiographError,
    UnsupportedImageError,
)
from .types import ImageMetadata, PatientInfo, WindowPreset, XRayImage
from .windowing import apply_window, percentile_window, range_window, render_display

log = logging.getLogger(__name__)

_GREY = ("MONOCHROME1", "MONOCHROME2")
# Colour photometric interpretations (PS3.3 C.7.6.3.1.2; YBR_* matched by prefix): ultrasound,
# endoscopy, photographs. Never a radiograph, so analysis refuses them (NotARadiographError).
_COLOUR = ("RGB", "PALETTE COLOR", "ARGB", "CMYK", "HSV")
_PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float

# What to install for each transfer syntax family when pydicom has no working decoder.
_CODEC_HINTS = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (or pillow)",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.80": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.81": "pylibjpeg-libjpeg",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.201": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.202": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.4.203": "pylibjpeg-openjpeg",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (or numpy alone)",
}


def _text(ds: Any, keyword: str) -> str | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip() or None


def _int(ds: Any, keyword: str, default: int | None = None) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value is not None and value != "" else default
    except (TypeError, ValueError):
        return default


def read_dataset(data: bytes, source: str) -> Any:
    """Parse the dataset (pixels not yet decoded). DICOMDIRs are refused: no file-set
    operations on untrusted media."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except InvalidDicomError as exc:
        raise NotAnImageError(f"not a DICOM file ({exc})", source) from exc
    except (EOFError, ValueError, KeyError, TypeError, OverflowError, MemoryError, IndexError, OSError) as exc:
        raise CorruptImageError(f"DICOM header is truncated or malformed ({_short(exc)})", source) from exc
    except Exception as exc:  # pydicom raises many types on fuzzed headers
        raise CorruptImageError(f"DICOM header could not be parsed ({type(exc).__name__}: {_short(exc)})", source) from exc
    try:  # elements are converted lazily, so a malformed one can surface here
        sop = str(ds.file_meta.get("MediaStorageSOPClassUID", "")) if hasattr(ds, "file_meta") else ""
        is_dicomdir = sop == "1.2.840.10008.1.3.10" or "DirectoryRecordSequence" in ds
    except Exception as exc:
        raise CorruptImageError(f"DICOM file meta information is malformed ({type(exc).__name__}: {_short(exc)})",
                                source) from exc
    if is_dicomdir:
        raise NoPixelDataError("this is a DICOMDIR (a media index), not an image; open the image files it lists", source)
    return ds


def load_dicom(data: bytes, source: str, *, max_pixels: int) -> XRayImage:
    """Decode a DICOM image and build its display image and window presets."""
    ds = read_dataset(data, source)
    try:
        return _build(ds, data, source, max_pixels=max_pixels)
    except (ImageTooLargeError, CorruptImageError, CodecMissingError, NoPixelDataError, UnsupportedImageError):
        raise
    except Exception as exc:  # a malformed element surfacing late (e.g. bad VR value)
        raise CorruptImageError(f"DICOM data element could not be read ({type(exc).__name__}: {_short(exc)})", source) from exc


def _build(ds: Any, data: bytes, source: str, *, max_pixels: int) -> XRayImage:
    if not any(tag in ds for tag in _PIXEL_TAGS):
        sop_name = _sop_name(ds)
        raise NoPixelDataError(f"DICOM object has no pixel data{f' ({sop_name})' if sop_name else ''}", source)

    rows = _int(ds, "Rows", 0) or 0
    cols = _int(ds, "Columns", 0) or 0
    if rows <= 0 or cols <= 0:
        raise CorruptImageError(f"DICOM image has invalid size Rows={rows}, Columns={cols}", source)
    bits_alloc = _int(ds, "BitsAllocated", 0) or 0
    bits_stored = _int(ds, "BitsStored", bits_alloc) or bits_alloc
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    frames = _int(ds, "NumberOfFrames", 1) or 1
    if bits_alloc not in (1, 8, 16, 32, 64):
        raise CorruptImageError(f"Bits Allocated = {bits_alloc} is not valid", source)
    # Cap before decoding: one frame of rows x cols x samples x bits.
    if rows * cols > max_pixels:
        raise ImageTooLargeError(
            f"header declares {cols}x{rows} = {rows * cols:,} pixels, above the {max_pixels:,}-pixel limit", source
        )
    photometric = (_text(ds, "PhotometricInterpretation") or "").upper()
    if not photometric:
        photometric = "MONOCHROME2" if spp == 1 else ""
    if photometric not in _GREY and (photometric in _COLOUR or photometric.startswith("YBR") or spp == 3):
        raise _not_a_radiograph(ds, photometric, spp, source)
    if photometric not in _GREY or spp != 1:
        what = f"{_text(ds, 'Modality') or 'unknown modality'}"
        raise UnsupportedImageError(
            f"unsupported photometric interpretation {photometric or '(missing)'} with {spp} sample(s) per pixel "
            f"({what}); only greyscale radiographs (MONOCHROME1/2) are supported",
            source,
        )

    tsyntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    ts_uid = str(tsyntax) if tsyntax else None
    if ts_uid is None:
        # Bare dataset: pydicom guessed the encoding while reading.
        ts_uid = "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
        ds.file_meta.TransferSyntaxUID = ts_uid
    ts_name = _uid_name(ts_uid)

    raw = _decode_first_frame(ds, source, ts_uid, ts_name, rows, cols)
    notes: list[str] = []
    if frames > 1:
        notes.append(f"{frames} frames in file; showing the first frame only")

    values = _modality(raw, ds)
    windows, default = _window_presets(values, ds)
    invert = photometric == "MONOCHROME1" or (_text(ds, "PresentationLUTShape") or "").upper() == "INVERSE"
    display = render_display(values, default, dataset=ds, file_invert=invert)

    burned = _text(ds, "BurnedInAnnotation")
    if burned and burned.upper() == "YES":
        notes.append("Burned In Annotation = YES: the pixels may contain patient text")

    meta = ImageMetadata(
        format="DICOM",
        rows=rows,
        columns=cols,
        bits_stored=bits_stored,
        bits_allocated=bits_alloc,
        photometric=photometric,
        modality=_text(ds, "Modality"),
        view_position=_text(ds, "ViewPosition"),
        body_part=_text(ds, "BodyPartExamined"),
        pixel_spacing=_spacing(ds)[0],
        spacing_source=_spacing(ds)[1],
        transfer_syntax=ts_uid,
        transfer_syntax_name=ts_name,
        number_of_frames=frames,
        presentation_lut_shape=_text(ds, "PresentationLUTShape"),
        manufacturer=_text(ds, "Manufacturer"),
        sop_class=_sop_name(ds),
        burned_in_annotation=burned,
        file_size=len(data),
    )
    patient = PatientInfo(
        name=_text(ds, "PatientName"),
        patient_id=_text(ds, "PatientID"),
        birth_date=_text(ds, "PatientBirthDate"),
        sex=_text(ds, "PatientSex"),
        age=_text(ds, "PatientAge"),
        accession_number=_text(ds, "AccessionNumber"),
        study_date=_text(ds, "StudyDate"),
        institution=_text(ds, "InstitutionName"),
        referring_physician=_text(ds, "ReferringPhysicianName"),
    )
    return XRayImage(
        source=source,
        values=values,
        display=display,
        metadata=meta,
        windows=tuple(windows),
        default_window=default,
        invert=invert,
        patient=patient,
        warnings=tuple(notes),
        dataset=ds,
    )


# pylibjpeg-libjpeg leaks its output buffer (about 4 bytes per pixel, ~15 MB for a 1760x2140
# film) every time it fails on a corrupt JPEG-LS stream (measured 2026-11-23 with
# pylibjpeg-libjpeg 2.5.0; found by the atheris job). JPEG-LS is exactly specified, so CharLS
# (pyjpegls, installed with highdicom) decodes valid files to the same pixels: use it alone
# for JPEG-LS. Other syntaxes keep pydicom's order, whose decoders differ slightly for lossy
# JPEG (IDCT), so switching them would change the pixels of valid files.
_JPEG_LS_SYNTAXES = frozenset({
    "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
})


def _plugin_for(ts_uid: str, decoder: Any) -> str:
    """The pixel-data plugin to use ('' = pydicom's own order with fallback)."""
    if ts_uid in _JPEG_LS_SYNTAXES:
        if "pyjpegls" in decoder.available_plugins:
            return "pyjpegls"
    return ""


def _not_a_radiograph(ds: Any, photometric: str, spp: int, source: str) -> NotARadiographError:
    """The refusal for a colour DICOM: what it is (a colour ultrasound, else a colour image of
    its modality) and the photometric interpretation that says so."""
    modality = (_text(ds, "Modality") or "").upper()
    what = "colour ultrasound" if modality == "US" else (
        f"colour image (modality {modality})" if modality else "colour image")
    photo = photometric or "(missing)"
    return NotARadiographError(
        f"not a radiograph: {what} (photometric interpretation {photo}, {spp} sample(s) per pixel); "
        "only greyscale radiographs (MONOCHROME1/2) are supported",
        source, reason=f"Not a radiograph: {what} (photometric interpretation {photo}).")


def _decode_first_frame(ds: Any, source: str, ts_uid: str, ts_name: str, rows: int, cols: int) -> np.ndarray:
    from pydicom.pixels import get_decoder, pixel_array

    try:
        decoder = get_decoder(ts_uid)
    except NotImplementedError as exc:
        raise CodecMissingError(f"no decoder exists for transfer syntax {ts_name} ({ts_uid})", source) from exc
    if not decoder.is_available:
        hint = _CODEC_HINTS.get(ts_uid, "a pydicom pixel-data plugin")
        raise CodecMissingError(
            f"transfer syntax {ts_name} needs a codec that is not installed: install {hint}", source
        )
    try:
        arr = pixel_array(ds, index=0, decoding_plugin=_plugin_for(ts_uid, decoder))
    except MemoryError as exc:
        raise ImageTooLargeError("not enough memory to decode the pixel data", source) from exc
    except Exception as exc:  # decoders raise RuntimeError/ValueError/etc. on bad streams
        raise CorruptImageError(
            f"pixel data ({ts_name}) is corrupt or truncated and could not be decoded ({_short(exc)})", source
        ) from exc
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise CorruptImageError(f"decoded pixel array has shape {arr.shape}, header says {rows}x{cols}", source)
    return arr


def _modality(raw: np.ndarray, ds: Any) -> np.ndarray:
    """Modality LUT / rescale; keep integer dtype when the rescale is the identity."""
    slope = ds.get("RescaleSlope", 1)
    intercept = ds.get("RescaleIntercept", 0)
    try:
        slope_f, intercept_f = float(slope), float(intercept)
    except (TypeError, ValueError):
        slope_f, intercept_f = 1.0, 0.0
    if "ModalityLUTSequence" not in ds and slope_f == 1.0 and intercept_f == 0.0:
        return raw
    from pydicom.pixels import apply_modality_lut

    out = apply_modality_lut(raw, ds)
    if np.issubdtype(out.dtype, np.floating):
        out = out.astype(np.float32)
        if np.all(out == np.round(out)) and out.min() >= -32768 and out.max() <= 32767:
            out = out.astype(np.int16) if out.min() < 0 else out.astype(np.int32)
    return out


def _window_presets(values: np.ndarray, ds: Any) -> tuple[list[WindowPreset], WindowPreset]:
    """All VOI transforms in the file, plus computed ones; the default is the first of the file's."""
    presets: list[WindowPreset] = []
    if "VOILUTSequence" in ds:
        for i, item in enumerate(ds.VOILUTSequence):
            expl = _text(item, "LUTExplanation") or f"VOI LUT {i + 1}"
            presets.append(WindowPreset(name=expl, center=0.0, width=0.0, kind="lut", lut_index=i, source="file"))
    centers = ds.get("WindowCenter")
    widths = ds.get("WindowWidth")
    if centers is not None and widths is not None:
        cs = list(centers) if _is_multi(centers) else [centers]
        ws = list(widths) if _is_multi(widths) else [widths]
        expl = ds.get("WindowCenterWidthExplanation")
        es = (list(expl) if _is_multi(expl) else [expl]) if expl is not None else []
        func = (_text(ds, "VOILUTFunction") or "LINEAR").upper()
        for i, (c, w) in enumerate(zip(cs, ws)):
            try:
                cf, wf = float(c), float(w)
            except (TypeError, ValueError):
                continue
            if wf <= 0:
                continue
            name = str(es[i]).strip() if i < len(es) and str(es[i]).strip() else f"DICOM window {i + 1}"
            presets.append(WindowPreset(name=name, center=cf, width=wf, function=func, source="file"))
    # Prefer a VOI LUT if present (PS3.3: either may be used; LUTs are what modalities tune).
    default = presets[0] if presets else None
    if default is not None and default.kind == "lut":
        try:
            apply_window(values, default, dataset=ds)
        except Exception:  # an unusable LUT: fall back to a window rather than a wrong picture
            log.warning("VOI LUT in file could not be applied; using the next preset")
            presets = [p for p in presets if p.kind != "lut"]
            default = presets[0] if presets else None
    full = range_window(values)
    auto = percentile_window(values)
    presets.extend([full, auto])
    if default is None:
        default = full
    return presets, default


def _is_multi(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or value.__class__.__name__ == "MultiValue"


def _spacing(ds: Any) -> tuple[tuple[float, float] | None, str | None]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        try:
            if value is not None and len(value) == 2:
                r, c = float(value[0]), float(value[1])
                if r > 0 and c > 0 and np.isfinite(r) and np.isfinite(c):
                    return (r, c), keyword
        except (TypeError, ValueError):
            continue
    return None, None


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    try:
        name = UID(uid).name
        return name or uid
    except Exception:
        return uid


def _sop_name(ds: Any) -> str | None:
    uid = ds.get("SOPClassUID")
    if uid is None and hasattr(ds, "file_meta"):
        uid = ds.file_meta.get("MediaStorageSOPClassUID")
    return _uid_name(str(uid)) if uid else None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) < 200 else text[:197] + "..."
