"""The bundled lung model: integrity, weak correctness on real images, app-side behaviour."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from factories import read_gray

from xrayviewer.errors import ModelError
from xrayviewer.modellayer import modelstore
from xrayviewer.modellayer.lung import MODEL_NAME, LungSegmenter
from xrayviewer.modellayer.postprocess import LEFT_LUNG, RIGHT_LUNG, working_shape

# Full-val Dice of the bundled model at export (COVID-QU-Ex Val, 632 images); v1.0.0 reached
# 0.9701 on the display input, v2.0.0 0.9683 on the robust input (a known, stated -0.002).
# A re-export must not silently ship a worse model.
ACHIEVED_VAL_DICE = 0.968  # v2.0.0 (rank-v1 input): 0.9683, stated in the card and README
WEAK_CHECK_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def card() -> modelstore.ModelCard:
    return modelstore.read_card(MODEL_NAME)


@pytest.fixture(scope="module")
def segmenter() -> LungSegmenter:
    return LungSegmenter()



def test_card_fields_and_hash(card: modelstore.ModelCard) -> None:
    assert card.weights_path.is_file()
    assert modelstore.sha256_file(card.weights_path) == card.sha256
    assert card.weights_path.stat().st_size < 12 * 2**20  # "a few MB"
    assert card.labels["1"].startswith("right lung")
    # the comparison keeps the previous bundle (display input) next to the robust-input runs
    norms = {row.get("input_normalization") for row in card.raw["comparison"].values()}
    assert {"display-v1", "rank-v1"} <= norms and card.input_normalization == "rank-v1"
    assert card.metrics["tb_shenzhen_val"]["n"] > 0
    # the seed's U-Net vs residual U-Net study, both trained with the Shenzhen outlines, per source
    trained_with_shenzhen = {row["architecture"].split()[0] for row in card.raw["comparison"].values()
                             if row.get("n_train", 0) > 3699 and row.get("tb_shenzhen_val_dice")}
    assert {"unet", "resunet"} <= trained_with_shenzhen
    assert card.metrics["covid_qu_ex_val"]["dice"]["mean"] >= ACHIEVED_VAL_DICE
    assert card.raw["weak_check"]["n"] == len(card.raw["weak_check"]["images"]) == 48
    for k in ("tensorflow", "keras", "numpy"):
        assert card.library_versions[k]
    assert card.hardware["cpu_model"]


def _copy_bundle(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    shutil.copytree(modelstore.models_dir() / MODEL_NAME, root / MODEL_NAME)
    return root


def test_tampered_weights_raise_model_error(tmp_path: Path) -> None:
    root = _copy_bundle(tmp_path)
    w = root / MODEL_NAME / f"{MODEL_NAME}.keras"
    data = bytearray(w.read_bytes())
    data[len(data) // 2] ^= 0xFF
    w.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="do not match") as exc:
        modelstore.load_model(MODEL_NAME, root)
    assert str(w) in str(exc.value)


def test_truncated_and_missing_weights_raise_model_error(tmp_path: Path) -> None:
    root = _copy_bundle(tmp_path)
    w = root / MODEL_NAME / f"{MODEL_NAME}.keras"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ModelError) as exc:
        modelstore.load_model(MODEL_NAME, root)
    assert str(w) in str(exc.value)
    w.unlink()
    with pytest.raises(ModelError, match="missing") as exc:
        modelstore.load_model(MODEL_NAME, root)
    assert str(w) in str(exc.value)


def test_card_without_required_field_raises(tmp_path: Path) -> None:
    root = _copy_bundle(tmp_path)
    path = root / MODEL_NAME / "card.json"
    data = json.loads(path.read_text())
    del data["sha256"]
    path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match="sha256") as exc:
        modelstore.load_model(MODEL_NAME, root)
    assert str(path) in str(exc.value)


def test_models_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(modelstore.ENV_MODELS_DIR, str(tmp_path))
    assert modelstore.models_dir() == tmp_path
    with pytest.raises(ModelError, match="not found"):
        modelstore.read_card(MODEL_NAME)


def test_weak_check_reproduces_recorded_dice(card: modelstore.ModelCard, segmenter: LungSegmenter,
                                             data_dir: Path) -> None:
    """Fixed sample of real COVID-QU-Ex Val images: Dice within 0.01 of the card's value."""
    from xrayviewer.training.metrics import segmentation_metrics

    weak = card.raw["weak_check"]
    images = [data_dir / rel for rel in weak["images"]]
    results = segmenter.segment_batch([read_gray(p) for p in images])
    dices = []
    for p, res in zip(images, results):
        truth = read_gray(p.parent.parent / "lung masks" / p.name) > 127
        dices.append(segmentation_metrics(res.mask, truth)["dice"])
    assert abs(float(np.mean(dices)) - weak["dice_mean"]) <= WEAK_CHECK_TOLERANCE
    assert float(np.mean(dices)) >= 0.95


def _val_image(data_dir: Path) -> np.ndarray:
    return read_gray(min((data_dir / "covid-qu-ex" / "Val" / "Normal" / "images").glob("*.png")))


def test_right_lung_is_on_image_left(segmenter: LungSegmenter, data_dir: Path) -> None:
    res = segmenter.segment(_val_image(data_dir))
    cols = np.arange(res.labels.shape[1])
    right_cx = cols[None, :].repeat(res.labels.shape[0], 0)[res.labels == RIGHT_LUNG].mean()
    left_cx = cols[None, :].repeat(res.labels.shape[0], 0)[res.labels == LEFT_LUNG].mean()
    w = res.labels.shape[1]
    assert right_cx < w / 2 < left_cx
    assert set(np.unique(res.labels)) == {0, RIGHT_LUNG, LEFT_LUNG}


def test_output_at_full_resolution_and_batch(segmenter: LungSegmenter, data_dir: Path) -> None:
    import cv2

    img = _val_image(data_dir)
    big = cv2.resize(img, (333, 517), interpolation=cv2.INTER_LINEAR)  # (rows 517, cols 333)
    results = segmenter.segment_batch([img, big])
    assert results[0].labels.shape == img.shape
    assert results[1].labels.shape == (517, 333)
    # the probability (and the labels it was cleaned into) stay at the working resolution
    assert results[1].probability.shape == results[1].work_labels.shape == working_shape((517, 333)) == (512, 330)
    assert results[0].probability.shape == results[0].work_labels.shape == img.shape  # small: itself
    assert results[1].probability.dtype == np.float32
    assert results[1].labels.dtype == np.uint8
    # the same film at another size gives (nearly) the same relative lung area
    assert abs(results[0].mask.mean() - results[1].mask.mean()) < 0.02
    with pytest.raises(ValueError):
        segmenter.segment(np.zeros((10, 10, 3), np.uint8))
