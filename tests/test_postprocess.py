"""Lung-mask postprocessing on synthetic masks (no model, no data needed)."""

from __future__ import annotations

import numpy as np

from xrayviewer.modellayer.postprocess import LEFT_LUNG, RIGHT_LUNG, clean_binary, lung_labels, split_lungs


def _two_lungs(h: int = 100, w: int = 120) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[20:80, 15:50] = 0.9  # image left  = patient's right lung
    m[20:85, 70:108] = 0.9  # image right = patient's left lung
    return m


def test_two_components_labelled_by_side() -> None:
    lab = lung_labels(_two_lungs())
    assert set(np.unique(lab)) == {0, RIGHT_LUNG, LEFT_LUNG}
    assert np.all(lab[:, :60][lab[:, :60] > 0] == RIGHT_LUNG)
    assert np.all(lab[:, 60:][lab[:, 60:] > 0] == LEFT_LUNG)


def test_keeps_two_largest_and_fills_holes() -> None:
    p = _two_lungs()
    p[40:50, 25:35] = 0.1  # hole inside the right lung
    p[2:5, 2:5] = 0.9  # speck of noise
    p[90:99, 55:62] = 0.9  # third, small blob
    m = clean_binary(p)
    assert m[45, 30]  # hole filled
    assert not m[3, 3] and not m[95, 58]


def test_merged_blob_is_split_at_the_waist() -> None:
    p = _two_lungs()
    p[50:55, 50:70] = 0.9  # thin bridge joining the lungs
    lab = lung_labels(p)
    assert (lab == RIGHT_LUNG).any() and (lab == LEFT_LUNG).any()
    assert np.all(lab[:, :50][lab[:, :50] > 0] == RIGHT_LUNG)
    assert np.all(lab[:, 70:][lab[:, 70:] > 0] == LEFT_LUNG)


def test_empty_and_single_lung() -> None:
    assert not lung_labels(np.zeros((50, 50))).any()
    one = np.zeros((60, 100), bool)
    one[10:50, 60:90] = True  # only the image-right lung visible
    lab = split_lungs(one)
    assert set(np.unique(lab)) == {0, LEFT_LUNG}
