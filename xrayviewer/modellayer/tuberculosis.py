"""Tuberculosis screening score: a small head on the disease classifier's feature maps.

The bundled classifier (Normal / COVID-19 / Other pneumonia) was never shown a
tuberculosis film. Rather than retraining it with a fourth class, a logistic regression
is fitted on its feature maps -- the layers the card names (``feature_layers``), each pooled
to one vector per film, globally or weighted by the lung mask (``pooling``) -- with Shenzhen
tuberculosis films as positives and **Shenzhen normal films only** as negatives
(``python -m xrayviewer.training train-tb``; README "Tuberculosis"), so that "comes from
Shenzhen" cannot be what the score learned. The card (``models/tb_head``) records which
classifier the head was fitted on; any other classifier is refused at load.

The score is ``sigmoid(a * logit + b)``: the head's logit recalibrated by Platt scaling
fitted on the Shenzhen validation films. ``positive`` means the score is at or above the
card's operating point. It is a Shenzhen-trained *screening* score, not a diagnosis, and it
is independent of the three COVID-era classes: a film may be both COVID-19 and TB-positive.

The heatmap is the head's class activation map. Every pooled feature is a weighted mean
over positions, so the linear logit splits exactly into per-position contributions
``sum_k w_k A_k(i, j) * weight(i, j)`` (for one layer with global pooling this is Grad-CAM:
the gradient is the same everywhere); the layers' contribution densities are summed at the
image's resolution, the positive part kept and masked to the lung fields like the
classifier's heatmap. No backward pass is needed.

The head runs its own pass of the classifier's network up to those layers, on exactly the
classifier's input (``DiseaseClassifier.model_input``). TensorFlow is imported lazily.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from . import modelstore
from .cards import CardFields
from .common import box_heatmap, image_shape
from .preprocessing import resize

log = logging.getLogger(__name__)

MODEL_NAME = "tb_head"
LABEL = "Tuberculosis"
POOLINGS = ("gap", "lung")  # global average of each feature map / average weighted by the lung mask
# The lung-weighted pool falls back to the global average when the mask covers less than
# this share of a feature grid (segmentation failed).
MIN_LUNG_WEIGHT = 0.02
WEIGHT_ARRAYS = ("mean", "scale", "coef", "intercept")
Box = tuple[int, int, int, int]  # (r0, r1, c0, c1): the image region the classifier's input covers


# ------------------------------------------------------------------ features (shared with training)
def feature_model(classifier_model: Any, layers: Sequence[str]) -> Any:
    """A Keras model from the classifier's input to the named layers' outputs."""
    import keras  # lazy

    try:
        outputs = [classifier_model.get_layer(name).output for name in layers]
    except ValueError as exc:
        raise ModelError(f"classifier lacks a layer the TB head needs: {exc}") from exc
    return keras.Model(classifier_model.input, outputs)


def feature_maps(classifier: Any, fmodel: Any, grays: Sequence[np.ndarray],
                 lung_masks: Sequence[np.ndarray | None], batch_size: int = 16
                 ) -> tuple[list[list[np.ndarray]], list[Box]]:
    """Per film: the (h, w, C) maps of each layer of ``fmodel`` and the box its input covered.

    The input is the classifier's own (``classifier.model_input``), so the head sees what
    the classifier sees."""
    maps: list[list[np.ndarray]] = []
    boxes: list[Box] = []
    for start in range(0, len(grays), batch_size):
        chunk = list(zip(grays[start:start + batch_size], lung_masks[start:start + batch_size]))
        prepared = [classifier.model_input(g, m) for g, m in chunk]
        outs = fmodel(np.stack([p[0] for p in prepared]), training=False)
        outs = [np.asarray(o, np.float32) for o in (outs if isinstance(outs, (list, tuple)) else [outs])]
        for k, (_, box) in enumerate(prepared):
            maps.append([o[k] for o in outs])
            boxes.append(tuple(int(v) for v in box))  # type: ignore[arg-type]
    return maps, boxes


def lung_weights(lung_mask: np.ndarray | None, box: Box | None, grid: tuple[int, int]) -> np.ndarray | None:
    """Share of lung in each cell of a feature grid (h, w), from a full-resolution mask; None
    when there is no mask or it covers (almost) nothing."""
    if lung_mask is None:
        return None
    m = np.asarray(lung_mask) > 0
    if box is not None:
        r0, r1, c0, c1 = box
        m = m[r0:r1, c0:c1]
    if m.size == 0:
        return None
    w = np.clip(resize(m.astype(np.float32), grid), 0.0, 1.0)
    return w if float(w.mean()) >= MIN_LUNG_WEIGHT else None


def cell_weights(grid: tuple[int, int], lung_mask: np.ndarray | None, box: Box | None, pooling: str) -> np.ndarray:
    """(h, w) weights summing to one that pool a feature grid: uniform, or by lung share."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r} (known: {POOLINGS})")
    w = lung_weights(lung_mask, box, grid) if pooling == "lung" else None
    if w is None:
        return np.full(grid, 1.0 / (grid[0] * grid[1]))
    w = np.asarray(w, np.float64)
    return w / float(w.sum())


def pooled(maps: Sequence[np.ndarray], lung_mask: np.ndarray | None, box: Box | None, pooling: str) -> np.ndarray:
    """One film's feature vector: each layer's map pooled, the layers concatenated."""
    out = []
    for a in maps:
        a = np.asarray(a, np.float64)
        cw = cell_weights(a.shape[:2], lung_mask, box, pooling)
        out.append(np.tensordot(cw, a, axes=([0, 1], [0, 1])))
    return np.concatenate(out)


def sigmoid(z: Any) -> Any:
    z = np.clip(np.asarray(z, np.float64), -500.0, 500.0)
    return 1.0 / (1.0 + np.exp(-z))


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class TBResult:
    """The tuberculosis score of one film."""

    probability: float  # calibrated (Platt on Shenzhen validation)
    logit: float  # the head's raw logit
    positive: bool  # probability >= threshold
    threshold: float
    heatmap: np.ndarray | None = field(default=None, repr=False)  # [0, 1], lung-masked

    def as_dict(self) -> dict[str, Any]:
        return {"probability": round(self.probability, 4), "positive": self.positive,
                "threshold": self.threshold}


# ------------------------------------------------------------------ the head
@dataclass(frozen=True)
class TBCard:
    """The TB head's part of its card (schema 1): how its features are pooled, from which
    classifier layers, its Platt calibration and the classifier it was fitted on."""

    pooling: str  # one of POOLINGS
    feature_layers: tuple[str, ...]
    platt_a: float
    platt_b: float
    base_name: str
    base_sha256: str

    @classmethod
    def from_fields(cls, f: CardFields) -> TBCard:
        cal = f.mapping("calibration")
        base = f.mapping("base_model")
        try:
            a, b = float(cal["a"]), float(cal["b"])
        except (KeyError, TypeError, ValueError) as exc:
            raise f.error("calibration", f"needs numbers 'a' and 'b' (Platt scaling): {exc}") from exc
        if not (math.isfinite(a) and math.isfinite(b)):
            raise f.error("calibration", "Platt 'a' and 'b' must be finite")
        if not base.get("name") or len(str(base.get("sha256", ""))) != 64:
            raise f.error("base_model", "must name the classifier and its 64-digit sha256")
        layers = f.texts("feature_layers")
        if not layers:
            raise f.error("feature_layers", "names no classifier layer")
        return cls(pooling=f.choice("pooling", POOLINGS), feature_layers=layers, platt_a=a, platt_b=b,
                   base_name=str(base["name"]), base_sha256=str(base["sha256"]).lower())


class TuberculosisHead:
    """The bundled TB head, verified against its card and against the classifier it needs.

    ``classifier`` is the loaded :class:`~xrayviewer.classifier.DiseaseClassifier`; the
    head checks its card's sha256 against the one the head was fitted on.
    """

    model_name = MODEL_NAME
    card_section = TBCard

    def __init__(self, classifier: Any, name: str = MODEL_NAME, models_root: Path | None = None) -> None:
        self.card = modelstore.read_card(name, models_root, TBCard)
        path = modelstore.verify_weights(self.card)
        sec: TBCard = self.card.section
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], np.float64) for k in WEIGHT_ARRAYS}
        except (KeyError, ValueError, TypeError, OSError) as exc:
            raise ModelError(f"TB head weights incomplete: {exc}", path) from exc
        self.pooling, self.layers = sec.pooling, sec.feature_layers
        self.platt_a, self.platt_b = sec.platt_a, sec.platt_b
        d = arrays["coef"].shape
        if (len(d) != 1 or arrays["mean"].shape != d or arrays["scale"].shape != d
                or arrays["intercept"].size != 1 or not all(np.isfinite(a).all() for a in arrays.values())
                or not (arrays["scale"] > 0).all()):
            raise ModelError("TB head weights malformed (shapes or values)", path)
        self.base_name, self.base_sha256 = sec.base_name, sec.base_sha256
        self.check_base(classifier.card)
        # weights on the raw (unstandardised) features: logit = f . w_raw + b_raw
        self.w_raw = arrays["coef"] / arrays["scale"]
        self.b_raw = float(arrays["intercept"].ravel()[0]) - float(self.w_raw @ arrays["mean"])
        self.threshold = float(self.card.threshold)
        self.classifier = classifier
        self._fmodel = feature_model(classifier.model, self.layers)
        widths = [int(o.shape[-1]) for o in self._fmodel.outputs]
        if sum(widths) != d[0]:
            raise ModelError(f"TB head expects {d[0]} features, layers {self.layers} give {sum(widths)}", path)
        self._splits = np.cumsum(widths)[:-1]

    def check_base(self, classifier_card: Any) -> None:
        """The head is only meaningful on the features it was fitted on."""
        if classifier_card.name != self.base_name or classifier_card.sha256 != self.base_sha256:
            raise ModelError(
                f"TB head was fitted on {self.base_name} sha256 {self.base_sha256[:12]}..., but the "
                f"classifier is {classifier_card.name} sha256 {classifier_card.sha256[:12]}...: "
                f"refit it (python -m xrayviewer.training train-tb)", self.card.directory / modelstore.CARD_FILE)

    # -------------------------------------------------------------- scoring
    def calibrate(self, logit: Any) -> Any:
        return sigmoid(self.platt_a * np.asarray(logit, np.float64) + self.platt_b)

    def score_batch(self, grays: Sequence[np.ndarray], lung_masks: Sequence[np.ndarray | None],
                    heatmap: bool = False) -> list[TBResult]:
        """TB scores (and, if asked, heatmaps) of grey films (the classifier's input) with
        their full-resolution lung masks (None: global pooling, unmasked heatmap)."""
        maps, boxes = feature_maps(self.classifier, self._fmodel, grays, lung_masks)
        out = []
        for g, m, fm, box in zip(grays, lung_masks, maps, boxes):
            z = float(pooled(fm, m, box, self.pooling) @ self.w_raw + self.b_raw)
            p = float(self.calibrate(z))
            heat = self.heatmap(fm, box, image_shape(g), m) if heatmap else None
            out.append(TBResult(p, z, bool(p >= self.threshold), self.threshold, heat))
        return out

    def score(self, gray: np.ndarray, lung_mask: np.ndarray | None = None, heatmap: bool = True) -> TBResult:
        return self.score_batch([gray], [lung_mask], heatmap)[0]

    def density(self, maps: Sequence[np.ndarray], box: Box, lung_mask: np.ndarray | None) -> np.ndarray:
        """The logit's contribution per unit of area over the box (rows, cols of the box): its
        mean over the box is ``logit - b_raw`` (exactly on the feature grids; the upsampling to
        image pixels is linear)."""
        r0, r1, c0, c1 = box
        dens = np.zeros((r1 - r0, c1 - c0), np.float64)
        for a, w in zip(maps, np.split(self.w_raw, self._splits)):
            a = np.asarray(a, np.float64)
            cw = cell_weights(a.shape[:2], lung_mask, box, self.pooling)
            contrib = (a @ w) * cw * cw.size  # cell's share of the logit times the number of cells
            dens += resize(contrib.astype(np.float32), (r1 - r0, c1 - c0))
        return dens

    def heatmap(self, maps: Sequence[np.ndarray], box: Box, shape: tuple[int, int],
                lung_mask: np.ndarray | None) -> np.ndarray:
        """Contribution density of the TB logit at the image's (rows, cols), positive part,
        lung-masked, scaled to [0, 1] (relative to the film's own maximum, like Grad-CAM)."""
        return box_heatmap(self.density(maps, box, lung_mask), box, shape, lung_mask)
