"""Disease classifier (Normal / COVID-19 / Other pneumonia) with calibrated scores and Grad-CAM.

The bundled network outputs *logits*; the app never shows a raw softmax. Scores are
``softmax(logits / T)`` with the temperature ``T`` fitted on the validation set
(card field ``temperature``), because an over-confident 0.99 from a network trained on a
few thousand public images would be misread as certainty. The card's ``operating_points``
say above which calibrated probability a class is *flagged* and what sensitivity /
specificity that threshold had on validation.

Grad-CAM for the top class is computed on the layer named ``cam_features`` and masked to
the lung field, so the overlay never highlights labels, markers or the background. The lung
masks come from the caller: per call, or from the lung segmenter it hands over
(``lung_segmenter``, e.g. :class:`~xrayviewer.modellayer.lung.LungSegmenter`); the classifier
never loads another model itself.

TensorFlow is imported lazily; this module never imports ``xrayviewer.training``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from . import modelstore
from .cards import CardFields
from .common import BundledModel, box_heatmap, image_shape, softmax
from .postprocess import grown_box
from .preprocessing import LEGACY, ROBUST, FilmInput, film_input, mask_at, prepare_for_model, resize

log = logging.getLogger(__name__)

MODEL_NAME = "xray_classifier"
# The network's outputs, in order (the card's class_names must say the same; results.csv's columns).
CLASS_NAMES = ("Normal", "COVID-19", "Other pneumonia")
INPUT_MODES = ("full", "lung_crop")
CAM_LAYER = "cam_features"
EMBEDDING_LAYER = "embedding"
# A lung mask smaller than this fraction of the image is not trusted for cropping.
MIN_LUNG_FRACTION = 0.04
CROP_MARGIN = 0.08


# ------------------------------------------------------------------ lung crop
def lung_box(lung_mask: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) bounding box of the lung mask grown by ``margin``; None if too small.

    A tiny or empty mask means segmentation failed; callers then use the whole image
    rather than a meaningless crop.
    """
    return grown_box(lung_mask, margin, MIN_LUNG_FRACTION)


def _crop_box(lung_mask: np.ndarray | None, shape: tuple[int, int],
              margin: float = CROP_MARGIN) -> tuple[int, int, int, int]:
    """The lung crop's (r0, r1, c0, c1) in an image of ``shape`` (the mask may be at another
    resolution); the whole image when there is no usable mask."""
    box = None if lung_mask is None else lung_box(mask_at(lung_mask, shape), margin)
    return box if box is not None else (0, shape[0], 0, shape[1])


def crop_to_lungs(gray: np.ndarray, lung_mask: np.ndarray | None,
                  margin: float = CROP_MARGIN) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Crop a grey image to its (grown) lung bounding box. Shared by training and the app.

    Returns the crop and the box; falls back to the whole image when the mask is unusable.
    """
    g = np.asarray(gray)
    r0, r1, c0, c1 = box = _crop_box(lung_mask, g.shape[:2], margin)
    return g[r0:r1, c0:c1], box


def classifier_input(image: Any, lung_mask: np.ndarray | None, size: int, mode: str,
                     normalization: str) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The classifier's (S, S, 1) input and the (r0, r1, c0, c1) box of the film it covers.

    One function for the app and training. ``display-v1``: ``image`` is the display image (a
    2-D array, or anything with ``.display``). ``rank-v1``: a
    :class:`~xrayviewer.modellayer.preprocessing.FilmInput`, an ``XRayImage`` or a bright =
    dense grey array; the lung crop is cut from the film's modality values and mapped through
    the *whole* film's rank map, so the crop's grey levels do not depend on the box.
    """
    if normalization == LEGACY:
        g = np.asarray(image.display if hasattr(image, "display") else image)
        if g.ndim != 2:
            raise ValueError(f"expected a 2-D grey image, got shape {g.shape}")
        if mode == "lung_crop":
            crop, box = crop_to_lungs(g, lung_mask)
            return prepare_for_model(crop, size), box
        return prepare_for_model(g, size), (0, g.shape[0], 0, g.shape[1])
    if normalization != ROBUST:
        raise ValueError(f"unknown input normalization {normalization!r}")
    fi = image if isinstance(image, FilmInput) else film_input(image)
    h, w = fi.shape
    r0, r1, c0, c1 = box = _crop_box(lung_mask if mode == "lung_crop" else None, (h, w))
    if box == (0, h, 0, w):
        return fi.model_array(size), box
    return fi.model_array(size, (c0, r0, c1, r1)), box


def _as_film(image: Any) -> Any:
    """A ``FilmInput`` or ``XRayImage`` as it is; anything else as an array."""
    if isinstance(image, FilmInput) or (hasattr(image, "values") and hasattr(image, "display")):
        return image
    return np.asarray(image)


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class ClassificationResult:
    """Scores for one image. ``probabilities`` are calibrated and sum to one."""

    labels: tuple[str, ...]
    probabilities: np.ndarray
    raw_probabilities: np.ndarray
    logits: np.ndarray
    temperature: float
    flagged: dict[str, bool]
    thresholds: dict[str, float]
    embedding: np.ndarray = field(repr=False)
    heatmap: np.ndarray | None = field(default=None, repr=False)
    heatmap_masked: bool = False

    @property
    def top_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def top_class(self) -> str:
        return self.labels[self.top_index]

    @property
    def top_probability(self) -> float:
        return float(self.probabilities[self.top_index])

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary for reports and the CLI (no arrays)."""
        return {
            "top_class": self.top_class,
            "probabilities": {k: round(float(p), 4) for k, p in zip(self.labels, self.probabilities)},
            "flagged": dict(self.flagged),
            "operating_thresholds": dict(self.thresholds),
            "temperature": self.temperature,
        }


# ------------------------------------------------------------------ card
@dataclass(frozen=True)
class ClassifierCard:
    """The classifier's part of its card (schema 1)."""

    class_names: tuple[str, ...]  # == CLASS_NAMES, the order of the logits
    temperature: float  # calibration: probabilities = softmax(logits / temperature)
    input_mode: str  # one of INPUT_MODES
    operating_points: dict[str, float]  # class -> calibrated probability that flags it
    embedding_stats_file: str | None  # the gate's Mahalanobis statistics, next to the card
    embedding_stats_sha256: str | None

    @classmethod
    def from_fields(cls, f: CardFields) -> ClassifierCard:
        names = f.texts("class_names")
        if names != CLASS_NAMES:
            raise f.error("class_names", f"{list(names)} differ from the code's class order {list(CLASS_NAMES)}: "
                                         "scores would be reported under the wrong names")
        f.label_order("labels", CLASS_NAMES)
        points = {}
        for c, op in f.mapping("operating_points").items():
            if c not in CLASS_NAMES or not isinstance(op, dict):
                raise f.error("operating_points", f"entry {c!r} is not one of {list(CLASS_NAMES)} with a threshold")
            points[c] = CardFields(op, f.path).number("threshold", low=0.0, high=1.0)
        stats = f.text("embedding_stats_file", None)
        sha = f.text("embedding_stats_sha256", None)
        if stats and not sha:
            raise f.error("embedding_stats_sha256", "missing: the embedding statistics file needs its sha256")
        return cls(class_names=names, temperature=f.number("temperature", above=0.0),
                   input_mode=f.choice("input_mode", INPUT_MODES), operating_points=points,
                   embedding_stats_file=stats or None, embedding_stats_sha256=sha)


# ------------------------------------------------------------------ classifier
class DiseaseClassifier(BundledModel):
    """Bundled classifier, verified against its card. ``lung_segmenter`` (anything with
    ``segment(gray).mask``) gives the lung masks a call does not pass; without one the heatmap
    of such a call is not masked and a ``lung_crop`` input uses the whole film."""

    model_name = MODEL_NAME
    card_section = ClassifierCard

    def __init__(self, name: str | None = None, models_root: Path | None = None,
                 lung_segmenter: Any | None = None) -> None:
        super().__init__(name, models_root)
        section: ClassifierCard = self.card.section
        self.labels: tuple[str, ...] = section.class_names
        self.temperature = section.temperature
        self.input_mode = section.input_mode
        self.thresholds: dict[str, float] = dict(section.operating_points)
        self._lung = lung_segmenter
        import keras  # lazy

        try:
            outputs = [self.model.get_layer(CAM_LAYER).output,
                       self.model.get_layer(EMBEDDING_LAYER).output, self.model.output]
        except ValueError as exc:
            raise ModelError(f"classifier lacks layer {exc}", self.card.weights_path) from exc
        self._multi = keras.Model(self.model.input, outputs)
        self._multi_infer = modelstore.inference_function(self._multi)
        self._cam_graph: Any = None  # the Grad-CAM pass as one graph, built on first use
        self.embedding_stats = self._load_embedding_stats()

    def _load_embedding_stats(self) -> dict[str, np.ndarray] | None:
        """Mean/precision of training embeddings (used by the domain gate), sha-checked."""
        section: ClassifierCard = self.card.section
        if not section.embedding_stats_file:
            return None
        path = self.card.directory / section.embedding_stats_file
        if not path.is_file() or modelstore.sha256_file(path) != section.embedding_stats_sha256:
            raise ModelError("embedding statistics missing or do not match the card", path)
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    # -------------------------------------------------------------- lung
    def lung_mask(self, gray: np.ndarray) -> np.ndarray | None:
        """Lung mask from the caller's lung segmenter; None without one."""
        if self._lung is None:
            return None
        return self._lung.segment(gray).mask

    def model_input(self, image: Any, lung_mask: np.ndarray | None = None
                    ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        """(S, S, 1) input exactly as in training (:func:`classifier_input`), and the image
        box it covers. ``image``: a display array, an ``XRayImage`` or a ``FilmInput``."""
        if self.input_mode == "lung_crop" and lung_mask is None:
            lung_mask = self.lung_mask(image)
            if lung_mask is None:
                log.warning("lung_crop classifier given no lung mask nor segmenter: whole film scored")
        return classifier_input(image, lung_mask, self.input_size, self.input_mode, self.normalization)

    # -------------------------------------------------------------- scoring
    def _result(self, logits: np.ndarray, emb: np.ndarray, heat: np.ndarray | None,
                masked: bool) -> ClassificationResult:
        probs = softmax(logits, self.temperature)
        flagged = {c: bool(p >= self.thresholds[c]) for c, p in zip(self.labels, probs)
                   if c in self.thresholds}
        return ClassificationResult(self.labels, probs, softmax(logits), np.asarray(logits),
                                    self.temperature, flagged, dict(self.thresholds),
                                    np.asarray(emb, np.float32), heat, masked)

    def predict_batch(self, images: Sequence[np.ndarray], batch_size: int = 16,
                      lung_masks: Sequence[np.ndarray | None] | None = None,
                      heatmap: bool = False) -> list[ClassificationResult]:
        """Calibrated scores and embeddings for several images, batched through the network.

        With ``heatmap=True`` each result also carries its Grad-CAM, computed in the same
        batched pass (one forward and one backward per batch instead of per image); the
        heatmap is masked with the given lung mask, unmasked where that is None.
        """
        out: list[ClassificationResult] = []
        for start in range(0, len(images), batch_size):
            chunk = [_as_film(g) for g in images[start:start + batch_size]]
            masks = (list(lung_masks[start:start + batch_size]) if lung_masks is not None
                     else [None] * len(chunk))
            prepared = [self.model_input(g, m) for g, m in zip(chunk, masks)]
            x = np.stack([p[0] for p in prepared])
            if heatmap:
                logits, emb, cams = self._grad_cam(x)
                for k, (g, m, (_, box)) in enumerate(zip(chunk, masks, prepared)):
                    heat = self._cam_to_image(cams[k], box, image_shape(g), m)
                    out.append(self._result(logits[k], emb[k], heat, m is not None))
                continue
            _, emb, logits = self._multi_infer(x, training=False)
            for lg, e in zip(np.asarray(logits, np.float64), np.asarray(emb)):
                out.append(self._result(lg, e, None, False))
        return out

    def predict(self, gray: Any, lung_mask: np.ndarray | None = None,
                heatmap: bool = True) -> ClassificationResult:
        """Calibrated scores for one image (a display array, an ``XRayImage`` or a
        ``FilmInput``), plus a lung-masked Grad-CAM of the top class."""
        g = _as_film(gray)
        if heatmap and lung_mask is None:
            lung_mask = self.lung_mask(g)
        return self.predict_batch([g], lung_masks=[lung_mask], heatmap=heatmap)[0]

    def _grad_cam(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grad-CAM (Selvaraju et al. 2017) of each image's top class, at feature resolution.

        Returns logits (B, C), embeddings (B, D) and CAMs (B, h, w). The batch shares one
        tape: the summed top logits have per-image gradients because inference mode has no
        cross-image coupling (batch norm uses its moving statistics).
        """
        import tensorflow as tf  # lazy

        xt = tf.convert_to_tensor(x, tf.float32)
        if not modelstore.graph_enabled():
            logits, emb, cam = self._grad_cam_pass(xt)
        else:
            if self._cam_graph is None:  # traced once (batch size free), like the models
                spec = tf.TensorSpec((None, *tuple(self._multi.input_shape)[1:]), tf.float32)
                self._cam_graph = tf.function(self._grad_cam_pass, input_signature=[spec])
            logits, emb, cam = self._cam_graph(xt)
        return (np.asarray(logits, np.float64), np.asarray(emb, np.float32),
                np.asarray(cam, np.float32))

    def _grad_cam_pass(self, xt: Any) -> tuple[Any, Any, Any]:
        """Logits, embeddings and CAMs of a batch (TensorFlow tensors; eager or traced)."""
        import tensorflow as tf  # lazy

        with tf.GradientTape() as tape:
            # Trainable weights are watched, so the path feats -> logits is recorded.
            feats, emb, logits = self._multi(xt, training=False)
            top = tf.argmax(logits, axis=-1)
            score = tf.reduce_sum(tf.gather(tf.cast(logits, tf.float32), top, axis=1, batch_dims=1))
        grads = tape.gradient(score, feats)
        feats = tf.cast(feats, tf.float32)
        if grads is None:  # pragma: no cover - graph without a path feats -> logits
            raise ModelError("Grad-CAM: no gradient from the top logit to the CAM layer",
                             self.card.weights_path)
        weights = tf.reduce_mean(tf.cast(grads, tf.float32), axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(weights * feats, axis=-1))
        return logits, emb, cam

    @staticmethod
    def _cam_to_image(cam: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
                      lung_mask: np.ndarray | None) -> np.ndarray:
        """Feature-resolution CAM -> [0, 1] map at the image's (rows, cols), lung-masked."""
        r0, r1, c0, c1 = box
        return box_heatmap(resize(cam.astype(np.float32), (r1 - r0, c1 - c0)), box, shape, lung_mask)

