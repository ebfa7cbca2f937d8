"""Secondary windows: intended-use notice, DICOM tag browser, shortcuts, about."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from .. import RESEARCH_NOTICE, __version__

NOTICE_TEXT = (
    "xrayviewer is research software. It is NOT a medical device and has not been cleared "
    "or approved for clinical use.\n\n"
    "Its analyses come from models trained on small public datasets whose sources are "
    "confounded with their labels; scores can be wrong, and wrong with confidence. Do not "
    "use them for diagnosis, triage or treatment decisions.\n\n"
    "Images are processed on this computer only; nothing is sent anywhere."
)

SHORTCUTS: list[tuple[str, str]] = [
    ("Ctrl+O", "Open image"),
    ("Ctrl+Shift+O", "Open folder"),
    ("Up / Down, PgUp / PgDn", "Previous / next film in the thumbnails strip"),
    ("F", "Fit to window"),
    ("1", "Actual size (1:1)"),
    ("+ / - or mouse wheel", "Zoom in / out (at the cursor with the wheel)"),
    ("Left-drag", "Pan (measure in ruler mode)"),
    ("Right-drag", "Window / level (horizontal: width, vertical: centre)"),
    ("W", "Next window preset"),
    ("I", "Invert"),
    ("R / Shift+R", "Rotate clockwise / counter-clockwise"),
    ("H / V", "Flip horizontally / vertically"),
    ("M", "Ruler mode on/off"),
    ("C", "Clear rulers"),
    ("T", "DICOM tags"),
    ("Esc", "Reset view (fit, default window, no rotation/flip/invert)"),
    ("A / Ctrl+Enter", "Analyze"),
    ("Ctrl+.", "Cancel analysis"),
    ("L / O / B / G", "Toggle lung fields / opacity / boxes / heatmap overlays"),
    ("Shift+G", "Heatmap of the top class / of tuberculosis"),
    ("D", "Show / hide the analysis details (timings, gate, model versions)"),
    ("S", "Compare: the film beside its previous analysis (linked zoom, pan, window); again to close"),
    ("Ctrl+E / Ctrl+P", "Export overlay PNG / PDF report"),
    ("Ctrl+B", "Batch analysis"),
    ("Ctrl+H", "History"),
    ("Ctrl+,", "Settings"),
    ("F1", "This list"),
    ("Ctrl+Q", "Quit"),
]


def ask_notice(root: tk.Misc) -> bool:
    """Modal intended-use notice; True when accepted."""
    result = {"ok": False}
    win = tk.Toplevel(root)
    win.title("xrayviewer - intended use")
    win.transient(root)
    win.resizable(False, False)
    frame = ttk.Frame(win, padding=16)
    frame.pack(fill="both", expand=True)
    ttk.Label(frame, text="Research use only", font=("TkDefaultFont", 14, "bold")).pack(anchor="w")
    ttk.Label(frame, text=NOTICE_TEXT, wraplength=460, justify="left").pack(anchor="w", pady=(8, 12))
    buttons = ttk.Frame(frame)
    buttons.pack(fill="x")

    def accept() -> None:
        result["ok"] = True
        win.destroy()

    ttk.Button(buttons, text="Quit", command=win.destroy).pack(side="right")
    ok = ttk.Button(buttons, text="I understand", command=accept)
    ok.pack(side="right", padx=(0, 8))
    win.protocol("WM_DELETE_WINDOW", win.destroy)
    ok.focus_set()
    win.bind("<Return>", lambda e: accept())
    win.wait_visibility()
    win.grab_set()
    root.wait_window(win)
    return result["ok"]


class TagBrowser(tk.Toplevel):
    """All data elements of a DICOM file in a tree, with a search box."""

    def __init__(self, root: tk.Misc, dataset: Any, title: str) -> None:
        super().__init__(root)
        self.title(f"DICOM tags - {title}")
        self.geometry("760x560")
        self._rows = list(_flatten(dataset))
        top = ttk.Frame(self, padding=(8, 8, 8, 0))
        top.pack(fill="x")
        ttk.Label(top, text="Search:").pack(side="left")
        self.query = tk.StringVar()
        entry = ttk.Entry(top, textvariable=self.query)
        entry.pack(side="left", fill="x", expand=True, padx=6)
        self.count = ttk.Label(top, text="")
        self.count.pack(side="right")
        cols = ("tag", "name", "vr", "value")
        self.tree = ttk.Treeview(self, columns=cols, show="tree headings")
        for c, w in zip(cols, (110, 240, 40, 320)):
            self.tree.heading(c, text=c.upper() if c == "vr" else c.capitalize())
            self.tree.column(c, width=w, stretch=c == "value")
        self.tree.column("#0", width=18, stretch=False)
        scroll = ttk.Scrollbar(self, orient="vertical", command=self.tree.yview)
        self.tree.configure(yscrollcommand=scroll.set)
        scroll.pack(side="right", fill="y", pady=8)
        self.tree.pack(fill="both", expand=True, padx=(8, 0), pady=8)
        self.query.trace_add("write", lambda *_: self.refresh())
        self.bind("<Escape>", lambda e: self.destroy())
        entry.focus_set()
        self.refresh()

    def refresh(self) -> None:
        q = self.query.get().strip().lower()
        self.tree.delete(*self.tree.get_children())
        shown = 0
        for depth, tag, name, vr, value in self._rows:
            if q and q not in f"{tag} {name} {value}".lower():
                continue
            self.tree.insert("", "end", values=(("  " * depth) + tag, name, vr, value))
            shown += 1
        self.count.configure(text=f"{shown} of {len(self._rows)}")


def _flatten(ds: Any, depth: int = 0):
    for elem in ds:
        tag = f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            yield depth, tag, elem.name, "SQ", f"{len(elem.value)} item(s)"
            for item in elem.value:
                yield from _flatten(item, depth + 1)
            continue
        if elem.tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
            value = f"<{len(elem.value or b''):,} bytes of pixel data>"
        elif elem.VR in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            value = f"<{len(elem.value or b''):,} bytes>"
        else:
            value = str(elem.value)
            if len(value) > 200:
                value = value[:197] + "..."
        yield depth, tag, elem.name, elem.VR, value
    if depth == 0 and getattr(ds, "file_meta", None) is not None:
        for elem in ds.file_meta:
            yield 0, f"({elem.tag.group:04X},{elem.tag.element:04X})", elem.name, elem.VR, str(elem.value)


def show_shortcuts(root: tk.Misc) -> tk.Toplevel:
    win = tk.Toplevel(root)
    win.title("Keyboard shortcuts")
    frame = ttk.Frame(win, padding=12)
    frame.pack(fill="both", expand=True)
    for i, (keys, what) in enumerate(SHORTCUTS):
        ttk.Label(frame, text=keys, font=("TkFixedFont", 10)).grid(row=i, column=0, sticky="w", padx=(0, 16))
        ttk.Label(frame, text=what).grid(row=i, column=1, sticky="w")
    win.bind("<Escape>", lambda e: win.destroy())
    return win


def about_text() -> str:
    return f"xrayviewer {__version__}\n\n{RESEARCH_NOTICE}\n\nOffline chest X-ray viewer with bundled models."
