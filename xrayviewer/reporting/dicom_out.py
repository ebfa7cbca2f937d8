"""DICOM outputs for people with a PACS: a Secondary Capture of the overlay and a DICOM SEG
of the lung (right/left) and opacity masks, referencing the source image, built with
highdicom (the library made for standard-conformant SEG/SR).

Only for DICOM inputs. Both validate without errors with dciodvfy (dicom3tools): values the
standard forbids in the source (a zero Pixel Spacing, an Age String '62') are left out
rather than copied, and the conditional attributes the IODs ask for are written. De-identified
by default: every attribute of the finished instance handled by PS3.15 Table E.1-1
(:mod:`.dicom_deid`); with ``phi=True`` the outputs stay in the source's study with its
identity (what a PACS that sent the film expects back).
"""

from __future__ import annotations

import copy
import io
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import XRayViewerError
from ..fsutil import atomic_write_bytes
from ..imaging import XRayImage
from ..inference.result import AnalysisResult
from ..provenance import DICOM_MANUFACTURER
from ..rendering.overlay import OverlayOptions, compose_overlay

log = logging.getLogger(__name__)

# Who created the instance (Equipment module); also how a later batch recognises our
# outputs and never analyses them as X-rays (xrayviewer.provenance).
MANUFACTURER = DICOM_MANUFACTURER
# Type 2 attributes of the Patient and General Study modules that highdicom copies from the
# source and requires there; files that omit them get them empty.
SOURCE_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
                "StudyDate", "StudyTime", "ReferringPhysicianName")
_AS = re.compile(r"^\d{3}[DWMY]$")


class DicomOutputError(XRayViewerError):
    """The source DICOM lacks what a conformant SEG/SC needs, or writing failed."""


def _invalid_value(elem: Any) -> bool:
    """A value the standard forbids (wrong length or characters for its VR, a zero pixel spacing)."""
    from pydicom import config
    from pydicom.valuerep import validate_value

    if elem.keyword == "PatientAge" and elem.value and not _AS.match(str(elem.value)):
        return True  # e.g. '62': pydicom accepts it, the standard does not
    if elem.keyword in ("PixelSpacing", "ImagerPixelSpacing") and elem.value:
        try:
            return any(float(v) <= 0 for v in (elem.value if elem.VM > 1 else [elem.value]))
        except (TypeError, ValueError):
            return True
    if elem.VR in ("SQ", "OB", "OW", "OF", "OD", "OL", "OV", "UN") or elem.value in (None, ""):
        return False
    try:
        values = elem.value if elem.VM > 1 else [elem.value]
        for v in values:
            validate_value(elem.VR, v, config.RAISE)
    except (ValueError, TypeError):
        return True
    return False


def _prepare_source(image: XRayImage) -> tuple[Any, list[str]]:
    """A copy of the source with what highdicom needs and without values the standard forbids.

    Returns the copy and what was changed (each 'Keyword: why'), for the log.
    """
    from pydicom.uid import generate_uid

    ds = image.dataset
    if ds is None:
        raise DicomOutputError("DICOM outputs need a DICOM input", image.source)
    src = copy.deepcopy(ds)
    changed = []
    for elem in list(src):
        if elem.tag.group in (0x0002,) or elem.tag.is_private:
            continue
        if _invalid_value(elem):
            changed.append(f"{elem.keyword or elem.tag}: invalid value {str(elem.value)[:20]!r} left out")
            if elem.keyword in SOURCE_TYPE2:
                elem.value = ""
            else:
                del src[elem.tag]
    for kw in SOURCE_TYPE2:
        if kw not in src:
            setattr(src, kw, "")
    for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
        if kw not in src:
            setattr(src, kw, str(generate_uid()))
    return src, changed


def _patient_orientation(src: Any) -> tuple[str, str] | None:
    value = src.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return None


def _finish(ds: Any, image: XRayImage, phi: bool, *, carries_source_pixels: bool) -> Any:
    """De-identify (unless PHI is kept) by PS3.15 Table E.1-1; see :mod:`.dicom_deid`."""
    if not phi:
        from .dicom_deid import DeidError, deidentify_output

        burned = (image.metadata.burned_in_annotation or "").upper() == "YES"
        try:
            deidentify_output(ds, source_burned_in=carries_source_pixels and burned)
        except DeidError as exc:
            raise DicomOutputError(f"cannot de-identify: {exc}", image.source) from exc
    return ds


def _algorithm() -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name="xrayviewer", family=codes.DCM.ArtificialIntelligence,
                                              version=__version__)


def _serialise(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def build_segmentation(result: AnalysisResult, image: XRayImage, *, phi: bool = False) -> Any:
    """DICOM SEG with segments 1 right lung, 2 left lung, 3 opacity (binary), as a dataset."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    if result.lung_labels is None:
        raise DicomOutputError("no lung segmentation to export (the image was not analysed)", image.source)
    src, changed = _prepare_source(image)
    for note in changed:
        log.info("%s: %s", image.source, note)
    # No Pixel Measures functional group for a projection film (no frame of reference): the
    # macro would hold Pixel Spacing without Slice Thickness (a radiograph has none, and the
    # standard only asks for it with volumetric properties), which highdicom's own reader
    # refuses, so a SEG read back from a PACS would fail. The SEG shares the referenced
    # source's pixel grid, which keeps the spacing.
    if "FrameOfReferenceUID" not in src:
        for kw in ("PixelSpacing", "SliceThickness", "SpacingBetweenSlices"):
            if kw in src:
                delattr(src, kw)
    anatomy = codes.SCT.AnatomicalStructure
    algo = _algorithm()
    descriptions = [
        hd.seg.SegmentDescription(1, "Right lung", anatomy, Code("3341006", "SCT", "Right lung"), "AUTOMATIC", algo),
        hd.seg.SegmentDescription(2, "Left lung", anatomy, Code("44029006", "SCT", "Left lung"), "AUTOMATIC", algo),
    ]
    labels = np.asarray(result.lung_labels)
    if result.opacity_mask is not None:
        descriptions.append(hd.seg.SegmentDescription(
            3, "Lung opacity (ground-glass/consolidation)", codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Lesion, "AUTOMATIC", algo))
    # (frames=1, rows, cols, segments), each segment written in place (no stacked bool copies)
    pixel = np.empty((1, *labels.shape, len(descriptions)), np.uint8)
    np.equal(labels, 1, out=pixel[0, ..., 0], casting="unsafe")
    np.equal(labels, 2, out=pixel[0, ..., 1], casting="unsafe")
    if result.opacity_mask is not None:
        np.greater(np.asarray(result.opacity_mask), 0, out=pixel[0, ..., 2], casting="unsafe")
    try:
        seg = hd.seg.Segmentation(
            source_images=[src], pixel_array=pixel, segmentation_type="BINARY", segment_descriptions=descriptions,
            series_instance_uid=str(generate_uid()), series_number=9001, sop_instance_uid=str(generate_uid()),
            instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="xrayviewer",
            software_versions=__version__, device_serial_number="none", omit_empty_frames=False,
            content_description="Lung fields and opacity (research use only)", content_label="XRAYVIEWER",
            series_description="xrayviewer lung fields and opacity (research use only)",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"cannot build a DICOM SEG from this source ({exc})", image.source) from exc
    # General Image: Patient Orientation is Type 2C for a SEG without a frame of reference;
    # the SEG has the source's pixel grid, so it has the source's orientation (empty if unknown).
    orientation = _patient_orientation(src)
    seg.PatientOrientation = list(orientation) if orientation else ""
    return _finish(seg, image, phi, carries_source_pixels=False)


def build_secondary_capture(result: AnalysisResult, image: XRayImage, *, phi: bool = False) -> Any:
    """Secondary Capture (RGB) of the overlay, in the source's study, as a dataset."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    src, _changed = _prepare_source(image)
    rgb = compose_overlay(image.display, lung_labels=result.lung_labels, opacity_mask=result.opacity_mask,
                          regions=result.regions, options=OverlayOptions(alpha=0.35, legend=True))
    orientation = _patient_orientation(src)
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=str(generate_uid()), series_number=9002,
            sop_instance_uid=str(generate_uid()), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=orientation or ("L", "F"), transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"cannot build a Secondary Capture from this source ({exc})", image.source) from exc
    if orientation is None:  # unknown: empty (Type 2C allows it), never a guessed one
        sc.PatientOrientation = ""
    # General Series: Body Part Examined from the source, and Laterality (Type 2C: required for
    # a paired body part, empty when unknown; absent for the chest, which is unpaired).
    body_part = str(src.get("BodyPartExamined", "") or "").upper()
    if body_part:
        sc.BodyPartExamined = body_part
    if body_part != "CHEST":
        laterality = str(src.get("Laterality", "") or src.get("ImageLaterality", "") or "")
        sc.Laterality = laterality if laterality in ("R", "L") else ""
    sc.SeriesDescription = "xrayviewer overlay (research use only)"
    sc.ImageComments = "Research software - not for diagnosis. " + (
        f"Severity {result.severity}; " if result.severity else "") + f"gate: {result.gate.code}"
    # Burned In Annotation says whether the pixels show text that identifies the patient: our
    # legend does not, the source's pixels may (its own flag).
    burned = (image.metadata.burned_in_annotation or "").upper() == "YES"
    sc.BurnedInAnnotation = "YES" if burned else "NO"
    # Algorithm identification for the SC (no module of its own): equipment + comments.
    sc.SoftwareVersions = __version__
    sc.Manufacturer = MANUFACTURER
    sc.ManufacturerModelName = "xrayviewer"
    return _finish(sc, image, phi, carries_source_pixels=True)


def write_segmentation(result: AnalysisResult, image: XRayImage, path: str | Path, *, phi: bool = False) -> Path:
    """Write :func:`build_segmentation` atomically."""
    return atomic_write_bytes(path, _serialise(build_segmentation(result, image, phi=phi)))


def write_secondary_capture(result: AnalysisResult, image: XRayImage, path: str | Path, *,
                            phi: bool = False) -> Path:
    """Write :func:`build_secondary_capture` atomically."""
    return atomic_write_bytes(path, _serialise(build_secondary_capture(result, image, phi=phi)))


def burned_in_warning(image: XRayImage) -> str | None:
    flag = (image.metadata.burned_in_annotation or "").upper()
    if flag == "YES":
        return ("the source says Burned In Annotation = YES: its pixels may show patient text, which "
                "de-identification of the header cannot remove")
    return None
