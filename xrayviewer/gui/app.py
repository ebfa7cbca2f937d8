"""The main viewer window.

Everything slow (decoding a 4k JPEG 2000, later: analysis) runs through
:class:`BackgroundTasks`; Tk is touched only on the Tk thread. View maths live in
:mod:`xrayviewer.rendering` and are tested without Tk.
"""

from __future__ import annotations

import logging
import os
import time
import tkinter as tk
from pathlib import Path
from tkinter import filedialog, messagebox, ttk
from typing import Any

import numpy as np

from .. import RESEARCH_NOTICE, __version__
from ..errors import XRayViewerError
from ..imaging import XRayImage, load_image
from ..imaging.types import WindowPreset
from ..imaging.windowing import apply_window, to_uint8
from ..fsutil import atomic_write_bytes
from ..inference.control import AnalysisCancelled, CancelToken
from ..inference.result import AnalysisResult
from ..rendering import ViewState, measure, render_view, wl_from_drag
from ..rendering.overlay import OverlayOptions, blend, compose_overlay, encode_png, hex_to_rgb, view_layer
from ..settings import Settings
from . import dialogs
from .results_panel import ResultsPanel
from .worker import BackgroundTasks

log = logging.getLogger(__name__)

FILETYPES = [
    ("X-ray images", "*.dcm *.DCM *.dicom *.png *.jpg *.jpeg *.tif *.tiff *.bmp"),
    ("DICOM", "*.dcm *.DCM *.dicom"),
    ("All files", "*"),
]
ZOOM_STEP = 1.25
PANEL_WIDTH = 300


def list_images(folder: Path) -> list[Path]:
    """Files in ``folder`` (not recursive) whose content is an image: the batch engine's rule.

    Our own outputs are listed too: this list is for looking at files (an overlay PNG is
    worth viewing); only a batch leaves them out."""
    from ..batch import discover

    return [item.path for item in discover([folder], skip_own_outputs=False).items]


class ViewerApp:
    """Main window: toolbar, file list, canvas, info panel, status bar."""

    def __init__(self, root: tk.Tk, settings: Settings, *, settings_path: Path | None = None,
                 analyzer: Any | None = None, load_models: bool = True) -> None:
        self.root = root
        self.settings = settings
        self.settings_path = settings_path
        self.callback_errors: list[BaseException] = []
        root.report_callback_exception = self._on_tk_error
        root.title(f"xrayviewer {__version__}")
        root.geometry("1280x820")
        root.minsize(800, 500)

        self.tasks = BackgroundTasks(root)
        self.image: XRayImage | None = None
        self.path: Path | None = None
        self.state: ViewState | None = None
        self.window: WindowPreset | None = None
        self.user_invert = False
        self.rulers: list[tuple[tuple[float, float], tuple[float, float]]] = []
        self.ruler_mode = False
        self.folder_files: list[Path] = []
        self._values_f32: np.ndarray | None = None
        self._warp_key: Any = None
        self._warped: np.ndarray | None = None
        self._inside: np.ndarray | None = None
        self._photo: Any = None
        self._drag: dict[str, Any] = {}
        self._redraw_pending = False
        self.last_render_ms = 0.0
        # analysis state
        self.analyzer = analyzer
        self.analysis: AnalysisResult | None = None
        self.analysis_error: str | None = None
        self.models_state = "not loaded"
        self._cancel: CancelToken | None = None
        self._progress = _ProgressBox()
        self._warped_layer: np.ndarray | None = None
        self._warped_layer_key: Any = None
        self.history: Any = None
        self.history_id: int | None = None
        self._analyze_when_loaded: Path | None = None

        self._build_menus()
        self._build_layout()
        self._bind_keys()
        self._enable_drop()
        self.set_status("Open a DICOM, PNG, JPEG or TIFF file (Ctrl+O), or drop one here.")
        if load_models:
            root.after(200, self.start_model_loading)

    # ------------------------------------------------------------------ layout
    def _build_menus(self) -> None:
        m = tk.Menu(self.root)
        self.root.configure(menu=m)
        file_menu = tk.Menu(m, tearoff=False)
        file_menu.add_command(label="Open...", accelerator="Ctrl+O", command=self.ask_open)
        file_menu.add_command(label="Open folder...", accelerator="Ctrl+Shift+O", command=self.ask_open_folder)
        self.recent_menu = tk.Menu(file_menu, tearoff=False)
        file_menu.add_cascade(label="Open recent", menu=self.recent_menu)
        file_menu.add_separator()
        file_menu.add_command(label="Export overlay PNG...", accelerator="Ctrl+E", command=self.ask_export_png)
        file_menu.add_command(label="Export PDF report...", accelerator="Ctrl+P", command=self.ask_export_pdf)
        file_menu.add_command(label="Copy overlay to clipboard", command=self.copy_to_clipboard)
        file_menu.add_command(label="History...", accelerator="Ctrl+H", command=self.show_history)
        file_menu.add_command(label="Settings...", accelerator="Ctrl+,", command=self.show_settings)
        file_menu.add_separator()
        file_menu.add_command(label="Close image", command=self.close_image)
        file_menu.add_command(label="Quit", accelerator="Ctrl+Q", command=self.quit)
        m.add_cascade(label="File", menu=file_menu)

        view = tk.Menu(m, tearoff=False)
        view.add_command(label="Fit to window", accelerator="F", command=self.fit)
        view.add_command(label="Actual size", accelerator="1", command=self.one_to_one)
        view.add_command(label="Zoom in", accelerator="+", command=lambda: self.zoom(ZOOM_STEP))
        view.add_command(label="Zoom out", accelerator="-", command=lambda: self.zoom(1 / ZOOM_STEP))
        view.add_separator()
        view.add_command(label="Rotate clockwise", accelerator="R", command=lambda: self.rotate(1))
        view.add_command(label="Rotate counter-clockwise", accelerator="Shift+R", command=lambda: self.rotate(-1))
        view.add_command(label="Flip horizontal", accelerator="H", command=self.flip_h)
        view.add_command(label="Flip vertical", accelerator="V", command=self.flip_v)
        view.add_command(label="Invert", accelerator="I", command=self.toggle_invert)
        view.add_separator()
        view.add_command(label="Reset view", accelerator="Esc", command=self.reset_view)
        m.add_cascade(label="View", menu=view)

        analysis = tk.Menu(m, tearoff=False)
        analysis.add_command(label="Analyze", accelerator="A / Ctrl+Enter", command=self.analyze)
        analysis.add_command(label="Cancel analysis", accelerator="Ctrl+.", command=self.cancel_analysis)
        analysis.add_separator()
        analysis.add_command(label="Batch...", accelerator="Ctrl+B", command=self.show_batch)
        m.add_cascade(label="Analysis", menu=analysis)

        self.window_menu = tk.Menu(m, tearoff=False)
        m.add_cascade(label="Window", menu=self.window_menu)

        tools = tk.Menu(m, tearoff=False)
        tools.add_command(label="Ruler mode", accelerator="M", command=self.toggle_ruler)
        tools.add_command(label="Clear rulers", accelerator="C", command=self.clear_rulers)
        tools.add_command(label="DICOM tags...", accelerator="T", command=self.show_tags)
        m.add_cascade(label="Tools", menu=tools)

        help_menu = tk.Menu(m, tearoff=False)
        help_menu.add_command(label="Keyboard shortcuts", accelerator="F1", command=lambda: dialogs.show_shortcuts(self.root))
        help_menu.add_command(label="Intended use", command=lambda: messagebox.showinfo("Intended use", dialogs.NOTICE_TEXT, parent=self.root))
        help_menu.add_command(label="About", command=lambda: messagebox.showinfo("About xrayviewer", dialogs.about_text(), parent=self.root))
        m.add_cascade(label="Help", menu=help_menu)
        self._refresh_recent_menu()

    def _build_layout(self) -> None:
        bar = ttk.Frame(self.root, padding=(6, 4))
        bar.pack(side="top", fill="x")
        for text, cmd in (
            ("Open", self.ask_open), ("Folder", self.ask_open_folder), ("Fit", self.fit), ("1:1", self.one_to_one),
            ("Rotate", lambda: self.rotate(1)), ("Flip", self.flip_h), ("Invert", self.toggle_invert),
            ("Tags", self.show_tags),
        ):
            ttk.Button(bar, text=text, command=cmd, width=7).pack(side="left", padx=1)
        self.analyze_button = ttk.Button(bar, text="Analyze", command=self.analyze, width=9)
        self.analyze_button.pack(side="left", padx=(10, 1))
        self.cancel_button = ttk.Button(bar, text="Cancel", command=self.cancel_analysis, width=7, state="disabled")
        self.cancel_button.pack(side="left", padx=1)
        self.progress_bar = ttk.Progressbar(bar, length=120, mode="determinate", maximum=1.0)
        self.progress_bar.pack(side="left", padx=4)
        self.ruler_var = tk.BooleanVar(value=False)
        ttk.Checkbutton(bar, text="Ruler", variable=self.ruler_var, command=self._ruler_from_var).pack(side="left", padx=6)
        ttk.Label(bar, text="Window:").pack(side="left", padx=(12, 2))
        self.window_var = tk.StringVar()
        self.window_box = ttk.Combobox(bar, textvariable=self.window_var, state="readonly", width=30)
        self.window_box.pack(side="left")
        self.window_box.bind("<<ComboboxSelected>>", lambda e: self.select_window(self.window_var.get()))

        status = ttk.Frame(self.root, padding=(6, 2))
        status.pack(side="bottom", fill="x")
        self.status_var = tk.StringVar()
        self.pixel_var = tk.StringVar()
        self.zoom_var = tk.StringVar()
        ttk.Label(status, textvariable=self.status_var, anchor="w").pack(side="left", fill="x", expand=True)
        ttk.Label(status, textvariable=self.pixel_var, anchor="e", width=44).pack(side="right")
        ttk.Label(status, textvariable=self.zoom_var, anchor="e", width=10).pack(side="right")
        self.models_var = tk.StringVar(value="Models: not loaded")
        ttk.Label(status, textvariable=self.models_var, anchor="e").pack(side="right", padx=8)

        body = ttk.PanedWindow(self.root, orient="horizontal")
        body.pack(fill="both", expand=True)
        self.list_frame = ttk.Frame(body, width=200)
        self.file_list = tk.Listbox(self.list_frame, activestyle="dotbox", exportselection=False)
        self.file_list.pack(fill="both", expand=True)
        self.file_list.bind("<<ListboxSelect>>", self._on_list_select)
        self.canvas = tk.Canvas(body, background="#101010", highlightthickness=0, cursor="crosshair")
        self.panel = ttk.Frame(body, width=PANEL_WIDTH, padding=8)
        body.add(self.list_frame, weight=0)
        body.add(self.canvas, weight=1)
        body.add(self.panel, weight=0)
        self.body = body
        body.forget(self.list_frame)  # shown when a folder is opened
        self._list_visible = False

        ttk.Label(self.panel, text="Image", font=("TkDefaultFont", 11, "bold")).pack(anchor="w")
        self.info_text = tk.Text(self.panel, width=38, height=10, wrap="word", relief="flat",
                                 background=self.root.cget("background"), font=("TkDefaultFont", 9))
        self.info_text.pack(fill="x")
        self.info_text.tag_configure("key", foreground="#555555")
        self.info_text.tag_configure("warn", foreground="#b36b00")
        self.info_text.tag_configure("error", foreground="#c00000")
        self.info_text.configure(state="disabled")
        ttk.Separator(self.panel).pack(fill="x", pady=6)
        self.results = ResultsPanel(self.panel, width=PANEL_WIDTH - 16)
        self.results.pack(fill="x")
        ov = ttk.LabelFrame(self.panel, text="Overlays", padding=4)
        ov.pack(fill="x", pady=6)
        self.show_lungs = tk.BooleanVar(value=True)
        self.show_opacity = tk.BooleanVar(value=True)
        self.show_boxes = tk.BooleanVar(value=True)
        self.show_heatmap = tk.BooleanVar(value=False)
        for i, (text, var) in enumerate((("Lung fields", self.show_lungs), ("Opacity", self.show_opacity),
                                         ("Opacity boxes", self.show_boxes), ("Heatmap", self.show_heatmap))):
            ttk.Checkbutton(ov, text=text, variable=var, command=self._overlay_changed).grid(row=i // 2, column=i % 2,
                                                                                             sticky="w")
        ttk.Label(ov, text="Opacity:").grid(row=2, column=0, sticky="w")
        self.alpha_var = tk.DoubleVar(value=self.settings.overlay_alpha)
        ttk.Scale(ov, from_=0.05, to=1.0, variable=self.alpha_var, command=lambda v: self._overlay_changed()).grid(
            row=2, column=1, sticky="ew")
        ttk.Label(self.panel, text=RESEARCH_NOTICE, wraplength=PANEL_WIDTH - 20, foreground="#a00000",
                  justify="left").pack(anchor="w", side="bottom")

        self.canvas.bind("<Configure>", lambda e: self._on_resize(e.width, e.height))
        self.canvas.bind("<ButtonPress-1>", self._left_down)
        self.canvas.bind("<B1-Motion>", self._left_drag)
        self.canvas.bind("<ButtonRelease-1>", self._left_up)
        self.canvas.bind("<ButtonPress-3>", self._right_down)
        self.canvas.bind("<B3-Motion>", self._right_drag)
        self.canvas.bind("<Motion>", self._motion)
        self.canvas.bind("<MouseWheel>", self._wheel)
        self.canvas.bind("<Button-4>", lambda e: self._wheel_at(e.x, e.y, ZOOM_STEP))
        self.canvas.bind("<Button-5>", lambda e: self._wheel_at(e.x, e.y, 1 / ZOOM_STEP))

    def _bind_keys(self) -> None:
        r = self.root
        r.bind("<Control-o>", lambda e: self.ask_open())
        r.bind("<Control-O>", lambda e: self.ask_open_folder())
        r.bind("<Control-q>", lambda e: self.quit())
        r.bind("<Control-e>", lambda e: self.ask_export_png())
        r.bind("<Control-p>", lambda e: self.ask_export_pdf())
        r.bind("<Control-h>", lambda e: self.show_history())
        r.bind("<Control-b>", lambda e: self.show_batch())
        r.bind("<Control-comma>", lambda e: self.show_settings())
        r.bind("<Control-Return>", lambda e: self.analyze())
        r.bind("<Control-period>", lambda e: self.cancel_analysis())
        plain = {
            "f": self.fit, "1": self.one_to_one, "plus": lambda: self.zoom(ZOOM_STEP), "equal": lambda: self.zoom(ZOOM_STEP),
            "minus": lambda: self.zoom(1 / ZOOM_STEP), "r": lambda: self.rotate(1), "R": lambda: self.rotate(-1),
            "h": self.flip_h, "v": self.flip_v, "i": self.toggle_invert, "w": self.next_window, "m": self.toggle_ruler,
            "c": self.clear_rulers, "t": self.show_tags, "Escape": self.reset_view, "F1": lambda: dialogs.show_shortcuts(self.root),
            "Up": lambda: self.step_file(-1), "Down": lambda: self.step_file(1), "Prior": lambda: self.step_file(-1),
            "Next": lambda: self.step_file(1), "a": self.analyze, "l": lambda: self._toggle(self.show_lungs),
            "o": lambda: self._toggle(self.show_opacity), "b": lambda: self._toggle(self.show_boxes),
            "g": lambda: self._toggle(self.show_heatmap), "KP_Add": lambda: self.zoom(ZOOM_STEP), "KP_Subtract": lambda: self.zoom(1 / ZOOM_STEP),
        }
        for key, fn in plain.items():
            r.bind(f"<KeyPress-{key}>", lambda e, fn=fn: self._key(e, fn))

    def _key(self, event: tk.Event, fn: Any) -> str | None:
        # Do not steal keys typed into entries/comboboxes.
        if isinstance(event.widget, (tk.Entry, ttk.Entry, ttk.Combobox, tk.Text)) and event.widget is not self.info_text:
            return None
        fn()
        return "break"

    def _enable_drop(self) -> None:
        if not hasattr(self.root, "drop_target_register"):
            return
        try:
            from tkinterdnd2 import DND_FILES

            self.canvas.drop_target_register(DND_FILES)
            self.canvas.dnd_bind("<<Drop>>", self._on_drop)
        except Exception as exc:  # tkdnd missing for this platform: keep the other ways to open
            log.info("drag and drop unavailable: %s", exc)

    def _on_drop(self, event: Any) -> str:
        paths = [Path(p) for p in self.root.tk.splitlist(event.data)]
        if paths:
            self.open_any(paths[0])
        return "copy"

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
        self.file_list.delete(0, "end")
        for f in files:
            self.file_list.insert("end", f.name)
        if not self._list_visible:
            self.body.insert(0, self.list_frame, weight=0)
            self._list_visible = True
        if not files:
            self.set_status(f"{folder}: no readable images in this folder")
            return
        self.file_list.selection_set(0)
        self.open_path(files[0])

    def open_path(self, path: Path) -> None:
        self.set_status(f"Loading {path.name} ...")
        self.root.configure(cursor="watch")
        self.tasks.submit(
            "load",
            lambda: load_image(path),
            lambda img: self._on_loaded(path, img),
            lambda exc: self._on_load_error(path, exc),
        )

    def _on_loaded(self, path: Path, img: XRayImage) -> None:
        self.root.configure(cursor="")
        self._forget_analysis()
        self.image = img
        self.path = path
        self._values_f32 = np.ascontiguousarray(img.values, dtype=np.float32)
        self._warp_key = None
        self.rulers = []
        self.user_invert = False
        self.window = self.default_window_for(img)
        cw, ch = self._canvas_size()
        self.state = ViewState.fitted(img.shape, (cw, ch))
        self.settings.add_recent(path)
        self._save_settings()
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
        if isinstance(exc, XRayViewerError):
            msg = exc.message
        else:
            log.error("unexpected error while opening %s", path, exc_info=exc)
            msg = f"internal error ({type(exc).__name__}: {exc}); see the log"
        self.set_status(f"Could not open {path.name}: {msg}")
        self._write_info([("Could not open", ""), (str(path), ""), (msg, "error")])

    def close_image(self) -> None:
        self.tasks.invalidate("load")
        self._forget_analysis()
        self.image = None
        self.state = None
        self._photo = None
        self.canvas.delete("all")
        self._write_info([])
        self.root.title(f"xrayviewer {__version__}")

    def step_file(self, delta: int) -> None:
        if not self.folder_files:
            return
        sel = self.file_list.curselection()
        i = (sel[0] if sel else 0) + delta
        i = max(0, min(len(self.folder_files) - 1, i))
        self.file_list.selection_clear(0, "end")
        self.file_list.selection_set(i)
        self.file_list.see(i)
        self.open_path(self.folder_files[i])

    def _on_list_select(self, _event: Any) -> None:
        sel = self.file_list.curselection()
        if sel and self.folder_files and (self.path is None or self.folder_files[sel[0]] != self.path):
            self.open_path(self.folder_files[sel[0]])

    def _refresh_recent_menu(self) -> None:
        self.recent_menu.delete(0, "end")
        if not self.settings.recent_files:
            self.recent_menu.add_command(label="(none)", state="disabled")
        for p in self.settings.recent_files:
            self.recent_menu.add_command(label=p, command=lambda p=p: self.open_any(Path(p)))

    # ------------------------------------------------------------------ window/level
    def _refresh_windows(self) -> None:
        self.window_menu.delete(0, "end")
        if self.image is None:
            return
        names = [w.describe() for w in self.image.windows]
        self.window_box.configure(values=names)
        for w in self.image.windows:
            self.window_menu.add_command(label=w.describe(), command=lambda w=w: self.set_window(w))
        self.window_menu.add_separator()
        self.window_menu.add_command(label="Next preset", accelerator="W", command=self.next_window)
        self._sync_window_box()

    def _sync_window_box(self) -> None:
        if self.window is not None:
            self.window_var.set(self.window.describe())

    def select_window(self, label: str) -> None:
        if self.image is None:
            return
        for w in self.image.windows:
            if w.describe() == label:
                self.set_window(w)
                return

    def set_window(self, preset: WindowPreset) -> None:
        self.window = preset
        self._sync_window_box()
        self._show_info()
        self.redraw()

    def next_window(self) -> None:
        if self.image is None:
            return
        presets = list(self.image.windows)
        i = presets.index(self.window) + 1 if self.window in presets else 0
        self.set_window(presets[i % len(presets)])

    # ------------------------------------------------------------------ view commands
    def _canvas_size(self) -> tuple[int, int]:
        self.root.update_idletasks()
        return max(self.canvas.winfo_width(), 50), max(self.canvas.winfo_height(), 50)

    def _set_state(self, state: ViewState | None) -> None:
        if state is not None:
            self.state = state
            self.redraw()

    def fit(self) -> None:
        self._set_state(self.state.fit() if self.state else None)

    def one_to_one(self) -> None:
        self._set_state(self.state.one_to_one() if self.state else None)

    def zoom(self, factor: float) -> None:
        if self.state:
            cw, ch = self.state.canvas_size
            self._set_state(self.state.zoom_at(factor, cw / 2, ch / 2))

    def rotate(self, quarter: int) -> None:
        self._set_state(self.state.rotate(quarter).fit() if self.state else None)

    def flip_h(self) -> None:
        self._set_state(self.state.toggle_flip_h() if self.state else None)

    def flip_v(self) -> None:
        self._set_state(self.state.toggle_flip_v() if self.state else None)

    def toggle_invert(self) -> None:
        self.user_invert = not self.user_invert
        self.redraw()

    def reset_view(self) -> None:
        if self.image is None or self.state is None:
            return
        self.user_invert = False
        self.window = self.default_window_for(self.image)
        self._sync_window_box()
        self.state = ViewState.fitted(self.image.shape, self.state.canvas_size)
        self._show_info()
        self.redraw()

    def toggle_ruler(self) -> None:
        self.ruler_mode = not self.ruler_mode
        self.ruler_var.set(self.ruler_mode)
        self.set_status("Ruler: drag on the image to measure" if self.ruler_mode else "Ruler off")

    def _ruler_from_var(self) -> None:
        self.ruler_mode = bool(self.ruler_var.get())

    def clear_rulers(self) -> None:
        self.rulers = []
        self.redraw()

    def show_tags(self) -> None:
        if self.image is None or self.image.dataset is None:
            self.set_status("DICOM tags: the current image is not a DICOM file")
            return
        dialogs.TagBrowser(self.root, self.image.dataset, self.path.name if self.path else "")

    def quit(self) -> None:
        self.tasks.close()
        self.root.destroy()

    # ------------------------------------------------------------------ mouse
    def _on_resize(self, w: int, h: int) -> None:
        # Tk sends <Configure> whenever the layout is recomputed (e.g. the results panel
        # filling in after an analysis), often with an unchanged size: redrawing then would
        # repeat the redraw that was just done on the Tk thread (measured: a 50 ms gap).
        if self.state is not None and tuple(self.state.canvas_size) != (w, h):
            fitted = abs(self.state.zoom - self.state.fit().zoom) < 1e-9
            self.state = self.state.with_canvas((w, h))
            if fitted:
                self.state = self.state.fit()
            self.schedule_redraw()  # a burst of resize events becomes one redraw

    def _left_down(self, e: tk.Event) -> None:
        self._drag = {"x": e.x, "y": e.y, "start": (e.x, e.y)}
        if self.ruler_mode and self.state:
            p = self.state.screen_to_image(e.x, e.y)
            self.rulers.append((p, p))

    def _left_drag(self, e: tk.Event) -> None:
        if not self.state or not self._drag:
            return
        if self.ruler_mode and self.rulers:
            p1, _ = self.rulers[-1]
            self.rulers[-1] = (p1, self.state.screen_to_image(e.x, e.y))
            self._draw_overlays()
            return
        dx, dy = e.x - self._drag["x"], e.y - self._drag["y"]
        self._drag.update(x=e.x, y=e.y)
        self.state = self.state.pan(dx, dy)
        self.schedule_redraw()

    def _left_up(self, e: tk.Event) -> None:
        if self.ruler_mode and self.rulers:
            p1, p2 = self.rulers[-1]
            if np.hypot(p2[0] - p1[0], p2[1] - p1[1]) * (self.state.zoom if self.state else 1) < 3:
                self.rulers.pop()  # a click, not a measurement
            else:
                self.set_status(f"Measured {self._measure_label(p1, p2)}")
            self._draw_overlays()
        self._drag = {}

    def _right_down(self, e: tk.Event) -> None:
        if self.image is None or self.window is None:
            return
        w = self.window
        if w.kind == "lut":  # start from the full range when leaving a VOI LUT
            w = next(p for p in self.image.windows if p.kind == "window")
        self._drag = {"x": e.x, "y": e.y, "c": w.center, "w": w.width}

    def _right_drag(self, e: tk.Event) -> None:
        if self.image is None or "c" not in self._drag:
            return
        vr = float(self._values_f32.max() - self._values_f32.min()) if self._values_f32 is not None else 255.0
        c, w = wl_from_drag(self._drag["c"], self._drag["w"], e.x - self._drag["x"], e.y - self._drag["y"], vr)
        self.window = WindowPreset(name="Custom", center=c, width=w, function="LINEAR", source="user")
        self.window_var.set(self.window.describe())
        self.schedule_redraw()

    def _motion(self, e: tk.Event) -> None:
        if self.image is None or self.state is None:
            return
        rc = self.state.pixel_at(e.x, e.y)
        if rc is None:
            self.pixel_var.set("")
            return
        r, c = rc
        v = self.image.values[r, c]
        text = f"x={c} y={r}  value={v:g}" if np.issubdtype(type(v), np.floating) else f"x={c} y={r}  value={int(v)}"
        sp = self.image.metadata.pixel_spacing
        if sp:
            text += f"  ({c * sp[1]:.1f}, {r * sp[0]:.1f}) mm"
        self.pixel_var.set(text)

    def _wheel(self, e: tk.Event) -> None:
        self._wheel_at(e.x, e.y, ZOOM_STEP if e.delta > 0 else 1 / ZOOM_STEP)

    def _wheel_at(self, x: float, y: float, factor: float) -> None:
        if self.state:
            self.state = self.state.zoom_at(factor, x, y)
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

    def render_current(self) -> np.ndarray | None:
        """The canvas-sized uint8 view for the current state/window/inversion."""
        if self.image is None or self.state is None or self.window is None or self._values_f32 is None:
            return None
        key = self.state
        if key != self._warp_key:
            self._warped = render_view(self._values_f32, self.state)
            ones = np.ones(self.image.shape, np.uint8)
            self._inside = render_view(ones, self.state, nearest=True) > 0
            self._warp_key = key
        unit = apply_window(self._warped, self.window, dataset=self.image.dataset)
        if self.image.invert:
            unit = 1.0 - unit
        if self.user_invert:
            unit = 1.0 - unit
        out = to_uint8(unit)
        out[~self._inside] = 16
        layer = self._view_layer()
        if layer is not None:
            return blend(out, layer)
        return out

    def redraw(self) -> None:
        t0 = time.perf_counter()
        self.canvas.delete("all")
        view = self.render_current()
        if view is None:
            self.zoom_var.set("")
            return
        from PIL import Image, ImageTk

        self._photo = ImageTk.PhotoImage(Image.fromarray(view), master=self.root)
        self.canvas.create_image(0, 0, image=self._photo, anchor="nw", tags=("image",))
        self._draw_overlays()
        self.zoom_var.set(f"{self.state.zoom * 100:.0f}%")
        self.last_render_ms = (time.perf_counter() - t0) * 1000

    def _measure_label(self, p1: tuple[float, float], p2: tuple[float, float]) -> str:
        meta = self.image.metadata if self.image else None
        return measure(p1, p2, meta.pixel_spacing if meta else None, meta.spacing_source if meta else None).label()

    def _draw_overlays(self) -> None:
        self.canvas.delete("ruler")
        if self.state is None:
            return
        for p1, p2 in self.rulers:
            a = self.state.image_to_screen(*p1)
            b = self.state.image_to_screen(*p2)
            self.canvas.create_line(*a, *b, fill="#ffd400", width=2, tags=("ruler",))
            for x, y in (a, b):
                self.canvas.create_oval(x - 3, y - 3, x + 3, y + 3, outline="#ffd400", tags=("ruler",))
            label = self._measure_label(p1, p2)
            self.canvas.create_text(b[0] + 8, b[1] - 8, text=label, fill="#ffd400", anchor="sw",
                                    font=("TkDefaultFont", 10, "bold"), tags=("ruler",))

    # ------------------------------------------------------------------ analysis
    def _get_analyzer(self) -> Any:
        if self.analyzer is None:
            from ..inference.analyzer import Analyzer

            self.analyzer = Analyzer(device=self.settings.device)
        return self.analyzer

    def start_model_loading(self) -> None:
        """Load TensorFlow and the models in the background; the window is already up."""
        try:
            analyzer = self._get_analyzer()
        except Exception as exc:  # a broken install must not keep the viewer from opening
            self._models_failed(exc)
            return
        self.models_state = "loading"
        self.models_var.set("Models: loading...")
        self.tasks.submit("models", lambda: (analyzer.load(), analyzer.device)[1], self._models_ready,
                          self._models_failed)

    def _models_ready(self, device: Any) -> None:
        self.models_state = "ready"
        self.models_var.set(f"Models: ready ({device or 'cpu'})")

    def _models_failed(self, exc: BaseException) -> None:
        self.models_state = "failed"
        msg = exc.message if isinstance(exc, XRayViewerError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, XRayViewerError):
            log.error("model loading failed", exc_info=exc)
        self.models_var.set("Models: unavailable")
        self.analysis_error = msg
        self.results.show_message(f"Analysis unavailable: {msg}. Viewing still works.", "#b00020")
        self.analyze_button.configure(state="disabled")

    def analyze(self) -> None:
        if self.image is None:
            self.set_status("Open an image first")
            return
        if self.models_state == "failed":
            self.set_status(f"Analysis unavailable: {self.analysis_error}")
            return
        self.cancel_analysis(quiet=True)
        analyzer, image = self._get_analyzer(), self.image
        token = CancelToken()
        self._cancel = token
        progress = self._progress
        progress.set("Starting", 0.0)
        self.analysis = None
        self.results.show_message("Analysing...")
        self.cancel_button.configure(state="normal")
        self.tasks.submit("analyze", lambda: analyzer.analyze(image, progress=progress.set, cancel=token),
                          self._on_analysis, self._on_analysis_error)
        self._poll_progress()

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

    def _poll_progress(self) -> None:
        if not self.tasks.busy("analyze"):
            return
        stage, frac = self._progress.get()
        self.progress_bar.configure(value=frac)
        if stage:
            self.set_status(f"Analysing: {stage}...")
        self.root.after(100, self._poll_progress)

    def _on_analysis(self, result: AnalysisResult) -> None:
        self.cancel_button.configure(state="disabled")
        self.progress_bar.configure(value=1.0)
        self.analysis = result
        self.results.show(result)
        self._remember(result)
        if result.gate.accepted:
            sev = f", severity {result.severity}" if result.severity else ""
            self.set_status(f"Analysed in {result.total_seconds:.2f} s: highest score {result.predicted_class}{sev}")
        else:
            self.set_status(f"Not scored: {result.gate.reason}")
        self.redraw()

    def _on_analysis_error(self, exc: BaseException) -> None:
        self.cancel_button.configure(state="disabled")
        self.progress_bar.configure(value=0)
        if isinstance(exc, AnalysisCancelled):
            self.results.show_message("Analysis cancelled.")
            return
        msg = exc.message if isinstance(exc, XRayViewerError) else f"internal error ({type(exc).__name__}: {exc})"
        if not isinstance(exc, XRayViewerError):
            log.error("analysis failed", exc_info=exc)
        self.results.show_message(f"Analysis failed: {msg}", "#b00020")
        self.set_status(f"Analysis failed: {msg}")

    def _history(self) -> Any:
        if self.history is None:
            from ..history import History

            self.history = History()
            if self.history.recovered_from:
                messagebox.showwarning("History", f"The history database was damaged. It was kept as "
                                       f"{self.history.recovered_from} and a new one was started.", parent=self.root)
        return self.history

    def _remember(self, result: AnalysisResult) -> None:
        try:
            self.history_id = self._history().record(result.to_record(str(self.path or result.source)), origin="gui")
        except Exception as exc:  # recording must never break the viewer
            log.warning("could not record the analysis in the history: %s", exc)
            self.history_id = None

    def show_settings(self) -> Any:
        from .settings_dialog import SettingsDialog

        return SettingsDialog(self.root, self.settings, on_apply=self._settings_changed)

    def _settings_changed(self) -> None:
        self._save_settings()
        if self.analyzer is not None and getattr(self.analyzer, "device_preference", None) not in (
                None, self.settings.device) and not getattr(self.analyzer, "loaded", False):
            self.analyzer.device_preference = self.settings.device
        self._warped_layer_key = None
        self.redraw()
        self.set_status("Settings saved" + (" (the device applies after a restart)" if self.models_state == "ready"
                                            else ""))

    def default_window_for(self, img: XRayImage) -> WindowPreset:
        """The image's window according to the user's default-window setting."""
        choice = self.settings.default_window
        if choice == "auto":
            return next((w for w in img.windows if w.name.startswith("Auto")), img.default_window)
        if choice == "full":
            return next((w for w in img.windows if w.name.startswith("Full")), img.default_window)
        return img.default_window

    def show_batch(self, folder: Path | None = None) -> Any:
        from .batch_dialog import BatchDialog

        def remember(row: dict) -> None:
            try:
                self._history().record(row, origin="batch")
            except Exception as exc:
                log.warning("could not record in history: %s", exc)

        start = folder or (self.folder_files[0].parent if self.folder_files else None)
        return BatchDialog(self.root, self._get_analyzer, self.settings, on_open=self.open_and_analyze,
                           on_row=remember, folder=start)

    def open_and_analyze(self, path: Path) -> None:
        """Open an image and analyse it as soon as it is loaded (batch table double-click)."""
        self._analyze_when_loaded = path
        self.open_path(path)

    def show_history(self) -> None:
        from .history_window import HistoryWindow

        try:
            HistoryWindow(self.root, self._history(), on_open=lambda p: self.open_any(Path(p)))
        except Exception as exc:
            messagebox.showerror("History", f"The history is unavailable: {exc}", parent=self.root)

    def export_pdf(self, path: Path) -> Path:
        from ..reporting.pdf import ReportItem, write_pdf_report

        if self.image is None or self.analysis is None:
            raise XRayViewerError("analyse the image first: a report needs an analysis")
        out = write_pdf_report([ReportItem(self.analysis, self.image, str(self.path or self.image.source))], path,
                               phi=False)
        if self.history_id is not None:
            try:
                self._history().add_report(self.history_id, str(out))
            except Exception as exc:
                log.warning("could not record the report in the history: %s", exc)
        return out

    def ask_export_pdf(self) -> None:
        if self.analysis is None:
            self.set_status("Analyse the image first (A): a report needs an analysis")
            return
        self._ask_export("Export PDF report", ".report.pdf", ("PDF", "*.pdf"), self.export_pdf, "Report written")

    def _ask_export(self, title: str, suffix: str, filetype: tuple[str, str], export: Any, done: str) -> None:
        """Save dialog + export. The suggested name is de-identified the way batch outputs are
        (the input's name unless it contains the file's own patient data, else its hash)."""
        from ..reporting.deid import safe_stem

        assert self.image is not None
        stem = safe_stem(self.path or "image", self.image, self.image.file_sha256)
        path = filedialog.asksaveasfilename(parent=self.root, title=title, defaultextension=suffix[-4:],
                                            initialfile=f"{stem}{suffix}", filetypes=[filetype])
        if path:
            try:
                export(Path(path))
                self.set_status(f"{done}: {path}")
            except (OSError, XRayViewerError) as exc:
                messagebox.showerror("Export failed", f"{path}: {exc}", parent=self.root)

    def _forget_analysis(self) -> None:
        self.cancel_analysis(quiet=True)
        self.analysis = None
        self._warped_layer_key = None
        self.progress_bar.configure(value=0)
        if self.models_state != "failed":
            self.results.show_message("Not analysed yet. Press Analyze (A).")

    def _toggle(self, var: tk.BooleanVar) -> None:
        var.set(not var.get())
        self._overlay_changed()

    def overlay_options(self) -> OverlayOptions:
        s = self.settings
        return OverlayOptions(
            lungs=self.show_lungs.get(), opacity=self.show_opacity.get(), boxes=self.show_boxes.get(),
            heatmap=self.show_heatmap.get(), alpha=float(self.alpha_var.get()),
            right_color=hex_to_rgb(s.lung_colors[0]), left_color=hex_to_rgb(s.lung_colors[1]),
            opacity_color=hex_to_rgb(s.opacity_color),
        )

    def _overlay_changed(self) -> None:
        self.settings.overlay_alpha = float(self.alpha_var.get())
        self.schedule_redraw()

    def _view_layer(self) -> np.ndarray | None:
        """Overlay at canvas size (cost follows the canvas, not the image: Tk-thread safe)."""
        r = self.analysis
        if r is None or self.state is None:
            return None
        opts = self.overlay_options()
        key = (id(r), opts, self.state)
        if key != self._warped_layer_key:
            self._warped_layer = view_layer(self.state, lung_labels=r.lung_labels, opacity_mask=r.opacity_mask,
                                            regions=r.regions, heatmap=r.heatmap, options=opts)
            self._warped_layer_key = key
        return self._warped_layer

    # ------------------------------------------------------------------ export
    def export_image(self) -> np.ndarray | None:
        """Full-resolution RGB export: current window and inversion, overlays as shown, legend."""
        if self.image is None or self.window is None:
            return None
        grey = self.image.render(self.window, invert=self.user_invert)
        r = self.analysis
        opts = self.overlay_options()
        if r is None:
            return np.dstack([grey] * 3)
        from dataclasses import replace

        return compose_overlay(grey, lung_labels=r.lung_labels, opacity_mask=r.opacity_mask, regions=r.regions,
                               heatmap=r.heatmap, options=replace(opts, legend=True))

    def export_png(self, path: Path) -> Path:
        rgb = self.export_image()
        if rgb is None:
            raise XRayViewerError("nothing to export: open an image first")
        return atomic_write_bytes(path, encode_png(rgb, "overlay" if self.analysis is not None else "view"))

    def ask_export_png(self) -> None:
        if self.image is None:
            self.set_status("Nothing to export: open an image first")
            return
        self._ask_export("Export overlay PNG", ".overlay.png", ("PNG", "*.png"), self.export_png, "Exported")

    def copy_to_clipboard(self) -> None:
        """Tk's clipboard holds text only, portably: save the overlay PNG to a temp file and put
        its path on the clipboard (paste it into a file dialog or a message)."""
        if self.image is None:
            return
        import tempfile

        path = Path(tempfile.gettempdir()) / "xrayviewer-clipboard.png"
        self.export_png(path)
        self.root.clipboard_clear()
        self.root.clipboard_append(str(path))
        self.set_status(f"Overlay saved to {path}; its path is on the clipboard")

    # ------------------------------------------------------------------ info panel
    def _show_info(self) -> None:
        img = self.image
        if img is None:
            self._write_info([])
            return
        md = img.metadata
        rows: list[tuple[str, str]] = [
            (f"{self.path.name if self.path else img.source}\n", "bold"),
            (f"Format: {md.format}\n", ""),
            (f"Size: {md.columns} x {md.rows} px, {md.bits_stored}/{md.bits_allocated} bits\n", ""),
            (f"Photometric: {md.photometric}{' (shown inverted)' if img.invert else ''}\n", ""),
        ]
        if md.modality:
            rows.append((f"Modality: {md.modality}" + (f", view {md.view_position}" if md.view_position else "") + "\n", ""))
        if md.body_part:
            rows.append((f"Body part: {md.body_part}\n", ""))
        if md.transfer_syntax_name:
            rows.append((f"Transfer syntax: {md.transfer_syntax_name}\n", ""))
        if md.pixel_spacing:
            rows.append((f"Pixel spacing: {md.pixel_spacing[0]:g} x {md.pixel_spacing[1]:g} mm ({md.spacing_source})\n", ""))
        else:
            rows.append(("Pixel spacing: unknown (rulers in pixels)\n", ""))
        if self.window is not None:
            rows.append((f"Window: {self.window.describe()}\n", ""))
        for w in img.warnings:
            rows.append((f"Warning: {w}\n", "warn"))
        self._write_info(rows)

    def _write_info(self, rows: list[tuple[str, str]]) -> None:
        self.info_text.configure(state="normal")
        self.info_text.delete("1.0", "end")
        for text, tag in rows:
            self.info_text.insert("end", text if text.endswith("\n") else text + "\n", (tag,) if tag else ())
        self.info_text.configure(state="disabled")

    def info_contents(self) -> str:
        return self.info_text.get("1.0", "end")

    def set_status(self, text: str) -> None:
        self.status_var.set(text)

    # ------------------------------------------------------------------ errors/settings
    def _on_tk_error(self, exc_type: type[BaseException], exc: BaseException, tb: Any) -> None:
        self.callback_errors.append(exc)
        log.error("error in a Tk callback", exc_info=(exc_type, exc, tb))
        self.set_status(f"Internal error: {exc_type.__name__}: {exc} (details in the log)")

    def _save_settings(self) -> None:
        try:
            self.settings.save(self.settings_path)
        except OSError as exc:
            log.warning("could not save settings: %s", exc)


class _ProgressBox:
    """Latest (stage, fraction) written by the worker, read by the Tk thread's poll."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self._value: tuple[str, float] = ("", 0.0)

    def set(self, stage: str, fraction: float) -> None:
        with self._lock:
            self._value = (stage, fraction)

    def get(self) -> tuple[str, float]:
        with self._lock:
            return self._value


def create_root() -> tk.Tk:
    """A Tk root with drag & drop when tkinterdnd2 is installed."""
    try:
        from tkinterdnd2 import TkinterDnD

        return TkinterDnD.Tk()
    except Exception as exc:  # ImportError or a tkdnd binary missing for this platform
        log.info("tkinterdnd2 unavailable (%s); drag & drop disabled", exc)
        return tk.Tk()


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
            app._save_settings()
        for p in paths or []:
            app.open_any(Path(os.path.expanduser(p)))
            break

    root.after(50, first_start)
    root.mainloop()
    return 0
