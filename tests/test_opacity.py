"""Opacity figures (regions, involvement, extent score, grade) without TensorFlow.

Synthetic masks for the exact arithmetic, real COVID-QU-Ex masks for "consistent with the
masks", a property test for the invariants, and a subprocess check that the app module
does not pull TensorFlow in.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xrayviewer.modellayer.opacity import (
    GRADES,
    OpacityResult,
    analyze_probability,
    extent_score,
    find_regions,
    involvement,
    min_area_px,
    severity_grade,
)
from xrayviewer.modellayer.postprocess import LEFT_LUNG, RIGHT_LUNG, split_lungs

REPO = Path(__file__).resolve().parents[1]


def _lungs(h: int = 200, w: int = 200) -> np.ndarray:
    lab = np.zeros((h, w), np.uint8)
    lab[40:160, 20:90] = RIGHT_LUNG  # image left = patient's right, 120 x 70 = 8400 px
    lab[40:170, 110:180] = LEFT_LUNG  # 130 x 70 = 9100 px
    return lab


def test_single_region_exact_figures() -> None:
    lab = _lungs()
    prob = np.zeros(lab.shape, np.float32)
    prob[60:100, 30:70] = 0.8  # 40 x 40 = 1600 px inside the right lung
    prob[5:30, 5:30] = 0.95  # outside both lungs: must vanish
    prob[150:153, 140:143] = 0.9  # 9-px speck inside the left lung: below the minimum area
    res = analyze_probability(prob, lab, threshold=0.5, min_region_fraction=0.001)  # 40 px
    assert res.min_area_px == 40
    assert res.probability.shape == lab.shape and res.probability.dtype == np.float32
    assert res.probability[10, 10] == 0.0  # restricted to the lung
    assert res.mask.sum() == 1600 and not res.mask[151, 141]
    assert len(res.regions) == 1
    r = res.regions[0]
    assert r.bbox == (30, 60, 70, 100) and r.area_px == 1600 and r.side == "right"
    assert r.mean_probability == pytest.approx(0.8)
    assert r.centroid == pytest.approx((49.5, 79.5))
    assert res.lung_area_px == {"right": 8400, "left": 9100, "total": 17500}
    assert res.opacity_area_px == {"right": 1600, "left": 0, "total": 1600}
    assert res.involvement_pct["right"] == pytest.approx(100 * 1600 / 8400)
    assert res.involvement_pct["left"] == 0.0
    assert res.involvement_pct["total"] == pytest.approx(100 * 1600 / 17500)
    assert res.extent_score == {"right": 1, "left": 0, "total": 1}
    assert res.grade == "mild" and res.has_opacity
    json.dumps(res.summary())  # report/batch export must be able to serialise it


def test_regions_sorted_and_side_by_majority() -> None:
    lab = _lungs()
    lab[90:110, 90:110] = LEFT_LUNG  # lungs touch: a region can straddle them
    prob = np.zeros(lab.shape, np.float32)
    prob[95:105, 80:115] = 0.9  # 10 x 35 straddling: 10 cols right, 25 cols left
    prob[120:160, 120:170] = 0.7  # 40 x 50 in the left lung
    res = analyze_probability(prob, lab, min_region_fraction=0.001)
    assert [r.area_px for r in res.regions] == [2000, 350]
    assert [r.side for r in res.regions] == ["left", "left"]
    assert res.opacity_area_px["right"] == 100
    assert res.extent_score["right"] == 1  # the spill counts in the right lung too
    assert res.opacity_area_px["total"] == res.mask.sum() == sum(r.area_px for r in res.regions)


def test_severe_bilateral_and_scores() -> None:
    lab = _lungs()
    prob = np.where(lab > 0, 0.9, 0.0).astype(np.float32)
    prob[40:70, 20:90] = 0.1  # 30 of 120 right-lung rows clear -> right 75 %
    res = analyze_probability(prob, lab)
    assert res.involvement_pct["right"] == pytest.approx(75.0)
    assert res.involvement_pct["left"] == pytest.approx(100.0)
    assert res.extent_score == {"right": 4, "left": 4, "total": 8}
    assert res.grade == "severe"


def test_empty_and_no_lung() -> None:
    lab = _lungs()
    res = analyze_probability(np.zeros(lab.shape, np.float32), lab)
    assert res.grade == "none" and not res.regions and not res.mask.any()
    assert res.involvement_pct == {"right": 0.0, "left": 0.0, "total": 0.0}
    res = analyze_probability(np.ones((50, 60), np.float32), np.zeros((50, 60), np.uint8))
    assert res.grade == "none" and res.lung_area_px["total"] == 0 and res.involvement_pct["total"] == 0.0


def test_result_is_frozen() -> None:
    lab = _lungs()
    res = analyze_probability(np.full(lab.shape, 0.9, np.float32), lab)
    assert isinstance(res, OpacityResult)
    with pytest.raises(ValueError):
        res.mask[0, 0] = True
    with pytest.raises(ValueError):
        res.probability[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.grade = "none"  # type: ignore[misc]


def test_bad_shapes_rejected() -> None:
    with pytest.raises(ValueError):
        analyze_probability(np.zeros((10, 10)), np.zeros((10, 11), np.uint8))
    with pytest.raises(ValueError):
        involvement(np.zeros((4, 4), bool), np.zeros((5, 4), np.uint8))
    # (H, W, 1) model-style maps are accepted
    assert analyze_probability(np.zeros((10, 10, 1)), np.zeros((10, 10), np.uint8)).mask.shape == (10, 10)


@pytest.mark.parametrize(("pct", "has", "score", "grade"), [
    (0.0, False, 0, "none"), (0.5, True, 1, "mild"), (24.999, True, 1, "mild"),
    (25.0, True, 2, "moderate"), (49.99, True, 2, "moderate"), (50.0, True, 3, "severe"),
    (74.99, True, 3, "severe"), (75.0, True, 4, "severe"), (100.0, True, 4, "severe"),
])
def test_score_and_grade_boundaries(pct: float, has: bool, score: int, grade: str) -> None:
    assert extent_score(pct, has) == score
    assert severity_grade(pct, has) == grade
    assert grade in GRADES


def test_min_area_scales_with_image() -> None:
    assert min_area_px((256, 256), 0.001) == 66
    assert min_area_px((1024, 1024), 0.001) == 1049
    assert min_area_px((10, 10), 0.001) == 1


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), threshold=st.floats(0.05, 0.95),
       frac=st.floats(0.0, 0.02))
def test_invariants_on_random_maps(seed: int, threshold: float, frac: float) -> None:
    rng = np.random.default_rng(seed)
    h, w = rng.integers(20, 90, size=2)
    lab = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    lab[:, : w // 3] = np.where(lab[:, : w // 3] > 0, RIGHT_LUNG, 0)
    from scipy import ndimage

    prob = ndimage.gaussian_filter(rng.random((h, w)), 2.0).astype(np.float32)
    prob = (prob - prob.min()) / max(1e-6, float(prob.max() - prob.min()))
    res = analyze_probability(prob, lab, threshold, frac)
    assert not res.mask[lab == 0].any()
    for k in ("right", "left", "total"):
        assert 0.0 <= res.involvement_pct[k] <= 100.0
    for side, code in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
        n_lung = int((lab == code).sum())
        n_op = int((res.mask & (lab == code)).sum())
        assert res.involvement_pct[side] == pytest.approx(100 * n_op / n_lung if n_lung else 0.0)
    assert sum(r.area_px for r in res.regions) == int(res.mask.sum())
    for r in res.regions:
        x0, y0, x1, y1 = r.bbox
        assert r.area_px >= res.min_area_px
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        assert res.mask[y0:y1, x0:x1].sum() >= r.area_px
        assert threshold < r.mean_probability <= 1.0
    assert (res.grade == "none") == (not res.regions)
    assert 0 <= res.extent_score["total"] <= 8


def test_find_regions_drops_specks_from_mask() -> None:
    m = np.zeros((30, 30), bool)
    m[2:4, 2:4] = True
    m[10:20, 10:20] = True
    kept, regions = find_regions(m, np.ones_like(m, np.uint8), m.astype(np.float32), min_area=5)
    assert len(regions) == 1 and kept.sum() == 100 and not kept[2, 2]


# ------------------------------------------------------------------ real masks
def _real_pairs(data_dir: Path, cls: str, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from PIL import Image

    folder = data_dir / "covid-qu-ex" / "Val" / cls
    names = sorted(p.name for p in (folder / "images").glob("*.png"))[:n]
    out = []
    for name in names:
        inf = np.asarray(Image.open(folder / "infection masks" / name).convert("L")) > 127
        lung = np.asarray(Image.open(folder / "lung masks" / name).convert("L")) > 127
        out.append((inf, lung))
    return out


def test_figures_consistent_with_real_masks(data_dir: Path) -> None:
    """Feeding a COVID film's infection mask as the 'probability' reproduces its own figures."""
    for inf, lung in _real_pairs(data_dir, "COVID-19", 6):
        lab = split_lungs(lung)
        res = analyze_probability(inf.astype(np.float32), lab, 0.5, 0.0)
        expect = inf & lung
        assert res.mask.sum() == expect.sum()
        for side, code in (("right", RIGHT_LUNG), ("left", LEFT_LUNG)):
            n = (lab == code).sum()
            assert res.involvement_pct[side] == pytest.approx(100 * (expect & (lab == code)).sum() / n)
            assert 0.0 <= res.involvement_pct[side] <= 100.0
        assert res.grade != "none" and res.regions
        assert sum(r.area_px for r in res.regions) == res.mask.sum()
    for inf, lung in _real_pairs(data_dir, "Normal", 4):
        res = analyze_probability(inf.astype(np.float32), split_lungs(lung))
        assert res.grade == "none" and res.involvement_pct["total"] == 0.0


def test_importing_opacity_does_not_load_tensorflow() -> None:
    code = ("import sys, xrayviewer.modellayer.opacity, numpy as np\n"
            "from xrayviewer.modellayer.opacity import analyze_probability\n"
            "analyze_probability(np.zeros((8, 8)), np.ones((8, 8), np.uint8))\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr


# ---------------------------------------------------------------- film-level rule
def _with_region() -> OpacityResult:
    lab = _lungs()
    prob = np.zeros(lab.shape, np.float32)
    prob[60:100, 30:70] = 0.9
    return analyze_probability(prob, lab)


def test_film_rule_withholds_regions_when_the_classifier_reads_normal() -> None:
    from xrayviewer.modellayer.opacity import FILM_RULE_CLASSIFIER, apply_film_rule, withheld_message

    res = _with_region()
    assert res.has_opacity and res.grade != "none"
    out = apply_film_rule(res, FILM_RULE_CLASSIFIER, "Normal")
    assert not out.has_opacity and out.grade == "none" and out.withheld_regions == len(res.regions) == 1
    assert not out.mask.any() and not out.mask.flags.writeable
    assert out.involvement_pct == {"right": 0.0, "left": 0.0, "total": 0.0}
    assert out.extent_score == {"right": 0, "left": 0, "total": 0}
    assert out.lung_area_px == res.lung_area_px
    assert np.array_equal(out.probability, res.probability)  # the map stays for the overlay
    assert out.summary()["withheld_regions"] == 1
    assert "1 candidate region not reported" in withheld_message(1, 0.82) and "82 %" in withheld_message(1, 0.82)


@pytest.mark.parametrize("rule, top", [("classifier-not-normal", "COVID-19"),
                                       ("classifier-not-normal", "Other pneumonia"),
                                       ("classifier-not-normal", None), (None, "Normal")])
def test_film_rule_keeps_regions_otherwise(rule: str | None, top: str | None) -> None:
    from xrayviewer.modellayer.opacity import apply_film_rule

    res = _with_region()
    assert apply_film_rule(res, rule, top) is res


def test_film_rule_unknown_is_an_error() -> None:
    from xrayviewer.modellayer.opacity import apply_film_rule

    with pytest.raises(ValueError, match="unknown opacity film rule"):
        apply_film_rule(_with_region(), "majority-vote", "Normal")
