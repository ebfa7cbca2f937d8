"""Image -> model input. The single source of truth shared by inference and training.

Training (``xrayviewer.training``) imports these functions, so a model always sees at
inference exactly what it saw in training. The public datasets ship whole radiographs
squashed to a square, so we squash too (no letterboxing) and map masks back with the
inverse resize.
"""

from __future__ import annotations

import numpy as np


def to_unit_float(gray: np.ndarray) -> np.ndarray:
    """Scale an integer or float grey image to float32 in [0, 1].

    uint8 is divided by 255, uint16 by its own maximum-possible value only when the data
    use the range; other inputs are min-max scaled. Display images (uint8) are the normal
    input, so this is exact for them.
    """
    arr = np.asarray(gray)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def resize(gray: np.ndarray, size: int | tuple[int, int], *, nearest: bool = False) -> np.ndarray:
    """Resize a 2-D array to ``size`` (int = square, tuple = (height, width)).

    Area interpolation when shrinking (no aliasing), linear when enlarging, nearest for
    label images.
    """
    import cv2  # lazy: keeps `import xrayviewer` light

    h, w = (size, size) if isinstance(size, int) else size
    src = np.asarray(gray)
    if src.shape[:2] == (h, w):
        return src.copy()
    if nearest:
        interp = cv2.INTER_NEAREST
    elif h * w < src.shape[0] * src.shape[1]:
        interp = cv2.INTER_AREA
    else:
        interp = cv2.INTER_LINEAR
    return cv2.resize(src, (w, h), interpolation=interp)


def prepare_for_model(gray: np.ndarray, size: int) -> np.ndarray:
    """Grey image (display image, any size) -> float32 array (size, size, 1) in [0, 1]."""
    unit = to_unit_float(gray)
    out = resize(unit, size).astype(np.float32)
    return np.clip(out, 0.0, 1.0)[..., None]


def mask_to_full_resolution(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a model-resolution probability map back to the input's (rows, cols)."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3:
        p = p[..., 0]
    return np.clip(resize(p, shape), 0.0, 1.0)
