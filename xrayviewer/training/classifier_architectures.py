"""Classifier and gate networks, all trained from scratch on grey (S, S, 1) input.

Every classifier has the same head so the app can treat them alike: a layer named
``cam_features`` (last spatial feature map, for Grad-CAM), ``embedding`` (global average
pool, for the Mahalanobis domain check) and float32 ``logits`` (no softmax: the app applies
a temperature-scaled softmax). ``keras.applications`` backbones are built with
``weights=None`` (no internet, and ImageNet weights expect RGB anyway).
"""

from __future__ import annotations

import keras
from keras import layers

ARCHITECTURES = ("compact", "mobilenetv2", "efficientnetb0")


def _conv_bn(x: keras.KerasTensor, filters: int, name: str, strides: int = 1) -> keras.KerasTensor:
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _compact_backbone(inp: keras.KerasTensor, width: int = 16) -> keras.KerasTensor:
    """Plain VGG-style CNN, cheap at high resolution (few filters) and wider deeper down.

    ~0.5 M parameters, ~0.1 GMAC at 128 px: trainable from scratch on two CPU cores.
    """
    w = width
    x = _conv_bn(inp, w, "stem", strides=2)                 # S/2
    x = _conv_bn(x, 2 * w, "b1a")
    x = layers.MaxPooling2D(2, name="pool1")(x)              # S/4
    x = _conv_bn(x, 3 * w, "b2a")
    x = _conv_bn(x, 3 * w, "b2b")
    x = layers.MaxPooling2D(2, name="pool2")(x)              # S/8
    x = _conv_bn(x, 6 * w, "b3a")
    x = _conv_bn(x, 6 * w, "b3b")
    x = layers.MaxPooling2D(2, name="pool3")(x)              # S/16
    x = _conv_bn(x, 10 * w, "b4a")
    x = _conv_bn(x, 10 * w, "b4b")
    return x


def build_classifier(arch: str, input_size: int = 128, n_classes: int = 3,
                     dropout: float = 0.3, width: int = 16) -> keras.Model:
    """Build one of :data:`ARCHITECTURES` with the shared head (see module docstring)."""
    inp = keras.Input((input_size, input_size, 1), name="image")
    if arch == "compact":
        feats = _compact_backbone(inp, width)
    elif arch == "mobilenetv2":
        base = keras.applications.MobileNetV2(input_shape=(input_size, input_size, 1), alpha=0.5,
                                              include_top=False, weights=None)
        feats = base(inp)
    elif arch == "efficientnetb0":
        # EfficientNet rescales by 1/255 internally; feed 0-255 so its stem sees the usual range.
        base = keras.applications.EfficientNetB0(input_shape=(input_size, input_size, 1),
                                                 include_top=False, weights=None)
        feats = base(layers.Rescaling(255.0, name="to_255")(inp))
    else:
        raise ValueError(f"unknown architecture {arch!r}; choose from {ARCHITECTURES}")
    if arch != "compact":
        # keras.applications MobileNetV2 uses BN momentum 0.999, tuned for long ImageNet runs:
        # after a few hundred steps from scratch its moving statistics are still mostly the
        # initial values, so inference-mode outputs are near chance. 0.99 (the Keras default)
        # lets them converge within a short CPU budget.
        for layer in base.layers:
            if isinstance(layer, layers.BatchNormalization):
                layer.momentum = min(layer.momentum, 0.99)
    feats = layers.Activation("linear", name="cam_features")(feats)
    emb = layers.GlobalAveragePooling2D(name="embedding")(feats)
    x = layers.Dropout(dropout, name="dropout")(emb)
    logits = layers.Dense(n_classes, dtype="float32", name="logits")(x)
    return keras.Model(inp, logits, name=f"cxr_{arch}")


def build_gate(input_size: int = 64, n_classes: int = 3, width: int = 8) -> keras.Model:
    """Tiny CNN: frontal chest film / lateral chest film / not a chest radiograph (logits)."""
    inp = keras.Input((input_size, input_size, 1), name="image")
    x = _conv_bn(inp, width, "g1", strides=2)
    x = _conv_bn(x, 2 * width, "g2")
    x = layers.MaxPooling2D(2, name="gpool2")(x)
    x = _conv_bn(x, 4 * width, "g3")
    x = layers.MaxPooling2D(2, name="gpool3")(x)
    x = _conv_bn(x, 8 * width, "g4")
    x = layers.Activation("linear", name="cam_features")(x)
    emb = layers.GlobalAveragePooling2D(name="embedding")(x)
    x = layers.Dropout(0.2, name="dropout")(emb)
    logits = layers.Dense(n_classes, dtype="float32", name="logits")(x)
    return keras.Model(inp, logits, name="cxr_gate")
