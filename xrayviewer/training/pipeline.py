"""Arrays and ``tf.data`` pipelines for segmentation training.

Images go through :func:`xrayviewer.preprocessing.prepare_for_model` -- the function the
app uses at inference -- once, when loaded; augmentation is applied on top, only on the
training path. No horizontal flip: the lung model's output is split into right/left and the
heart makes the two sides asymmetric, so a flipped film is not a plausible film.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from ..preprocessing import prepare_for_model, resize
from .datasets import Record, read_gray, read_mask

log = logging.getLogger(__name__)


def load_arrays(records: list[Record], size: int, mask_attr: str = "lung_mask",
                workers: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 1) float32 images in [0, 1] and area-resized (soft) masks."""
    def one(r: Record) -> tuple[np.ndarray, np.ndarray]:
        x = prepare_for_model(read_gray(r.image), size)
        m = read_mask(getattr(r, mask_attr)).astype(np.float32)
        y = np.clip(resize(m, size), 0.0, 1.0)[..., None].astype(np.float32)
        return x, y

    with ThreadPoolExecutor(workers) as ex:
        pairs = list(ex.map(one, records))
    if not pairs:
        return np.zeros((0, size, size, 1), np.float32), np.zeros((0, size, size, 1), np.float32)
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def _affine(size: int, max_rot_deg: float, max_shift: float, zoom: tuple[float, float]) -> tf.Tensor:
    """Random rotation/shift/zoom about the image centre as a projective transform (1, 8)."""
    theta = tf.random.uniform([], -max_rot_deg, max_rot_deg) * math.pi / 180.0
    s = tf.random.uniform([], zoom[0], zoom[1])
    tx = tf.random.uniform([], -max_shift, max_shift) * size
    ty = tf.random.uniform([], -max_shift, max_shift) * size
    c = (size - 1) / 2.0
    a0, a1 = tf.cos(theta) / s, tf.sin(theta) / s
    b0, b1 = -tf.sin(theta) / s, tf.cos(theta) / s
    a2 = c - a0 * (c + tx) - a1 * (c + ty)
    b2 = c - b0 * (c + tx) - b1 * (c + ty)
    return tf.reshape(tf.stack([a0, a1, a2, b0, b1, b2, 0.0, 0.0]), (1, 8))


def augment(x: tf.Tensor, y: tf.Tensor, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Geometric (image and mask together) then photometric (image only) augmentation."""
    both = tf.concat([x, y], axis=-1)[None]
    both = tf.raw_ops.ImageProjectiveTransformV3(
        images=both, transforms=_affine(size, 7.0, 0.06, (0.9, 1.1)),
        output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]
    x, y = both[..., :1], both[..., 1:]
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.85, 1.15) + mean + tf.random.uniform([], -0.08, 0.08)
    x = tf.clip_by_value(x, 0.0, 1.0) ** tf.random.uniform([], 0.8, 1.25)
    x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([], 0.0, 0.02)
    return tf.clip_by_value(x, 0.0, 1.0), tf.clip_by_value(y, 0.0, 1.0)


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, training: bool,
                 seed: int = 0, positive_fraction: float | None = None) -> tf.data.Dataset:
    """Shuffled + augmented batches for training; plain batches otherwise.

    ``positive_fraction`` (training only): draw images with a non-empty mask with this
    probability instead of their natural share -- for the opacity model, where two thirds of
    the films are empty and the model learns to stay silent on small lesions.
    """
    if not training:
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).prefetch(tf.data.AUTOTUNE)
    size = int(x.shape[1])

    def stream(xs: np.ndarray, ys: np.ndarray, stream_seed: int) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((xs, ys))
        return ds.shuffle(len(xs), seed=stream_seed, reshuffle_each_iteration=True).repeat()

    if positive_fraction is None:
        ds = stream(x, y, seed)  # the arrays themselves: no index copy of the whole training set
    else:
        if not 0.0 < positive_fraction < 1.0:
            raise ValueError(f"positive_fraction must be in (0, 1), not {positive_fraction}")
        pos = np.flatnonzero(y.reshape(len(y), -1).max(axis=1) > 0)
        neg = np.setdiff1d(np.arange(len(x)), pos)
        if not len(pos) or not len(neg):
            raise ValueError("positive_fraction needs images with and without a mask")
        ds = tf.data.Dataset.sample_from_datasets(
            [stream(x[pos], y[pos], seed), stream(x[neg], y[neg], seed + 1)], weights=[positive_fraction, 1.0 - positive_fraction],
            seed=seed)
    ds = ds.map(lambda a, b: augment(a, b, size), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def dice_coef(y_true: tf.Tensor, y_pred: tf.Tensor, smooth: float = 1.0) -> tf.Tensor:
    """Soft Dice per image, averaged over the batch."""
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    inter = tf.reduce_sum(y_true * y_pred, axis=(1, 2, 3))
    denom = tf.reduce_sum(y_true, axis=(1, 2, 3)) + tf.reduce_sum(y_pred, axis=(1, 2, 3))
    return tf.reduce_mean((2.0 * inter + smooth) / (denom + smooth))


def dice_bce_loss(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
    """Dice + binary cross-entropy: Dice for region overlap, BCE for stable early gradients."""
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return bce + (1.0 - dice_coef(y_true, y_pred))
