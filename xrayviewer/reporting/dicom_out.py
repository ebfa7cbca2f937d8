"""DICOM outputs for people with a PACS: a Secondary Capture of the overlay and a DICOM SEG
of the lung (right/left) and opacity masks, referencing the source image, built with
highdicom (the library made for standard-conformant SEG/SR).

Only for DICOM inputs. De-identified by default following the PS3.15 Basic Application
Level Confidentiality Profile in spirit: identifying attributes removed or replaced, UIDs
re-mapped consistently (so SEG and SC still reference the same, re-mapped, source), and
Patient Identity Removed / De-identification Method recorded.
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
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
UID_ATTRIBUTES = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")
REMOVE = (
    "PatientBirthDate", "PatientBirthTime", "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames",
    "PatientAddress", "PatientTelephoneNumbers", "PatientMotherBirthName", "AccessionNumber",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "PhysiciansOfRecord", "RequestingPhysician", "StationName",
    "DeviceSerialNumber", "StudyID", "RequestAttributesSequence", "AdmittingDiagnosesDescription",
    "PatientComments", "AdditionalPatientHistory", "MilitaryRank", "EthnicGroup", "Occupation",
    "IssuerOfPatientID", "PatientInsurancePlanCodeSequence", "MedicalRecordLocator",
)


class DicomOutputError(XRayViewerError):
    """The source DICOM lacks what a conformant SEG/SC needs, or writing failed."""


def _remap_uid(uid: str) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["xrayviewer-deid", str(uid)]))


def deidentify(ds: Any) -> Any:
    """A de-identified copy of a source dataset (pixel data kept; burned-in text is not removed)."""
    from pydicom.dataset import Dataset

    out = copy.deepcopy(ds)
    pid = str(ds.get("PatientID", "")) + str(ds.get("PatientName", ""))
    out.PatientName = "ANONYMOUS^"  # family name only (a bare single component is ambiguous)
    out.PatientID = "XRV-" + hashlib.sha256(pid.encode()).hexdigest()[:12]
    for kw in REMOVE:
        if kw in out:
            delattr(out, kw)
    for kw in UID_ATTRIBUTES:
        if kw in out:
            setattr(out, kw, _remap_uid(str(out.get(kw))))
    if hasattr(out, "file_meta") and "MediaStorageSOPInstanceUID" in out.file_meta:
        out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = "xrayviewer: PS3.15 Basic Profile (subset), UIDs re-mapped"
    code = Dataset()
    code.CodeValue = "113100"
    code.CodingSchemeDesignator = "DCM"
    code.CodeMeaning = "Basic Application Confidentiality Profile"
    out.DeidentificationMethodCodeSequence = [code]
    for kw in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if kw in out:
            setattr(out, kw, "")  # dates are quasi-identifiers; kept empty (type 2)
    return out


def _prepare_source(image: XRayImage, phi: bool) -> Any:
    ds = image.dataset
    if ds is None:
        raise DicomOutputError("DICOM outputs need a DICOM input", image.source)
    src = copy.deepcopy(ds) if phi else deidentify(ds)
    # Fill type-2 attributes some files omit, which highdicom requires on the source.
    for kw, default in (("PatientName", ""), ("PatientID", ""), ("PatientBirthDate", ""), ("PatientSex", ""),
                        ("StudyID", ""), ("AccessionNumber", ""), ("StudyDate", ""), ("StudyTime", ""),
                        ("ReferringPhysicianName", "")):
        if kw not in src:
            setattr(src, kw, default)
    for kw in ("StudyInstanceUID", "SeriesInstanceUID"):
        if kw not in src:
            from pydicom.uid import generate_uid

            setattr(src, kw, str(generate_uid()))
    return src


def _algorithm() -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.AlgorithmIdentificationSequence(name="xrayviewer", family=codes.DCM.ArtificialIntelligence,
                                              version=__version__)


def _mark(ds: Any, phi: bool) -> None:
    if not phi:
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = "xrayviewer: PS3.15 Basic Profile (subset), UIDs re-mapped"


def _serialise(ds: Any) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write_segmentation(result: AnalysisResult, image: XRayImage, path: str | Path, *, phi: bool = False) -> Path:
    """DICOM SEG with segments 1 right lung, 2 left lung, 3 opacity (binary)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    if result.lung_labels is None:
        raise DicomOutputError("no lung segmentation to export (the image was not analysed)", image.source)
    src = _prepare_source(image, phi)
    anatomy = codes.SCT.AnatomicalStructure
    algo = _algorithm()
    descriptions = [
        hd.seg.SegmentDescription(1, "Right lung", anatomy, Code("3341006", "SCT", "Right lung"), "AUTOMATIC", algo),
        hd.seg.SegmentDescription(2, "Left lung", anatomy, Code("44029006", "SCT", "Left lung"), "AUTOMATIC", algo),
    ]
    masks = [result.lung_labels == 1, result.lung_labels == 2]
    if result.opacity_mask is not None:
        descriptions.append(hd.seg.SegmentDescription(
            3, "Lung opacity (ground-glass/consolidation)", codes.SCT.MorphologicallyAbnormalStructure,
            codes.SCT.Lesion, "AUTOMATIC", algo))
        masks.append(np.asarray(result.opacity_mask) > 0)
    pixel = np.stack(masks, axis=-1)[None].astype(np.uint8)  # (frames=1, rows, cols, segments)
    try:
        seg = hd.seg.Segmentation(
            source_images=[src], pixel_array=pixel, segmentation_type="BINARY", segment_descriptions=descriptions,
            series_instance_uid=str(generate_uid()), series_number=9001, sop_instance_uid=str(generate_uid()),
            instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name="xrayviewer",
            software_versions=__version__, device_serial_number="none", omit_empty_frames=False,
            content_description="Lung fields and opacity (research use only)", content_label="XRAYVIEWER",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"cannot build a DICOM SEG from this source ({exc})", image.source) from exc
    _mark(seg, phi)
    return atomic_write_bytes(path, _serialise(seg))


def write_secondary_capture(result: AnalysisResult, image: XRayImage, path: str | Path, *,
                            phi: bool = False) -> Path:
    """Secondary Capture (RGB) of the overlay, in the source's (re-mapped) study."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    src = _prepare_source(image, phi)
    rgb = compose_overlay(image.display, lung_labels=result.lung_labels, opacity_mask=result.opacity_mask,
                          regions=result.regions, options=OverlayOptions(alpha=0.35, legend=True))
    try:
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=src, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=str(generate_uid()), series_number=9002,
            sop_instance_uid=str(generate_uid()), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"), transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"cannot build a Secondary Capture from this source ({exc})", image.source) from exc
    sc.SeriesDescription = "xrayviewer overlay (research use only)"
    sc.ImageComments = "Research software - not for diagnosis. " + (
        f"Severity {result.severity}; " if result.severity else "") + f"gate: {result.gate.code}"
    sc.BurnedInAnnotation = "YES"  # the legend is burned in
    # Algorithm identification for the SC (no module of its own): contributing equipment + comments.
    sc.SoftwareVersions = __version__
    sc.Manufacturer = MANUFACTURER
    sc.ManufacturerModelName = "xrayviewer"
    _mark(sc, phi)
    return atomic_write_bytes(path, _serialise(sc))


def burned_in_warning(image: XRayImage) -> str | None:
    flag = (image.metadata.burned_in_annotation or "").upper()
    if flag == "YES":
        return ("the source says Burned In Annotation = YES: its pixels may show patient text, which "
                "de-identification of the header cannot remove")
    return None
