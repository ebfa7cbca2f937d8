"""Drawing what :mod:`~xrayviewer.gui.readout` says onto a film canvas: the four corner
annotations, the legend on the canvas edge (with the heatmap's colour bar) and the opacity
regions' labels. Canvas items, not pixels: they stay sharp at any zoom and cost nothing
to redraw. Text has a dark halo so it reads on bright bone as on the dark background."""

from __future__ import annotations

import tkinter as tk
from typing import Any

from . import theme
from .readout import LegendItem

CORNER_FG = "#e6e6e6"
TAG_FG = "#ffc857"  # the "AI: research use" tag
HALO = "#000000"
ANCHORS = {"nw": ("nw", "left"), "ne": ("ne", "right"), "sw": ("sw", "left"), "se": ("se", "right")}


def _text(canvas: tk.Canvas, x: float, y: float, text: str, *, anchor: str, justify: str = "left",
          fill: str = CORNER_FG, font: Any = ("TkDefaultFont", 10), tags: tuple[str, ...] = (), width: int = 0) -> int:
    for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        canvas.create_text(x + dx, y + dy, text=text, anchor=anchor, justify=justify, fill=HALO, font=font,
                           tags=tags + ("halo",), width=width)
    return canvas.create_text(x, y, text=text, anchor=anchor, justify=justify, fill=fill, font=font, tags=tags,
                              width=width)


def draw_corners(canvas: tk.Canvas, corners: dict[str, tuple[str, ...]]) -> None:
    canvas.delete("corner")
    w, h = canvas.winfo_width(), canvas.winfo_height()
    m = theme.px(canvas, 8)
    pos = {"nw": (m, m), "ne": (w - m, m), "sw": (m, h - m), "se": (w - m, h - m)}
    for key, lines in corners.items():
        if not lines:
            continue
        anchor, justify = ANCHORS[key]
        x, y = pos[key]
        if key == "ne" and lines and lines[0].startswith("AI:"):
            # the research-use tag on its own line, in its own colour
            item = _text(canvas, x, y, lines[0], anchor=anchor, justify=justify, fill=TAG_FG,
                         font=("TkDefaultFont", 10, "bold"), tags=("corner", "corner-ne", "ai-tag"))
            y = canvas.bbox(item)[3] + 1
            lines = lines[1:]
            if not lines:
                continue
        _text(canvas, x, y, "\n".join(lines), anchor=anchor, justify=justify, tags=("corner", f"corner-{key}"),
              width=int(w * 0.45))  # long lines wrap before the middle of the film


def draw_legend(canvas: tk.Canvas, items: list[LegendItem]) -> None:
    """A small key at the right edge, vertically centred: one row per visible layer."""
    canvas.delete("legend")
    if not items:
        return
    k = theme.px(canvas, 1)
    font = ("TkDefaultFont", 9)
    row, sw, pad = 18 * k, 11 * k, 6 * k
    width = 150 * k
    x1 = canvas.winfo_width() - pad
    x0 = x1 - width
    extra = sum(row for it in items if it.colour is None)  # the colour bar takes a second row
    height = len(items) * row + extra + pad
    y0 = canvas.winfo_height() / 2 - height / 2
    canvas.create_rectangle(x0, y0, x1, y0 + height, fill="#101214", outline="#3b3f45", tags=("legend",))
    y = y0 + pad / 2
    for it in items:
        cy = y + row / 2
        if it.colour is not None:
            colour = "#{:02x}{:02x}{:02x}".format(*it.colour)
            canvas.create_rectangle(x0 + pad, cy - sw / 2, x0 + pad + sw, cy + sw / 2, fill=colour, outline=colour,
                                    tags=("legend", "legend-swatch"))
            canvas.create_text(x0 + 2 * pad + sw, cy, text=it.label, anchor="w", fill=CORNER_FG, font=font,
                               tags=("legend", "legend-label"))
            y += row
            continue
        canvas.create_text(x0 + pad, cy, text=it.label, anchor="w", fill=CORNER_FG, font=font,
                           tags=("legend", "legend-label"))
        bar_w, bar_h = width - 2 * pad, 8 * k
        canvas._xrv_heatbar = _heat_photo(canvas, int(bar_w), int(bar_h))  # type: ignore[attr-defined]
        by = y + row + 1
        canvas.create_image(x0 + pad, by, image=canvas._xrv_heatbar, anchor="nw",  # type: ignore[attr-defined]
                            tags=("legend", "legend-colourbar"))
        lo, hi = it.scale or ("", "")
        small = ("TkDefaultFont", 8)
        canvas.create_text(x0 + pad, by + bar_h + 1, text=lo, anchor="nw", fill=CORNER_FG, font=small,
                           tags=("legend",))
        canvas.create_text(x1 - pad, by + bar_h + 1, text=hi, anchor="ne", fill=CORNER_FG, font=small,
                           tags=("legend",))
        y += 2 * row


def _heat_photo(canvas: tk.Canvas, width: int, height: int) -> Any:
    from PIL import Image, ImageTk

    from .readout import heat_bar

    return ImageTk.PhotoImage(Image.fromarray(heat_bar(width, height)), master=canvas)


def draw_region_labels(canvas: tk.Canvas, labels: list[tuple[float, float, str]]) -> None:
    canvas.delete("region-label")
    for x, y, text in labels:
        _text(canvas, x + 2, y - 2, text, anchor="sw", fill="#ffe600", font=("TkDefaultFont", 9, "bold"),
              tags=("region-label",))


def draw_all(canvas: tk.Canvas, session: Any) -> None:
    """Corners, legend and region labels for the session's current view."""
    marks = session.annotations()
    if marks is None:
        canvas.delete("corner", "legend", "region-label")
        return
    corners, legend, regions = marks
    draw_region_labels(canvas, regions)
    draw_legend(canvas, legend)
    draw_corners(canvas, corners)
