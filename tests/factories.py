"""Build special-case images in the tests (never copied data)."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, NoReturn

import numpy as np


def make_dicom(
    pixels: np.ndarray | None = None,
    *,
    photometric: str = "MONOCHROME2",
    presentation_lut_shape: str | None = None,
    window: tuple[Any, Any] | None = None,
    rescale: tuple[float, float] | None = None,
    rows: int | None = None,
    columns: int | None = None,
    samples_per_pixel: int = 1,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
    bare: bool = False,
    implicit: bool = False,
    modality: str = "DX",
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-12345",
    voi_lut: np.ndarray | None = None,
    frames: int = 1,
    include_pixels: bool = True,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A minimal but valid DX/CR DICOM file as bytes."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import UID, generate_uid

    if pixels is None:
        pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) % 4096).astype(np.uint16)
    pixels = np.ascontiguousarray(pixels)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID("1.2.840.10008.1.2" if implicit else transfer_syntax)
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.AccessionNumber = "ACC-999"
    ds.ViewPosition = "PA"
    ds.Rows = rows if rows is not None else pixels.shape[-2]
    ds.Columns = columns if columns is not None else pixels.shape[-1]
    ds.SamplesPerPixel = samples_per_pixel
    ds.PhotometricInterpretation = photometric
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12 if pixels.max() < 4096 and pixels.dtype == np.uint16 else bits
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if samples_per_pixel > 1:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelSpacing = [0.15, 0.15]
    if presentation_lut_shape:
        ds.PresentationLUTShape = presentation_lut_shape
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut), 0, 16]
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])
        item.LUTExplanation = "TEST LUT"
        ds.VOILUTSequence = Sequence([item])
    for k, v in (extra or {}).items():
        setattr(ds, k, v)
    if include_pixels:
        if meta.TransferSyntaxUID.is_compressed:
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([pixels.tobytes()])  # not a real codestream: fine for header-level tests
        else:
            ds.PixelData = pixels.tobytes()
    if bare:
        # No preamble and no file meta: a raw dataset starting at group 0008.
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        fp = DicomBytesIO()
        fp.is_little_endian = True
        fp.is_implicit_VR = implicit
        del ds.file_meta
        write_dataset(fp, ds)
        return fp.getvalue()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG") if mode else Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def chest_phantom(size: int = 128) -> np.ndarray:
    """Dark lungs either side of a bright mediastinum, bright ribs: roughly a chest film."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.full((size, size), 0.75, np.float32)
    for cx in (0.3, 0.7):
        img[((xx - cx) / 0.16) ** 2 + ((yy - 0.5) / 0.3) ** 2 < 1] = 0.2
    img[np.abs(xx - 0.5) < 0.06] = 0.95
    return img


def read_gray(path: Path) -> np.ndarray:
    """A real data-bundle image as grey uint8 (the bundled-model tests' input)."""
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img is not None, f"cannot read {path}"
    return img


def unavailable(msg: str) -> NoReturn:
    """A test's requirement (data, a display, a tool) is missing: skip on a developer machine,
    fail under CI (``CI`` set), so CI can never go green by silently skipping."""
    import pytest

    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)
