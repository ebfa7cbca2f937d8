"""The compare view: a second film canvas beside the main one, with its own
:class:`~xrayviewer.gui.session.ViewerSession`, linked to the main view: zoom, pan,
rotation, flips, window and inversion follow whichever side the user moves.

Two uses: the open film beside its previous analysis from the history (the recorded result
as a caption on the film), or any two films side by side."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..imaging import load_image
from . import annotate
from .layout import ZOOM_STEP
from .session import ViewerSession, error_text


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
