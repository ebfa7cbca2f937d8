"""DICOM loading on the real files of ../shared/data/dicom and on synthetic edge cases."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from factories import chest_phantom, make_dicom

from xrayviewer.errors import (
    CodecMissingError,
    CorruptImageError,
    ImageTooLargeError,
    NoPixelDataError,
    NotARadiographError,
    UnsupportedImageError,
    XRayViewerError,
)
from xrayviewer.imaging import load_image

# name -> (shape, dtype, photometric, transfer syntax UID, is chest)
EXPECTED = {
    "RG1_J2KI.dcm": ((1955, 1841), "uint16", "MONOCHROME1", "1.2.840.10008.1.2.4.91", True),
    "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm": (
        (1024, 1024), "uint8", "MONOCHROME2", "1.2.840.10008.1.2.4.50", True),
    "Fake_MONOHR1.dcm": ((1024, 1024), "uint8", "MONOCHROME1", "1.2.840.10008.1.2.4.50", True),
    "dx_image.dcm": ((169, 211), "uint8", "MONOCHROME1", "1.2.840.10008.1.2.1", False),
    "966_fixed.dcm": ((2128, 2000), "uint16", "MONOCHROME1", "1.2.840.10008.1.2.4.90", True),
    "RG2_JPLL.dcm": ((2140, 1760), "uint16", "MONOCHROME2", "1.2.840.10008.1.2.4.70", False),
    "RG2_JLSL.dcm": ((2140, 1760), "uint16", "MONOCHROME2", "1.2.840.10008.1.2.4.80", False),
    "RG2_JPLY_fixed.dcm": ((2140, 1760), "uint16", "MONOCHROME2", "1.2.840.10008.1.2.4.51", False),
    "non_cxr/CT_small.dcm": ((128, 128), "int16", "MONOCHROME2", "1.2.840.10008.1.2.1", False),
    "non_cxr/MR_small.dcm": ((64, 64), "int16", "MONOCHROME2", "1.2.840.10008.1.2.1", False),
}


def test_every_shared_dicom_is_covered(dicom_dir: Path) -> None:
    found = {str(p.relative_to(dicom_dir)) for p in dicom_dir.rglob("*.dcm")}
    assert found - {"broken/RG2_JPLY.dcm"} == set(EXPECTED), "a new DICOM appeared: add it to EXPECTED"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_dicom_decodes_like_an_independent_reading(dicom_dir: Path, name: str) -> None:
    import pydicom

    shape, dtype, photometric, ts, _ = EXPECTED[name]
    img = load_image(dicom_dir / name)
    assert img.shape == shape
    assert img.metadata.photometric == photometric
    assert img.metadata.transfer_syntax == ts
    assert img.display.dtype == np.uint8 and img.display.shape == shape
    # Independent reading: pydicom's own full decode, then the modality LUT from the header.
    ds = pydicom.dcmread(dicom_dir / name)
    ref = ds.pixel_array
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    ref = ref * slope + intercept
    np.testing.assert_array_equal(img.values.astype(np.float64), ref.astype(np.float64))
    assert str(img.values.dtype) == dtype
    assert img.invert == (photometric == "MONOCHROME1")
    # The display uses real contrast, not a flat image.
    assert img.display.std() > 10


def test_uncompressed_pixels_match_raw_bytes(dicom_dir: Path) -> None:
    """dx_image.dcm is uncompressed 8-bit: check values against the bytes themselves."""
    import pydicom

    ds = pydicom.dcmread(dicom_dir / "dx_image.dcm")
    raw = np.frombuffer(ds.PixelData, dtype=np.uint8)[: 169 * 211].reshape(169, 211)
    img = load_image(dicom_dir / "dx_image.dcm")
    np.testing.assert_array_equal(img.values, raw)
    assert img.values[0, 0] == raw[0, 0] and int(img.values.sum()) == int(raw.astype(np.int64).sum())


def _bones_brighter_than_lungs(display: np.ndarray) -> bool:
    """On a frontal chest film the mediastinum/spine column is brighter than both lungs."""
    h, w = display.shape
    band = display[int(0.3 * h) : int(0.6 * h)]
    centre = band[:, int(0.46 * w) : int(0.54 * w)].mean()
    right = band[:, int(0.2 * w) : int(0.35 * w)].mean()
    left = band[:, int(0.65 * w) : int(0.8 * w)].mean()
    return centre > right + 15 and centre > left + 15


@pytest.mark.parametrize("name", ["RG1_J2KI.dcm", "966_fixed.dcm"])
def test_monochrome1_chest_films_show_bright_bones(dicom_dir: Path, name: str) -> None:
    img = load_image(dicom_dir / name)
    assert img.metadata.photometric == "MONOCHROME1"
    assert _bones_brighter_than_lungs(img.display)
    # Without the inversion the film would be a negative.
    assert not _bones_brighter_than_lungs(img.render(invert=True))


def test_fake_monochrome1_is_the_inverse_of_its_monochrome2_twin(dicom_dir: Path) -> None:
    """Same pixels, tagged MONOCHROME1: the standard says display them inverted, once."""
    mono2 = load_image(dicom_dir / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
    mono1 = load_image(dicom_dir / "Fake_MONOHR1.dcm")
    np.testing.assert_array_equal(mono1.values, mono2.values)
    np.testing.assert_array_equal(mono1.display.astype(int), 255 - mono2.display.astype(int))
    assert _bones_brighter_than_lungs(mono2.display)


def test_file_window_is_the_default_and_all_presets_are_exposed(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "RG2_JPLL.dcm")
    assert img.default_window.source == "file"
    assert (img.default_window.center, img.default_window.width) == (511.0, 1024.0)
    names = [w.name for w in img.windows]
    assert "Full range" in names and any(n.startswith("Auto") for n in names)


def test_metadata_spacing_and_patient_fields_kept_apart(dicom_dir: Path) -> None:
    img = load_image(dicom_dir / "dx_image.dcm")
    assert img.metadata.pixel_spacing == pytest.approx((1.2, 1.2012))
    assert img.metadata.spacing_source == "PixelSpacing"
    assert img.patient.name == "Dog^AVeryGood" and img.patient.patient_id == "123456"
    meta_text = repr(img.metadata.as_dict())
    for value in (img.patient.name, img.patient.patient_id, img.patient.birth_date, img.patient.accession_number):
        assert value and value not in meta_text


def test_broken_file_gives_a_specific_error(dicom_dir: Path) -> None:
    path = dicom_dir / "broken" / "RG2_JPLY.dcm"
    with pytest.raises(CorruptImageError) as info:
        load_image(path)
    msg = str(info.value)
    assert str(path) in msg and "JPEG Extended" in msg and "could not be decoded" in msg


def test_truncated_real_dicom(dicom_dir: Path) -> None:
    data = (dicom_dir / "RG1_J2KI.dcm").read_bytes()
    for cut in (200, 2000, len(data) // 2):
        with pytest.raises(XRayViewerError) as info:
            load_image(data[:cut], name="cut.dcm")
        assert isinstance(info.value, (CorruptImageError, NoPixelDataError)), type(info.value)
        assert "cut.dcm" in str(info.value)


# ---- synthetic edge cases -------------------------------------------------------------

def _phantom_u16(size: int = 96) -> np.ndarray:
    return (chest_phantom(size) * 4000).astype(np.uint16)


@pytest.mark.parametrize(
    ("photometric", "shape", "expect_inverted"),
    [
        ("MONOCHROME2", None, False),
        ("MONOCHROME2", "IDENTITY", False),
        ("MONOCHROME1", None, True),
        ("MONOCHROME1", "INVERSE", True),  # DX convention: same inversion, applied once
        ("MONOCHROME2", "INVERSE", True),
    ],
)
def test_inversion_applied_exactly_once(photometric: str, shape: str | None, expect_inverted: bool) -> None:
    pix = _phantom_u16()
    if photometric == "MONOCHROME1":
        pix = (4000 - pix).astype(np.uint16)  # stored as a negative, like a real MONO1 film
    img = load_image(make_dicom(pix, photometric=photometric, presentation_lut_shape=shape))
    assert img.invert is expect_inverted
    bright_bones = photometric == "MONOCHROME1" or shape != "INVERSE"
    assert bool(_bones_brighter_than_lungs(img.display)) is bright_bones


def test_window_center_width_linear_formula() -> None:
    pix = np.array([[0, 100, 200, 300, 400, 1000]], dtype=np.uint16).repeat(4, axis=0)
    img = load_image(make_dicom(pix, window=(200, 201)))
    # LINEAR: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped: x=100 -> 0.0025, x=200 -> 0.5025
    row = img.display[0].astype(int)
    assert row[0] == 0 and row[1] == 1 and row[2] == 128 and row[3] == 255 and row[5] == 255


def test_multiple_windows_first_is_default() -> None:
    img = load_image(make_dicom(_phantom_u16(), window=([1000, 2000], [500, 3000])))
    file_windows = [w for w in img.windows if w.source == "file"]
    assert [(w.center, w.width) for w in file_windows] == [(1000, 500), (2000, 3000)]
    assert img.default_window == file_windows[0]
    other = img.render(file_windows[1])
    assert not np.array_equal(other, img.display)


def test_voi_lut_sequence_is_preferred() -> None:
    pix = (np.arange(64 * 64).reshape(64, 64) % 256).astype(np.uint16)
    lut = np.arange(256, dtype=np.int64)[::-1] * 257  # a reversing LUT over 16 bits
    img = load_image(make_dicom(pix, window=(128, 256), voi_lut=lut))
    assert img.default_window.kind == "lut"
    assert img.display[0, 0] == 255 and img.display[0, 255 % 64] < img.display[0, 0]


def test_rescale_gives_modality_values() -> None:
    pix = np.full((32, 32), 1024, dtype=np.uint16)
    pix[:16] = 0
    img = load_image(make_dicom(pix, rescale=(1, -1024), modality="CT"))
    assert img.values.min() == -1024 and img.values.max() == 0


def test_bare_dataset_without_preamble_implicit_and_explicit() -> None:
    for implicit in (False, True):
        data = make_dicom(_phantom_u16(), bare=True, implicit=implicit)
        assert data[128:132] != b"DICM"
        img = load_image(data)
        assert img.shape == (96, 96)


def test_extension_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "film.png"
    path.write_bytes(make_dicom(_phantom_u16()))
    assert load_image(path).metadata.format == "DICOM"


def test_multiframe_first_frame_with_warning() -> None:
    frames = np.stack([_phantom_u16(), np.zeros((96, 96), np.uint16), np.zeros((96, 96), np.uint16)])
    img = load_image(make_dicom(frames, frames=3, rows=96, columns=96))
    assert img.shape == (96, 96)
    np.testing.assert_array_equal(img.values, frames[0])
    assert any("first frame" in w for w in img.warnings)


@pytest.mark.parametrize("photometric,samples,modality,what", [
    ("RGB", 3, "US", "colour ultrasound"), ("YBR_FULL_422", 3, "US", "colour ultrasound"),
    ("PALETTE COLOR", 1, "US", "colour ultrasound"), ("YBR_FULL", 3, "ES", "colour image (modality ES)")])
def test_colour_dicom_is_not_a_radiograph(photometric: str, samples: int, modality: str, what: str) -> None:
    """Colour ultrasound and other colour DICOMs: an UnsupportedImageError (the viewer cannot
    show them) of the kind analysis refuses, with the reason it writes in the row."""
    pixels = np.zeros((16, 16, 3) if samples == 3 else (16, 16), np.uint8)
    data = make_dicom(pixels, photometric=photometric, samples_per_pixel=samples, rows=16, columns=16,
                      modality=modality)
    with pytest.raises(NotARadiographError, match=photometric) as exc:
        load_image(data, name="us.dcm")
    assert isinstance(exc.value, UnsupportedImageError) and exc.value.code == "not_radiograph_colour"
    assert exc.value.reason == f"Not a radiograph: {what} (photometric interpretation {photometric})."
    assert exc.value.message.startswith(f"not a radiograph: {what}")


def test_monochrome_with_two_samples_is_unsupported_not_refused() -> None:
    with pytest.raises(UnsupportedImageError, match="MONOCHROME2 with 2 sample") as exc:
        load_image(make_dicom(np.zeros((16, 16, 2), np.uint8), samples_per_pixel=2, rows=16, columns=16))
    assert not isinstance(exc.value, NotARadiographError)


def test_no_pixel_data() -> None:
    with pytest.raises(NoPixelDataError, match="no pixel data"):
        load_image(make_dicom(include_pixels=False), name="report.dcm")


def test_huge_header_refused_before_decoding() -> None:
    data = make_dicom(np.zeros((4, 4), np.uint16), rows=60000, columns=60000)
    with pytest.raises(ImageTooLargeError, match="60000x60000"):
        load_image(data)


def test_missing_codec_names_the_transfer_syntax() -> None:
    # MPEG2 video: pydicom has no decoder for it at all.
    data = make_dicom(np.zeros((8, 8), np.uint8), transfer_syntax="1.2.840.10008.1.2.4.100")
    with pytest.raises(CodecMissingError, match="MPEG2"):
        load_image(data)


def test_missing_plugin_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    import pydicom.pixels

    class _Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg"]

    monkeypatch.setattr(pydicom.pixels, "get_decoder", lambda uid: _Unavailable())
    data = make_dicom(np.zeros((8, 8), np.uint16), transfer_syntax="1.2.840.10008.1.2.4.90")
    with pytest.raises(CodecMissingError, match="pylibjpeg-openjpeg"):
        load_image(data)


def test_short_pixel_data_is_corrupt() -> None:
    data = make_dicom(np.zeros((64, 64), np.uint16), rows=128, columns=128)
    with pytest.raises(CorruptImageError):
        load_image(data)


def test_dicomdir_refused() -> None:
    from pydicom.uid import UID

    data = make_dicom(include_pixels=False, extra={"SOPClassUID": UID("1.2.840.10008.1.3.10")})
    # Patch the file meta SOP class too, as a real DICOMDIR has it.
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.1.3.10")
    buf = io.BytesIO()
    ds.save_as(buf)
    with pytest.raises(NoPixelDataError, match="DICOMDIR"):
        load_image(buf.getvalue())
