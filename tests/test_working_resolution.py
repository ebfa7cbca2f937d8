"""Post-processing without full-size float maps (issue 19): the old full-resolution path and
the new one give the same masks and figures.

* Lungs are cleaned (largest components, hole filling, split) at a working resolution and
  only the final labels brought to full size: the same labels within a stated tolerance on
  large films, exactly the same on films up to the working side (every 256-pixel film).
* Opacity is decided at full resolution as before, straight from the model's map
  (:func:`analyze_model_map`): given the same lung labels, exactly the figures of
  :func:`analyze_probability` on the full-size map.

The old path is written out here as it was (resize every map to full size, clean and
measure there), so the comparison stays meaningful after the app's code moved on. Without
models (a fake network returning fixed maps) on synthetic films, and with the bundled
models on the real chest DICOMs and on real films enlarged to 1841x1955.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xrayviewer.modellayer.lung import lung_result
from xrayviewer.modellayer.opacity import analyze_model_map, analyze_probability, involvement, lung_box, predict_maps
from xrayviewer.modellayer.postprocess import (
    LEFT_LUNG,
    RIGHT_LUNG,
    WORKING_SIDE,
    downscale_labels,
    lung_labels,
    upscale_labels,
    upscale_mask,
    working_shape,
)
from xrayviewer.modellayer.preprocessing import ROBUST, film_input, mask_to_full_resolution, resize

# Tolerances on large films (working resolution 512 px on the long side, 4x the models' 128 px)
LUNG_DICE = 0.97  # per lung; the union of both lungs: UNION_DICE
UNION_DICE = 0.99
OPACITY_DICE = 0.97  # the opacity mask, when either path finds one (its crop box follows the lungs)
INVOLVEMENT_PP = 0.5  # total involvement, percentage points


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def old_lung_labels(model_map: np.ndarray, shape: tuple[int, int], threshold: float) -> np.ndarray:
    """The path before issue 19: the map at full resolution, cleaned there."""
    return lung_labels(mask_to_full_resolution(model_map, shape), threshold)


class FixedMaps:
    """A stand-in network: returns the given (S, S) maps, one per input, in order."""

    def __init__(self, maps: list[np.ndarray]) -> None:
        self.maps = list(maps)

    def __call__(self, x: np.ndarray, training: bool = False) -> np.ndarray:
        out, self.maps = self.maps[: len(x)], self.maps[len(x):]
        return np.stack(out)[..., None].astype(np.float32)


def _blob(size: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    return np.exp(-(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2) ** 2)


def synthetic_maps(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(lung map, opacity map) at model resolution: two lungs with a hole and specks; two
    opacities, one a speck below the minimum area."""
    rng = np.random.default_rng(seed)
    lung = np.maximum(_blob(size, 60 + rng.uniform(-4, 4), 38, 36, 18), _blob(size, 62, 90 + rng.uniform(-4, 4), 38, 19))
    lung[55:59, 35:39] = 0.1  # a hole, filled by the clean-up
    lung[5:7, 5:7] = 0.9  # a speck, dropped (not one of the two largest components)
    lung = np.clip(lung + rng.normal(0, 0.03, lung.shape), 0, 1).astype(np.float32)
    opac = np.clip(0.8 * _blob(size, 70, 40, 12 + rng.uniform(0, 4), 9) + 0.7 * _blob(size, 50, 92, 8, 6)
                   + rng.normal(0, 0.02, lung.shape), 0, 1).astype(np.float32)
    opac[100:101, 100:101] = 0.9  # a one-pixel speck
    return lung, opac


def old_and_new(film, lung_map: np.ndarray, opac_map: np.ndarray, threshold: float = 0.5,
                opac_threshold: float = 0.25, fraction: float = 0.001, crop: bool = True):
    """(old labels, old opacity result, new LungResult, new opacity result) for one film and
    fixed model maps, through the app's functions."""
    shape = film.shape
    old_lab = old_lung_labels(lung_map, shape, threshold)
    new = lung_result(lung_map, shape, threshold)
    old_box = lung_box(old_lab, shape) if crop else None
    old_prob = predict_maps(FixedMaps([opac_map]), [film], [old_box], 128, ROBUST)[0]
    old_op = analyze_probability(old_prob, old_lab, opac_threshold, fraction)
    new_op = analyze_model_map(opac_map, lung_box(new.labels, shape) if crop else None, new.labels,
                               opac_threshold, fraction)
    return old_lab, old_op, new, new_op


def assert_same_opacity(a, b) -> None:
    """Two opacity results of the same lung labels: the same figures, to the last bit (the
    probability maps differ in size by design)."""
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.involvement_pct == b.involvement_pct and a.extent_score == b.extent_score and a.grade == b.grade
    assert a.lung_area_px == b.lung_area_px and a.opacity_area_px == b.opacity_area_px
    assert a.min_area_px == b.min_area_px and a.threshold == b.threshold
    assert a.regions == b.regions


def assert_close(old_lab, old_op, new, new_op) -> None:
    for side in (RIGHT_LUNG, LEFT_LUNG):
        assert dice(old_lab == side, new.labels == side) >= LUNG_DICE, side
    assert dice(old_lab, new.labels) >= UNION_DICE
    if old_op.mask.any() or new_op.mask.any():
        assert dice(old_op.mask, new_op.mask) >= OPACITY_DICE
    assert abs(old_op.involvement_pct["total"] - new_op.involvement_pct["total"]) <= INVOLVEMENT_PP
    assert old_op.grade == new_op.grade
    assert len(old_op.regions) == len(new_op.regions)
    for a, b in zip(old_op.regions, new_op.regions):
        assert a.side == b.side
        assert abs(a.area_px - b.area_px) <= 0.05 * a.area_px
        assert abs(a.mean_probability - b.mean_probability) <= 0.02
        assert max(abs(p - q) for p, q in zip(a.bbox, b.bbox)) <= 0.01 * max(new.labels.shape) + 2


def assert_consistent(res, labels: np.ndarray) -> None:
    """The invariants of analyze_probability hold for the new path too: mask inside the
    lungs, regions, mask and involvement agree, every region at least the minimum area."""
    assert res.mask.shape == labels.shape and not res.mask[labels == 0].any()
    lung_px, op_px, pct = involvement(res.mask, labels)
    assert pct == res.involvement_pct and op_px == res.opacity_area_px and lung_px == res.lung_area_px
    assert sum(r.area_px for r in res.regions) == int(res.mask.sum()) == op_px["total"]
    assert all(r.area_px >= res.min_area_px for r in res.regions)
    assert not res.mask.flags.writeable and not res.probability.flags.writeable


# ------------------------------------------------------------------ no models
def test_working_shape() -> None:
    assert working_shape((256, 256)) == (256, 256)
    assert working_shape((WORKING_SIDE, 300)) == (WORKING_SIDE, 300)
    assert working_shape((2128, 2000)) == (512, 481)
    assert working_shape((1955, 1841)) == (512, 482)
    assert working_shape((300, 4000)) == (38, 512)
    assert max(working_shape((100_000, 3))) == WORKING_SIDE and min(working_shape((100_000, 3))) >= 1


def test_upscale_and_downscale_masks() -> None:
    labels = np.zeros((50, 40), np.uint8)
    labels[10:40, 5:18] = RIGHT_LUNG
    labels[10:42, 22:36] = LEFT_LUNG
    up = upscale_labels(labels, (500, 400))
    assert up.dtype == np.uint8 and up.shape == (500, 400) and set(np.unique(up)) == {0, 1, 2}
    assert dice(up == RIGHT_LUNG, np.kron(labels == RIGHT_LUNG, np.ones((10, 10), bool))) > 0.99
    np.testing.assert_array_equal(downscale_labels(up, (50, 40)), labels)
    assert upscale_labels(labels, labels.shape) is labels  # same size: the same array
    assert upscale_mask(labels > 0, labels.shape).dtype == bool
    assert upscale_mask(labels > 0, (500, 400)).dtype == bool


@pytest.mark.parametrize("shape", [(256, 256), (300, 200), (512, 512)])
def test_films_up_to_the_working_side_are_processed_exactly_as_before(shape: tuple[int, int]) -> None:
    lung_map, opac_map = synthetic_maps(1)
    film = film_input(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    old_lab, old_op, new, new_op = old_and_new(film, lung_map, opac_map)
    np.testing.assert_array_equal(new.labels, old_lab)
    np.testing.assert_array_equal(new.work_labels, old_lab)
    assert_same_opacity(old_op, new_op)
    np.testing.assert_array_equal(new_op.probability, old_op.probability)  # working size = own size


@pytest.mark.parametrize("crop", [True, False])
@pytest.mark.parametrize("seed,shape", [(1, (2128, 2000)), (2, (1955, 1841)), (3, (1024, 1024)), (4, (1200, 3000))])
def test_large_synthetic_films_within_tolerance(seed: int, shape: tuple[int, int], crop: bool) -> None:
    lung_map, opac_map = synthetic_maps(seed)
    film = film_input(np.zeros(shape, np.uint16))
    old_lab, old_op, new, new_op = old_and_new(film, lung_map, opac_map, crop=crop)
    assert new.labels.shape == shape and new.probability.shape == working_shape(shape)
    assert new_op.probability.shape == working_shape(shape)
    assert len(old_op.regions) >= 1  # the case exercises regions
    assert_close(old_lab, old_op, new, new_op)
    assert_consistent(new_op, new.labels)
    # given the same lung labels, the opacity figures are exactly the old ones
    same = analyze_model_map(opac_map, lung_box(old_lab, shape) if crop else None, old_lab, 0.25, 0.001)
    assert_same_opacity(old_op, same)


def test_opacity_without_lungs_or_opacity() -> None:
    _, opac_map = synthetic_maps(6)
    none = analyze_model_map(opac_map, None, np.zeros((900, 800), np.uint8), 0.25, 0.001)
    assert none.grade == "none" and not none.regions and not none.mask.any()
    assert none.involvement_pct == {"right": 0.0, "left": 0.0, "total": 0.0}
    labels = np.zeros((900, 800), np.uint8)
    labels[100:800, 100:380] = RIGHT_LUNG
    empty = analyze_model_map(np.zeros((128, 128), np.float32), None, labels, 0.25, 0.001)
    assert empty.grade == "none" and empty.lung_area_px["right"] == 700 * 280
    assert_same_opacity(empty, analyze_probability(np.zeros((900, 800), np.float32), labels, 0.25, 0.001))


def test_full_size_labels_shrink_to_the_working_labels() -> None:
    lung_map, _ = synthetic_maps(5)
    shape = (1600, 1500)
    new = lung_result(lung_map, shape, 0.5)
    work = downscale_labels(new.labels, working_shape(shape))
    assert dice(work, new.work_labels) > 0.99


# ------------------------------------------------------------------ real films, bundled models
CHEST = ("RG1_J2KI.dcm", "966_fixed.dcm", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
         "Fake_MONOHR1.dcm", "dx_image.dcm")


@pytest.fixture(scope="module")
def models():
    from xrayviewer.modellayer.lung import LungSegmenter
    from xrayviewer.modellayer.opacity import OpacityDetector

    return LungSegmenter(), OpacityDetector()


def _real_case(models, film):
    from xrayviewer.modellayer.lung import image_shape, predict_model_maps

    seg, det = models
    shape = image_shape(film)
    lung_map = predict_model_maps(seg.model, [film], seg.input_size, 8, seg.normalization)[0]
    old_lab = old_lung_labels(lung_map, shape, seg.card.threshold)
    old_op = analyze_probability(det.probabilities([film], [old_lab])[0], old_lab, det.card.threshold,
                                 det.min_region_fraction)
    new = seg.segment_batch([film])[0]
    new_op = det.analyze_batch([film], [new.labels])[0]
    # the opacity stage alone, given the old labels: exactly the old figures
    assert_same_opacity(old_op, det.analyze_batch([film], [old_lab])[0])
    return old_lab, old_op, new, new_op


def test_real_chest_dicoms_within_tolerance(models, dicom_dir: Path) -> None:
    from xrayviewer.imaging import load_image

    for name in CHEST:
        film = film_input(load_image(dicom_dir / name))
        old_lab, old_op, new, new_op = _real_case(models, film)
        assert_close(old_lab, old_op, new, new_op)
        assert_consistent(new_op, new.labels)
        if max(film.shape) <= WORKING_SIDE:  # the 211x169 DX: exactly as before
            np.testing.assert_array_equal(new.labels, old_lab)
            assert_same_opacity(old_op, new_op)


def test_real_films_enlarged_to_2000_pixels_within_tolerance(models, data_dir: Path) -> None:
    """COVID-QU-Ex COVID films (opacities of every grade) enlarged to the RG1 film's size."""
    import cv2

    paths = sorted((data_dir / "covid-qu-ex" / "Val" / "COVID-19" / "images").glob("*.png"))[:8]
    grades = set()
    for p in paths:
        grey = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)
        film = film_input(resize(grey, (1955, 1841)))
        old_lab, old_op, new, new_op = _real_case(models, film)
        assert_close(old_lab, old_op, new, new_op)
        assert_consistent(new_op, new.labels)
        grades.add(new_op.grade)
    assert len(grades) >= 2  # the sample covers more than one grade


# ------------------------------------------------------------------ other full-size passes, the same numbers
def test_inverted_film_input_without_a_float_copy_is_bit_identical(dicom_dir: Path) -> None:
    """MONOCHROME1 films: the rank map and the model arrays are those of the old negated
    float copy of the whole film (negation commutes exactly with the linear resize)."""
    from xrayviewer.imaging import load_image
    from xrayviewer.modellayer.preprocessing import apply_rank_map, rank_map

    img = load_image(dicom_dir / "RG1_J2KI.dcm")
    assert img.invert
    fi = film_input(img)
    assert fi.gray is img.values or np.shares_memory(fi.gray, img.values)  # no copy kept
    old = -np.asarray(img.values).astype(np.float32)
    levels, targets = rank_map(old)
    np.testing.assert_array_equal(fi.levels, levels)
    np.testing.assert_array_equal(fi.targets, targets)
    for box in (None, (100, 200, 1500, 1700)):
        g = old if box is None else old[box[1]:box[3], box[0]:box[2]]
        np.testing.assert_array_equal(fi.model_array(128, box), apply_rank_map(resize(g, 128), levels, targets)[..., None])


def test_heatmap_in_place_equals_the_old_computation() -> None:
    from xrayviewer.modellayer.classifier import DiseaseClassifier

    rng = np.random.default_rng(3)
    cam = rng.normal(0.2, 1.0, (8, 8)).astype(np.float32)
    shape, box = (700, 600), (50, 650, 40, 560)
    mask = np.zeros(shape, bool)
    mask[100:600, 60:280] = mask[100:620, 320:540] = True
    for m in (mask, None, mask.astype(np.uint8)):
        r0, r1, c0, c1 = box
        heat = np.zeros(shape, np.float32)
        heat[r0:r1, c0:c1] = resize(cam, (r1 - r0, c1 - c0))
        heat = np.maximum(heat, 0.0)
        if m is not None:
            heat *= (m > 0).astype(np.float32)
        peak = float(heat.max())
        old = heat / peak if peak > 0 else heat
        new = DiseaseClassifier._cam_to_image(cam, box, shape, m)
        assert new.dtype == np.float32
        np.testing.assert_array_equal(new, old)


def test_graph_inference_equals_the_eager_keras_call() -> None:
    """The inference graphs (modelstore.GraphInference, one per model, batch size free) give
    Keras's eager outputs; the Grad-CAM graph gives the eager pass's logits and maps."""
    from xrayviewer.modellayer import modelstore
    from xrayviewer.modellayer.classifier import DiseaseClassifier

    rng = np.random.default_rng(11)
    for name in ("xray_gate", "lung_unet", "opacity_generator", "xray_classifier"):
        model, card = modelstore.load_model(name)
        fn = modelstore.inference_function(model)
        assert isinstance(fn, modelstore.GraphInference) and modelstore.inference_function(model) is fn
        for n in (1, 3):
            x = rng.random((n, card.input_size, card.input_size, 1), np.float32)
            np.testing.assert_allclose(np.asarray(fn(x)), np.asarray(model(x, training=False)), atol=1e-5)
    clf = DiseaseClassifier()
    x = rng.random((2, clf.input_size, clf.input_size, 1), np.float32)
    logits, emb, cam = clf._grad_cam(x)
    eager = [np.asarray(t) for t in clf._grad_cam_pass(x)]
    np.testing.assert_allclose(logits, eager[0], atol=1e-5)
    np.testing.assert_allclose(emb, eager[1], atol=1e-5)
    np.testing.assert_allclose(cam, eager[2], atol=1e-4)


def test_graphs_can_be_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from xrayviewer.modellayer import modelstore

    model, _ = modelstore.load_model("xray_gate")
    monkeypatch.setenv(modelstore.GRAPH_ENV, "0")
    assert modelstore.inference_function(model) is model


def test_shared_model_inputs_are_the_same_numbers(dicom_dir: Path) -> None:
    """A film converted to float once for several model sizes (film_input(sizes=...)) and a
    large display's legacy input remembered between the classifier and the opacity model
    give exactly what computing each afresh gives; callers get their own copies."""
    from xrayviewer.imaging import load_image
    from xrayviewer.modellayer.preprocessing import LEGACY, prepare_for_model, to_unit_float

    for name in ("RG1_J2KI.dcm", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"):
        img = load_image(dicom_dir / name)
        shared, alone = film_input(img, sizes=(128, 64)), film_input(img)
        for size in (128, 64):
            np.testing.assert_array_equal(shared.model_array(size), alone.model_array(size))
        first = prepare_for_model(img.display, 128, LEGACY)
        fresh = np.clip(resize(to_unit_float(img.display), 128).astype(np.float32), 0.0, 1.0)[..., None]
        np.testing.assert_array_equal(first, fresh)
        first[:] = -1.0  # the caller's copy: the remembered input is untouched
        again = prepare_for_model(shared, 128, LEGACY)  # the FilmInput's display: the same array
        np.testing.assert_array_equal(again, fresh)
        assert again is not prepare_for_model(img.display, 128, LEGACY)
