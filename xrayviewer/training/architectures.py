"""Segmentation architectures: a plain U-Net and a residual U-Net, and warm starts between them.

Both are deliberately small (tens to hundreds of thousands of parameters, a few MB on
disk) because they must train on a 2-core CPU and run interactively in the viewer. The
final 1x1 sigmoid is forced to float32 so a mixed-precision policy never produces bf16
probabilities.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import keras
from keras import layers

log = logging.getLogger(__name__)

Variant = Literal["unet", "resunet"]


def _conv_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Two 3x3 conv + BN + ReLU (the classic U-Net stage)."""
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        x = layers.BatchNormalization(name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def _res_block(x: keras.KerasTensor, filters: int, name: str) -> keras.KerasTensor:
    """Pre-activation residual stage with a 1x1 projection shortcut when widths differ."""
    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_proj")(x)
    y = x
    for i in (1, 2):
        y = layers.BatchNormalization(name=f"{name}_bn{i}")(y)
        y = layers.Activation("relu", name=f"{name}_relu{i}")(y)
        y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(y)
    return layers.Add(name=f"{name}_add")([shortcut, y])


def build_unet(
    input_size: int = 256,
    base_filters: int = 16,
    depth: int = 4,
    variant: Variant = "unet",
    name: str | None = None,
    head_name: str = "lung_prob",
) -> keras.Model:
    """Build a U-Net (``variant='unet'``) or residual U-Net (``'resunet'``).

    Output: (H, W, 1) float32 sigmoid probability per pixel ("lung field" for the lung model,
    "opacity" for the opacity generator, which shares every layer name but the head so that
    it can be warm-started from the lung model). ``input_size`` must be divisible by ``2**depth``.
    """
    if input_size % (2**depth):
        raise ValueError(f"input_size {input_size} not divisible by 2**{depth}")
    block = _conv_block if variant == "unet" else _res_block
    inp = keras.Input((input_size, input_size, 1), name="image")
    x = inp
    if variant == "resunet":
        x = layers.Conv2D(base_filters, 3, padding="same", use_bias=False, name="stem")(x)
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"enc{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = block(x, base_filters * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"up{level}")(x)
        x = layers.Conv2D(base_filters * 2**level, 1, padding="same", name=f"up{level}_proj")(x)
        x = layers.Concatenate(name=f"cat{level}")([x, skips[level]])
        x = block(x, base_filters * 2**level, f"dec{level}")
    if variant == "resunet":
        x = layers.BatchNormalization(name="head_bn")(x)
        x = layers.Activation("relu", name="head_relu")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=head_name)(x)
    return keras.Model(inp, out, name=name or f"lung_{variant}")


def warm_start(generator: Any, source: Path) -> list[str]:
    """Copy weights from a saved Keras model (e.g. the bundled lung U-Net) layer by layer.

    Only layers with the same name and the same weight shapes are copied, so the lung model
    (same U-Net layout, other head) initialises the whole encoder/decoder: lung anatomy is
    the context every opacity lies in, and a 2-core CPU affords few epochs. Returns the
    names of the copied layers.
    """
    src = keras.saving.load_model(source, compile=False)
    by_name = {layer.name: layer for layer in src.layers}
    copied = []
    for layer in generator.layers:
        other = by_name.get(layer.name)
        if other is None or not layer.weights:
            continue
        w = other.get_weights()
        if [a.shape for a in w] == [tuple(v.shape) for v in layer.weights]:
            layer.set_weights(w)
            copied.append(layer.name)
    log.info("warm start from %s: %d of %d weighted layers copied", source, len(copied),
             sum(1 for layer in generator.layers if layer.weights))
    return copied
