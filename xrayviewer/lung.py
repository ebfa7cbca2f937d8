"""Lung-field segmentation with the bundled U-Net.

Input: films (an ``XRayImage``, a :class:`~xrayviewer.preprocessing.FilmInput` or a 2-D
grey array, any size). Output: per image, the lung probability and a label mask 0/1/2
(1 = patient's right lung = image left) at the post-processing's working resolution, and
the label mask at the input's full resolution (:mod:`xrayviewer.postprocess`). The model sees
exactly the training preprocessing (:func:`prepare_for_model` with the normalisation its
card names).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import modelstore
from .postprocess import LEFT_LUNG, RIGHT_LUNG, lung_labels, upscale_labels, working_shape
from .preprocessing import LEGACY, mask_to_full_resolution, prepare_for_model

log = logging.getLogger(__name__)

MODEL_NAME = "lung_unet"


@dataclass(frozen=True)
class LungResult:
    """Segmentation of one image: ``labels`` at the image's own (rows, cols); ``probability``
    and ``work_labels`` at the working resolution (the image's own size up to
    ``postprocess.WORKING_SIDE`` pixels, where the three share one shape)."""

    probability: np.ndarray  # float32 in [0, 1], working resolution
    labels: np.ndarray  # uint8: 0 background, 1 right lung, 2 left lung; full resolution
    work_labels: np.ndarray | None = None  # the labels at the working resolution

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0

    @property
    def right(self) -> np.ndarray:
        return self.labels == RIGHT_LUNG

    @property
    def left(self) -> np.ndarray:
        return self.labels == LEFT_LUNG


def image_shape(image: Any) -> tuple[int, int]:
    """(rows, cols) of an array, an ``XRayImage`` or a ``FilmInput``."""
    shape = image.shape if hasattr(image, "shape") else np.shape(image)
    return (int(shape[0]), int(shape[1]))


def predict_model_maps(model: Any, images: Sequence[Any], input_size: int,
                       batch_size: int = 8, normalization: str = LEGACY) -> list[np.ndarray]:
    """The model's probability maps at its own resolution, (S, S) float32 per image.

    Uses ``model(x, training=False)`` (no ``predict`` overhead, BN in inference mode).
    """
    out: list[np.ndarray] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = np.stack([prepare_for_model(img, input_size, normalization) for img in chunk])
        y = model(x, training=False)
        prob = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float32)
        out.extend(p[..., 0] if p.ndim == 3 else p for p in prob)
    return out


def predict_probabilities(model: Any, images: Sequence[Any], input_size: int,
                          batch_size: int = 8, normalization: str = LEGACY) -> list[np.ndarray]:
    """Model-resolution probabilities resized back to each image's full resolution.

    Shared by the app and the training evaluation so both measure the same code path.
    """
    maps = predict_model_maps(model, images, input_size, batch_size, normalization)
    return [mask_to_full_resolution(p, image_shape(img)) for img, p in zip(images, maps)]


def lung_result(model_map: np.ndarray, shape: tuple[int, int], threshold: float) -> LungResult:
    """A model-resolution map -> :class:`LungResult` for an image of ``shape``: the map
    resized to the working resolution, cleaned and split there (:func:`lung_labels`), and
    only the final labels brought to full size. Films up to the working side: exactly
    ``lung_labels(mask_to_full_resolution(map, shape))``."""
    prob = mask_to_full_resolution(model_map, working_shape(shape))
    work = lung_labels(prob, threshold)
    return LungResult(prob, upscale_labels(work, shape), work)


class LungSegmenter:
    """Loads the bundled lung model once (verified against its card) and segments images."""

    def __init__(self, name: str = MODEL_NAME, models_root: Path | None = None) -> None:
        self.model, self.card = modelstore.load_model(name, models_root)
        self._infer = modelstore.inference_function(self.model)

    @property
    def input_size(self) -> int:
        return self.card.input_size

    @property
    def normalization(self) -> str:
        return self.card.input_normalization

    def segment_batch(self, images: Sequence[Any], batch_size: int = 8) -> list[LungResult]:
        """Segment several films (arrays must be 2-D grey; any size)."""
        for img in images:
            if isinstance(img, np.ndarray) and img.ndim != 2:
                raise ValueError(f"expected 2-D grey images, got shape {img.shape}")
        maps = predict_model_maps(self._infer, images, self.input_size, batch_size, self.normalization)
        return [lung_result(p, image_shape(img), self.card.threshold) for img, p in zip(images, maps)]

    def segment(self, image: np.ndarray) -> LungResult:
        """Segment one 2-D grey image."""
        return self.segment_batch([image])[0]
