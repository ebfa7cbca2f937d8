"""The robust model input (``rank-v1``): what the models see must not depend on the file
format, the bit depth, the display window or the source's grey-level statistics."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from xrayviewer.errors import ModelError
from xrayviewer.imaging import load_image
from xrayviewer.modellayer.modelstore import read_card
from xrayviewer.modellayer.opacity import lung_box
from xrayviewer.modellayer.preprocessing import LEGACY, ROBUST, FilmInput, film_input, prepare_for_model

SIZE = 128
SIIM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean())


@pytest.fixture(scope="module")
def rg1(dicom_dir: Path):
    return load_image(dicom_dir / "RG1_J2KI.dcm")


def test_dicom_png_and_jpeg_exports_give_the_same_input(rg1, tmp_path: Path) -> None:
    """A 15-bit MONOCHROME1 JPEG 2000 CR and an 8-bit PNG / JPEG of its default display."""
    ref = prepare_for_model(rg1, SIZE, ROBUST)
    cv2.imwrite(str(tmp_path / "x.png"), rg1.display)
    cv2.imwrite(str(tmp_path / "x.jpg"), rg1.display, [cv2.IMWRITE_JPEG_QUALITY, 85])
    png = prepare_for_model(load_image(tmp_path / "x.png"), SIZE, ROBUST)
    jpg = prepare_for_model(load_image(tmp_path / "x.jpg"), SIZE, ROBUST)
    assert ref.shape == (SIZE, SIZE, 1) and ref.dtype == np.float32
    assert _diff(ref, png) < 0.005
    assert _diff(ref, jpg) < 0.01
    # the legacy input of the same two files differs far more than that
    assert _diff(prepare_for_model(rg1, SIZE, LEGACY), prepare_for_model(rg1.values.astype(np.float32), SIZE)) > 0.05


def test_display_window_does_not_move_the_input(rg1, tmp_path: Path) -> None:
    """The viewer's window never reaches the models; a PNG exported with another window or
    a gamma lands on (nearly) the same input too."""
    ref = prepare_for_model(rg1, SIZE, ROBUST)
    for preset in rg1.windows:
        other = rg1.render(preset)
        assert _diff(ref, prepare_for_model(other, SIZE, ROBUST)) < 0.03, preset
    d = rg1.display.astype(np.float32) / 255
    gamma = ((d ** 0.6) * 255).round().astype(np.uint8)
    assert _diff(ref, prepare_for_model(gamma, SIZE, ROBUST)) < 0.01
    # The viewer's window changes the display only: the image the analysis gets carries the
    # same values, so its input is identical whatever window the user chose.
    for preset in rg1.windows:
        shown = dataclasses.replace(rg1, display=rg1.render(preset), default_window=preset)
        assert np.array_equal(prepare_for_model(shown, SIZE, ROBUST), ref)
    # the legacy input moves with the window
    narrow = (np.clip((d - 0.5) / 0.6 + 0.5, 0, 1) * 255).round().astype(np.uint8)
    assert _diff(prepare_for_model(rg1.display, SIZE), prepare_for_model(narrow, SIZE)) > 0.05


def test_monochrome1_twin_is_inverted_once(dicom_dir: Path) -> None:
    """Same stored pixels tagged MONOCHROME1: bright = dense after the inversion, so its input
    is the mirror image of the MONOCHROME2 file's in grey levels."""
    m2 = prepare_for_model(load_image(dicom_dir / SIIM), SIZE, ROBUST)
    m1 = prepare_for_model(load_image(dicom_dir / "Fake_MONOHR1.dcm"), SIZE, ROBUST)
    assert _diff(m1, 1.0 - m2) < 0.01


def test_16_bit_png_equals_8_bit(data_dir: Path, tmp_path: Path) -> None:
    src = next((data_dir / "nih" / "X-Ray Image DataSet" / "No_findings").glob("*.png"))
    g8 = cv2.imread(str(src), cv2.IMREAD_GRAYSCALE)
    g16 = (g8.astype(np.uint16) * 257 + 3).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "x16.png"), g16)
    a = prepare_for_model(load_image(src), SIZE, ROBUST)
    b = prepare_for_model(load_image(tmp_path / "x16.png"), SIZE, ROBUST)
    assert _diff(a, b) < 1e-3
    # the training reader (cv2) and the app's loader give the same input for a dataset PNG
    assert _diff(a, prepare_for_model(g8, SIZE, ROBUST)) < 1e-4


def test_sources_share_grey_level_statistics(data_dir: Path, rg1) -> None:
    """Normal films from three sources and a real CR: the mean and spread of the central model
    input agree within a few hundredths (they differed by ~0.1 with the legacy input)."""
    films = [rg1.values if not rg1.invert else -rg1.values.astype(np.float32)]
    for folder in (data_dir / "covid-qu-ex" / "Val" / "Normal" / "images",
                   data_dir / "nih" / "X-Ray Image DataSet" / "No_findings",
                   data_dir / "tb-shenzhen" / "Lung Segmentation" / "CXR_png"):
        films += [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))[:5]]
    stats = np.array([(x[13:115, 13:115].mean(), x[13:115, 13:115].std())
                      for x in (prepare_for_model(f, SIZE, ROBUST)[..., 0] for f in films)])
    assert np.ptp(stats[:, 0]) < 0.06 and np.ptp(stats[:, 1]) < 0.04


def test_crop_and_flat_films() -> None:
    g = np.tile(np.arange(200, dtype=np.uint16), (100, 1))
    fi = film_input(g)
    crop = fi.model_array(32, (100, 0, 200, 100))
    assert crop.shape == (32, 32, 1) and crop.min() > 0.4  # the right half is the bright half
    flat = film_input(np.full((50, 60), 7, np.uint8))
    assert np.allclose(flat.model_array(16), 0.5)
    assert isinstance(fi, FilmInput) and fi.shape == (100, 200)
    with pytest.raises(ValueError):
        prepare_for_model(g, 32, "no-such-normalization")


def test_lung_box() -> None:
    labels = np.zeros((100, 80), np.uint8)
    labels[20:60, 10:30] = 1
    labels[25:70, 45:70] = 2
    x0, y0, x1, y1 = lung_box(labels, labels.shape, margin=0.1)
    assert (x0, y0, x1, y1) == (4, 15, 76, 75)
    assert lung_box(np.zeros((10, 12)), (10, 12)) == (0, 0, 12, 10)
    assert lung_box(None, (10, 12)) == (0, 0, 12, 10)


def test_card_names_a_known_normalization(tmp_path: Path) -> None:
    src = Path(__file__).resolve().parents[1] / "models" / "lung_unet"
    dest = tmp_path / "lung_unet"
    shutil.copytree(src, dest)
    card = json.loads((dest / "card.json").read_text())
    card["input_normalization"] = "rank-v9"
    (dest / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="input normalization"):
        read_card("lung_unet", tmp_path)
