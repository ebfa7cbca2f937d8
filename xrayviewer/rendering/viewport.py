"""View state of the image canvas and the maths behind zoom, pan, rotate/flip, W/L and rulers.

Kept free of Tk so that it can be tested headless; the GUI only turns the rendered array
into a PhotoImage. All transforms are one 2x3 affine matrix (image -> screen), so the
viewport is produced with a single ``cv2.warpAffine`` at canvas size, whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

MIN_ZOOM = 0.02
MAX_ZOOM = 32.0


@dataclass(frozen=True)
class ViewState:
    """Geometry of the view: ``zoom`` screen px per image px, ``center`` the image point
    (x, y) shown at the canvas centre, ``rotation`` in quarter turns clockwise, flips
    applied after rotation, in screen space."""

    image_shape: tuple[int, int]  # (rows, cols)
    canvas_size: tuple[int, int] = (800, 600)  # (width, height)
    zoom: float = 1.0
    center: tuple[float, float] = (0.0, 0.0)
    rotation: int = 0
    flip_h: bool = False
    flip_v: bool = False

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def fitted(cls, image_shape: tuple[int, int], canvas_size: tuple[int, int]) -> ViewState:
        state = cls(image_shape=image_shape, canvas_size=canvas_size)
        return state.fit()

    def _rotated_extent(self) -> tuple[float, float]:
        rows, cols = self.image_shape
        return (cols, rows) if self.rotation % 2 == 0 else (rows, cols)

    def fit(self) -> ViewState:
        """Whole image visible and centred."""
        w, h = self._rotated_extent()
        cw, ch = self.canvas_size
        zoom = max(min(cw / max(w, 1), ch / max(h, 1)), MIN_ZOOM)
        rows, cols = self.image_shape
        return replace(self, zoom=zoom, center=(cols / 2.0, rows / 2.0))

    def one_to_one(self) -> ViewState:
        return replace(self, zoom=1.0)

    def with_canvas(self, canvas_size: tuple[int, int]) -> ViewState:
        return replace(self, canvas_size=(max(1, canvas_size[0]), max(1, canvas_size[1])))

    # ---- transforms -----------------------------------------------------------------
    def matrix(self) -> np.ndarray:
        """2x3 affine mapping image (x, y) to screen (x, y)."""
        cx, cy = self.center
        cw, ch = self.canvas_size
        # translate image centre point to origin
        t1 = np.array([[1, 0, -cx], [0, 1, -cy], [0, 0, 1]], dtype=np.float64)
        k = self.rotation % 4
        cos, sin = [(1, 0), (0, 1), (-1, 0), (0, -1)][k]
        # clockwise on screen (y down): x' = cos*x - sin*y ; y' = sin*x + cos*y
        rot = np.array([[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]], dtype=np.float64)
        flip = np.diag([-1.0 if self.flip_h else 1.0, -1.0 if self.flip_v else 1.0, 1.0])
        scale = np.diag([self.zoom, self.zoom, 1.0])
        t2 = np.array([[1, 0, cw / 2.0], [0, 1, ch / 2.0], [0, 0, 1]], dtype=np.float64)
        return (t2 @ scale @ flip @ rot @ t1)[:2]

    def image_to_screen(self, x: float, y: float) -> tuple[float, float]:
        m = self.matrix()
        return (float(m[0, 0] * x + m[0, 1] * y + m[0, 2]), float(m[1, 0] * x + m[1, 1] * y + m[1, 2]))

    def screen_to_image(self, sx: float, sy: float) -> tuple[float, float]:
        m = np.vstack([self.matrix(), [0, 0, 1]])
        inv = np.linalg.inv(m)
        return (float(inv[0, 0] * sx + inv[0, 1] * sy + inv[0, 2]), float(inv[1, 0] * sx + inv[1, 1] * sy + inv[1, 2]))

    def pixel_at(self, sx: float, sy: float) -> tuple[int, int] | None:
        """(row, col) under a screen point, or None outside the image."""
        x, y = self.screen_to_image(sx, sy)
        col, row = int(math.floor(x)), int(math.floor(y))
        rows, cols = self.image_shape
        if 0 <= row < rows and 0 <= col < cols:
            return row, col
        return None

    # ---- interaction ----------------------------------------------------------------
    def zoom_at(self, factor: float, sx: float, sy: float) -> ViewState:
        """Zoom by ``factor`` keeping the image point under (sx, sy) fixed on screen."""
        new_zoom = float(np.clip(self.zoom * factor, MIN_ZOOM, MAX_ZOOM))
        ix, iy = self.screen_to_image(sx, sy)
        tmp = replace(self, zoom=new_zoom)
        px, py = tmp.image_to_screen(ix, iy)
        return tmp.pan(sx - px, sy - py)

    def pan(self, dx: float, dy: float) -> ViewState:
        """Move the picture by (dx, dy) screen pixels."""
        ax, ay = self.screen_to_image(0.0, 0.0)
        bx, by = self.screen_to_image(dx, dy)
        cx, cy = self.center
        return replace(self, center=(cx - (bx - ax), cy - (by - ay)))

    def rotate(self, quarter_turns: int = 1) -> ViewState:
        return replace(self, rotation=(self.rotation + quarter_turns) % 4)

    def toggle_flip_h(self) -> ViewState:
        return replace(self, flip_h=not self.flip_h)

    def toggle_flip_v(self) -> ViewState:
        return replace(self, flip_v=not self.flip_v)


def render_view(image: np.ndarray, state: ViewState, *, nearest: bool | None = None, fill: float = 0) -> np.ndarray:
    """The canvas-sized view of ``image`` (2-D or HxWxC) for ``state``.

    Nearest-neighbour when magnifying beyond 2x (so pixels stay honest), area-like linear
    otherwise; when shrinking a lot we pre-shrink with INTER_AREA to avoid aliasing.
    """
    import cv2

    cw, ch = state.canvas_size
    src = np.ascontiguousarray(image)
    m = state.matrix()
    if nearest is None:
        nearest = state.zoom >= 2.0
    if state.zoom < 0.5 and not nearest:
        # Pre-shrink by an integer-ish factor with area averaging, then warp the rest.
        f = state.zoom * 1.5
        small = cv2.resize(src, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        sy = small.shape[0] / src.shape[0]
        sx = small.shape[1] / src.shape[1]
        pre = np.array([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])
        m = (np.vstack([m, [0, 0, 1]]) @ pre)[:2]
        src = small
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    if src.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        src = src.astype(np.float32)
    return cv2.warpAffine(src, m, (int(cw), int(ch)), flags=interp, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def wl_from_drag(center: float, width: float, dx: float, dy: float, value_range: float) -> tuple[float, float]:
    """Right-drag window/level as most PACS do: horizontal drag changes the width (right =
    wider, less contrast), vertical drag the centre (down = higher centre, darker image);
    the step scales with the data's value range so 8- and 16-bit images feel the same."""
    sensitivity = max(value_range, 1.0) / 500.0
    new_width = max(1.0, width + dx * sensitivity)
    new_center = center + dy * sensitivity
    return new_center, new_width


@dataclass(frozen=True)
class Measurement:
    """A ruler's length: in mm when the image has a pixel spacing, otherwise in pixels."""

    value: float
    unit: str  # "mm" or "px"
    spacing_source: str | None = None

    def label(self) -> str:
        if self.unit == "mm":
            suffix = " (detector plane)" if self.spacing_source == "ImagerPixelSpacing" else ""
            return f"{self.value:.1f} mm{suffix}"
        return f"{self.value:.1f} px (no pixel spacing)"


def measure(
    p1: tuple[float, float],
    p2: tuple[float, float],
    spacing: tuple[float, float] | None,
    spacing_source: str | None = None,
) -> Measurement:
    """Distance between two image points (x, y); spacing is (row mm, column mm)."""
    dx = p2[0] - p1[0]
    dy = p2[1] - p1[1]
    if spacing:
        row_mm, col_mm = spacing
        return Measurement(math.hypot(dx * col_mm, dy * row_mm), "mm", spacing_source)
    return Measurement(math.hypot(dx, dy), "px", None)
