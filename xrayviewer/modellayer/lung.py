"""Lung-field segmentation with the bundled U-Net.

Input: films (an ``XRayImage``, a :class:`~xrayviewer.modellayer.preprocessing.FilmInput` or a 2-D
grey array, any size). Output: per image, the lung probability and a label mask 0/1/2
(1 = patient's right lung = image left) at the post-processing's working resolution, and
the label mask at the input's full resolution (:mod:`xrayviewer.modellayer.postprocess`). The model sees
exactly the training preprocessing (:func:`prepare_for_model` with the normalisation its
card names).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .cards import CardFields
from .common import BundledModel, image_shape, predict_model_maps
from .postprocess import BACKGROUND, LABEL_NAMES, LEFT_LUNG, RIGHT_LUNG, lung_labels, upscale_labels, working_shape
from .preprocessing import mask_to_full_resolution

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


@dataclass(frozen=True)
class LungCard:
    """The lung model's part of its card (schema 1): ``labels`` 1 and 2 are the right and left
    lung of :mod:`~xrayviewer.modellayer.postprocess` (1 = patient's right = image left)."""

    labels: dict[str, str]

    @classmethod
    def from_fields(cls, f: CardFields) -> LungCard:
        labels = {str(k): str(v) for k, v in f.mapping("labels").items()}
        expected = {str(BACKGROUND): "", **{str(k): v for k, v in LABEL_NAMES.items()}}
        if set(labels) != set(expected) or not all(labels[k].startswith(v) for k, v in expected.items()):
            raise f.error("labels", f"{labels} do not name the code's label values "
                                    f"(0 background, 1 {LABEL_NAMES[RIGHT_LUNG]}, 2 {LABEL_NAMES[LEFT_LUNG]})")
        return cls(labels)


def lung_result(model_map: np.ndarray, shape: tuple[int, int], threshold: float) -> LungResult:
    """A model-resolution map -> :class:`LungResult` for an image of ``shape``: the map
    resized to the working resolution, cleaned and split there (:func:`lung_labels`), and
    only the final labels brought to full size. Films up to the working side: exactly
    ``lung_labels(mask_to_full_resolution(map, shape))``."""
    prob = mask_to_full_resolution(model_map, working_shape(shape))
    work = lung_labels(prob, threshold)
    return LungResult(prob, upscale_labels(work, shape), work)


class LungSegmenter(BundledModel):
    """Loads the bundled lung model once (verified against its card) and segments images."""

    model_name = MODEL_NAME
    card_section = LungCard

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
