"""De-identification policy for everything we write.

By default no patient name, ID, birth date or accession number appears in a report, a
file name or a CSV. Input file names are kept only when they contain none of the file's
own identifying values; otherwise the output is named after the input file's SHA-256
(:func:`hashed_stem`), the same name in batch outputs, reports and the viewer's exports.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..imaging import XRayImage

PHI_FIELDS = ("name", "patient_id", "birth_date", "accession_number")


def phi_values(image: XRayImage | None) -> list[str]:
    """The identifying strings of an image (and the name's components) for leak checks."""
    if image is None:
        return []
    p = image.patient
    values = [v for v in (p.name, p.patient_id, p.birth_date, p.accession_number) if v]
    if p.name:
        values += [part for part in re.split(r"[\^ ,]+", p.name) if len(part) >= 3]
    return sorted(set(values), key=len, reverse=True)


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def contains_phi(text: str, image: XRayImage | None) -> bool:
    t = _norm(text)
    return any(len(_norm(v)) >= 3 and _norm(v) in t for v in phi_values(image))


def hashed_stem(file_sha256: str) -> str:
    """The de-identified name of an input: ``image-`` and the first 12 hex digits of its file hash."""
    return f"image-{file_sha256[:12]}"


def safe_stem(path: str | Path, image: XRayImage | None, file_sha256: str, *, phi: bool = False) -> str:
    """A file-name stem for outputs about ``path`` that leaks no patient data."""
    name = Path(path).name
    if phi or not contains_phi(name, image):
        return name
    return hashed_stem(file_sha256)
