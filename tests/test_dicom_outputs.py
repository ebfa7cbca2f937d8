"""DICOM SEG and Secondary Capture outputs: read back with pydicom, reference the source,
carry the algorithm identification, and are de-identified unless PHI is opted in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from factories import make_dicom
from test_batch import ThresholdAnalyzer

from xrayviewer.batch import BatchOptions, BatchRunner, discover
from xrayviewer.imaging import load_image
from xrayviewer.reporting.dicom_out import write_secondary_capture, write_segmentation


@pytest.fixture()
def analysed(dicom_dir: Path):
    img = load_image(dicom_dir / "dx_image.dcm")
    return img, ThresholdAnalyzer().analyze_batch([img])[0]


def test_segmentation_round_trip(tmp_path: Path, analysed) -> None:
    img, res = analysed
    seg = pydicom.dcmread(write_segmentation(res, img, tmp_path / "a.seg.dcm"))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[:2] == ["Right lung", "Left lung"] and "opacity" in labels[2].lower()
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "xrayviewer"
    frames = seg.pixel_array  # (segments, rows, cols)
    assert frames.shape == (3, 169, 211)
    np.testing.assert_array_equal(frames[0].astype(bool), res.lung_labels == 1)
    np.testing.assert_array_equal(frames[2].astype(bool), res.opacity_mask)
    # References the (de-identified) source image, in the same re-mapped study.
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert ref != img.dataset.SOPInstanceUID
    sc = pydicom.dcmread(write_secondary_capture(res, img, tmp_path / "a.sc.dcm"))
    assert sc.StudyInstanceUID == seg.StudyInstanceUID != img.dataset.StudyInstanceUID
    assert sc.pixel_array.shape[1:] == (211, 3) and sc.pixel_array.shape[0] > 169  # image + legend band
    for ds in (seg, sc):
        assert ds.PatientName.family_name == "ANONYMOUS" and ds.PatientIdentityRemoved == "YES"
        assert "123456" not in str(ds.PatientID) and not ds.get("PatientBirthDate")
        text = str(ds)
        assert "Dog^AVeryGood" not in text and "16387a" not in text


def test_phi_opt_in_keeps_identity(tmp_path: Path, analysed) -> None:
    img, res = analysed
    seg = pydicom.dcmread(write_segmentation(res, img, tmp_path / "a.seg.dcm", phi=True))
    assert str(seg.PatientName) == "Dog^AVeryGood" and seg.StudyInstanceUID == img.dataset.StudyInstanceUID
    ref = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID
    assert ref == img.dataset.SOPInstanceUID


def test_batch_dicom_format_and_burned_in_warning(tmp_path: Path, data_dir: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    pix = (np.arange(64 * 64).reshape(64, 64) % 4000).astype(np.uint16)
    (src / "a.dcm").write_bytes(make_dicom(pix, extra={"BurnedInAnnotation": "YES"}))
    png = sorted((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))[0]
    (src / "b.png").write_bytes(png.read_bytes())
    out = tmp_path / "out"
    items = discover([src]).items
    BatchRunner(ThresholdAnalyzer(), BatchOptions(out, formats=("csv", "dicom"))).run(items)
    assert (out / "a.dcm.seg.dcm").is_file() and (out / "a.dcm.sc.dcm").is_file()
    assert not list(out.glob("b.png.*.dcm"))  # DICOM outputs only for DICOM inputs
    csv_text = (out / "results.csv").read_text()
    assert "Burned In Annotation = YES" in csv_text
