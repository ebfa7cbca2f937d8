"""Arrays and ``tf.data`` pipelines for segmentation training.

Images go through :func:`xrayviewer.modellayer.preprocessing.prepare_for_model` -- the function the
app uses at inference -- once, when loaded, with the normalisation the model's card will
name; augmentation is applied on top, only on the training path. For the robust input
(``rank-v1``) the augmentation imitates what differs between hospitals after that
normalisation: residual contrast/gamma and clipping (window/level), blur or sharpening,
noise, resolution loss (down- then up-sampling), burned-in borders and text, small
rotations, shifts and crops. No horizontal flip: the lung model's output is split into right/left and the
heart makes the two sides asymmetric, so a flipped film is not a plausible film.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import tensorflow as tf

from ..modellayer.preprocessing import LEGACY, prepare_for_model, resize
from .datasets import Record, read_gray, read_mask

log = logging.getLogger(__name__)


def load_arrays(records: list[Record], size: int, mask_attr: str = "lung_mask",
                workers: int = 2, normalization: str = LEGACY) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 1) float32 images in [0, 1] and area-resized (soft) masks.

    A record whose mask attribute is ``None`` gets an empty mask (a film known to have
    nothing to mark, e.g. an NIH No_findings film for the opacity model).
    """
    def one(r: Record) -> tuple[np.ndarray, np.ndarray]:
        gray = read_gray(r.image)
        x = prepare_for_model(gray, size, normalization)
        path = getattr(r, mask_attr)
        m = read_mask(path).astype(np.float32) if path else np.zeros(gray.shape, np.float32)
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


def _gaussian_blur(x: tf.Tensor, sigma: tf.Tensor) -> tf.Tensor:
    """Separable 5-tap Gaussian blur of a (H, W, 1) image."""
    t = tf.range(-2.0, 3.0)
    k = tf.exp(-0.5 * (t / tf.maximum(sigma, 1e-3)) ** 2)
    k = k / tf.reduce_sum(k)
    img = x[None]
    img = tf.nn.conv2d(tf.pad(img, [[0, 0], [2, 2], [0, 0], [0, 0]], "SYMMETRIC"),
                       tf.reshape(k, (5, 1, 1, 1)), 1, "VALID")
    img = tf.nn.conv2d(tf.pad(img, [[0, 0], [0, 0], [2, 2], [0, 0]], "SYMMETRIC"),
                       tf.reshape(k, (1, 5, 1, 1)), 1, "VALID")
    return img[0]


def _burn_in(x: tf.Tensor, size: int) -> tf.Tensor:
    """A border band (black or white) on one random side and a small bright text-like block
    near a corner, each with probability 0.3: what other hospitals' films carry."""
    rows = tf.range(size)[:, None, None]
    cols = tf.range(size)[None, :, None]
    width = tf.cast(tf.random.uniform([], 0.0, 0.07) * size, tf.int32)
    side = tf.random.uniform([], 0, 4, tf.int32)
    band = tf.switch_case(side, [lambda: rows < width, lambda: rows >= size - width,
                                 lambda: cols < width, lambda: cols >= size - width])
    level = tf.round(tf.random.uniform([]))
    x = tf.where(tf.logical_and(band, tf.random.uniform([]) < 0.3), level, x)
    h = tf.cast(tf.random.uniform([], 0.03, 0.08) * size, tf.int32)
    w = tf.cast(tf.random.uniform([], 0.05, 0.2) * size, tf.int32)
    y0 = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.constant(2), lambda: size - h - 2)
    x0 = tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.constant(2), lambda: size - w - 2)
    block = (rows >= y0) & (rows < y0 + h) & (cols >= x0) & (cols < x0 + w)
    # stripes inside the block, like letters: not a solid rectangle
    stripes = tf.math.floormod(cols - x0, 3) < 2
    text = tf.logical_and(block & stripes, tf.random.uniform([]) < 0.3)
    return tf.where(text, tf.random.uniform([], 0.85, 1.0), x)


def augment_hospital(x: tf.Tensor, size: int) -> tf.Tensor:
    """Photometric and acquisition differences between hospitals (image only), on the
    robust model input: clipping windows, gamma, blur/sharpen, resolution loss, noise,
    burned-in borders and text."""
    # window/level: residual contrast and brightness, then clipping as a narrow window would
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.8, 1.25) + mean + tf.random.uniform([], -0.08, 0.08)
    x = tf.clip_by_value(x, 0.0, 1.0) ** tf.exp(tf.random.uniform([], -0.35, 0.35))
    # blur (a < 0) or unsharp masking (a > 0)
    a = tf.random.uniform([], -1.0, 1.5)
    blurred = _gaussian_blur(x, tf.random.uniform([], 0.6, 1.4))
    x = tf.cond(tf.random.uniform([]) < 0.5, lambda: x + a * (x - blurred), lambda: x)
    # resolution loss: down- then up-sampling
    low = tf.cast(tf.cast(size, tf.float32) * tf.random.uniform([], 0.4, 1.0), tf.int32)
    x = tf.cond(tf.random.uniform([]) < 0.3,
                lambda: tf.image.resize(tf.image.resize(x, [low, low], "area"), [size, size], "bilinear"),
                lambda: x)
    x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([], 0.0, 0.03)
    return _burn_in(tf.clip_by_value(x, 0.0, 1.0), size)


def augment(x: tf.Tensor, y: tf.Tensor, size: int, robust: bool = False) -> tuple[tf.Tensor, tf.Tensor]:
    """Geometric (image and mask together) then photometric (image only) augmentation.

    ``robust``: the hospital-imitating set of :func:`augment_hospital` (rotation +-10 deg,
    zoom 0.85-1.15 for crops) instead of the original mild photometric set.
    """
    both = tf.concat([x, y], axis=-1)[None]
    rot, zoom = (10.0, (0.85, 1.15)) if robust else (7.0, (0.9, 1.1))
    both = tf.raw_ops.ImageProjectiveTransformV3(
        images=both, transforms=_affine(size, rot, 0.06, zoom),
        output_shape=[size, size], fill_value=0.0, interpolation="BILINEAR",
        fill_mode="CONSTANT")[0]
    x, y = both[..., :1], both[..., 1:]
    if robust:
        return augment_hospital(x, size), tf.clip_by_value(y, 0.0, 1.0)
    mean = tf.reduce_mean(x)
    x = (x - mean) * tf.random.uniform([], 0.85, 1.15) + mean + tf.random.uniform([], -0.08, 0.08)
    x = tf.clip_by_value(x, 0.0, 1.0) ** tf.random.uniform([], 0.8, 1.25)
    x = x + tf.random.normal(tf.shape(x)) * tf.random.uniform([], 0.0, 0.02)
    return tf.clip_by_value(x, 0.0, 1.0), tf.clip_by_value(y, 0.0, 1.0)


def make_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, training: bool,
                 seed: int = 0, positive_fraction: float | None = None,
                 robust: bool = False) -> tf.data.Dataset:
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
    ds = ds.map(lambda a, b: augment(a, b, size, robust), num_parallel_calls=tf.data.AUTOTUNE)
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


def focal_tversky_bce_loss(y_true: tf.Tensor, y_pred: tf.Tensor, alpha: float = 0.7,
                           beta: float = 0.3, gamma: float = 0.75, smooth: float = 1.0) -> tf.Tensor:
    """Focal Tversky (Abraham & Khan 2019) over the films that have a lesion, + BCE over all.

    alpha > beta weighs missed lesion pixels over false ones, and the focal exponent
    (gamma < 1) keeps the gradient of a film whose small lesion is still mostly missed
    large, where a pooled Dice lets big lesions dominate. Per film, so a tiny lesion counts
    as much as a lung-wide one. Films without a lesion are left to the BCE: on an empty
    mask the Tversky index is 1 / (beta * sum(p) + 1), and with gamma < 1 its gradient grows
    without bound as the prediction empties, which silenced the whole generator in a trial
    run (COVID films went blank within two epochs).
    """
    y_true = tf.cast(y_true, tf.float32)
    y_pred = tf.cast(y_pred, tf.float32)
    tp = tf.reduce_sum(y_true * y_pred, axis=(1, 2, 3))
    fn = tf.reduce_sum(y_true * (1.0 - y_pred), axis=(1, 2, 3))
    fp = tf.reduce_sum((1.0 - y_true) * y_pred, axis=(1, 2, 3))
    tversky = (tp + smooth) / (tp + alpha * fn + beta * fp + smooth)
    lesion = tf.cast(tf.reduce_sum(y_true, axis=(1, 2, 3)) > 0.5, tf.float32)
    ft = tf.reduce_sum(lesion * tf.pow(1.0 - tversky, gamma)) / tf.maximum(tf.reduce_sum(lesion), 1.0)
    bce = tf.reduce_mean(keras.losses.binary_crossentropy(y_true, y_pred))
    return ft + bce


SEG_LOSSES = {"dice-bce": dice_bce_loss, "focal-tversky-bce": focal_tversky_bce_loss}
