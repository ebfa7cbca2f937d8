"""Settings: compute device, overlay colours, default window preset, output folder, theme
(dark reading theme or light), interface scale, identifying data on the image, PACS nodes."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from tkinter import colorchooser, filedialog, ttk
from typing import Any

from .theme import SCALES, THEMES

SCALE_LABELS = {v: ("auto" if v == 0 else f"{v * 100:.0f} %") for v in SCALES}
DEVICE_CHOICES = (("auto", "Automatic (GPU when available)"), ("cpu", "CPU"), ("gpu", "GPU"))
WINDOW_CHOICES = (("file", "The file's own window (DICOM), else full range"), ("auto", "Auto (0.5-99.5 %)"),
                  ("full", "Full range"))


class SettingsDialog(tk.Toplevel):
    def __init__(self, master: tk.Misc, settings: Any, on_apply: Callable[[], None]) -> None:
        super().__init__(master)
        self.title("Settings")
        self.resizable(False, False)
        self.settings = settings
        self.on_apply = on_apply
        f = ttk.Frame(self, padding=12)
        f.pack(fill="both", expand=True)
        ttk.Label(f, text="Compute device:").grid(row=0, column=0, sticky="w")
        self.device = tk.StringVar(value=settings.device)
        ttk.Combobox(f, state="readonly", values=[d for d, _ in DEVICE_CHOICES], textvariable=self.device,
                     width=10).grid(row=0, column=1, sticky="w")
        ttk.Label(f, text="(takes effect the next time the models load)").grid(row=0, column=2, sticky="w")
        ttk.Label(f, text="Default window:").grid(row=1, column=0, sticky="w", pady=(6, 0))
        self.window = tk.StringVar(value=settings.default_window)
        ttk.Combobox(f, state="readonly", values=[w for w, _ in WINDOW_CHOICES], textvariable=self.window,
                     width=10).grid(row=1, column=1, sticky="w", pady=(6, 0))
        ttk.Label(f, text="; ".join(f"{k}: {v}" for k, v in WINDOW_CHOICES), wraplength=330).grid(
            row=1, column=2, sticky="w", pady=(6, 0))
        self.colours = {"right": tk.StringVar(value=settings.lung_colors[0]),
                        "left": tk.StringVar(value=settings.lung_colors[1]),
                        "opacity": tk.StringVar(value=settings.opacity_color)}
        for i, (key, label) in enumerate((("right", "Right lung colour:"), ("left", "Left lung colour:"),
                                          ("opacity", "Opacity colour:")), start=2):
            ttk.Label(f, text=label).grid(row=i, column=0, sticky="w", pady=(6, 0))
            swatch = tk.Label(f, width=6, background=self.colours[key].get(), relief="groove")
            swatch.grid(row=i, column=1, sticky="w", pady=(6, 0))
            ttk.Button(f, text="Choose...", command=lambda k=key, s=swatch: self._pick(k, s)).grid(
                row=i, column=2, sticky="w", pady=(6, 0))
        ttk.Label(f, text="Output folder:").grid(row=5, column=0, sticky="w", pady=(6, 0))
        self.output = tk.StringVar(value=settings.output_dir)
        ttk.Entry(f, textvariable=self.output, width=40).grid(row=5, column=1, columnspan=2, sticky="we", pady=(6, 0))
        ttk.Button(f, text="Browse...", command=self._browse).grid(row=5, column=3, pady=(6, 0))
        ttk.Label(f, text="Theme:").grid(row=6, column=0, sticky="w", pady=(6, 0))
        self.theme = tk.StringVar(value=settings.theme)
        ttk.Combobox(f, state="readonly", values=list(THEMES), textvariable=self.theme, width=10).grid(
            row=6, column=1, sticky="w", pady=(6, 0))
        ttk.Label(f, text="dark: the reading theme (dark around the film); light: for bright rooms").grid(
            row=6, column=2, sticky="w", pady=(6, 0))
        ttk.Label(f, text="Interface scale:").grid(row=7, column=0, sticky="w", pady=(6, 0))
        self.scale = tk.StringVar(value=SCALE_LABELS.get(settings.ui_scale, "auto"))
        ttk.Combobox(f, state="readonly", values=list(SCALE_LABELS.values()), textvariable=self.scale,
                     width=10).grid(row=7, column=1, sticky="w", pady=(6, 0))
        ttk.Label(f, text="auto: from the screen's DPI").grid(row=7, column=2, sticky="w", pady=(6, 0))
        self.identifying = tk.BooleanVar(value=bool(settings.show_identifying))
        ttk.Checkbutton(f, text="Show patient and study data on the image corners (identifying)",
                        variable=self.identifying).grid(row=8, column=0, columnspan=3, sticky="w", pady=(6, 0))
        ttk.Label(f, text="PACS nodes:").grid(row=9, column=0, sticky="w", pady=(6, 0))
        ttk.Button(f, text="Edit...", command=self._pacs_nodes).grid(row=9, column=1, sticky="w", pady=(6, 0))
        ttk.Label(f, text="where Open from PACS and Send results to PACS connect").grid(
            row=9, column=2, sticky="w", pady=(6, 0))
        buttons = ttk.Frame(f)
        buttons.grid(row=10, column=0, columnspan=4, sticky="e", pady=(12, 0))
        ttk.Button(buttons, text="Cancel", command=self.destroy).pack(side="right")
        ttk.Button(buttons, text="OK", command=self.apply).pack(side="right", padx=6)
        self.bind("<Escape>", lambda e: self.destroy())

    def _pacs_nodes(self) -> Any:
        from .pacs_dialog import NodesDialog

        return NodesDialog(self)

    def _pick(self, key: str, swatch: tk.Label) -> None:
        _, hex_colour = colorchooser.askcolor(self.colours[key].get(), parent=self, title="Overlay colour")
        if hex_colour:
            self.colours[key].set(hex_colour)
            swatch.configure(background=hex_colour)

    def _browse(self) -> None:
        d = filedialog.askdirectory(parent=self, title="Default output folder")
        if d:
            self.output.set(d)

    def apply(self) -> None:
        s = self.settings
        s.device = self.device.get()
        s.default_window = self.window.get()
        s.lung_colors = (self.colours["right"].get(), self.colours["left"].get())
        s.opacity_color = self.colours["opacity"].get()
        s.output_dir = self.output.get().strip()
        s.theme = self.theme.get() if self.theme.get() in THEMES else "dark"
        s.ui_scale = next((v for v, label in SCALE_LABELS.items() if label == self.scale.get()), 0.0)
        s.show_identifying = bool(self.identifying.get())
        self.on_apply()
        self.destroy()
