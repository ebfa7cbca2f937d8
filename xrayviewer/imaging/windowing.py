"""VOI windowing as PS3.3 C.11.2.1.2 defines it, returning [0, 1] floats.

We implement the centre/width functions ourselves (pydicom's ``apply_windowing`` scales to
the stored bit depth, which we would only undo); VOI LUT Sequences go through pydicom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .types import WindowPreset


def window_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR (C.11.2.1.2.1): note the -0.5 and (w-1) of the standard."""
    w = max(float(width), 1.0)
    c = float(center)
    if w <= 1.0:
        return (x > c - 0.5).astype(np.float32)
    y = (x.astype(np.float32) - (c - 0.5)) / (w - 1.0) + 0.5
    return np.clip(y, 0.0, 1.0)


def window_linear_exact(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """LINEAR_EXACT (C.11.2.1.3.2)."""
    w = max(float(width), 1e-6)
    y = (x.astype(np.float32) - float(center)) / w + 0.5
    return np.clip(y, 0.0, 1.0)


def window_sigmoid(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """SIGMOID (C.11.2.1.3.1)."""
    w = max(float(width), 1e-6)
    z = -4.0 * (x.astype(np.float32) - float(center)) / w
    return (1.0 / (1.0 + np.exp(np.clip(z, -60, 60)))).astype(np.float32)


_FUNCTIONS = {
    "LINEAR": window_linear,
    "LINEAR_EXACT": window_linear_exact,
    "SIGMOID": window_sigmoid,
}


def apply_window(values: np.ndarray, preset: WindowPreset, *, dataset: Any = None) -> np.ndarray:
    """Apply a preset to modality values -> float32 in [0, 1] (0 = black, before inversion)."""
    if preset.kind == "lut":
        if dataset is None or preset.lut_index is None:
            raise ValueError("a VOI LUT preset needs the DICOM dataset it came from")
        from pydicom.pixels import apply_voi

        item = dataset.VOILUTSequence[preset.lut_index]
        out = apply_voi(values, dataset, index=preset.lut_index).astype(np.float32)
        bits = int(item.LUTDescriptor[2]) if "LUTDescriptor" in item else 16
        top = float(2**bits - 1)
        lut_max = float(np.max(np.asarray(item.LUTData))) if "LUTData" in item else top
        # Some files declare 16 bits but fill only 12: scale by what the LUT really reaches.
        scale = lut_max if 0 < lut_max < top else top
        return np.clip(out / scale, 0.0, 1.0)
    func = _FUNCTIONS.get(preset.function.upper(), window_linear)
    return func(values, preset.center, preset.width)


def render_display(values: np.ndarray, preset: WindowPreset, *, dataset: Any = None, file_invert: bool = False,
                   user_invert: bool = False) -> np.ndarray:
    """The display pipeline, in the standard's order, for every caller (loaders, re-rendering,
    the viewer's canvas): VOI window or LUT -> the file's own inversion (MONOCHROME1 /
    Presentation LUT Shape INVERSE, applied once) -> the user's extra inversion -> 8-bit."""
    unit = apply_window(values, preset, dataset=dataset)
    if file_invert:
        unit = 1.0 - unit
    if user_invert:
        unit = 1.0 - unit
    return to_uint8(unit)


def to_uint8(unit: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 with rounding (not truncation)."""
    return np.clip(np.rint(unit * 255.0), 0, 255).astype(np.uint8)


def range_window(values: np.ndarray, name: str = "Full range") -> WindowPreset:
    """A LINEAR window spanning the data's min..max (the fallback default)."""
    from .types import WindowPreset

    lo = float(np.min(values))
    hi = float(np.max(values))
    if hi <= lo:
        hi = lo + 1.0
    # LINEAR maps lo -> 0 and hi -> 1 exactly when W = hi - lo + 1 and C = (lo + hi + 1) / 2.
    return WindowPreset(name=name, center=(lo + hi + 1.0) / 2.0, width=hi - lo + 1.0)


def percentile_window(values: np.ndarray, low: float = 0.5, high: float = 99.5) -> WindowPreset:
    """A LINEAR window from percentiles: ignores collimator edges and burnt-in labels."""
    from .types import WindowPreset

    sample = values[:: max(1, values.shape[0] // 512), :: max(1, values.shape[1] // 512)]
    lo, hi = (float(v) for v in np.percentile(sample, [low, high]))
    if hi <= lo:
        hi = lo + 1.0
    return WindowPreset(name=f"Auto ({low:g}-{high:g}%)", center=(lo + hi + 1.0) / 2.0, width=hi - lo + 1.0)
