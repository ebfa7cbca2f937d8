"""The analysis side panel, most important first: a one-line plain-language summary (or the
gate's refusal as a banner with its reason), the calibrated probabilities as bars with the
operating point (the tuberculosis score on its own bar below the three classes: it is a
separate score, not a fourth class), opacity involvement and severity; timings, gate scores
and model versions folded under "Details" (button or ``D``)."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..inference.result import CLASS_NAMES, AnalysisResult
from . import theme
from .readout import summary_line

BAR_COLOURS = {"Normal": "#3a9d5d", "COVID-19": "#d0453b", "Other pneumonia": "#e09b26", "Tuberculosis": "#8e6cc8"}
TB = "Tuberculosis"
BARS_HEIGHT = 86  # three class bars
TB_BAR_EXTRA = 34  # a gap and the tuberculosis bar
FINDINGS_MIN_LINES = 5
SUMMARY_STYLES = {"ok": "SummaryOk.TLabel", "finding": "SummaryFinding.TLabel", "refused": "Refusal.TLabel",
                  "message": "Summary.TLabel", "error": "Error.TLabel"}


def _wrapped_lines(widget: tk.Text, text: str) -> int:
    """How many lines ``text`` takes in ``widget`` with word wrapping, measured with its font
    (the widget may not be laid out yet, so Tk's own display-line count can be stale)."""
    from tkinter import font as tkfont

    f = tkfont.Font(root=widget, font=widget.cget("font"))
    avail = widget.winfo_width() - 2 * (int(widget.cget("padx")) + int(widget.cget("borderwidth")))
    if avail < 20:
        avail = int(widget.cget("width")) * f.measure("0")
    n = 0
    for para in text.split("\n"):
        n += 1
        line = ""
        for word in para.split(" "):
            trial = f"{line} {word}" if line else word
            if line and f.measure(trial) > avail:
                n += 1
                line = word
            else:
                line = trial
    return n


class ResultsPanel(ttk.Frame):
    def __init__(self, master: tk.Misc, width: int = 290) -> None:
        super().__init__(master, style="Panel.TFrame")
        self.width = width
        ttk.Label(self, text="Analysis", style="Heading.TLabel").pack(anchor="w")
        self.summary = ttk.Label(self, text="Not analysed yet", anchor="w", justify="left", wraplength=width - 10,
                                 style="Summary.TLabel")
        self.summary.pack(fill="x", pady=(4, 6))
        self.summary_kind = "message"
        self.bars = tk.Canvas(self, width=width, height=theme.px(self, BARS_HEIGHT), highlightthickness=0)
        self.bars.theme_role = "panel"  # type: ignore[attr-defined]
        self.bars.pack(fill="x")
        self.findings = self._text(FINDINGS_MIN_LINES)
        self.findings.pack(fill="x")
        self.details_open = tk.BooleanVar(value=False)
        self.fold = ttk.Button(self, text="▸ Details (D)", style="Fold.TButton", command=self.toggle_details)
        self.fold.pack(anchor="w", pady=(4, 0))
        # timings, gate, operating point and all four model versions
        self.details = self._text(10)
        self.result: AnalysisResult | None = None

    def _text(self, height: int) -> tk.Text:
        t = tk.Text(self, width=38, height=height, wrap="word", relief="flat", borderwidth=0, highlightthickness=0,
                    font=("TkDefaultFont", 10))
        t.theme_role = "panel"  # type: ignore[attr-defined]
        pal = theme.current(self)
        t.configure(background=pal.panel, foreground=pal.fg)
        t.tag_configure("key", foreground=pal.muted)
        t.configure(state="disabled")
        return t

    def on_theme(self, pal: theme.Palette) -> None:
        if self.result is not None:
            self.show(self.result)

    def toggle_details(self) -> None:
        self.details_open.set(not self.details_open.get())
        if self.details_open.get():
            self.details.pack(fill="x", after=self.fold)
            self.fold.configure(text="▾ Details (D)")
        else:
            self.details.pack_forget()
            self.fold.configure(text="▸ Details (D)")

    def _summary(self, text: str, kind: str) -> None:
        self.summary_kind = kind
        self.summary.configure(text=text, style=SUMMARY_STYLES.get(kind, "Summary.TLabel"))

    def show_message(self, text: str, kind: str = "message") -> None:
        self.result = None
        self._summary(text, kind)
        self.bars.delete("all")
        self.bars.configure(height=1)
        self._write(self.findings, "")
        self._write(self.details, "")

    def show(self, result: AnalysisResult) -> None:
        self.result = result
        self.bars.delete("all")
        text, kind = summary_line(result)
        self._summary(text, kind)
        if not result.gate.accepted:
            self.bars.configure(height=1)
            self._write(self.findings, ("The image was not scored: the models are only valid on frontal chest "
                                        "radiographs like those they were trained on."))
            self._write(self.details, self._footer(result))
            return
        self.bars.configure(height=theme.px(self, BARS_HEIGHT + (TB_BAR_EXTRA if result.prob_tuberculosis
                                                                  is not None else 0)))
        self._draw_bars(result)
        inv = result.involvement_pct
        if inv is None:
            lines = ["Opacity: not available (the opacity model is not installed in this build)."]
        else:
            lines = [
                f"Opacity: right lung {inv.get('right', 0):.1f} %, left lung {inv.get('left', 0):.1f} %",
                (f"Total {inv.get('total', 0):.1f} % of the lung area, severity {result.severity}; "
                 f"{len(result.regions)} region{'s' if len(result.regions) != 1 else ''}"),
            ]
            if result.opacity_withheld_regions:
                n = result.opacity_withheld_regions
                lines.append(f"{n} candidate region{'s' if n != 1 else ''} not reported: the classifier "
                             "reads the film as Normal.")
        op = (result.operating_point or {}).get("COVID-19")
        if op is not None:
            flag = "above" if result.covid_positive else "below"
            lines.append(f"COVID-19 {flag} its operating point ({op * 100:.0f} %, the mark on the bar).")
        if result.prob_tuberculosis is None:
            lines.append("Tuberculosis: not available (the tuberculosis model is not installed in this build).")
        else:
            flag = "above" if result.tb_positive else "below"
            lines.append(f"Tuberculosis {result.prob_tuberculosis * 100:.0f} %, {flag} its operating point "
                         f"({(result.tb_operating_point or 0) * 100:.0f} %): a separate screening score from one "
                         f"hospital's films (Shenzhen), not a diagnosis; also high on COVID-19 or pneumonia.")
        self._write(self.findings, "\n".join(lines), fit=True)
        self._write(self.details, self._footer(result))

    def _footer(self, result: AnalysisResult) -> str:
        t = result.timings
        timing = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in t.items())
        models = "\n".join(f"  {m.name} v{m.version} ({m.sha256[:10]})" for m in result.models)
        gate = f"Gate: {result.gate.code} ({result.gate.stage or '-'})"
        if result.gate.scores:
            gate += ", " + ", ".join(f"{k} {float(v):.3g}" for k, v in result.gate.scores.items())
        return f"Time: {result.total_seconds:.2f} s ({timing})\n{gate}\nModels:\n{models}"

    def _draw_bars(self, result: AnalysisResult) -> None:
        c = self.bars
        pal = theme.current(self)
        probs = result.probabilities or {}
        k = theme.px(self, 1)
        label_w, row, bar_h = 118 * k, 26 * k, 16 * k
        bar_w = max(40, int(c.winfo_width() or self.width) - label_w - 56 * k)
        rows = [(name, float(probs.get(name, 0.0)), (result.operating_point or {}).get(name), 0)
                for name in CLASS_NAMES]
        if result.prob_tuberculosis is not None:  # its own bar, set apart: not a fourth class
            rows.append((TB, float(result.prob_tuberculosis), result.tb_operating_point, 8 * k))
        for i, (name, p, op, gap) in enumerate(rows):
            y = 6 * k + i * row + gap
            top = name == result.predicted_class or (name == TB and bool(result.tb_positive))
            font = ("TkDefaultFont", 10, "bold") if top else ("TkDefaultFont", 10)
            c.create_text(2, y + bar_h / 2, text=name, anchor="w", font=font, fill=pal.fg)
            c.create_rectangle(label_w, y, label_w + bar_w, y + bar_h, outline=pal.border, fill=pal.field)
            c.create_rectangle(label_w, y, label_w + bar_w * p, y + bar_h, outline="",
                               fill=BAR_COLOURS.get(name, "#555"))
            c.create_text(label_w + bar_w + 6, y + bar_h / 2, text=f"{p * 100:.1f}%", anchor="w", font=font,
                          fill=pal.fg, tags=(f"pct-{name}",))
            if op is not None:
                x = label_w + bar_w * float(op)
                c.create_line(x, y - 3, x, y + bar_h + 3, fill=pal.fg, width=2, tags=(f"op-{name}",))

    @staticmethod
    def _write(widget: tk.Text, text: str, fit: bool = False) -> None:
        widget.configure(state="normal")
        widget.delete("1.0", "end")
        widget.insert("end", text)
        widget.configure(state="disabled")
        if fit:  # grow to the wrapped text so no finding is cut off (the panel scrolls no text)
            widget.configure(height=max(FINDINGS_MIN_LINES, _wrapped_lines(widget, text)))

    def text(self) -> str:
        return "\n".join((str(self.summary.cget("text")), self.findings.get("1.0", "end"),
                          self.details.get("1.0", "end")))

    def percentages(self) -> dict[str, str]:
        out: dict[str, Any] = {}
        for name in (*CLASS_NAMES, TB):
            items = self.bars.find_withtag(f"pct-{name}")
            if items:
                out[name] = self.bars.itemcget(items[0], "text")
        return out
