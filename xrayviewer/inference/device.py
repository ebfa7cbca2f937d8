"""Where TensorFlow runs: ``auto`` (GPU when TensorFlow sees one), ``cpu`` or ``gpu``.

Must be applied before the first model is built; asking for ``gpu`` without one is a clear
error, not a silent fall-back.
"""

from __future__ import annotations

import logging

from ..errors import XRayViewerError

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "gpu")


class DeviceError(XRayViewerError):
    """The requested compute device is not available."""


def configure_device(preference: str = "auto") -> str:
    """Configure TensorFlow and return the device actually used ("cpu" or "gpu")."""
    pref = preference.lower()
    if pref not in DEVICES:
        raise DeviceError(f"unknown device {preference!r}; use one of {', '.join(DEVICES)}")
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if pref == "gpu" and not gpus:
        raise DeviceError(
            "a GPU was requested but TensorFlow sees none (install tensorflow[and-cuda] and a CUDA driver, "
            "or use --device cpu / auto)"
        )
    try:
        if pref == "cpu":
            tf.config.set_visible_devices([], "GPU")
            return "cpu"
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
    except RuntimeError as exc:  # already initialised: keep what is configured
        log.info("TensorFlow devices already initialised (%s)", exc)
        visible = tf.config.get_visible_devices("GPU")
        if pref == "cpu" and visible:
            raise DeviceError("TensorFlow already started on the GPU; restart to use the CPU") from exc
        return "gpu" if visible else "cpu"
    return "gpu" if gpus else "cpu"
