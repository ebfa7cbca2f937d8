"""Overlay composition at the image's full resolution: lung outlines, opacity, boxes, heatmap.

Pure numpy/OpenCV so the GUI, the CLI/batch PNG exports and the PDF reports draw the same
picture. Colours are RGB tuples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RIGHT_COLOR = (51, 195, 255)
LEFT_COLOR = (255, 176, 32)
OPACITY_COLOR = (255, 59, 59)
BOX_COLOR = (255, 230, 0)


@dataclass(frozen=True)
class OverlayOptions:
    lungs: bool = True
    opacity: bool = True
    boxes: bool = True
    heatmap: bool = False
    alpha: float = 0.45
    legend: bool = False
    right_color: tuple[int, int, int] = RIGHT_COLOR
    left_color: tuple[int, int, int] = LEFT_COLOR
    opacity_color: tuple[int, int, int] = OPACITY_COLOR


def hex_to_rgb(value: str) -> tuple[int, int, int]:
    v = value.lstrip("#")
    return (int(v[0:2], 16), int(v[2:4], 16), int(v[4:6], 16))


def heat_colormap(unit: np.ndarray) -> np.ndarray:
    """[0, 1] -> RGB uint8 with a perceptual (inferno-like) map from OpenCV."""
    import cv2

    scaled = np.multiply(unit, 255, dtype=np.float32) if np.asarray(unit).dtype == np.float32 else unit * 255
    np.rint(scaled, out=scaled)
    u8 = np.clip(scaled, 0, 255, out=scaled).astype(np.uint8)
    del scaled
    bgr = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)
    return bgr[..., ::-1]


def _thickness(shape: tuple[int, int]) -> int:
    return max(1, int(round(max(shape) / 400)))


def overlay_layer(
    shape: tuple[int, int],
    *,
    lung_labels: np.ndarray | None = None,
    opacity_mask: np.ndarray | None = None,
    regions: tuple = (),
    heatmap: np.ndarray | None = None,
    options: OverlayOptions = OverlayOptions(),
    thickness: int | None = None,
) -> np.ndarray:
    """RGBA uint8 layer (rows, cols, 4) to blend over any rendering of the image.

    Kept separate from the grey image so the viewer can re-window the picture without
    recomputing the overlay; fills carry ``options.alpha``, outlines and boxes are opaque.
    Works in uint8 throughout: the viewer calls it at canvas size on every view change.
    ``thickness``: the outline width of the whole image when ``shape`` is a part of it.
    """
    import cv2

    h, w = shape
    a8 = int(round(float(np.clip(options.alpha, 0.0, 1.0)) * 255))
    t = thickness if thickness is not None else _thickness(shape)
    if options.heatmap and heatmap is not None:
        heat = np.clip(np.asarray(heatmap, np.float32), 0, 1)
        rgb = np.ascontiguousarray(heat_colormap(heat))
        np.multiply(heat, a8, out=heat)
        alpha = np.rint(heat, out=heat).astype(np.uint8)
        del heat
    else:
        rgb = np.zeros((h, w, 3), np.uint8)
        alpha = np.zeros((h, w), np.uint8)
    if options.opacity and opacity_mask is not None:
        m8 = (np.asarray(opacity_mask) > 0).astype(np.uint8)
        if m8.any():
            m = m8.astype(bool)
            rgb[m] = options.opacity_color
            np.maximum(alpha, m8 * np.uint8(a8), out=alpha)
            contours, _ = cv2.findContours(m8, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(rgb, contours, -1, options.opacity_color, t)
            cv2.drawContours(alpha, contours, -1, 255, t)
    if options.lungs and lung_labels is not None:
        labels = np.asarray(lung_labels)
        for label, colour in ((1, options.right_color), (2, options.left_color)):
            m = (labels == label).astype(np.uint8)
            if m.any():
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(rgb, contours, -1, colour, t + 1)
                cv2.drawContours(alpha, contours, -1, 255, t + 1)
    if options.boxes:
        for reg in regions:
            x0, y0, x1, y1 = reg.bbox
            p0, p1 = (int(x0), int(y0)), (int(max(x0, x1 - 1)), int(max(y0, y1 - 1)))
            cv2.rectangle(rgb, p0, p1, BOX_COLOR, t)
            cv2.rectangle(alpha, p0, p1, 255, t)
    return np.dstack([rgb, alpha])


@dataclass(frozen=True)
class _Box:
    bbox: tuple[int, int, int, int]


def view_layer(state, *, lung_labels: np.ndarray | None = None, opacity_mask: np.ndarray | None = None,
               regions: tuple = (), heatmap: np.ndarray | None = None,
               options: OverlayOptions = OverlayOptions()) -> np.ndarray:
    """The overlay layer drawn directly at canvas size for a view state.

    Masks are warped to the view (nearest) and outlines drawn there, so the cost follows the
    canvas, not the image: this runs on the Tk thread at every zoom/pan.
    """
    from .viewport import render_view

    cw, ch = state.canvas_size
    lab_v = render_view(np.asarray(lung_labels, np.uint8), state, nearest=True) if lung_labels is not None else None
    op_v = (render_view((np.asarray(opacity_mask) > 0).astype(np.uint8), state, nearest=True)
            if opacity_mask is not None and options.opacity else None)
    heat_v = (render_view(np.asarray(heatmap, np.float32), state, nearest=False)
              if heatmap is not None and options.heatmap else None)
    boxes = []
    if options.boxes:
        for reg in regions:
            x0, y0, x1, y1 = reg.bbox
            pts = [state.image_to_screen(x, y) for x, y in ((x0, y0), (x1, y0), (x0, y1), (x1, y1))]
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            boxes.append(_Box((int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1)))
    return overlay_layer((ch, cw), lung_labels=lab_v, opacity_mask=op_v, regions=tuple(boxes), heatmap=heat_v,
                         options=options)


def blend(grey_or_rgb: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Alpha-blend an RGBA layer over a grey (H, W) or RGB (H, W, 3) uint8 image:
    ``(base * (255 - a) + rgb * a + 127) // 255`` per channel, in 16-bit integers, in place
    (two 16-bit arrays; the division by 255 as ``(x + 1 + (x >> 8)) >> 8``, exact for every
    x up to 65,534 and the sum never exceeds 65,152)."""
    base = np.asarray(grey_or_rgb)
    a = layer[..., 3:4].astype(np.uint16)
    out = np.empty((*base.shape[:2], 3), np.uint16)
    out[...] = base[..., None] if base.ndim == 2 else base
    out *= 255 - a
    a3 = layer[..., :3].astype(np.uint16)
    a3 *= a
    out += a3
    out += 127
    np.right_shift(out, 8, out=a3)
    out += a3
    out += 1
    out >>= 8
    return out.astype(np.uint8)


def compose_overlay(
    display: np.ndarray,
    *,
    lung_labels: np.ndarray | None = None,
    opacity_mask: np.ndarray | None = None,
    regions: tuple = (),
    heatmap: np.ndarray | None = None,
    options: OverlayOptions = OverlayOptions(),
) -> np.ndarray:
    """RGB uint8 overlay: the same (rows, cols) as ``display``, plus a legend band below the
    image when ``options.legend`` (image pixels keep their coordinates).

    One pass over the full-size picture: the output (legend band included) is allocated
    once and filled with the grey image; the layer is built and blended only inside the
    part of the image where it can show (:func:`layer_box`: the masks, the heatmap and the
    boxes, grown by the outline width), the same pixels as blending a full-size layer.
    """
    import cv2

    grey = np.asarray(display)
    if grey.dtype != np.uint8:
        raise ValueError("display must be uint8")
    rows, cols = grey.shape[:2]
    strip = None
    if options.legend:
        from dataclasses import replace

        present = replace(options, lungs=options.lungs and lung_labels is not None,
                          opacity=options.opacity and opacity_mask is not None,
                          boxes=options.boxes and opacity_mask is not None,
                          heatmap=options.heatmap and heatmap is not None)
        strip = legend_strip(cols, present)
    extra = len(strip) if strip is not None else 0
    out = np.empty((rows + extra, cols, 3), np.uint8)
    if grey.ndim == 2:
        cv2.cvtColor(np.ascontiguousarray(grey), cv2.COLOR_GRAY2RGB, dst=out[:rows])
    else:
        out[:rows] = grey
    if extra:
        out[rows:] = strip
    box = layer_box((rows, cols), lung_labels=lung_labels, opacity_mask=opacity_mask, regions=regions,
                    heatmap=heatmap, options=options)
    if box is None:
        return out
    x0, y0, x1, y1 = box
    crop = (slice(y0, y1), slice(x0, x1))
    layer = overlay_layer(
        (y1 - y0, x1 - x0),
        lung_labels=None if lung_labels is None else np.asarray(lung_labels)[crop],
        opacity_mask=None if opacity_mask is None else np.asarray(opacity_mask)[crop],
        regions=tuple(_Box((r.bbox[0] - x0, r.bbox[1] - y0, r.bbox[2] - x0, r.bbox[3] - y0)) for r in regions),
        heatmap=None if heatmap is None else np.asarray(heatmap)[crop],
        options=options, thickness=_thickness((rows, cols)))
    out[y0:y1, x0:x1] = blend(out[y0:y1, x0:x1], layer)
    return out


def layer_box(shape: tuple[int, int], *, lung_labels: np.ndarray | None = None,
              opacity_mask: np.ndarray | None = None, regions: tuple = (), heatmap: np.ndarray | None = None,
              options: OverlayOptions = OverlayOptions()) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1), exclusive ends: the part of an image of ``shape`` outside which the
    overlay layer is transparent (the layers shown, grown by twice the outline width), or
    None when nothing is shown. Outside it, blending leaves the image's pixels as they are."""
    rows, cols = shape
    spans: list[tuple[int, int, int, int]] = []

    def nonzero_span(a: np.ndarray) -> None:
        ys = np.flatnonzero(a.any(axis=1))
        if len(ys):
            xs = np.flatnonzero(a.any(axis=0))
            spans.append((int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1))

    if options.lungs and lung_labels is not None:
        nonzero_span(np.asarray(lung_labels) > 0)
    if options.opacity and opacity_mask is not None:
        nonzero_span(np.asarray(opacity_mask) > 0)
    if options.heatmap and heatmap is not None:
        nonzero_span(np.asarray(heatmap) > 0)
    if options.boxes:
        for r in regions:
            bx0, by0, bx1, by1 = (int(v) for v in r.bbox)
            spans.append((min(bx0, bx1 - 1), min(by0, by1 - 1), max(bx1, bx0 + 1), max(by1, by0 + 1)))
    if not spans:
        return None
    grow = 2 * (_thickness(shape) + 1) + 2
    x0 = max(0, min(s[0] for s in spans) - grow)
    y0 = max(0, min(s[1] for s in spans) - grow)
    x1 = min(cols, max(s[2] for s in spans) + grow)
    y1 = min(rows, max(s[3] for s in spans) + grow)
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def legend_entries(options: OverlayOptions) -> list[tuple[str, tuple[int, int, int]]]:
    entries = []
    if options.lungs:
        entries += [("Right lung", options.right_color), ("Left lung", options.left_color)]
    if options.opacity:
        entries.append(("Opacity", options.opacity_color))
    if options.boxes:
        entries.append(("Opacity region", BOX_COLOR))
    if options.heatmap:
        entries.append(("Classifier heatmap", (252, 160, 60)))
    return entries


def legend_strip(width: int, options: OverlayOptions) -> np.ndarray:
    """A dark RGB band (rows, ``width``, 3) naming the layers, to sit *below* the image.

    Below rather than on it: a legend drawn over the film hid part of the lower lung field,
    where opacities often are. Entries flow left to right and wrap; the text grows with the
    image width but never gets smaller than a readable ~9 px. Empty when no layer is shown.
    """
    import cv2

    entries = legend_entries(options)
    if not entries or width <= 0:
        return np.zeros((0, max(width, 0), 3), np.uint8)
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, max(0.4, width / 1400)
    thick = max(1, int(round(scale * 1.5)))
    (_, text_h), base = cv2.getTextSize("Ag", font, scale, thick)
    line, pad, swatch = text_h + base + int(10 * scale) + 4, int(8 * scale) + 2, text_h
    placed, x, row = [], pad, 0
    for text, colour in entries:
        w = swatch + pad // 2 + cv2.getTextSize(text, font, scale, thick)[0][0]
        if x > pad and x + w > width - pad:
            x, row = pad, row + 1
        placed.append((x, row, text, colour))
        x += w + 2 * pad
    strip = np.full((line * (row + 1) + pad // 2, width, 3), 24, np.uint8)
    for x, r, text, colour in placed:
        y = r * line + pad // 2 + text_h + base // 2
        cv2.rectangle(strip, (x, y - swatch), (x + swatch, y), colour, -1)
        cv2.putText(strip, text, (x + swatch + pad // 2, y), font, scale, (255, 255, 255), thick, cv2.LINE_AA)
    return strip


# zlib level of the PNGs we write: 1 (fastest); with one row filter (``average``) instead
# of trying all five per row, OpenCV encodes a 2,000-pixel RGB overlay in about half the
# time Pillow needs at the same level, for the same size, and about 8 times faster than
# Pillow's default level 6 for files ~5 % larger (lossless either way).
PNG_COMPRESS_LEVEL = 1


def encode_png(arr: np.ndarray, kind: str = "overlay", compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """PNG bytes of a uint8 grey/RGB array (label images keep their exact values).

    Every PNG we write is marked as ours (``tEXt`` chunks before the image data, see
    ``xrayviewer.provenance``), so a later batch never analyses it as an X-ray; ``kind``
    says what it is (overlay, lung-labels, opacity-mask).
    """
    from ..provenance import png_text

    a = np.asarray(arr)
    png = _encode_png_opencv(a, compress_level) if a.dtype == np.uint8 and a.ndim in (2, 3) else None
    if png is None:
        return _encode_png_pillow(a, png_text(kind), compress_level)
    import struct
    import zlib

    chunks = b""
    for key, value in png_text(kind).items():
        body = b"tEXt" + key.encode("latin-1") + b"\0" + value.encode("latin-1", "replace")
        chunks += struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    # signature (8 bytes) and IHDR (25) first, then our text, then the image data
    return png[:33] + chunks + png[33:]


def _encode_png_opencv(arr: np.ndarray, level: int) -> bytes | None:
    import cv2

    if not hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV before 4.11: Pillow
        return None
    if arr.ndim == 3:
        if arr.shape[2] != 3:
            return None
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, int(level),
                                         cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_AVG])
    png = buf.tobytes() if ok else b""
    if not png.startswith(b"\x89PNG\r\n\x1a\n") or png[12:16] != b"IHDR":
        return None
    return png


def _encode_png_pillow(arr: np.ndarray, text: dict[str, str], level: int) -> bytes:
    import io

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", pnginfo=info, compress_level=level)
    return buf.getvalue()
