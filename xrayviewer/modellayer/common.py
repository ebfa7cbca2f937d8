"""What the model modules share, so none of them imports another.

* :func:`softmax` (temperature-scaled, overflow-safe) -- the classifier's calibrated scores,
  the gate CNN's probabilities and the training metrics;
* :func:`mahalanobis` -- the gate's last stage on the classifier's embedding, and the
  classifier export that fits its threshold;
* :func:`forward` and :func:`predict_probabilities` -- one batched inference call and the
  segmentation models' full-resolution probability maps, shared by the app and the training
  evaluation so both measure one code path;
* :class:`BundledModel` -- a bundled network loaded once and verified against its card.

numpy only at import; TensorFlow loads with the first model (``modelstore.load_model``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from . import modelstore
from .cards import CardSection
from .preprocessing import LEGACY, mask_at, mask_to_full_resolution, prepare_for_model


# ------------------------------------------------------------------ scores
def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Temperature-scaled softmax over the last axis; always in [0, 1] and summing to 1.

    Computed in float64 with the max subtracted, and the quotient clipped, so that huge
    logits or tiny temperatures can never produce inf/NaN.
    """
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64)
    if not np.all(np.isfinite(z)):
        raise ValueError("logits contain NaN or infinity")
    z = np.clip(z / t, -1e300, 1e300)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(np.maximum(z, -745.0))
    p = e / e.sum(axis=-1, keepdims=True)
    return np.clip(p, 0.0, 1.0)


def mahalanobis(embeddings: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Mahalanobis distance of each row to the training mean under a shared covariance."""
    d = np.atleast_2d(np.asarray(embeddings, np.float64)) - np.asarray(mean, np.float64)
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", d, np.asarray(precision, np.float64), d), 0.0))


# ------------------------------------------------------------------ prediction
def image_shape(image: Any) -> tuple[int, int]:
    """(rows, cols) of an array, an ``XRayImage`` or a ``FilmInput``."""
    shape = image.shape if hasattr(image, "shape") else np.shape(image)
    return (int(shape[0]), int(shape[1]))


def forward(model: Any, x: np.ndarray) -> np.ndarray:
    """One inference call, ``model(x, training=False)`` (no ``predict`` overhead, batch norm
    in inference mode), as a float32 array."""
    y = model(x, training=False)
    return np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float32)


def predict_model_maps(model: Any, images: Sequence[Any], input_size: int,
                       batch_size: int = 8, normalization: str = LEGACY) -> list[np.ndarray]:
    """The model's probability maps at its own resolution, (S, S) float32 per image."""
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = np.stack([prepare_for_model(img, input_size, normalization) for img in chunk])
        out.extend(p[..., 0] if p.ndim == 3 else p for p in forward(model, x))
    return out


def predict_probabilities(model: Any, images: Sequence[Any], input_size: int,
                          batch_size: int = 8, normalization: str = LEGACY) -> list[np.ndarray]:
    """Model-resolution probabilities resized back to each image's full resolution (the
    training evaluation's path)."""
    maps = predict_model_maps(model, images, input_size, batch_size, normalization)
    return [mask_to_full_resolution(p, image_shape(img)) for img, p in zip(images, maps)]


def box_heatmap(inside: np.ndarray, box: tuple[int, int, int, int], shape: tuple[int, int],
                lung_mask: np.ndarray | None) -> np.ndarray:
    """A heatmap at the image's (rows, cols): ``inside`` (the map over the box (r0, r1, c0,
    c1), already at the box's size) placed in the box, positive part, masked to the lungs,
    scaled to [0, 1] by the film's own maximum -- the classifier's Grad-CAM and the TB head's
    map alike. In place from the first full-size array on: one per heatmap."""
    r0, r1, c0, c1 = box
    heat = np.zeros(shape, np.float32)
    heat[r0:r1, c0:c1] = np.maximum(inside, 0.0)
    if lung_mask is not None:
        np.multiply(heat, mask_at(lung_mask, shape), out=heat)
    peak = float(heat.max(initial=0.0))
    if peak > 0:
        heat /= np.float32(peak)
    return heat


# ------------------------------------------------------------------ loaded model
class BundledModel:
    """A bundled network, loaded once (cached by ``modelstore``) and verified against its card,
    whose typed section (:attr:`card_section`) is then ``self.card.section``.

    Subclasses name their folder under ``models/`` in :attr:`model_name`; ``name`` loads
    another one (a freshly exported model, a test copy)."""

    model_name: ClassVar[str]
    card_section: ClassVar[type[CardSection] | None] = None

    def __init__(self, name: str | None = None, models_root: Path | None = None) -> None:
        self.model, self.card = modelstore.load_model(name or self.model_name, models_root, self.card_section)
        # What inference calls (modelstore.GraphInference, shared per model; traced on first use).
        self._infer = modelstore.inference_function(self.model)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def normalization(self) -> str:
        """The model input its card names (``preprocessing.NORMALIZATIONS``)."""
        return self.card.input_normalization
