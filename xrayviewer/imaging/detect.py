"""Recognise a file by its content, never by its extension."""

from __future__ import annotations

import struct

# Signature -> format name. TIFF has two byte orders; BigTIFF uses 43 instead of 42.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)

# Header starts that mean "an image, but not one we read" - named in the error message.
_KNOWN_OTHER: tuple[tuple[bytes, str], ...] = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"%PDF", "PDF"),
    (b"PK\x03\x04", "ZIP archive"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000 file"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
)


def sniff_format(head: bytes) -> str | None:
    """Return DICOM/PNG/JPEG/TIFF/BMP for the first bytes of a file, or None.

    DICOM is recognised by the Part 10 preamble + "DICM", or, for a bare dataset written
    without the preamble, by a first element in group 0002 or 0008 with a plausible tag.
    """
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "DICOM"
    for sig, name in _SIGNATURES:
        if head.startswith(sig):
            if name == "BMP" and not _plausible_bmp(head):
                continue
            return name
    if _looks_like_bare_dataset(head):
        return "DICOM"
    return None


def describe_other(head: bytes) -> str | None:
    """Name a recognisable non-supported format for a clearer error."""
    for sig, name in _KNOWN_OTHER:
        if head.startswith(sig):
            return name
    if head[4:12] in (b"ftypheic", b"ftypmif1", b"ftypavif"):
        return "HEIF/AVIF"
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP"
    return None


def _plausible_bmp(head: bytes) -> bool:
    # "BM" + file size + 4 reserved bytes + pixel offset + DIB header size (12..124).
    if len(head) < 18:
        return False
    dib = struct.unpack("<I", head[14:18])[0]
    return dib in (12, 40, 52, 56, 64, 108, 124)


def _looks_like_bare_dataset(head: bytes) -> bool:
    """Preamble-less DICOM: (0002,xxxx) or (0008,xxxx) first, little or big endian."""
    if len(head) < 8:
        return False
    for fmt in ("<HH", ">HH"):
        group, elem = struct.unpack(fmt, head[:4])
        if group in (0x0002, 0x0008) and elem <= 0x0020:
            # Explicit VR: two upper-case letters follow; implicit VR: a 4-byte length.
            vr = head[4:6]
            if vr.isalpha() and vr.isupper():
                return True
            length = struct.unpack(fmt[0] + "I", head[4:8])[0]
            if length < 1024:
                return True
    return False
