"""Calibrated scores: valid probabilities for any logits; temperature fitting and ECE behave."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from xrayviewer.modellayer.classifier import lung_box
from xrayviewer.modellayer.common import mahalanobis, softmax
from xrayviewer.training.classifier_metrics import (
    auc_binary,
    cross_fitted_ece,
    expected_calibration_error,
    fit_temperature,
    macro_auc,
    sens_spec,
    youden_threshold,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None)
@given(logits=hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.just(3)), elements=finite),
       temperature=st.floats(min_value=1e-3, max_value=1e3))
def test_calibrated_probabilities_are_valid(logits: np.ndarray, temperature: float) -> None:
    p = softmax(logits, temperature)
    assert p.shape == logits.shape
    assert np.all(np.isfinite(p))
    assert np.all((p >= 0.0) & (p <= 1.0))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0, atol=1e-12)
    # Temperature never changes the ranking of the classes (AUC and argmax are unaffected).
    assert np.array_equal(np.argmax(p, axis=-1), np.argmax(softmax(logits), axis=-1)) or \
        np.any(np.isclose(np.sort(logits, axis=-1)[:, -1], np.sort(logits, axis=-1)[:, -2]))


@pytest.mark.parametrize("bad", [0.0, -1.0, math.inf, math.nan])
def test_bad_temperature_rejected(bad: float) -> None:
    with pytest.raises(ValueError):
        softmax(np.zeros(3), bad)


def test_non_finite_logits_rejected() -> None:
    with pytest.raises(ValueError):
        softmax(np.array([0.0, np.nan, 1.0]))


def _synthetic_logits(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose calibrated temperature is ``true_t`` by construction."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 2.0, (n, 3))
    p = softmax(base)
    y = np.array([rng.choice(3, p=row) for row in p])
    return base * true_t, y


def test_fit_temperature_recovers_known_temperature() -> None:
    logits, y = _synthetic_logits(4000, 2.5)
    assert fit_temperature(logits, y) == pytest.approx(2.5, rel=0.1)


def test_temperature_scaling_reduces_ece() -> None:
    logits, y = _synthetic_logits(3000, 3.0, seed=1)
    before = expected_calibration_error(softmax(logits), y)
    after, temps = cross_fitted_ece(logits, y)
    assert after < before
    assert after < 0.04
    assert all(t > 1.5 for t in temps)


def test_ece_of_perfect_and_overconfident_predictions() -> None:
    y = np.array([0, 1, 2, 0])
    assert expected_calibration_error(np.eye(3)[y], y) == pytest.approx(0.0)
    wrong = np.eye(3)[(y + 1) % 3]
    assert expected_calibration_error(wrong, y) == pytest.approx(1.0)


def test_auc_matches_pairwise_definition() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 60)
    s = rng.integers(0, 5, 60).astype(float)  # many ties
    pos, neg = s[y == 1], s[y == 0]
    brute = np.mean([(a > b) + 0.5 * (a == b) for a in pos for b in neg])
    assert auc_binary(y, s) == pytest.approx(brute)
    assert math.isnan(auc_binary(np.ones(5), np.arange(5)))


def test_macro_auc_and_sens_spec() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.eye(3)[y] * 0.8 + 0.1
    assert macro_auc(y, probs) == pytest.approx(1.0)
    assert sens_spec(y, probs.argmax(1), 1) == (1.0, 1.0)
    op = youden_threshold(y == 1, probs[:, 1])
    assert op["sensitivity"] == 1.0 and op["specificity"] == 1.0


def test_lung_box_and_mahalanobis() -> None:
    m = np.zeros((100, 100), bool)
    assert lung_box(m) is None  # no lungs: callers fall back to the whole image
    m[20:80, 10:90] = True
    r0, r1, c0, c1 = lung_box(m, margin=0.1)
    assert (r0, r1, c0, c1) == (14, 86, 2, 98)
    emb = np.array([[0.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(mahalanobis(emb, np.zeros(2), np.eye(2)), [0.0, 5.0])
