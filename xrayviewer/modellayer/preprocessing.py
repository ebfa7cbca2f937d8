"""Image -> model input. The single source of truth shared by inference and training.

Training (``xrayviewer.training``) imports these functions, so a model always sees at
inference exactly what it saw in training. The public datasets ship whole radiographs
squashed to a square, so we squash too (no letterboxing) and map masks back with the
inverse resize.

Two input normalisations exist; each model's card names the one it was trained on
(``input_normalization``), and the model layer applies that one:

* ``display-v1`` (legacy): the 8-bit display image / 255. What the model sees then depends
  on the file's default window and on the source's pixel statistics -- an ordinary adult
  CR shown with its own window looked "severe" to models trained on COVID-QU-Ex PNGs.
* ``rank-v1`` (robust): the film's *modality values* (never the display window), made
  bright = dense, mapped through their own rank (histogram equalisation) whose levels are
  taken from the central part of the film at 256 px. Any monotonic change of grey levels
  -- a window, a gamma, 8 vs 16 bits, a modality rescale -- leaves this input unchanged
  (up to ties created by clipping), and every source ends up with the same grey-level
  statistics. The central region keeps burned-in borders and labels at the edges from
  steering the map. Ties get their mid-rank, so a saturated background in an 8-bit export
  lands where the same pixels' spread of ranks lands on average.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEGACY = "display-v1"
ROBUST = "rank-v1"
NORMALIZATIONS = (LEGACY, ROBUST)
RANK_LEVELS = 257  # quantile levels of the rank map (256 bins)
RANK_GRID = 256  # the map is measured on the film squashed to this size ...
RANK_CENTRAL = 0.1  # ... leaving out this fraction at each edge


def to_unit_float(gray: np.ndarray) -> np.ndarray:
    """Scale an integer or float grey image to float32 in [0, 1].

    uint8 is divided by 255, uint16 by its own maximum-possible value only when the data
    use the range; other inputs are min-max scaled. Display images (uint8) are the normal
    input, so this is exact for them.
    """
    arr = _as_2d(gray)
    if arr.dtype == np.uint8:
        unit = arr.astype(np.float32)
        return np.divide(unit, np.float32(255.0), out=unit)  # in place: one float copy, same numbers
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros_like(arr, dtype=np.float32)
    return (arr - lo) / (hi - lo)


def _as_2d(gray: np.ndarray) -> np.ndarray:
    arr = np.asarray(gray)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D grey image, got shape {arr.shape}")
    return arr


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


def rank_map(gray: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(levels, targets) of the rank map of a canonical grey film (bright = dense).

    ``levels`` are the grey values at 256 quantiles of the film's central region (film
    squashed to 256 px); ``targets`` their mid-ranks in [0, 1]. Equal levels (ties, e.g. a
    clipped background) are merged into one level carrying their mean rank.
    """
    small = resize(_as_2d(gray).astype(np.float32), RANK_GRID)
    return _rank_map_of_grid(small)


def _rank_map_of_grid(small: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rank_map` from the film already squashed to the RANK_GRID square (float32)."""
    m = int(round(RANK_GRID * RANK_CENTRAL))
    sample = small[m:RANK_GRID - m, m:RANK_GRID - m].ravel()
    q = np.linspace(0.0, 1.0, RANK_LEVELS)
    levels = np.quantile(sample, q).astype(np.float64)
    uniq, inv = np.unique(levels, return_inverse=True)
    targets = np.bincount(inv, weights=q) / np.bincount(inv)
    if len(uniq) == 1:  # a flat film: everything mid-grey
        return np.array([uniq[0] - 1.0, uniq[0] + 1.0]), np.array([0.5, 0.5])
    return uniq, targets


def apply_rank_map(arr: np.ndarray, levels: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Grey values -> [0, 1] through a rank map (linear between levels, clipped outside)."""
    out = np.interp(np.asarray(arr, np.float32).ravel(), levels, targets)
    return out.reshape(np.shape(arr)).astype(np.float32)


@dataclass(frozen=True, eq=False)
class FilmInput:
    """A film as the models' preprocessing sees it (no display window anywhere).

    ``gray``: the film's grey values at full resolution as stored (the modality values or the
    bare array, never copied); bright = dense once negated when ``invert`` is set (MONOCHROME1
    / INVERSE films). The negation is applied after each resize (exact: a linear resize
    commutes with it), so no full-resolution float copy of the film is kept per stage.
    ``levels``/``targets``: its rank map (see :func:`rank_map`) of the bright = dense values,
    computed once per film and shared by every model and crop.
    """

    gray: np.ndarray
    levels: np.ndarray
    targets: np.ndarray
    display: np.ndarray | None = None  # the 8-bit display image, for legacy-input models
    invert: bool = False  # bright = dense is -gray
    # whole-film squashes already made (size -> float32), see film_input(sizes=...)
    _squashes: dict[int, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.gray.shape[0]), int(self.gray.shape[1]))

    def model_array(self, size: int, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """(size, size, 1) float32 in [0, 1]: the (optionally cropped) film squashed to size.

        ``box`` = (x0, y0, x1, y1) in full-resolution pixels, x1/y1 exclusive.
        """
        return apply_rank_map(self.squashed(size, box), self.levels, self.targets)[..., None]

    def squashed(self, size: int | tuple[int, int], box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """The (cropped) film resized to ``size``, float32, bright = dense (before the rank map)."""
        if box is None and isinstance(size, int) and size in self._squashes:
            return self._squashes[size].copy()
        g = self.gray
        if box is not None:
            x0, y0, x1, y1 = box
            g = g[y0:y1, x0:x1]
        small = _resize_float(g, size)
        return np.negative(small, out=small) if self.invert else small


def _resize_float(gray: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """``resize(gray.astype(float32), size)`` as float32 (the same numbers)."""
    return np.asarray(resize(np.asarray(gray, np.float32), size), np.float32)


def film_input(source: Any, sizes: tuple[int, ...] = ()) -> FilmInput:
    """The robust model input of a film: an :class:`~xrayviewer.imaging.XRayImage` (modality
    values, inverted for MONOCHROME1 / INVERSE so that bright = dense) or a 2-D grey array
    that is already bright = dense (the datasets' PNGs in training).

    ``sizes``: whole-film model sizes to squash to now, from the one float copy of the film
    the rank map needs (the same numbers as :meth:`FilmInput.model_array` computes later;
    a 2,000-pixel film is converted once instead of once per model)."""
    display = None
    invert = False
    if hasattr(source, "values") and hasattr(source, "invert"):
        g = np.asarray(source.values)
        if g.ndim == 3:  # multi-sample data that reached us undecided: average the samples
            g = g.astype(np.float32).mean(axis=-1)
        invert = bool(source.invert)
        display = np.asarray(source.display)
    else:
        g = _as_2d(source)
        if g.dtype == np.uint8:
            display = g
    full = np.asarray(g, np.float32)  # one float copy of the film, dropped on return
    small = np.asarray(resize(full, RANK_GRID), np.float32)
    squashes = {}
    for size in sizes:
        sq = np.asarray(resize(full, size), np.float32)
        squashes[int(size)] = np.negative(sq, out=sq) if invert else sq
    del full
    if invert:
        np.negative(small, out=small)
    levels, targets = _rank_map_of_grid(small)
    return FilmInput(g, levels, targets, display, invert, squashes)


def prepare_for_model(gray: Any, size: int, normalization: str = LEGACY) -> np.ndarray:
    """A film -> float32 array (size, size, 1) in [0, 1], by the named normalisation.

    ``display-v1``: ``gray`` is the display image (any size). ``rank-v1``: ``gray`` is a
    :class:`FilmInput`, an ``XRayImage`` or a bright = dense grey array.
    """
    if normalization == LEGACY:
        if hasattr(gray, "display") and gray.display is None:
            raise ValueError("the legacy input needs the film's display image")
        return _legacy_input(gray.display if hasattr(gray, "display") else gray, size)
    if normalization == ROBUST:
        fi = gray if isinstance(gray, FilmInput) else film_input(gray)
        return fi.model_array(size)
    raise ValueError(f"unknown input normalization {normalization!r} (known: {NORMALIZATIONS})")


# Legacy inputs of large films, remembered per display array (weakly) and size: the
# classifier and the opacity model both ask for the same 128-pixel input of a film, and
# on a 2,000-pixel film each conversion is a full-size float copy. Small films are not
# remembered (cheap to redo; training loops over thousands of them).
_MEMO_MIN_PIXELS = 1 << 20
_MEMO_ENTRIES = 32
_memo: OrderedDict[tuple[Any, ...], tuple[Any, np.ndarray]] = OrderedDict()
_memo_lock = threading.Lock()


def _legacy_input(gray: Any, size: int) -> np.ndarray:
    arr = np.asarray(gray)
    memo = arr.size >= _MEMO_MIN_PIXELS
    key = (id(arr), int(size), arr.shape, arr.dtype.str)
    if memo:
        with _memo_lock:
            hit = _memo.get(key)
            if hit is not None and hit[0]() is arr:
                _memo.move_to_end(key)
                return hit[1].copy()
    unit = to_unit_float(arr)
    out = np.clip(resize(unit, size).astype(np.float32), 0.0, 1.0)[..., None]
    if memo:
        try:
            ref = weakref.ref(arr)
        except TypeError:  # an array type without weak references: not remembered
            return out
        with _memo_lock:
            _memo[key] = (ref, out.copy())
            while len(_memo) > _MEMO_ENTRIES:
                _memo.popitem(last=False)
    return out


def mask_at(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A mask as a boolean array of ``shape`` (rows, cols): resized (linear, > 0.5) when it
    was made at another resolution."""
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        return resize(m.astype(np.float32), tuple(shape)) > 0.5
    return m > 0


def mask_to_full_resolution(prob: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a model-resolution probability map back to the input's (rows, cols)."""
    p = np.asarray(prob, dtype=np.float32)
    if p.ndim == 3:
        p = p[..., 0]
    return np.clip(resize(p, shape), 0.0, 1.0)
