"""Error hierarchy: every failure a user can cause has its own type and names the file.

Callers (CLI, GUI, batch) catch :class:`XRayViewerError` and show ``str(err)``; anything
else escaping is a bug in xrayviewer, not a bad input.
"""

from __future__ import annotations

from pathlib import Path


class XRayViewerError(Exception):
    """Base class for errors that are the input's or the environment's fault, not ours."""

    def __init__(self, message: str, source: str | Path | None = None) -> None:
        self.source = str(source) if source is not None else None
        self.message = message
        super().__init__(f"{self.source}: {message}" if self.source else message)


class ImageLoadError(XRayViewerError):
    """The file could not be turned into an image."""


class NotAnImageError(ImageLoadError):
    """The content is not DICOM nor a raster format we know."""


class CorruptImageError(ImageLoadError):
    """The file is recognised but truncated, malformed or fails to decode."""


class UnsupportedImageError(ImageLoadError):
    """A valid image we deliberately do not handle (e.g. RGB ultrasound, video)."""


class NotARadiographError(UnsupportedImageError):
    """A valid image that is no radiograph: a colour ultrasound or other colour DICOM
    (RGB, PALETTE COLOR, YBR_*). Analysis refuses it with :attr:`reason`, as the domain gate
    refuses what the models were not trained on, instead of counting it as a failure."""

    code = "not_radiograph_colour"  # the gate_code of its refused row

    def __init__(self, message: str, source: str | Path | None = None, *, reason: str) -> None:
        super().__init__(message, source)
        self.reason = reason


class NoPixelDataError(ImageLoadError):
    """A DICOM object without an image (a report, a DICOMDIR, a presentation state)."""


class CodecMissingError(ImageLoadError):
    """The transfer syntax needs a decoder package that is not installed."""


class ImageTooLargeError(ImageLoadError):
    """The header promises more pixels than we are willing to decode."""


class ModelError(XRayViewerError):
    """A bundled model is missing, tampered with, or its card does not match."""


class CardError(ModelError):
    """A model card breaks its contract (``xrayviewer.modellayer.cards``): an unknown schema
    version, a required field missing, or a value the code does not accept (a label order
    other than the code's, an input size other than the network's). Names the card file
    (:attr:`source`) and the field (:attr:`field`)."""

    def __init__(self, message: str, source: str | Path | None = None, *, field: str) -> None:
        self.field = field
        super().__init__(f"card field {field!r}: {message}", source)
