"""The main window's widgets: menus, toolbar, file list, canvas, side panel, status bar and
the keyboard shortcuts. :class:`ViewerLayout` builds them for :class:`~xrayviewer.gui.app.ViewerApp`,
whose methods the commands call; the behaviour lives there and in the session."""

from __future__ import annotations

import logging
import tkinter as tk
from pathlib import Path
from tkinter import messagebox, ttk
from typing import Any

from .. import RESEARCH_NOTICE
from . import dialogs, theme
from .readout import ThumbnailCache, default_cache_dir
from .results_panel import ResultsPanel
from .thumbs import ThumbStrip

log = logging.getLogger(__name__)

ZOOM_STEP = 1.25
PANEL_WIDTH = 330
# The overlay check boxes, in the order of ViewerSession.layers (lungs, opacity, boxes, heatmap).
LAYER_LABELS = ("Lung fields", "Opacity", "Opacity boxes", "Heatmap")
HEATMAP_LABELS = {"classifier": "Top class", "tuberculosis": "Tuberculosis"}  # readout.HEATMAP_SOURCES


class ViewerLayout:
    """Mixin of :class:`~xrayviewer.gui.app.ViewerApp`: the widget tree and its bindings."""

    root: tk.Tk
    session: Any
    settings: Any

    def pacs_dialog(self, name: str) -> Any:
        """Open one of :mod:`.pacs_dialog`'s dialogs (loaded on first use: pynetdicom stays out of start-up)."""
        from . import pacs_dialog

        return getattr(pacs_dialog, name)(self)

    def _build_menus(self) -> None:
        m = tk.Menu(self.root)
        self.root.configure(menu=m)
        file_menu = tk.Menu(m, tearoff=False)
        file_menu.add_command(label="Open...", accelerator="Ctrl+O", command=self.ask_open)
        file_menu.add_command(label="Open folder...", accelerator="Ctrl+Shift+O", command=self.ask_open_folder)
        self.recent_menu = tk.Menu(file_menu, tearoff=False)
        file_menu.add_cascade(label="Open recent", menu=self.recent_menu)
        file_menu.add_command(label="Open from PACS...", command=lambda: self.pacs_dialog("OpenFromPacsDialog"))
        file_menu.add_separator()
        file_menu.add_command(label="Export overlay PNG...", accelerator="Ctrl+E", command=self.ask_export_png)
        file_menu.add_command(label="Export PDF report...", accelerator="Ctrl+P", command=self.ask_export_pdf)
        file_menu.add_command(label="Copy overlay to clipboard", command=self.copy_to_clipboard)
        file_menu.add_command(label="Send results to PACS...", command=lambda: self.pacs_dialog("SendResultsDialog"))
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
        view.add_separator()
        view.add_command(label="Compare with previous analysis", accelerator="S", command=self.toggle_compare)
        view.add_command(label="Compare with another film...", command=self.ask_compare)
        view.add_command(label="Close compare", command=self.close_compare)
        view.add_separator()
        self.identifying_var = tk.BooleanVar(value=bool(self.settings.show_identifying))
        view.add_checkbutton(label="Patient and study data on the image", variable=self.identifying_var,
                             command=self._identifying_changed)
        view.add_command(label="Analysis details", accelerator="D", command=lambda: self.results.toggle_details())
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
        k = theme.px(self.root, 1)
        bar = ttk.Frame(self.root, padding=(6 * k, 4 * k), style="Toolbar.TFrame")
        bar.pack(side="top", fill="x")
        for text, cmd in (
            ("Open", self.ask_open), ("Folder", self.ask_open_folder), ("⤢ Fit", self.fit), ("1:1", self.one_to_one),
            ("⟳ Rotate", lambda: self.rotate(1)), ("⇆ Flip", self.flip_h), ("◐ Invert", self.toggle_invert),
            ("Tags", self.show_tags), ("◫ Compare", self.toggle_compare),
        ):
            ttk.Button(bar, text=text, command=cmd, takefocus=0, style="Tool.TButton").pack(side="left", padx=1)
        self.analyze_button = ttk.Button(bar, text="▶ Analyze", command=self.analyze, style="Accent.TButton",
                                         takefocus=0)
        self.analyze_button.pack(side="left", padx=(10 * k, 1))
        self.cancel_button = ttk.Button(bar, text="■ Cancel", command=self.cancel_analysis, state="disabled",
                                        takefocus=0, style="Tool.TButton")
        self.cancel_button.pack(side="left", padx=1)
        self.progress_bar = ttk.Progressbar(bar, length=110 * k, mode="determinate", maximum=1.0)
        self.progress_bar.pack(side="left", padx=4 * k)
        self.ruler_var = tk.BooleanVar(value=False)
        ttk.Checkbutton(bar, text="Ruler", variable=self.ruler_var, command=self._ruler_from_var,
                        style="Panel.TCheckbutton", takefocus=0).pack(side="left", padx=6 * k)
        self.window_var = tk.StringVar()
        self.window_box = ttk.Combobox(bar, textvariable=self.window_var, state="readonly", width=28)
        self.window_box.pack(side="right")
        ttk.Label(bar, text="Window", style="Muted.TLabel").pack(side="right", padx=(12 * k, 4 * k))
        self.window_box.bind("<<ComboboxSelected>>", lambda e: self.select_window(self.window_var.get()))

        status = ttk.Frame(self.root, padding=(6 * k, 2 * k), style="Toolbar.TFrame")
        status.pack(side="bottom", fill="x")
        self.status_var = tk.StringVar()
        self.pixel_var = tk.StringVar()
        self.zoom_var = tk.StringVar()
        ttk.Label(status, textvariable=self.status_var, anchor="w", style="Status.TLabel").pack(
            side="left", fill="x", expand=True)
        ttk.Label(status, textvariable=self.pixel_var, anchor="e", width=40, style="Status.TLabel").pack(side="right")
        ttk.Label(status, textvariable=self.zoom_var, anchor="e", width=8, style="Status.TLabel").pack(side="right")
        self.models_var = tk.StringVar(value="Models: not loaded")
        ttk.Label(status, textvariable=self.models_var, anchor="e", style="Status.TLabel").pack(side="right", padx=8)

        body = ttk.PanedWindow(self.root, orient="horizontal")
        body.pack(fill="both", expand=True)
        self.list_frame = ThumbStrip(body, self.tasks, on_select=self._on_thumb_select, badge_for=self.session.badge_for,
                                     cache=ThumbnailCache(default_cache_dir()))
        self.thumbs = self.list_frame
        self.view_area = ttk.Frame(body)
        self.view_area.rowconfigure(0, weight=1)
        self.view_area.columnconfigure(0, weight=1, uniform="films")
        self.canvas = tk.Canvas(self.view_area, highlightthickness=0, cursor="crosshair")
        self.canvas.theme_role = "film"
        self.canvas.grid(row=0, column=0, sticky="nsew")
        self.compare_canvas = tk.Canvas(self.view_area, highlightthickness=0, cursor="fleur")
        self.compare_canvas.theme_role = "film"
        self.panel = ttk.Frame(body, width=PANEL_WIDTH * k, padding=10 * k, style="Panel.TFrame")
        body.add(self.list_frame, weight=0)
        body.add(self.view_area, weight=1)
        body.add(self.panel, weight=0)
        self.body = body
        body.forget(self.list_frame)  # shown when a folder is opened
        self._list_visible = False

        # The intended-use notice is packed first: it keeps its place whatever the panel holds.
        ttk.Label(self.panel, text=RESEARCH_NOTICE, wraplength=(PANEL_WIDTH - 20) * k, style="Notice.TLabel",
                  justify="left").pack(anchor="w", side="bottom", pady=(6 * k, 0))
        self.results = ResultsPanel(self.panel, width=(PANEL_WIDTH - 20) * k)
        self.results.pack(fill="x")
        ttk.Separator(self.panel).pack(fill="x", pady=8 * k)
        ov = ttk.Frame(self.panel, style="Panel.TFrame")
        ov.pack(fill="x")
        ttk.Label(ov, text="Overlays", style="Heading.TLabel").grid(row=0, column=0, columnspan=2, sticky="w")
        self.layer_vars = {name: tk.BooleanVar(value=on) for name, on in self.session.layers.items()}
        for i, (text, var) in enumerate(zip(LAYER_LABELS, self.layer_vars.values())):
            ttk.Checkbutton(ov, text=text, variable=var, command=self._overlay_changed, style="Panel.TCheckbutton",
                            takefocus=0).grid(row=1 + i // 2, column=i % 2, sticky="w", pady=1)
        ttk.Label(ov, text="Opacity", style="Muted.TLabel").grid(row=3, column=0, sticky="w")
        self.alpha_var = tk.DoubleVar(value=self.settings.overlay_alpha)
        ttk.Scale(ov, from_=0.05, to=1.0, variable=self.alpha_var, takefocus=0,
                  command=lambda v: self._overlay_changed()).grid(row=3, column=1, sticky="ew")
        # Which heatmap the layer shows (Shift+G switches): the classifier's top class or tuberculosis.
        ttk.Label(ov, text="Heatmap of", style="Muted.TLabel").grid(row=4, column=0, sticky="w")
        self.heatmap_var = tk.StringVar(value=HEATMAP_LABELS[self.session.heatmap_source])
        self.heatmap_box = ttk.Combobox(ov, textvariable=self.heatmap_var, state="readonly", width=16,
                                        values=list(HEATMAP_LABELS.values()), takefocus=0)
        self.heatmap_box.grid(row=4, column=1, sticky="ew", pady=(2, 0))
        self.heatmap_box.bind("<<ComboboxSelected>>", lambda e: self._heatmap_selected())
        ov.columnconfigure(1, weight=1)
        ttk.Separator(self.panel).pack(fill="x", pady=8 * k)
        ttk.Label(self.panel, text="Image", style="Heading.TLabel").pack(anchor="w")
        self.info_text = tk.Text(self.panel, width=38, height=9, wrap="word", relief="flat", borderwidth=0,
                                 highlightthickness=0, font=("TkDefaultFont", 9))
        self.info_text.theme_role = "panel"
        self.info_text.pack(fill="x")
        self.info_text.tag_configure("bold", font=("TkDefaultFont", 9, "bold"))
        self.info_text.configure(state="disabled")

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
            "Next": lambda: self.step_file(1), "a": self.analyze, "l": lambda: self._toggle("lungs"),
            "o": lambda: self._toggle("opacity"), "b": lambda: self._toggle("boxes"),
            "g": lambda: self._toggle("heatmap"), "G": self._next_heatmap, "KP_Add": lambda: self.zoom(ZOOM_STEP),
            "KP_Subtract": lambda: self.zoom(1 / ZOOM_STEP), "s": self.toggle_compare, "d": self.results.toggle_details,
        }
        for key, fn in plain.items():
            r.bind(f"<KeyPress-{key}>", lambda e, fn=fn: self._key(e, fn))

    def _heatmap_selected(self) -> None:
        label = self.heatmap_var.get()
        self.session.set_heatmap_source(next(k for k, v in HEATMAP_LABELS.items() if v == label))
        self.layer_vars["heatmap"].set(True)
        self._overlay_changed()

    def _next_heatmap(self) -> None:
        self.heatmap_var.set(HEATMAP_LABELS[self.session.next_heatmap_source()])
        self.layer_vars["heatmap"].set(True)
        self._overlay_changed()

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


def create_root() -> tk.Tk:
    """A Tk root with drag & drop when tkinterdnd2 is installed."""
    theme.enable_dpi_awareness()
    try:
        from tkinterdnd2 import TkinterDnD

        return TkinterDnD.Tk()
    except Exception as exc:  # ImportError or a tkdnd binary missing for this platform
        log.info("tkinterdnd2 unavailable (%s); drag & drop disabled", exc)
        return tk.Tk()
