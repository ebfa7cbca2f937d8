"""History view: past analyses, searchable, double-click (Enter) to reopen the image;
Compare (Ctrl+Enter) shows the chosen analysis beside the open film."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from tkinter import ttk
from typing import Any


class HistoryWindow(tk.Toplevel):
    COLUMNS = (("id", 50), ("when", 150), ("origin", 55), ("status", 65), ("class", 110), ("covid", 60),
               ("tb", 60), ("involvement", 80), ("severity", 70), ("path", 360))

    def __init__(self, master: tk.Misc, history: Any, on_open: Callable[[str], None],
                 on_compare: Callable[[Any], None] | None = None) -> None:
        super().__init__(master)
        self.title("Analysis history")
        self.geometry("1020x480")
        self.history = history
        self.on_open = on_open
        self.on_compare = on_compare
        top = ttk.Frame(self, padding=6)
        top.pack(fill="x")
        ttk.Label(top, text="Search:").pack(side="left")
        self.query = tk.StringVar()
        ttk.Entry(top, textvariable=self.query).pack(side="left", fill="x", expand=True, padx=6)
        self.count = ttk.Label(top, text="")
        self.count.pack(side="right")
        if on_compare is not None:
            ttk.Button(top, text="◫ Compare with the open film", command=self._compare).pack(side="right", padx=6)
        self.tree = ttk.Treeview(self, columns=[c for c, _ in self.COLUMNS], show="headings")
        for c, w in self.COLUMNS:
            self.tree.heading(c, text="TB" if c == "tb" else c.capitalize())
            self.tree.column(c, width=w, stretch=c == "path")
        self.tree.pack(fill="both", expand=True, padx=6, pady=(0, 6))
        self.tree.bind("<Double-1>", self._open)
        self.tree.bind("<Return>", self._open)
        self.tree.bind("<Control-Return>", self._compare)
        self.query.trace_add("write", lambda *_: self.refresh())
        self.bind("<Escape>", lambda e: self.destroy())
        self.refresh()

    def refresh(self) -> None:
        self.tree.delete(*self.tree.get_children())
        entries = self.history.entries(search=self.query.get().strip() or None, limit=500)
        for e in entries:
            covid = f"{e.prob_covid19 * 100:.0f}%" if e.prob_covid19 is not None else ""
            tb = "" if e.prob_tuberculosis is None else (f"{e.prob_tuberculosis * 100:.0f}%"
                                                          + (" (+)" if e.tb_positive else ""))
            inv = f"{e.involvement_total_pct:.1f}%" if e.involvement_total_pct is not None else ""
            self.tree.insert("", "end", iid=str(e.id), values=(e.id, e.created_at, e.origin, e.status,
                                                               e.predicted_class or "", covid, tb, inv,
                                                               e.severity or "",
                                                               e.input_path))
        self.count.configure(text=f"{len(entries)} shown of {self.history.count()}")

    def _open(self, _event: Any = None) -> None:
        sel = self.tree.selection()
        if sel:
            entry = self.history.get(int(sel[0]))
            if entry is not None:
                self.on_open(entry.input_path)

    def _compare(self, _event: Any = None) -> str:
        sel = self.tree.selection()
        if sel and self.on_compare is not None:
            entry = self.history.get(int(sel[0]))
            if entry is not None:
                self.on_compare(entry)
        return "break"
