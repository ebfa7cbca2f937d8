"""The analysis side panel: gate verdict, calibrated probabilities as bars with the
operating point, per-lung involvement, severity, regions, timings, model versions."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..inference.result import CLASS_NAMES, AnalysisResult

BAR_COLOURS = {"Normal": "#3a9d5d", "COVID-19": "#d0453b", "Other pneumonia": "#e09b26"}


class ResultsPanel(ttk.Frame):
    def __init__(self, master: tk.Misc, width: int = 290) -> None:
        super().__init__(master)
        self.width = width
        ttk.Label(self, text="Analysis", font=("TkDefaultFont", 11, "bold")).pack(anchor="w")
        self.verdict = tk.Label(self, text="Not analysed yet", anchor="w", justify="left", wraplength=width - 10)
        self.verdict.pack(fill="x", pady=(2, 4))
        self.bars = tk.Canvas(self, width=width, height=86, highlightthickness=0, background=self._bg())
        self.bars.pack(fill="x")
        # 15 lines: opacity figures, operating point, timings and all four model versions.
        self.details = tk.Text(self, width=38, height=15, wrap="word", relief="flat", background=self._bg(),
                               font=("TkDefaultFont", 9))
        self.details.pack(fill="x")
        self.details.tag_configure("key", foreground="#555555")
        self.details.configure(state="disabled")
        self.result: AnalysisResult | None = None

    def _bg(self) -> str:
        try:
            return str(self.winfo_toplevel().cget("background"))
        except tk.TclError:
            return "#d9d9d9"

    def show_message(self, text: str, colour: str = "#333333") -> None:
        self.result = None
        self.verdict.configure(text=text, foreground=colour)
        self.bars.delete("all")
        self._write("")

    def show(self, result: AnalysisResult) -> None:
        self.result = result
        self.bars.delete("all")
        if not result.gate.accepted:
            self.verdict.configure(text=f"Not scored: {result.gate.reason}", foreground="#b00020")
            self._write(self._footer(result))
            return
        top = result.predicted_class or "?"
        self.verdict.configure(text=f"In domain. Highest score: {top}", foreground="#1b5e20")
        self._draw_bars(result)
        inv = result.involvement_pct
        if inv is None:
            lines = ["Opacity: not available (the opacity model is not installed in this build)."]
        else:
            lines = [
                "Opacity involvement (% of lung area):",
                f"  right lung {inv.get('right', 0):.1f} %   left lung {inv.get('left', 0):.1f} %",
                f"  total {inv.get('total', 0):.1f} %   severity: {result.severity}",
                f"Opacity regions: {len(result.regions)}",
            ]
        op = (result.operating_point or {}).get("COVID-19")
        if op is not None:
            flag = "above" if result.covid_positive else "below"
            lines.append(f"COVID-19 score is {flag} the operating point ({op:.2f}).")
        self._write("\n".join(lines) + "\n" + self._footer(result))

    def _footer(self, result: AnalysisResult) -> str:
        t = result.timings
        timing = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items())
        models = "\n".join(f"  {m.name} v{m.version} ({m.sha256[:10]})" for m in result.models)
        return f"Time: {result.total_seconds:.2f} s ({timing})\nModels:\n{models}"

    def _draw_bars(self, result: AnalysisResult) -> None:
        c = self.bars
        probs = result.probabilities or {}
        label_w, bar_w, row = 118, self.width - 170, 26
        for i, name in enumerate(CLASS_NAMES):
            p = float(probs.get(name, 0.0))
            y = 6 + i * row
            c.create_text(2, y + 8, text=name, anchor="w", font=("TkDefaultFont", 9))
            c.create_rectangle(label_w, y, label_w + bar_w, y + 16, outline="#999999")
            c.create_rectangle(label_w, y, label_w + bar_w * p, y + 16, outline="", fill=BAR_COLOURS.get(name, "#555"))
            c.create_text(label_w + bar_w + 6, y + 8, text=f"{p * 100:.1f}%", anchor="w", font=("TkDefaultFont", 9),
                          tags=(f"pct-{name}",))
            op = (result.operating_point or {}).get(name)
            if op is not None:
                x = label_w + bar_w * float(op)
                c.create_line(x, y - 3, x, y + 19, fill="#000000", width=2, tags=(f"op-{name}",))

    def _write(self, text: str) -> None:
        self.details.configure(state="normal")
        self.details.delete("1.0", "end")
        self.details.insert("end", text)
        self.details.configure(state="disabled")

    def text(self) -> str:
        return str(self.verdict.cget("text")) + "\n" + self.details.get("1.0", "end")

    def percentages(self) -> dict[str, str]:
        out: dict[str, Any] = {}
        for name in CLASS_NAMES:
            items = self.bars.find_withtag(f"pct-{name}")
            if items:
                out[name] = self.bars.itemcget(items[0], "text")
        return out
