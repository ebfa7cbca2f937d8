"""The domain gate: refuses CT slices, lateral films, non-chest DICOMs and colour pictures
with a readable reason; passes frontal chest films. One sequence (screen, then confirm)
serves the Analyzer and the gate's evaluation alike."""

from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xrayviewer.imaging import load_image
from xrayviewer.imaging.raster import colour_fraction
from xrayviewer.modellayer import modelstore
from xrayviewer.modellayer.classifier import DiseaseClassifier
from xrayviewer.modellayer.gate import ACCEPTED, MODEL_NAME, DomainGate, check_header


@pytest.fixture(scope="module")
def gate() -> DomainGate:
    return DomainGate()


@pytest.fixture(scope="module")
def classifier() -> DiseaseClassifier:
    from xrayviewer.modellayer.lung import LungSegmenter

    return DiseaseClassifier(lung_segmenter=LungSegmenter())  # as the Analyzer builds it


@pytest.fixture(scope="module")
def card() -> modelstore.ModelCard:
    return modelstore.read_card(MODEL_NAME)


# ------------------------------------------------------------------ header stage (no TF)
def _fake(modality=None, body=None, view=None, colour=None):
    md = SimpleNamespace(modality=modality, body_part=body, view_position=view, colour_fraction=colour)
    return SimpleNamespace(metadata=md, source="<none>")


@pytest.mark.parametrize("modality,code", [("CT", "not_radiograph_modality"), ("MR", "not_radiograph_modality"),
                                           ("US", "not_radiograph_modality")])
def test_header_refuses_other_modalities(modality: str, code: str) -> None:
    r = check_header(_fake(modality=modality))
    assert r is not None and not r.accepted and r.code == code and modality in r.reason


def test_header_refuses_non_chest_and_lateral() -> None:
    r = check_header(_fake(modality="CR", body="HIP"))
    assert r is not None and r.code == "not_chest_body_part" and "HIP" in r.reason
    r = check_header(_fake(modality="DX", body="CHEST", view="LL"))
    assert r is not None and r.code == "lateral_view" and "frontal" in r.reason
    assert check_header(_fake(modality="DX", body="CHEST", view="PA")) is None
    assert check_header(_fake()) is None


def test_colour_photo_vs_annotated_xray() -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert colour_fraction(photo) > 0.5
    r = check_header(_fake(colour=colour_fraction(photo)))
    assert r is not None and r.code == "colour_photo" and r.stage == "header"
    xray = np.repeat(rng.integers(0, 256, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    xray[5:8, 5:30] = (255, 0, 0)  # a red annotation arrow
    assert check_header(_fake(colour=colour_fraction(xray))) is None
    # The raster loader measures it (from bytes too: nothing is re-read), only for colour files.
    for rgb, coloured in ((photo, True), (xray, False)):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        img = load_image(buf.getvalue(), name="picture.png")
        assert img.metadata.colour_fraction == pytest.approx(colour_fraction(rgb))
        assert (check_header(img) is not None) == coloured
    buf = io.BytesIO()
    Image.fromarray(xray[..., 0]).save(buf, format="PNG")
    assert load_image(buf.getvalue()).metadata.colour_fraction is None


# ------------------------------------------------------------------ bundled gate
def test_gate_card(card: modelstore.ModelCard) -> None:
    assert modelstore.sha256_file(card.weights_path) == card.sha256
    assert card.weights_path.stat().st_size < 2 * 2**20
    m = card.metrics
    assert m["frontal_val_films"]["pass_rate"] >= 0.99
    for k in ("ieee8023_lateral_heldout", "ieee8023_ct_heldout", "non_chest_dicoms",
              "synthetic_heldout_seed", "colour_pictures"):
        assert m[k]["n"] > 0 and m[k]["rejection_rate"] is not None


def test_gate_rejects_ct_slice(gate: DomainGate, classifier: DiseaseClassifier, dicom_dir: Path,
                               data_dir: Path, card: modelstore.ModelCard) -> None:
    img = load_image(dicom_dir / "non_cxr" / "CT_small.dcm")
    # The same pixels without the header: the image-type CNN must catch it on its own.
    r, pixels_only = gate.check_batch([img, img.display], classifier)
    assert not r.accepted and r.code == "not_radiograph_modality" and "CT" in r.reason
    assert not pixels_only.accepted, pixels_only
    # Held-out ieee8023 CT rows (patients not used to train the gate), pixels only.
    held = card.metrics["heldout_files"]["ct"]
    res = gate.check_batch([load_image(data_dir / k) for k in held], classifier)
    assert np.mean([not x.accepted for x in res]) >= 0.9


def test_gate_rejects_lateral_film(gate: DomainGate, classifier: DiseaseClassifier, data_dir: Path,
                                   card: modelstore.ModelCard) -> None:
    held = card.metrics["heldout_files"]["lateral"]
    assert held
    res = gate.check_batch([load_image(data_dir / k) for k in held], classifier)
    rate = np.mean([not x.accepted for x in res])
    assert rate >= min(0.8, card.metrics["ieee8023_lateral_heldout"]["rejection_rate"]), res
    assert any(x.code == "lateral_view" and "lateral" in x.reason.lower() for x in res)


def test_gate_rejects_hip_and_mr_dicoms(gate: DomainGate, dicom_dir: Path) -> None:
    files = ("RG2_JPLY_fixed.dcm", "non_cxr/MR_small.dcm")
    for f, r in zip(files, gate.screen([load_image(dicom_dir / f) for f in files])):
        assert not r.accepted and r.reason and r.stage == "header", f


def test_gate_rejects_colour_picture_and_noise(gate: DomainGate, classifier: DiseaseClassifier,
                                              tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    photo = np.asarray(Image.fromarray(small).resize((256, 256), Image.BICUBIC))
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    buf = io.BytesIO()  # from bytes: the loader's colour fraction, no file to re-read
    Image.fromarray(photo).save(buf, format="PNG")
    noise = rng.integers(0, 256, (256, 256), dtype=np.uint8)
    jpg, png, noisy = gate.check_batch([load_image(tmp_path / "photo.jpg"),
                                        load_image(buf.getvalue(), name="photo.png"), noise], classifier)
    assert not jpg.accepted and jpg.code == "colour_photo" and "colour" in jpg.reason
    assert not png.accepted and png.code == "colour_photo"
    assert not noisy.accepted


def test_gate_accepts_frontal_films(gate: DomainGate, classifier: DiseaseClassifier, data_dir: Path,
                                    dicom_dir: Path) -> None:
    files = (sorted((data_dir / "covid-qu-ex" / "Val" / "Normal" / "images").glob("*.png"))[:4]
             + sorted((data_dir / "covid-qu-ex" / "Val" / "COVID-19" / "images").glob("*.png"))[:4]
             + sorted((data_dir / "nih" / "X-Ray Image DataSet" / "Pneumonia").glob("*.png"))[-4:]
             + [dicom_dir / "RG1_J2KI.dcm", dicom_dir / "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"])
    res = gate.check_batch([load_image(f) for f in files], classifier)
    refused = [(f.name, r.reason) for f, r in zip(files, res) if not r.accepted]
    assert len(refused) <= 1, refused
    ok = [r for r in res if r.accepted]
    assert all(r.code == ACCEPTED == "ok" and r.stage == "all" and "p_frontal" in r.scores for r in ok)


def test_analyzer_runs_the_same_gate_sequence(gate: DomainGate, classifier: DiseaseClassifier, data_dir: Path,
                                              dicom_dir: Path, card: modelstore.ModelCard, tmp_path: Path) -> None:
    """The Analyzer (screen, its own classifier pass, confirm) and check_batch (what the card's
    figures are measured with) decide alike at every stage."""
    from PIL import Image

    from xrayviewer.inference.analyzer import Analyzer

    rng = np.random.default_rng(2)
    photo = np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((256, 256)))
    Image.fromarray(photo).save(tmp_path / "photo.png")
    files = ([dicom_dir / "non_cxr" / "CT_small.dcm", dicom_dir / "RG1_J2KI.dcm", tmp_path / "photo.png"]
             + [data_dir / k for k in card.metrics["heldout_files"]["lateral"][:2]]
             + sorted((data_dir / "covid-qu-ex" / "Val" / "COVID-19" / "images").glob("*.png"))[:2])
    images = [load_image(f) for f in files]
    expected = gate.check_batch(images, classifier)
    got = [r.gate for r in Analyzer(heatmap=False).analyze_batch(images)]
    assert [(g.accepted, g.code, g.stage) for g in got] == [(e.accepted, e.code, e.stage) for e in expected]
    assert {e.stage for e in expected} >= {"header", "all"}
