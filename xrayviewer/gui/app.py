"""The main viewer window: a thin Tk view over :class:`~xrayviewer.gui.session.ViewerSession`.

The session holds the state and does the work without Tk (tested without a display); this
module builds the widgets, turns events into session calls and shows what they return.
Everything slow (decoding a 4k JPEG 2000, loading the models, analysing, exporting) runs
through the one :class:`~xrayviewer.gui.worker.BackgroundTasks`; Tk is touched only on the
Tk thread.
"""

from __future__ import annotations

import logging
import os
import time
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog, messagebox
from typing import Any

from .. import __version__
from ..errors import XRayViewerError
from ..imaging import XRayImage, load_image
from ..imaging.types import WindowPreset
from ..inference.control import AnalysisCancelled, CancelToken
from ..inference.result import AnalysisResult
from ..settings import Settings
from . import annotate, dialogs, theme
from .compare import CompareActions, CompareView
from .exports import ExportActions
from .layout import ZOOM_STEP, ViewerLayout, create_root
from .session import ViewerSession, error_text, list_images
from .worker import BackgroundTasks

log = logging.getLogger(__name__)

FILETYPES = [
    ("X-ray images", "*.dcm *.DCM *.dicom *.png *.jpg *.jpeg *.tif *.tiff *.bmp"),
    ("DICOM", "*.dcm *.DCM *.dicom"),
    ("All files", "*"),
]
RULER_COLOUR = "#ffd400"


class ViewerApp(ViewerLayout, ExportActions, CompareActions):
    """Main window: toolbar, thumbnails strip, film canvas (and the compare canvas), side panel, status bar."""

    def __init__(self, root: tk.Tk, settings: Settings, *, settings_path: Path | None = None,
                 analyzer: Any | None = None, load_models: bool = True) -> None:
        self.root = root
        self.session = ViewerSession(settings, settings_path=settings_path, analyzer=analyzer)
        self.session.on_history_recovered = self._history_recovered
        self.settings = settings
        self.callback_errors: list[BaseException] = []
        root.report_callback_exception = self._on_tk_error
        root.title(f"xrayviewer {__version__}")
        root.geometry("1280x820")
        root.minsize(800, 500)

        self.tasks = BackgroundTasks(root, on_callback_error=lambda e: self._on_tk_error(type(e), e, e.__traceback__))
        self.folder_files: list[Path] = []
        self._photo: Any = None
        self._drag: dict[str, Any] = {}
        self._redraw_pending = False
        self.last_render_ms = 0.0
        self._cancel: CancelToken | None = None
        self._analyze_when_loaded: Path | None = None

        theme.apply(root, settings.theme, scale=settings.ui_scale)
        self._build_menus()
        self._build_layout()
        theme.apply(root, settings.theme, scale=settings.ui_scale)  # the widgets just made
        self.compare = CompareView(self, self.compare_canvas)
        self._bind_keys()
        self._enable_drop()
        self.set_status("Open a DICOM, PNG, JPEG or TIFF file (Ctrl+O), or drop one here.")
        if load_models:
            root.after(200, self.start_model_loading)

    # ------------------------------------------------------------------ opening
    def ask_open(self) -> None:
        path = filedialog.askopenfilename(parent=self.root, title="Open X-ray image", filetypes=FILETYPES)
        if path:
            self.open_path(Path(path))

    def ask_open_folder(self) -> None:
        folder = filedialog.askdirectory(parent=self.root, title="Open folder of images", mustexist=True)
        if folder:
            self.open_folder(Path(folder))

    def open_any(self, path: Path) -> None:
        if path.is_dir():
            self.open_folder(path)
        else:
            self.open_path(path)

    def open_folder(self, folder: Path) -> None:
        files = list_images(folder)
        self.folder_files = files
        self.session.load_badges(files)
        self.thumbs.set_files(files)
        if not self._list_visible:
            self.body.insert(0, self.list_frame, weight=0)
            self._list_visible = True
        if not files:
            self.set_status(f"{folder}: no readable images in this folder")
            return
        self.open_path(files[0])

    def open_path(self, path: Path) -> None:
        self.set_status(f"Loading {path.name} ...")
        self.root.configure(cursor="watch")
        self.tasks.submit("load", lambda post: load_image(path), lambda img: self._on_loaded(path, img),
                          lambda exc: self._on_load_error(path, exc))

    def _on_loaded(self, path: Path, img: XRayImage) -> None:
        self.root.configure(cursor="")
        self._forget_analysis()
        self.session.open(path, img, self._canvas_size())
        self._refresh_recent_menu()
        self._refresh_windows()
        self._show_info()
        self.root.title(f"{path.name} - xrayviewer {__version__}")
        self.set_status(f"Opened {path}" + (f"  ({'; '.join(img.warnings)})" if img.warnings else ""))
        self.redraw()
        if self._analyze_when_loaded == path:
            self._analyze_when_loaded = None
            self.analyze()

    def _on_load_error(self, path: Path, exc: BaseException) -> None:
        self.root.configure(cursor="")
        msg = error_text(exc, f"opening {path}")
        if not isinstance(exc, XRayViewerError):
            msg += "; see the log"
        self.set_status(f"Could not open {path.name}: {msg}")
        if path in self.folder_files:
            self.session.badges[str(path.resolve())] = "error"
            self.thumbs.refresh_badges()
        self._write_info([("Could not open", ""), (str(path), ""), (msg, "error")])

    def close_image(self) -> None:
        self.tasks.invalidate("load")
        self._forget_analysis()
        self.session.close()
        self._photo = None
        self.canvas.delete("all")
        self._write_info([])
        self.root.title(f"xrayviewer {__version__}")

    def step_file(self, delta: int) -> None:
        if not self.folder_files:
            return
        sel = self.thumbs.selected
        i = max(0, min(len(self.folder_files) - 1, (sel or 0) + delta))
        self.thumbs.select(i)
        self.open_path(self.folder_files[i])

    def _on_thumb_select(self, i: int) -> None:
        self.thumbs.select(i)
        if self.folder_files[i] != self.session.path:
            self.open_path(self.folder_files[i])

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.delete(0, "end")
        if not self.settings.recent_files:
            self.recent_menu.add_command(label="(none)", state="disabled")
        for p in self.settings.recent_files:
            self.recent_menu.add_command(label=p, command=lambda p=p: self.open_any(Path(p)))

    # ------------------------------------------------------------------ window/level
    def _refresh_windows(self) -> None:
        self.window_menu.delete(0, "end")
        image = self.session.image
        if image is None:
            return
        self.window_box.configure(values=self.session.window_labels())
        for w in image.windows:
            self.window_menu.add_command(label=w.describe(), command=lambda w=w: self.set_window(w))
        self.window_menu.add_separator()
        self.window_menu.add_command(label="Next preset", accelerator="W", command=self.next_window)
        self._sync_window_box()

    def _sync_window_box(self) -> None:
        if self.session.window is not None:
            self.window_var.set(self.session.window.describe())

    def _window_changed(self) -> None:
        self._sync_window_box()
        self._show_info()
        self.redraw()

    def select_window(self, label: str) -> None:
        if self.session.select_window(label):
            self._window_changed()

    def set_window(self, preset: WindowPreset) -> None:
        self.session.set_window(preset)
        self._window_changed()

    def next_window(self) -> None:
        if self.session.next_window():
            self._window_changed()

    # ------------------------------------------------------------------ view commands
    def _canvas_size(self) -> tuple[int, int]:
        self.root.update_idletasks()
        return max(self.canvas.winfo_width(), 50), max(self.canvas.winfo_height(), 50)

    def _view(self, change: Callable[[], Any]) -> None:
        change()
        self.redraw()

    def fit(self) -> None:
        self._view(self.session.fit)

    def one_to_one(self) -> None:
        self._view(self.session.one_to_one)

    def zoom(self, factor: float) -> None:
        self._view(lambda: self.session.zoom(factor))

    def rotate(self, quarter: int) -> None:
        self._view(lambda: self.session.rotate(quarter))

    def flip_h(self) -> None:
        self._view(self.session.flip_h)

    def flip_v(self) -> None:
        self._view(self.session.flip_v)

    def toggle_invert(self) -> None:
        self._view(self.session.toggle_invert)

    def reset_view(self) -> None:
        if self.session.reset_view():
            self._window_changed()

    def toggle_ruler(self) -> None:
        self.session.ruler_mode = not self.session.ruler_mode
        self.ruler_var.set(self.session.ruler_mode)
        self.set_status("Ruler: drag on the image to measure" if self.session.ruler_mode else "Ruler off")

    def _ruler_from_var(self) -> None:
        self.session.ruler_mode = bool(self.ruler_var.get())

    def clear_rulers(self) -> None:
        self._view(self.session.rulers.clear)

    def show_tags(self) -> None:
        image, path = self.session.image, self.session.path
        if image is None or image.dataset is None:
            self.set_status("DICOM tags: the current image is not a DICOM file")
            return
        dialogs.TagBrowser(self.root, image.dataset, path.name if path else "")

    def quit(self) -> None:
        self.tasks.close()
        self.root.destroy()

    # ------------------------------------------------------------------ mouse
    def _on_resize(self, w: int, h: int) -> None:
        # Tk sends <Configure> whenever the layout is recomputed (e.g. the results panel
        # filling in after an analysis), often with an unchanged size: redrawing then would
        # repeat the redraw that was just done on the Tk thread (measured: a 50 ms gap).
        if self.session.resize(w, h):
            self.schedule_redraw()  # a burst of resize events becomes one redraw

    def _left_down(self, e: tk.Event) -> None:
        self._drag = {"x": e.x, "y": e.y}
        if self.session.ruler_mode:
            self.session.start_ruler(e.x, e.y)

    def _left_drag(self, e: tk.Event) -> None:
        if self.session.state is None or not self._drag:
            return
        if self.session.ruler_mode and self.session.rulers:
            self.session.drag_ruler(e.x, e.y)
            self._draw_rulers()
            return
        self.session.pan(e.x - self._drag["x"], e.y - self._drag["y"])
        self._drag.update(x=e.x, y=e.y)
        self.schedule_redraw()

    def _left_up(self, e: tk.Event) -> None:
        if self.session.ruler_mode and self.session.rulers:
            label = self.session.end_ruler()
            if label is not None:
                self.set_status(f"Measured {label}")
            self._draw_rulers()
        self._drag = {}

    def _right_down(self, e: tk.Event) -> None:
        start = self.session.window_drag_start()
        if start is not None:
            self._drag = {"x": e.x, "y": e.y, "window": start}

    def _right_drag(self, e: tk.Event) -> None:
        if self.session.image is None or "window" not in self._drag:
            return
        self.session.drag_window(self._drag["window"], e.x - self._drag["x"], e.y - self._drag["y"])
        self._sync_window_box()
        self.schedule_redraw()

    def _motion(self, e: tk.Event) -> None:
        if self.session.image is not None:
            self.pixel_var.set(self.session.pixel_text(e.x, e.y))

    def _wheel(self, e: tk.Event) -> None:
        self._wheel_at(e.x, e.y, ZOOM_STEP if e.delta > 0 else 1 / ZOOM_STEP)

    def _wheel_at(self, x: float, y: float, factor: float) -> None:
        if self.session.state is not None:
            self.session.zoom_at(factor, x, y)
            self.schedule_redraw()

    # ------------------------------------------------------------------ drawing
    def schedule_redraw(self) -> None:
        """Coalesce bursts of mouse events into one redraw per idle cycle."""
        if not self._redraw_pending:
            self._redraw_pending = True
            self.root.after_idle(self._do_scheduled_redraw)

    def _do_scheduled_redraw(self) -> None:
        self._redraw_pending = False
        self.redraw()

    def render_current(self) -> Any:
        """The canvas-sized uint8 view (see :meth:`ViewerSession.render`)."""
        return self.session.render()

    def redraw(self) -> None:
        t0 = time.perf_counter()
        self.canvas.delete("all")
        view = self.session.render()
        if view is None:
            self.zoom_var.set("")
            return
        from PIL import Image, ImageTk

        self._photo = ImageTk.PhotoImage(Image.fromarray(view), master=self.root)
        self.canvas.create_image(0, 0, image=self._photo, anchor="nw", tags=("image",))
        annotate.draw_all(self.canvas, self.session)
        self._draw_rulers()
        self.zoom_var.set(f"{self.session.state.zoom * 100:.0f}%")
        if self.compare.active:
            self.compare.sync()
        self.last_render_ms = (time.perf_counter() - t0) * 1000

    def _draw_rulers(self) -> None:
        self.canvas.delete("ruler")
        for a, b, label in self.session.ruler_marks():
            self.canvas.create_line(*a, *b, fill=RULER_COLOUR, width=2, tags=("ruler",))
            for x, y in (a, b):
                self.canvas.create_oval(x - 3, y - 3, x + 3, y + 3, outline=RULER_COLOUR, tags=("ruler",))
            self.canvas.create_text(b[0] + 8, b[1] - 8, text=label, fill=RULER_COLOUR, anchor="sw",
                                    font=("TkDefaultFont", 10, "bold"), tags=("ruler",))

    # ------------------------------------------------------------------ analysis
    def start_model_loading(self) -> None:
        """Load TensorFlow and the models in the background; the window is already up."""
        try:
            analyzer = self.session.get_analyzer()
        except Exception as exc:  # a broken install must not keep the viewer from opening
            self._models_failed(exc)
            return
        self.session.models_state = "loading"
        self.models_var.set("Models: loading...")
        self.tasks.submit("models", lambda post: (analyzer.load(), analyzer.device)[1], self._models_ready,
                          self._models_failed)

    def _models_ready(self, device: Any) -> None:
        self.session.models_state = "ready"
        self.models_var.set(f"Models: ready ({device or 'cpu'})")

    def _models_failed(self, exc: BaseException) -> None:
        msg = self.session.models_failed(exc)
        self.models_var.set("Models: unavailable")
        self.results.show_message(f"Analysis unavailable: {msg}. Viewing still works.", "error")
        self.analyze_button.configure(state="disabled")

    def analyze(self) -> None:
        if self.session.image is None:
            self.set_status("Open an image first")
            return
        if self.session.models_state == "failed":
            self.set_status(f"Analysis unavailable: {self.session.analysis_error}")
            return
        self.cancel_analysis(quiet=True)
        analyzer, image = self.session.get_analyzer(), self.session.image
        token = CancelToken()
        self._cancel = token
        self.session.forget_analysis()
        self.results.show_message("Analysing...")
        self.cancel_button.configure(state="normal")
        self._on_analysis_progress(("Starting", 0.0))
        self.tasks.submit("analyze",
                          lambda post: analyzer.analyze(image, progress=lambda s, f: post((s, f)), cancel=token),
                          self._on_analysis, self._on_analysis_error, on_message=self._on_analysis_progress)

    def cancel_analysis(self, quiet: bool = False) -> None:
        if self._cancel is not None and not self._cancel.cancelled:
            self._cancel.cancel()
            if not quiet:
                self.set_status("Cancelling analysis...")
        self.tasks.invalidate("analyze")
        self.cancel_button.configure(state="disabled")
        if not quiet:
            self.progress_bar.configure(value=0)
            self.results.show_message("Analysis cancelled.")

    def _on_analysis_progress(self, progress: tuple[str, float]) -> None:
        stage, frac = progress
        self.progress_bar.configure(value=frac)
        if stage:
            self.set_status(f"Analysing: {stage}...")

    def _on_analysis(self, result: AnalysisResult) -> None:
        self.cancel_button.configure(state="disabled")
        self.progress_bar.configure(value=1.0)
        status = self.session.set_analysis(result)
        self.results.show(result)
        if self.session.path in self.folder_files:
            self.thumbs.refresh_badges()
        self.set_status(status)
        self.redraw()

    def _on_analysis_error(self, exc: BaseException) -> None:
        self.cancel_button.configure(state="disabled")
        self.progress_bar.configure(value=0)
        if isinstance(exc, AnalysisCancelled):
            self.results.show_message("Analysis cancelled.")
            return
        msg = error_text(exc, "analysis")
        self.results.show_message(f"Analysis failed: {msg}", "error")
        self.set_status(f"Analysis failed: {msg}")

    def _forget_analysis(self) -> None:
        self.cancel_analysis(quiet=True)
        self.session.forget_analysis()
        self.progress_bar.configure(value=0)
        if self.session.models_state != "failed":
            self.results.show_message("Not analysed yet. Press Analyze (A).")

    def _history_recovered(self, aside: Path) -> None:
        messagebox.showwarning("History", f"The history database was damaged. It was kept as {aside} and a new "
                               "one was started.", parent=self.root)

    def show_settings(self) -> Any:
        from .settings_dialog import SettingsDialog

        return SettingsDialog(self.root, self.settings, on_apply=self._settings_changed)

    def _settings_changed(self) -> None:
        status = self.session.settings_changed()
        theme.apply(self.root, self.settings.theme, scale=self.settings.ui_scale)
        self.identifying_var.set(bool(self.settings.show_identifying))
        self.redraw()
        self.set_status(status)

    def _identifying_changed(self) -> None:
        self.settings.show_identifying = bool(self.identifying_var.get())
        self.session.save_settings()
        self.redraw()

    def show_batch(self, folder: Path | None = None) -> Any:
        from .batch_dialog import BatchDialog

        start = folder or (self.folder_files[0].parent if self.folder_files else None)
        return BatchDialog(self.root, self.session.get_analyzer, self.settings, on_open=self.open_and_analyze,
                           on_row=self._batch_row, folder=start)

    def _batch_row(self, row: dict) -> None:
        self.session.record_batch_row(row)
        if self.folder_files:
            self.thumbs.refresh_badges()

    def open_and_analyze(self, path: Path) -> None:
        """Open an image and analyse it as soon as it is loaded (batch table double-click)."""
        self._analyze_when_loaded = path
        self.open_path(path)

    def show_history(self) -> Any:
        from .history_window import HistoryWindow

        try:
            return HistoryWindow(self.root, self.session.get_history(), on_open=lambda p: self.open_any(Path(p)),
                                 on_compare=self.compare_entry)
        except Exception as exc:
            messagebox.showerror("History", f"The history is unavailable: {exc}", parent=self.root)

    # ------------------------------------------------------------------ overlays
    def _toggle(self, layer: str) -> None:
        var = self.layer_vars[layer]
        var.set(not var.get())
        self._overlay_changed()

    def _overlay_changed(self) -> None:
        for name, var in self.layer_vars.items():
            self.session.layers[name] = bool(var.get())
        self.settings.overlay_alpha = float(self.alpha_var.get())
        self.schedule_redraw()

    # ------------------------------------------------------------------ info panel
    def _show_info(self) -> None:
        self._write_info(self.session.info_rows())

    def _on_tk_error(self, exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        self.callback_errors.append(exc)
        log.error("error in a Tk callback", exc_info=(exc_type, exc, tb))
        self.set_status(f"Internal error: {exc_type.__name__}: {exc} (details in the log)")


def run(paths: list[str] | None = None, *, settings_path: Path | None = None) -> int:
    """Start the viewer; returns the process exit status."""
    try:
        root = create_root()
    except tk.TclError as exc:
        log.error("cannot open a window (%s). Is there a display? Use the command line instead: xrayviewer --help", exc)
        return 2
    try:
        import sys

        base = Path(getattr(sys, "_MEIPASS", Path(__file__).resolve().parents[2]))
        icon = base / "assets" / "icon.png"
        if icon.is_file():
            root.iconphoto(True, tk.PhotoImage(file=str(icon), master=root))
    except tk.TclError:
        pass
    settings = Settings.load(settings_path)
    app = ViewerApp(root, settings, settings_path=settings_path)

    def first_start() -> None:
        if not settings.notice_accepted:
            if not dialogs.ask_notice(root):
                app.quit()
                return
            settings.accept_notice()
            app.session.save_settings()
        for p in paths or []:
            app.open_any(Path(os.path.expanduser(p)))
            break

    root.after(50, first_start)
    root.mainloop()
    return 0
