"""The viewer's look: a dark reading theme (the default) and a light one, on ttk's "clam"
theme, plus Tk scaling from the screen's DPI (or the user's choice) for crisp text at
150 % and 200 %.

Dark around the film, as reading viewers (Weasis, OHIF, Horos) do: the eye adapts to the
image, not to the chrome. Text keeps WCAG AA contrast on its background in both themes
(``tests/test_gui.py`` checks the ratios). Classic Tk widgets (Text, Listbox, Canvas, Menu)
take their colours from the option database when created and from :func:`apply` when the
theme changes at run time.
"""

from __future__ import annotations

import logging
import sys
import tkinter as tk
from dataclasses import dataclass
from tkinter import font as tkfont
from tkinter import ttk

log = logging.getLogger(__name__)

THEMES = ("dark", "light")
SCALES = (0.0, 1.0, 1.25, 1.5, 2.0)  # 0 = from the screen's DPI


@dataclass(frozen=True)
class Palette:
    name: str
    bg: str  # window chrome
    panel: str  # side panels
    field: str  # entries, lists, text
    fg: str
    muted: str
    border: str
    accent: str
    accent_fg: str
    select: str
    canvas: str  # around the film
    ok: str
    finding: str
    refused_bg: str
    refused_fg: str
    error: str
    warn: str
    notice: str
    hover: str


DARK = Palette("dark", bg="#1b1c1f", panel="#232529", field="#2c2f34", fg="#e3e5e8", muted="#a3a9b1",
               border="#3b3f45", accent="#3d8bfd", accent_fg="#ffffff", select="#2f5d9e", canvas="#000000",
               ok="#5fd38d", finding="#ffb347", refused_bg="#8b1e24", refused_fg="#ffffff", error="#ff7b72",
               warn="#f2c14e", notice="#ff9a8f", hover="#34383e")
LIGHT = Palette("light", bg="#eceef1", panel="#f7f8fa", field="#ffffff", fg="#1d1f23", muted="#555b63",
                border="#c5cad1", accent="#1f6feb", accent_fg="#ffffff", select="#cfe2ff", canvas="#111111",
                ok="#17753d", finding="#a14f00", refused_bg="#b3261e", refused_fg="#ffffff", error="#b3261e",
                warn="#8a5a00", notice="#a3120a", hover="#dfe3e8")
PALETTES = {"dark": DARK, "light": LIGHT}


def palette(name: str) -> Palette:
    return PALETTES.get(name, DARK)


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two #rrggbb colours."""

    def lum(c: str) -> float:
        rgb = [int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4 for v in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted((lum(a), lum(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def enable_dpi_awareness() -> None:
    """Windows renders a DPI-unaware Tk blurry (bitmap-stretched); ask for real pixels
    before the first window exists. Elsewhere Tk already sees the real DPI."""
    if sys.platform == "win32":
        try:
            import ctypes

            ctypes.windll.shcore.SetProcessDpiAwareness(1)
        except Exception as exc:  # noqa: BLE001 - older Windows: stays scaled by the system
            log.info("no per-monitor DPI awareness: %s", exc)


def ui_factor(root: tk.Misc, scale: float = 0.0) -> float:
    """The interface scale (1.0 = 96 DPI): the user's choice, else the screen's DPI."""
    if scale and scale > 0:
        return float(scale)
    try:
        dpi = float(root.winfo_fpixels("1i"))
    except tk.TclError:
        dpi = 96.0
    # Round to the steps desktop environments use, so 144 DPI is exactly 150 %.
    return max(1.0, round(dpi / 96.0 * 4) / 4)


def apply_scaling(root: tk.Misc, factor: float) -> None:
    """Tk's point size follows ``factor``: fonts given in points grow with it."""
    root.tk.call("tk", "scaling", factor * 96.0 / 72.0)
    for name in ("TkDefaultFont", "TkTextFont", "TkMenuFont", "TkHeadingFont", "TkFixedFont", "TkTooltipFont"):
        try:
            f = tkfont.nametofont(name, root=root)
        except tk.TclError:
            continue
        size = int(f.cget("size"))
        if size < 0:  # pixel sizes do not follow tk scaling: make them points
            f.configure(size=max(9, round(-size * 72 / 96)))
        elif size < 10:
            f.configure(size=10)


def apply(root: tk.Misc, name: str = "dark", *, scale: float = 0.0) -> Palette:
    """Apply the theme and scaling to ``root`` and every widget already in it."""
    pal = palette(name)
    factor = ui_factor(root, scale)
    apply_scaling(root, factor)
    root._xrv_palette = pal  # type: ignore[attr-defined]
    root._xrv_factor = factor  # type: ignore[attr-defined]
    style = ttk.Style(root)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    pad = round(4 * factor)
    style.configure(".", background=pal.bg, foreground=pal.fg, fieldbackground=pal.field, bordercolor=pal.border,
                    darkcolor=pal.bg, lightcolor=pal.bg, troughcolor=pal.field, selectbackground=pal.select,
                    selectforeground=pal.fg, insertcolor=pal.fg, focuscolor=pal.accent, arrowcolor=pal.fg)
    style.map(".", foreground=[("disabled", pal.muted)])
    for s, bg in (("TFrame", pal.bg), ("Panel.TFrame", pal.panel), ("Toolbar.TFrame", pal.panel),
                  ("Strip.TFrame", pal.panel)):
        style.configure(s, background=bg)
    style.configure("TLabel", background=pal.bg, foreground=pal.fg)
    for s, fg in (("Panel.TLabel", pal.fg), ("Muted.TLabel", pal.muted), ("Notice.TLabel", pal.notice),
                  ("Ok.TLabel", pal.ok), ("Finding.TLabel", pal.finding), ("Error.TLabel", pal.error)):
        style.configure(s, background=pal.panel, foreground=fg)
    style.configure("Heading.TLabel", background=pal.panel, foreground=pal.fg, font=("TkHeadingFont", 11, "bold"))
    style.configure("Summary.TLabel", background=pal.panel, foreground=pal.fg, font=("TkDefaultFont", 11, "bold"))
    style.configure("SummaryOk.TLabel", background=pal.panel, foreground=pal.ok, font=("TkDefaultFont", 11, "bold"))
    style.configure("SummaryFinding.TLabel", background=pal.panel, foreground=pal.finding,
                    font=("TkDefaultFont", 11, "bold"))
    style.configure("Refusal.TLabel", background=pal.refused_bg, foreground=pal.refused_fg,
                    font=("TkDefaultFont", 11, "bold"), padding=(8, 6))
    style.configure("Status.TLabel", background=pal.panel, foreground=pal.muted)
    style.configure("TButton", background=pal.field, foreground=pal.fg, bordercolor=pal.border, padding=(pad * 2, pad),
                    focusthickness=1, focuscolor=pal.accent)
    style.map("TButton", background=[("disabled", pal.bg), ("pressed", pal.select), ("active", pal.hover)],
              foreground=[("disabled", pal.muted)])
    style.configure("Tool.TButton", width=0, padding=(pad * 2, pad))
    style.configure("Accent.TButton", width=0, padding=(pad * 3, pad), background=pal.accent, foreground=pal.accent_fg, bordercolor=pal.accent)
    style.map("Accent.TButton", background=[("disabled", pal.field), ("pressed", pal.select), ("active", pal.accent)],
              foreground=[("disabled", pal.muted)])
    style.configure("Fold.TButton", background=pal.panel, bordercolor=pal.panel, padding=(0, 2), anchor="w")
    style.map("Fold.TButton", background=[("active", pal.hover)])
    for s in ("TCheckbutton", "TRadiobutton"):
        style.configure(s, background=pal.bg, foreground=pal.fg, indicatorbackground=pal.field,
                        indicatorforeground=pal.fg, upperbordercolor=pal.border, lowerbordercolor=pal.border)
        style.map(s, background=[("active", pal.hover)], indicatorbackground=[("selected", pal.accent)])
        style.configure(f"Panel.{s}", background=pal.panel)
        style.map(f"Panel.{s}", background=[("active", pal.hover)], indicatorbackground=[("selected", pal.accent)])
    style.configure("TLabelframe", background=pal.panel, bordercolor=pal.border)
    style.configure("TLabelframe.Label", background=pal.panel, foreground=pal.muted)
    style.configure("TEntry", fieldbackground=pal.field, foreground=pal.fg)
    style.configure("TCombobox", fieldbackground=pal.field, foreground=pal.fg, background=pal.field)
    style.map("TCombobox", fieldbackground=[("readonly", pal.field)], foreground=[("readonly", pal.fg)],
              selectbackground=[("readonly", pal.field)], selectforeground=[("readonly", pal.fg)])
    style.configure("TProgressbar", background=pal.accent, troughcolor=pal.field, bordercolor=pal.border)
    style.configure("TScale", background=pal.field, troughcolor=pal.bg)
    style.configure("Panel.Horizontal.TScale", background=pal.field, troughcolor=pal.bg)
    style.configure("TPanedwindow", background=pal.border)
    style.configure("Sash", sashthickness=round(4 * factor), gripcount=0, background=pal.border)
    style.configure("Treeview", background=pal.field, fieldbackground=pal.field, foreground=pal.fg,
                    rowheight=round(22 * factor))
    style.map("Treeview", background=[("selected", pal.select)], foreground=[("selected", pal.fg)])
    style.configure("Treeview.Heading", background=pal.panel, foreground=pal.fg)
    style.configure("TSeparator", background=pal.border)
    style.configure("TScrollbar", background=pal.field, troughcolor=pal.bg, bordercolor=pal.border, arrowcolor=pal.muted)
    style.configure("TNotebook", background=pal.bg)
    style.configure("TNotebook.Tab", background=pal.panel, foreground=pal.fg)

    # Classic widgets: the option database for new ones, a walk for the existing ones.
    opts = {"*Background": pal.bg, "*Foreground": pal.fg, "*Listbox.background": pal.field,
            "*Listbox.selectBackground": pal.select, "*Text.background": pal.field, "*Text.foreground": pal.fg,
            "*Menu.background": pal.panel, "*Menu.foreground": pal.fg, "*Menu.activeBackground": pal.select,
            "*Menu.activeForeground": pal.fg, "*TCombobox*Listbox.background": pal.field,
            "*TCombobox*Listbox.foreground": pal.fg, "*TCombobox*Listbox.selectBackground": pal.select,
            "*selectBackground": pal.select, "*insertBackground": pal.fg, "*highlightColor": pal.accent,
            "*highlightBackground": pal.bg}
    for key, value in opts.items():
        root.option_add(key, value, "interactive")
    _recolour(root, pal)
    return pal


def _recolour(widget: tk.Misc, pal: Palette) -> None:
    role = getattr(widget, "theme_role", None)
    try:
        if isinstance(widget, (tk.Tk, tk.Toplevel)):
            widget.configure(background=pal.bg)
        elif isinstance(widget, tk.Menu):
            widget.configure(background=pal.panel, foreground=pal.fg, activebackground=pal.select,
                             activeforeground=pal.fg, disabledforeground=pal.muted)
        elif isinstance(widget, (tk.Text, tk.Listbox)):
            bg = pal.panel if role == "panel" else pal.field
            widget.configure(background=bg, foreground=pal.fg, selectbackground=pal.select, highlightbackground=bg)
            if isinstance(widget, tk.Text):
                widget.configure(insertbackground=pal.fg)
                widget.tag_configure("key", foreground=pal.muted)
                widget.tag_configure("muted", foreground=pal.muted)
                widget.tag_configure("warn", foreground=pal.warn)
                widget.tag_configure("error", foreground=pal.error)
        elif isinstance(widget, tk.Canvas):
            widget.configure(background=pal.canvas if role == "film" else pal.panel)
    except tk.TclError:
        pass
    hook = getattr(widget, "on_theme", None)
    if callable(hook):
        hook(pal)
    for child in widget.winfo_children():
        _recolour(child, pal)


def current(widget: tk.Misc) -> Palette:
    return getattr(widget.winfo_toplevel()._root(), "_xrv_palette", DARK)  # type: ignore[attr-defined]


def px(widget: tk.Misc, n: float) -> int:
    """``n`` pixels at 96 DPI, in this screen's pixels (canvas drawings, image sizes)."""
    return round(n * getattr(widget._root(), "_xrv_factor", 1.0))  # type: ignore[attr-defined]
