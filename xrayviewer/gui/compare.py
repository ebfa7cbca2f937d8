"""The compare view: a second film canvas beside the main one, with its own
:class:`~xrayviewer.gui.session.ViewerSession`, linked to the main view: zoom, pan,
rotation, flips, window and inversion follow whichever side the user moves.

Two uses: the open film beside its previous analysis from the history (the recorded result
as a caption on the film), or any two films side by side."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog
from typing import Any

from ..imaging import load_image
from . import annotate
from .layout import ZOOM_STEP
from .session import ViewerSession, error_text


class CompareActions:
    """The compare commands of :class:`~xrayviewer.gui.app.ViewerApp` (a mixin)."""

    root: Any
    session: ViewerSession
    compare: CompareView
    compare_canvas: tk.Canvas
    view_area: Any
    set_status: Callable[[str], None]
    redraw: Callable[[], None]
    schedule_redraw: Callable[[], None]
    _sync_window_box: Callable[[], None]

    def toggle_compare(self) -> None:
        """S: the film beside its previous analysis from the history; again: close."""
        if self.compare.active:
            self.close_compare()
            return
        if self.session.image is None:
            self.set_status("Open a film first: compare shows it beside its previous analysis")
            return
        entry = self.session.previous_analysis()
        if entry is None:
            self.set_status("No previous analysis in the history to compare with; use View > Compare with "
                            "another film")
            return
        self.compare_entry(entry)

    def compare_entry(self, entry: Any) -> None:
        """A history entry beside the open film: its film, its recorded result as the caption."""
        from .readout import record_summary

        if self.session.image is None:
            self.set_status("Open a film first, then compare it with an analysis from the history")
            return
        path = Path(entry.input_path)
        if not path.is_file():
            path = self.session.path
        self.show_compare(path, f"Previous analysis {entry.created_at[:16].replace('T', ' ')}: "
                                f"{record_summary(entry.record)}")

    def ask_compare(self) -> None:
        from .app import FILETYPES

        path = filedialog.askopenfilename(parent=self.root, title="Compare with", filetypes=FILETYPES)
        if path:
            self.show_compare(Path(path))

    def show_compare(self, path: Path, caption: str | None = None) -> None:
        if not self.compare.active:
            self.compare_canvas.grid(row=0, column=1, sticky="nsew", padx=(2, 0))
            self.view_area.columnconfigure(1, weight=1, uniform="films")
            self.compare.active = True
        self.compare.open(path, caption, on_done=self.redraw)

    def close_compare(self) -> None:
        if self.compare.active:
            self.compare.active = False
            self.compare.close()
            self.compare_canvas.grid_remove()
            self.view_area.columnconfigure(1, weight=0, uniform="")
            self.set_status("Compare closed")

    def sync_from_compare(self) -> None:
        """The compare side led a zoom/pan: redraw the main view (which re-syncs the other)."""
        self._sync_window_box()
        self.schedule_redraw()


class CompareView:
    def __init__(self, app: Any, canvas: tk.Canvas) -> None:
        self.app = app
        self.canvas = canvas
        self.session = ViewerSession(app.settings)
        self.session.save_settings = lambda: None  # type: ignore[method-assign]  # not a recent file
        self.active = False
        self._photo: Any = None
        self._drag: dict[str, float] = {}
        canvas.bind("<Configure>", lambda e: self._resized(e.width, e.height))
        canvas.bind("<ButtonPress-1>", lambda e: self._drag.update(x=e.x, y=e.y))
        canvas.bind("<B1-Motion>", self._pan)
        canvas.bind("<ButtonRelease-1>", lambda e: self._drag.clear())
        canvas.bind("<MouseWheel>", lambda e: self._zoom_at(e.x, e.y, ZOOM_STEP if e.delta > 0 else 1 / ZOOM_STEP))
        canvas.bind("<Button-4>", lambda e: self._zoom_at(e.x, e.y, ZOOM_STEP))
        canvas.bind("<Button-5>", lambda e: self._zoom_at(e.x, e.y, 1 / ZOOM_STEP))

    def open(self, path: Path, caption: str | None = None, on_done: Callable[[], None] | None = None) -> None:
        self.app.set_status(f"Compare: loading {path.name} ...")

        def loaded(img: Any) -> None:
            recent = list(self.app.settings.recent_files)  # the compare side is not a recent file
            self.session.open(path, img, self._size())
            self.app.settings.recent_files = recent
            self.session.caption = caption
            self.sync()
            self.app.set_status(f"Comparing with {path.name}" + (f" ({caption})" if caption else "")
                                + ": zoom, pan and window are linked")
            if on_done is not None:
                on_done()

        def failed(exc: BaseException) -> None:
            self.app.set_status(f"Compare: could not open {path.name}: {error_text(exc, 'opening for compare')}")

        self.app.tasks.submit("compare", lambda post: load_image(path), loaded, failed)

    def close(self) -> None:
        self.app.tasks.invalidate("compare")
        self.session.close()
        self._photo = None
        self.canvas.delete("all")

    def _size(self) -> tuple[int, int]:
        self.canvas.update_idletasks()
        return max(self.canvas.winfo_width(), 50), max(self.canvas.winfo_height(), 50)

    def _resized(self, w: int, h: int) -> None:
        if self.session.resize(w, h):
            self.sync()

    def sync(self) -> None:
        """Follow the main view, then redraw."""
        self.session.follow(self.app.session)
        self.redraw()

    def redraw(self) -> None:
        self.canvas.delete("all")
        view = self.session.render()
        if view is None:
            return
        from PIL import Image, ImageTk

        self._photo = ImageTk.PhotoImage(Image.fromarray(view), master=self.canvas)
        self.canvas.create_image(0, 0, image=self._photo, anchor="nw", tags=("image",))
        annotate.draw_all(self.canvas, self.session)

    def _lead(self) -> None:
        """This side was moved: the main view follows it (and redraws this one with it)."""
        if self.app.session.follow(self.session):
            self.app.sync_from_compare()

    def _pan(self, e: tk.Event) -> None:
        if self.session.state is None or not self._drag:
            return
        self.session.pan(e.x - self._drag["x"], e.y - self._drag["y"])
        self._drag.update(x=e.x, y=e.y)
        self._lead()

    def _zoom_at(self, x: float, y: float, factor: float) -> None:
        if self.session.state is not None:
            self.session.zoom_at(factor, x, y)
            self._lead()
