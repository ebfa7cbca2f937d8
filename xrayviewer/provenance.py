"""How xrayviewer marks the files it writes, and how it recognises them again.

A batch run writes its outputs (overlay, lung-label and opacity PNGs, PDF reports, DICOM
SEG/SC) next to each other, often inside the very folder it analyses (the default
``./xrayviewer-results``, or the viewer's ``<folder>/xrayviewer-results``). A re-run, or a
run of a parent folder, must never take those files for new X-rays: an overlay PNG is a
picture of a chest and the classifier will happily score it. So discovery asks
:func:`own_output_reason` about every candidate file, and skips whole output folders.

Three independent signals, because each alone has a gap:

* **The output folder**: a folder holding the batch journal (``JOURNAL_NAME``) is an
  output folder, wherever it lies, and so is the ``--out`` folder of the running batch.
  Cheap (one ``stat`` per folder) and it also covers files whose names were changed, but
  it is lost when the user moves single files elsewhere or deletes the journal.
* **The name**: our outputs are ``<input name><suffix>`` with a suffix from
  ``OUTPUT_SUFFIXES`` (``.overlay.png``, ``.lung.png``, ...). Free, and it recognises
  outputs written before the content markers below existed; it misses a renamed file.
  (A real input named like ``film.lung.png`` would be skipped too; that is reported in the
  run's summary, never silent.)
* **The content**: every PNG we write carries a ``tEXt`` chunk with the keyword
  ``PNG_MARKER_KEY`` (and ``Software: xrayviewer <version>``), placed before the image
  data, so reading a few hundred bytes finds it; every DICOM object we write has
  Manufacturer ``DICOM_MANUFACTURER`` (the Equipment module's statement of who created
  the instance), read from the header without touching the pixel data. This survives
  renaming and moving; it is lost only if another program re-encodes the file. PDFs are
  recognised by name only: they are never image candidates, and their metadata (Creator
  ``xrayviewer <version>``) lies at the end of the file.

This module is a leaf (standard library, plus pydicom lazily for the DICOM check) so that
the writers (rendering, reporting, batch) and the readers (batch discovery, CLI, GUI) share
one definition.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import BinaryIO

from . import __version__

JOURNAL_NAME = ".xrayviewer-journal.jsonl"
OUTPUT_SUFFIXES: dict[str, str] = {
    "overlay": ".overlay.png",
    "lung": ".lung.png",
    "opacity": ".opacity.png",
    "pdf": ".report.pdf",
    "seg": ".seg.dcm",
    "sc": ".sc.dcm",
}
# What a batch can write, as the CLI's --format and the batch dialog's check boxes name it.
OUTPUT_FORMATS = ("csv", "json", "png", "pdf", "dicom")
DEFAULT_FORMATS = ("csv", "json", "png")
SOFTWARE = f"xrayviewer {__version__}"
PNG_MARKER_KEY = "xrayviewer-output"
DICOM_MANUFACTURER = "xrayviewer project"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"iTXt", b"zTXt")
_PNG_MAX_CHUNKS = 64  # ancillary chunks before IDAT; ours are the first few


def png_text(kind: str) -> dict[str, str]:
    """The tEXt chunks every PNG we write carries (``kind``: overlay, lung-labels, ...)."""
    return {"Software": SOFTWARE, PNG_MARKER_KEY: kind}


def is_output_folder(folder: Path) -> bool:
    """True for a folder a batch wrote into (it holds the batch journal)."""
    return (Path(folder) / JOURNAL_NAME).is_file()


def own_output_reason(path: Path) -> str | None:
    """Why ``path`` is a file xrayviewer wrote (for the user: "an xrayviewer output ..."),
    or None when nothing says so.

    Unreadable or malformed files are not ours (None): the batch reports them as it
    reports any bad input.
    """
    name = path.name.lower()
    for suffix in OUTPUT_SUFFIXES.values():
        if name.endswith(suffix) and len(name) > len(suffix):
            return f"an xrayviewer output by its name (*{suffix})"
    try:
        with open(path, "rb") as fh:
            start = fh.read(512)
            if start.startswith(_PNG_SIGNATURE):
                fh.seek(len(_PNG_SIGNATURE))
                kind = _png_marker(fh)
                return f"an xrayviewer output (PNG marked '{kind}')" if kind is not None else None
    except OSError:
        return None
    from .imaging.detect import sniff_format

    if sniff_format(start) == "DICOM" and _dicom_is_ours(path):
        return f"an xrayviewer output (DICOM Manufacturer '{DICOM_MANUFACTURER}')"
    return None


def _png_marker(fh: BinaryIO) -> str | None:
    """Walk the chunks before the image data; the value of our marker keyword, if present."""
    for _ in range(_PNG_MAX_CHUNKS):
        header = fh.read(8)
        if len(header) < 8:
            return None
        length, ctype = struct.unpack(">I4s", header)
        if ctype in (b"IDAT", b"IEND") or length > 1 << 20:
            return None
        if ctype in _PNG_TEXT_CHUNKS:
            data = fh.read(length)
            keyword, _, value = data.partition(b"\0")
            if keyword == PNG_MARKER_KEY.encode("latin-1"):
                return value.decode("latin-1", "replace") if ctype == b"tEXt" else ""
            fh.seek(4, os.SEEK_CUR)  # CRC
        else:
            fh.seek(length + 4, os.SEEK_CUR)
    return None


def _dicom_is_ours(path: Path) -> bool:
    try:
        import pydicom

        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["Manufacturer"])
        return str(ds.get("Manufacturer", "")).strip() == DICOM_MANUFACTURER
    except Exception:  # a malformed header is the loader's to report, not ours to recognise
        return False
