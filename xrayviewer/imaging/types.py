"""The in-memory image every feature works on, and its window presets.

Raw values (after the Modality LUT, i.e. in the modality's units) and the display image
(after VOI windowing and MONOCHROME1/INVERSE inversion, 8-bit) are kept side by side:
measurements and re-windowing use the former, models and the screen the latter.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .windowing import render_display


@dataclass(frozen=True)
class WindowPreset:
    """A VOI transform: a centre/width window or a VOI LUT from the file.

    ``kind`` is "window" (centre/width with ``function`` LINEAR, LINEAR_EXACT or SIGMOID)
    or "lut" (``lut_index`` into the file's VOI LUT Sequence, applied by pydicom).
    """

    name: str
    center: float
    width: float
    function: str = "LINEAR"
    kind: str = "window"
    lut_index: int | None = None
    source: str = "computed"  # "file" when it came from the DICOM header

    def describe(self) -> str:
        if self.kind == "lut":
            return f"{self.name} (VOI LUT)"
        return f"{self.name} (C={self.center:g}, W={self.width:g})"


@dataclass(frozen=True)
class PatientInfo:
    """Patient-identifying fields, kept apart so exports can leave them out by default."""

    name: str | None = None
    patient_id: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    age: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    institution: str | None = None
    referring_physician: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "patient_name": self.name,
            "patient_id": self.patient_id,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "age": self.age,
            "accession_number": self.accession_number,
            "study_date": self.study_date,
            "institution": self.institution,
            "referring_physician": self.referring_physician,
        }

    def values(self) -> list[str]:
        """Non-empty identifying strings (used by tests and exporters to check for leaks)."""
        return [v for v in self.as_dict().values() if v]


@dataclass(frozen=True)
class ImageMetadata:
    """Non-identifying facts about the loaded image."""

    format: str  # DICOM, PNG, JPEG, TIFF, BMP
    rows: int
    columns: int
    bits_stored: int
    bits_allocated: int
    photometric: str  # MONOCHROME1/MONOCHROME2 for DICOM, Pillow mode for rasters
    # Rasters converted from colour: the fraction of really coloured pixels (a photo, not a
    # tinted film; ``raster.colour_fraction``), for the domain gate. None when grey.
    colour_fraction: float | None = None
    modality: str | None = None
    view_position: str | None = None
    body_part: str | None = None
    pixel_spacing: tuple[float, float] | None = None  # (row, column) in mm
    spacing_source: str | None = None  # PixelSpacing / ImagerPixelSpacing
    transfer_syntax: str | None = None  # UID
    transfer_syntax_name: str | None = None
    number_of_frames: int = 1
    presentation_lut_shape: str | None = None
    manufacturer: str | None = None
    sop_class: str | None = None
    burned_in_annotation: str | None = None
    file_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "rows": self.rows,
            "columns": self.columns,
            "bits_stored": self.bits_stored,
            "bits_allocated": self.bits_allocated,
            "photometric": self.photometric,
            "modality": self.modality,
            "view_position": self.view_position,
            "body_part": self.body_part,
            "pixel_spacing_mm": list(self.pixel_spacing) if self.pixel_spacing else None,
            "spacing_source": self.spacing_source,
            "transfer_syntax": self.transfer_syntax,
            "transfer_syntax_name": self.transfer_syntax_name,
            "number_of_frames": self.number_of_frames,
            "presentation_lut_shape": self.presentation_lut_shape,
            "manufacturer": self.manufacturer,
            "sop_class": self.sop_class,
            "burned_in_annotation": self.burned_in_annotation,
            "file_size": self.file_size,
        }


@dataclass(frozen=True, eq=False)
class XRayImage:
    """A loaded radiograph.

    ``values``: 2-D array after the Modality LUT (rescale), in stored precision where
    possible (uint8/uint16/int16, float32 if a rescale needs it).
    ``display``: uint8 image with the default window and any inversion applied, bright =
    dense (bones white), ready for screen and models.
    """

    source: str
    values: np.ndarray
    display: np.ndarray
    metadata: ImageMetadata
    windows: tuple[WindowPreset, ...]
    default_window: WindowPreset
    invert: bool  # MONOCHROME1 or Presentation LUT Shape INVERSE (applied once)
    patient: PatientInfo = field(default_factory=PatientInfo)
    warnings: tuple[str, ...] = ()
    dataset: Any = field(default=None, repr=False)  # pydicom Dataset for the tag view
    # SHA-256 of the bytes it was loaded from (set by load_image): identifies the *file*.
    file_sha256: str = ""

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    @property
    def is_dicom(self) -> bool:
        return self.metadata.format == "DICOM"

    def pixel_sha256(self) -> str:
        """SHA-256 of the decoded pixels (dtype, shape and modality values): identifies the
        *image*, whatever file, container or lossless encoding it came in. Computed once
        (the batch engine does it while decoding), straight from the array's buffer."""
        cached = self.__dict__.get("_pixel_sha256")
        if cached is not None:
            return cached
        h = hashlib.sha256()
        v = np.ascontiguousarray(self.values)
        h.update(f"{v.dtype.str}{v.shape}".encode())
        h.update(memoryview(v).cast("B"))  # no copy of the pixels
        digest = h.hexdigest()
        object.__setattr__(self, "_pixel_sha256", digest)  # frozen dataclass: a cache, not a field
        return digest

    def render(self, window: WindowPreset | None = None, *, invert: bool | None = None) -> np.ndarray:
        """Display image (uint8) for another window and/or inversion state.

        ``invert`` is the user's extra toggle on top of the file's own inversion.
        """
        return render_display(self.values, window or self.default_window, dataset=self.dataset,
                              file_invert=self.invert, user_invert=bool(invert))
