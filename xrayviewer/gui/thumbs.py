"""The thumbnails strip of an opened folder: one cell per film (picture, name, badge once
analysed: ok / finding / refused / error). Cells appear at once with a placeholder; the
pictures are made on a worker (:class:`~xrayviewer.gui.worker.BackgroundTasks`, channel
"thumbs"), nearest to the selected film first, and cached in memory and on disk
(:class:`~xrayviewer.gui.readout.ThumbnailCache`). Up/Down and PgUp/PgDn move through it
as before; a click opens a film. Lazy: only the visible cells (and a few beyond) are
made, so a folder of thousands of films costs what the screen shows."""

from __future__ import annotations

import time
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import ttk
from typing import Any

from . import theme
from .readout import THUMB_SIZE, ThumbnailCache

BADGE_COLOURS = {"ok": ("#1f7a45", "OK"), "finding": ("#b35c00", "FINDING"), "refused": ("#8b1e24", "REFUSED"),
                 "error": ("#5a5f66", "ERROR")}


class ThumbStrip(ttk.Frame):
    def __init__(self, master: tk.Misc, tasks: Any, on_select: Callable[[int], None],
                 badge_for: Callable[[Path], str | None], cache: ThumbnailCache) -> None:
        super().__init__(master, style="Strip.TFrame")
        self.tasks, self.on_select, self.badge_for, self.cache = tasks, on_select, badge_for, cache
        k = theme.px(self, 1)
        self.cell_w, self.thumb = 132 * k, THUMB_SIZE
        self.cell_h = self.thumb + 30 * k
        self.canvas = tk.Canvas(self, width=self.cell_w + 8, highlightthickness=0, takefocus=0)
        self.canvas.theme_role = "panel"  # type: ignore[attr-defined]
        bar = ttk.Scrollbar(self, orient="vertical", command=self.canvas.yview)

        def scrolled(first: str, last: str) -> None:
            bar.set(first, last)
            if self.files and not self._pending:
                self._pending = True
                self.after(60, self._scrolled)  # one request per burst of scrolling

        self._pending = False
        self.canvas.configure(yscrollcommand=scrolled)
        bar.pack(side="right", fill="y")
        self.canvas.pack(side="left", fill="both", expand=True)
        self.canvas.bind("<Button-1>", self._click)
        self.canvas.bind("<MouseWheel>", lambda e: self.canvas.yview_scroll(-1 if e.delta > 0 else 1, "units"))
        self.canvas.bind("<Button-4>", lambda e: self.canvas.yview_scroll(-1, "units"))
        self.canvas.bind("<Button-5>", lambda e: self.canvas.yview_scroll(1, "units"))
        self.files: list[Path] = []
        self.selected: int | None = None
        self.photos: dict[int, Any] = {}
        self.loaded: set[int] = set()
        self.failed: set[int] = set()

    # ------------------------------------------------------------------ content
    def set_files(self, files: list[Path], selected: int = 0) -> None:
        self.files = list(files)
        self.photos.clear()
        self.loaded.clear()
        self.selected = None
        self._draw_cells()
        if files:
            self.select(selected)
        self._start_worker(selected)

    def _draw_cells(self) -> None:
        c = self.canvas
        c.delete("all")
        pal = theme.current(self)
        for i, path in enumerate(self.files):
            x0, y0 = 4, 4 + i * self.cell_h
            c.create_rectangle(x0, y0, x0 + self.cell_w, y0 + self.cell_h - 4, outline=pal.border, fill=pal.field,
                               width=1, tags=(f"cell-{i}", "cell"))
            c.create_text(x0 + self.cell_w / 2, y0 + 4 + self.thumb / 2, text="…", fill=pal.muted,
                          tags=(f"placeholder-{i}",))
            name = path.name if len(path.name) <= 18 else path.name[:8] + "…" + path.name[-9:]
            c.create_text(x0 + self.cell_w / 2, y0 + self.thumb + 14 * theme.px(self, 1) - 4, text=name,
                          fill=pal.fg, font=("TkDefaultFont", 9), tags=(f"name-{i}",))
            self._draw_badge(i)
        c.configure(scrollregion=(0, 0, self.cell_w + 8, 8 + len(self.files) * self.cell_h))

    def _draw_badge(self, i: int) -> None:
        c = self.canvas
        c.delete(f"badge-{i}")
        kind = self.badge_for(self.files[i])
        if kind is None:
            return
        colour, text = BADGE_COLOURS.get(kind, BADGE_COLOURS["error"])
        k = theme.px(self, 1)
        x1, y0 = 4 + self.cell_w - 4 * k, 4 + i * self.cell_h + 4 * k
        label = c.create_text(x1 - 4 * k, y0 + 2 * k, text=text, anchor="ne", fill="#ffffff",
                              font=("TkDefaultFont", 8, "bold"), tags=(f"badge-{i}", "badge", f"badge-kind-{kind}"))
        bx0, by0, bx1, by1 = c.bbox(label)
        rect = c.create_rectangle(bx0 - 4 * k, by0 - 1, bx1 + 3 * k, by1 + 1, fill=colour, outline="",
                                  tags=(f"badge-{i}", "badge"))
        c.tag_lower(rect, label)

    def refresh_badges(self) -> None:
        for i in range(len(self.files)):
            self._draw_badge(i)

    def badge_kind(self, i: int) -> str | None:
        for item in self.canvas.find_withtag(f"badge-{i}"):
            for tag in self.canvas.gettags(item):
                if tag.startswith("badge-kind-"):
                    return tag[len("badge-kind-"):]
        return None

    def select(self, i: int) -> None:
        if not self.files:
            return
        pal = theme.current(self)
        if self.selected is not None:
            self.canvas.itemconfigure(f"cell-{self.selected}", outline=pal.border, width=1)
        self.selected = i
        self.canvas.itemconfigure(f"cell-{i}", outline=pal.accent, width=3)
        total = max(1, len(self.files) * self.cell_h + 8)
        top, bottom = self.canvas.yview()
        y0, y1 = i * self.cell_h / total, ((i + 1) * self.cell_h + 8) / total
        if y0 < top or y1 > bottom:
            self.canvas.yview_moveto(max(0.0, y0 - (bottom - top) / 2 + (y1 - y0) / 2))

    def _scrolled(self) -> None:
        self._pending = False
        self.request_visible()

    def _click(self, e: tk.Event) -> None:
        i = int(self.canvas.canvasy(e.y) - 4) // self.cell_h
        if 0 <= i < len(self.files):
            self.on_select(i)

    def on_theme(self, pal: theme.Palette) -> None:
        if self.files:
            sel = self.selected
            self._draw_cells()
            for i in list(self.loaded):
                self._place(i)
            if sel is not None:
                self.select(sel)

    # ------------------------------------------------------------------ pictures
    MARGIN = 4  # cells made beyond the visible ones, so scrolling finds them ready

    def visible_range(self) -> range:
        if not self.files:
            return range(0)
        total = len(self.files) * self.cell_h + 8
        top, bottom = self.canvas.yview()
        first = int(top * total) // self.cell_h
        last = int(bottom * total) // self.cell_h
        if bottom <= top:  # not laid out yet: assume one screen
            last = first + 8
        return range(max(0, first - self.MARGIN), min(len(self.files), last + 1 + self.MARGIN))

    def request_visible(self) -> None:
        """Make the pictures of the visible cells (and a few beyond): lazy, on the worker,
        nearest to the selected film first. A newer request makes the older one stale."""
        wanted = [i for i in self.visible_range() if i not in self.loaded and i not in self.failed]
        if self.selected is not None and self.selected not in self.loaded and self.selected not in wanted:
            wanted.append(self.selected)
        if not wanted:
            return
        start = self.selected or 0
        files, cache = list(self.files), self.cache
        order = sorted(wanted, key=lambda i: (abs(i - start), i))

        def job(post: Callable[[Any], None]) -> int:
            for i in order:
                try:
                    post((i, cache.get(files[i])))
                except Exception:  # noqa: BLE001 - an unreadable file keeps its placeholder, marked
                    post((i, None))
                time.sleep(0.01)  # let the Tk thread have the GIL between films (decoding holds it)
            return len(order)

        self.tasks.submit("thumbs", job, lambda n: None, lambda exc: None, on_message=self._arrived)

    def _start_worker(self, start: int) -> None:
        self.failed.clear()
        if not self.files:
            self.tasks.invalidate("thumbs")
            return
        self.after_idle(self.request_visible)

    def _arrived(self, message: tuple[int, Any]) -> None:
        i, arr = message
        if i >= len(self.files):
            return
        if arr is None:
            self.failed.add(i)
            self.canvas.itemconfigure(f"placeholder-{i}", text="unreadable")
            return
        from PIL import Image, ImageTk

        self.photos[i] = ImageTk.PhotoImage(Image.fromarray(arr), master=self.canvas)
        self.loaded.add(i)
        self._place(i)

    def _place(self, i: int) -> None:
        c = self.canvas
        c.delete(f"thumb-{i}", f"placeholder-{i}")
        x0, y0 = 4, 4 + i * self.cell_h
        c.create_image(x0 + self.cell_w / 2, y0 + 4 + self.thumb / 2, image=self.photos[i], tags=(f"thumb-{i}",))
        c.tag_raise(f"badge-{i}")
