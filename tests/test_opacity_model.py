"""The bundled opacity generator: integrity, weak correctness on real films, app figures.

The generator is part of the bundle, so a missing one fails here (no skip); the training code
paths are covered without the bundle by tests/test_training_opacity.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from factories import read_gray

from xrayviewer.modellayer import modelstore
from xrayviewer.modellayer.opacity import MODEL_NAME, OpacityDetector, involvement
from xrayviewer.modellayer.postprocess import LEFT_LUNG, RIGHT_LUNG, split_lungs

WEAK_DICE_TOLERANCE = 0.02
# Shenzhen normal films in the val part of runs/split.json (seed 0): in neither model's training.
SHENZHEN_NORMAL_VAL = (23, 26, 28, 41, 43, 44, 50, 51, 53, 59)


@pytest.fixture(scope="module")
def card() -> modelstore.ModelCard:
    return modelstore.read_card(MODEL_NAME)


@pytest.fixture(scope="module")
def detector() -> OpacityDetector:
    return OpacityDetector()



def _lungs(card: modelstore.ModelCard, images: list[np.ndarray], paths: list[Path]) -> list[np.ndarray]:
    """Lung labels from the same source the card's evaluation used."""
    if card.metrics.get("lung_source") == "model":
        from xrayviewer.modellayer.lung import LungSegmenter

        return [r.labels for r in LungSegmenter().segment_batch(images)]
    return [split_lungs(read_gray(p.parent.parent / "lung masks" / p.name) > 127) for p in paths]


def test_card_fields_and_hash(card: modelstore.ModelCard) -> None:
    assert modelstore.sha256_file(card.weights_path) == card.sha256
    assert card.weights_path.stat().st_size < 12 * 2**20
    assert {"pix2pix", "unet"} <= set(card.raw["comparison"])
    assert card.raw["critic_verdict"]
    t = card.metrics["targets"]
    assert 0.0 <= t["covid_dice_mean"] <= 1.0 and 0.0 <= t["normal_false_positive_rate"] <= 1.0
    assert card.raw["latency_cpu"]["256px"]["median_ms"] > 0
    assert card.hardware["cpu_model"] and card.library_versions["tensorflow"]


def test_generator_only(detector: OpacityDetector) -> None:
    assert len(detector.model.inputs) == 1
    assert not any("critic" in layer.name for layer in detector.model.layers)


def test_weak_check_on_real_films(card: modelstore.ModelCard, detector: OpacityDetector,
                                  data_dir: Path) -> None:
    """Fixed COVID-19 and Normal Val films: reproduce the card, and be weakly right."""
    from xrayviewer.training.metrics import segmentation_metrics

    weak = card.raw["weak_check"]
    paths = [data_dir / rel for rel in weak["images"]]
    images = [read_gray(p) for p in paths]
    results = detector.analyze_batch(images, _lungs(card, images, paths))
    covid_dice, normal_any, covid_inv, normal_inv = [], 0, [], []
    for p, res in zip(paths, results):
        truth = read_gray(p.parent.parent / "infection masks" / p.name) > 127
        if "/COVID-19/" in str(p):
            covid_dice.append(segmentation_metrics(res.mask, truth)["dice"])
            covid_inv.append(res.involvement_pct["total"])
        else:
            normal_any += int(res.has_opacity)
            normal_inv.append(res.involvement_pct["total"])
    assert abs(float(np.mean(covid_dice)) - weak["covid_dice_mean"]) <= WEAK_DICE_TOLERANCE
    assert abs(normal_any - weak["normal_any_region"]) <= 1
    # weak correctness, independent of the card
    assert float(np.mean(covid_dice)) >= 0.5
    assert normal_any <= 2
    assert np.mean(covid_inv) > 5 * max(np.mean(normal_inv), 0.1)


def test_involvement_consistent_with_masks(card: modelstore.ModelCard, detector: OpacityDetector,
                                           data_dir: Path) -> None:
    import cv2

    folder = data_dir / "covid-qu-ex" / "Val" / "COVID-19" / "images"
    paths = sorted(folder.glob("*.png"))[:4]
    images = [read_gray(p) for p in paths]
    lungs = _lungs(card, images, paths)
    # one film at another size: figures are resolution independent (within resampling noise)
    images.append(cv2.resize(images[0], (512, 640)))
    lungs.append(cv2.resize(lungs[0], (512, 640), interpolation=cv2.INTER_NEAREST))
    results = detector.analyze_batch(images, lungs)
    for img, lab, res in zip(images, lungs, results):
        assert res.mask.shape == img.shape and not res.mask[lab == 0].any()
        lung_px, op_px, pct = involvement(res.mask, lab)
        assert pct == res.involvement_pct
        for side, code in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
            assert lung_px[side] == int((lab == code).sum())
            assert 0.0 <= pct[side] <= 100.0
        assert sum(r.area_px for r in res.regions) == int(res.mask.sum()) == op_px["total"]
    assert abs(results[0].involvement_pct["total"] - results[-1].involvement_pct["total"]) < 3.0


def _app_path(paths: list[Path]) -> list:
    """Films through the app's own path: loader, one model input, lungs, opacity."""
    from xrayviewer.imaging import load_image
    from xrayviewer.modellayer.lung import LungSegmenter
    from xrayviewer.modellayer.preprocessing import film_input

    films = [film_input(load_image(p)) for p in paths]
    lungs = LungSegmenter().segment_batch(films)
    return OpacityDetector().analyze_batch(films, [lr.labels for lr in lungs])


def test_normal_films_from_an_unseen_hospital_get_no_region(data_dir: Path) -> None:
    """Shenzhen normal films (val part of the split: in neither model's training): at most
    one of ten gets an opacity region through the app's path."""
    folder = data_dir / "tb-shenzhen" / "Lung Segmentation" / "CXR_png"
    results = _app_path([folder / f"CHNCXR_{n:04d}_0.png" for n in SHENZHEN_NORMAL_VAL])
    assert sum(r.has_opacity for r in results) <= 1


@pytest.mark.xfail(strict=True, reason="known defect of the bundled opacity v1.1.0 (display input): "
                   "it grades this ordinary adult CR 'severe'; issue 15 stays open until a robust-input "
                   "generator that fixes it is bundled (strict: this test fails loudly once it passes)")
def test_adult_chest_cr_gets_no_region(data_dir: Path) -> None:
    result = _app_path([data_dir / "dicom" / "RG1_J2KI.dcm"])[0]
    assert not result.has_opacity and result.grade == "none"


def test_covid_films_get_a_region(data_dir: Path) -> None:
    folder = data_dir / "covid-qu-ex" / "Val" / "COVID-19" / "images"
    paths = sorted(folder.glob("*.png"))[::40][:6]
    results = _app_path(paths)
    assert sum(r.has_opacity for r in results) >= 5
    assert all(r.involvement_pct["total"] < 100 for r in results)


def test_card_names_the_film_rule(card: modelstore.ModelCard, detector: OpacityDetector) -> None:
    from xrayviewer.modellayer.opacity import FILM_RULES

    assert card.raw["film_rule"] in FILM_RULES and detector.film_rule == card.raw["film_rule"]


def test_unknown_film_rule_in_a_card_is_refused_at_load(tmp_path: Path) -> None:
    from xrayviewer.errors import ModelError

    src = modelstore.models_dir() / MODEL_NAME
    dst = tmp_path / MODEL_NAME
    dst.mkdir()
    card = json.loads((src / "card.json").read_text())
    card["film_rule"] = "majority-vote"
    (dst / "card.json").write_text(json.dumps(card))
    (dst / card["weights_file"]).symlink_to(src / card["weights_file"])
    with pytest.raises(ModelError, match="film_rule"):
        OpacityDetector(models_root=tmp_path)


def test_normal_nih_film_marked_by_the_generator_is_withheld_by_the_film_rule(data_dir: Path) -> None:
    """An NIH No_findings film (val part; never in opacity training) on which the generator
    finds a 'moderate' region: the classifier reads it as Normal, so the app reports no
    region and says why, in the result and in the CSV row."""
    from xrayviewer.imaging import load_image
    from xrayviewer.inference.analyzer import Analyzer

    path = data_dir / "nih" / "X-Ray Image DataSet" / "No_findings" / "00002339_012.png"
    raw = _app_path([path])[0]
    assert raw.has_opacity  # without the rule
    res = Analyzer(heatmap=False).analyze(load_image(path))
    assert res.predicted_class == "Normal"
    assert res.regions == () and res.severity == "none" and not res.opacity_mask.any()
    assert res.opacity_withheld_regions == len(raw.regions)
    assert any("not reported because the classifier reads the film as Normal" in w for w in res.warnings)
    rec = res.to_record()
    assert rec["opacity_withheld_regions"] == len(raw.regions) and rec["opacity_regions"] == 0
