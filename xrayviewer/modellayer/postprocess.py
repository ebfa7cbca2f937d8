"""Lung-mask cleanup: threshold, two largest components, hole filling, right/left split.

Post-processing runs at a *working resolution* (:func:`working_shape`: the film itself up
to :data:`WORKING_SIDE` pixels on its long side, shrunk to that above): the models see 128
pixels, so a 2,000-pixel film carries no more detail in its maps than a 512-pixel one, and
labelling, hole filling and the rest cost 16 times less there. Only the final masks are
brought to full size (:func:`upscale_labels`, :func:`upscale_mask`). Films up to the
working side (the 256-pixel datasets) are processed at their own size, exactly as before.

Orientation: on a standard frontal (PA/AP) radiograph the patient faces the viewer, so the
patient's RIGHT lung is on the IMAGE LEFT. Labels: 0 background, 1 right lung, 2 left lung.
Only numpy/scipy here so the viewer can use it without TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

BACKGROUND, RIGHT_LUNG, LEFT_LUNG = 0, 1, 2
LABEL_NAMES = {RIGHT_LUNG: "right lung", LEFT_LUNG: "left lung"}

# A component smaller than this fraction of the largest one is treated as noise, not a lung.
MIN_SECOND_FRACTION = 0.10
# Long side of the working resolution of mask post-processing (4x the models' 128 pixels).
WORKING_SIDE = 512


def working_shape(shape: tuple[int, int], max_side: int = WORKING_SIDE) -> tuple[int, int]:
    """(rows, cols) at which a film of ``shape`` is post-processed: itself up to ``max_side``
    on its long side, else shrunk (aspect kept) so that its long side is ``max_side``."""
    rows, cols = int(shape[0]), int(shape[1])
    long_side = max(rows, cols)
    if long_side <= max_side:
        return (rows, cols)
    scale = max_side / long_side
    return (max(1, round(rows * scale)), max(1, round(cols * scale)))


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A working-resolution binary mask at full size ``shape`` (bool).

    The mask is interpolated linearly and cut at one half: the outline the mask's pixel
    edges imply, smooth rather than a staircase of working-resolution pixels. The same
    array (as bool) when the sizes already agree.
    """
    import cv2

    m = np.asarray(mask)
    if m.shape == tuple(shape):
        return m.astype(bool, copy=False)
    u8 = (m > 0).astype(np.uint8) * np.uint8(255)
    up = cv2.resize(u8, (int(shape[1]), int(shape[0])), interpolation=cv2.INTER_LINEAR)
    return up > 127


def upscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Working-resolution lung labels (0/1/2) at full size ``shape`` (uint8), each lung by
    :func:`upscale_mask` (a pixel both would claim, a rounding tie on the midline, stays one label)."""
    lab = np.asarray(labels)
    if lab.shape == tuple(shape):
        return lab.astype(np.uint8, copy=False)
    out = np.zeros(shape, np.uint8)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        part = lab == value
        if part.any():
            out[upscale_mask(part, shape)] = value
    return out


def downscale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Full-size labels (or a mask) at the working ``shape`` (uint8): each working pixel takes
    the full-size pixel at its centre (nearest neighbour)."""
    import cv2

    lab = np.asarray(labels)
    if lab.shape == tuple(shape):
        return lab.astype(np.uint8, copy=False)
    return cv2.resize(lab.astype(np.uint8, copy=False), (int(shape[1]), int(shape[0])),
                      interpolation=cv2.INTER_NEAREST_EXACT)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_fill_holes(mask)


def clean_binary(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Threshold, keep the (up to) two largest 8-connected components, fill holes."""
    binary = np.asarray(prob) > threshold
    lab, n = ndimage.label(binary, structure=np.ones((3, 3), bool))
    if n == 0:
        return np.zeros(binary.shape, bool)
    sizes = np.bincount(lab.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep = [order[0] + 1]
    if n > 1 and sizes[order[1]] >= MIN_SECOND_FRACTION * sizes[order[0]]:
        keep.append(order[1] + 1)
    out = np.zeros(binary.shape, bool)
    for k in keep:
        out |= _fill_holes(lab == k)
    return out


def _midline(mask: np.ndarray) -> int:
    """Column that splits a merged lung blob: the least-filled column near the mask centre."""
    cols = np.nonzero(mask.any(axis=0))[0]
    lo, hi = int(cols.min()), int(cols.max())
    centre = (lo + hi) / 2
    span = max(1, int(0.15 * (hi - lo + 1)))
    window = np.arange(max(lo, int(centre) - span), min(hi, int(centre) + span) + 1)
    counts = mask[:, window].sum(axis=0)
    return int(window[np.argmin(counts)])


def split_lungs(mask: np.ndarray) -> np.ndarray:
    """Binary lung mask -> labels (1 = patient's right = image left, 2 = left = image right).

    Two components: each labelled by its centroid column. One component: if it straddles
    the image centre (merged lungs) it is cut at the thinnest column near its middle;
    otherwise it is a single lung, named by which half of the image it lies in.
    """
    mask = np.asarray(mask, bool)
    labels = np.zeros(mask.shape, np.uint8)
    if not mask.any():
        return labels
    lab, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    width = mask.shape[1]
    if n >= 2:
        sizes = np.bincount(lab.ravel())[1:]
        a, b = (np.argsort(sizes)[::-1][:2] + 1).tolist()
        ca = np.nonzero(lab == a)[1].mean()
        cb = np.nonzero(lab == b)[1].mean()
        right, left = (a, b) if ca < cb else (b, a)
        labels[lab == right] = RIGHT_LUNG
        labels[lab == left] = LEFT_LUNG
        return labels
    cols = np.nonzero(mask.any(axis=0))[0]
    lo, hi = cols.min(), cols.max()
    centre = width / 2
    if lo < centre < hi and (hi - lo) > 0.4 * width:
        cut = _midline(mask)
        labels[:, :cut][mask[:, :cut]] = RIGHT_LUNG
        labels[:, cut:][mask[:, cut:]] = LEFT_LUNG
        return labels
    cx = np.nonzero(mask)[1].mean()
    labels[mask] = RIGHT_LUNG if cx < centre else LEFT_LUNG
    return labels


def lung_labels(prob: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Probability map -> cleaned label mask (0/1/2), same shape as ``prob``."""
    return split_lungs(clean_binary(prob, threshold))


def grown_box(mask: np.ndarray, margin: float, min_fraction: float = 0.0,
              min_extent: int = 1) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1), exclusive ends: the bounding box of ``mask > 0`` grown by ``margin``
    of its size on each side, clipped to the image. None when the mask covers less than
    ``min_fraction`` of the image or spans fewer than ``min_extent`` rows or columns (the
    classifier's lung crop and the opacity model's lung box both fall back to the whole film
    then)."""
    m = np.asarray(mask) > 0
    if m.ndim != 2 or m.mean() < min_fraction:
        return None
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if len(rows) < max(1, min_extent) or len(cols) < max(1, min_extent):
        return None
    r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    dr, dc = int(round(margin * (r1 - r0))), int(round(margin * (c1 - c0)))
    h, w = m.shape
    return max(0, r0 - dr), min(h, r1 + dr), max(0, c0 - dc), min(w, c1 + dc)
