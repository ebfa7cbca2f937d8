"""Batch dialog: choose a folder and options, watch progress (counts, rate, ETA), cancel,
and see a sortable results table fill as images finish; then open the output folder or
results.csv. Same engine, discovery and resume as the CLI: the output folder and every file
xrayviewer wrote are never analysed, so pressing Start again resumes and adds nothing.

The engine runs as a job of the viewer's one background-task mechanism
(:class:`~xrayviewer.gui.worker.BackgroundTasks`): its discovery, progress and rows arrive
as messages on the Tk thread, and a closed dialog drops what is still in flight.
"""

from __future__ import annotations

import logging
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog, messagebox, ttk
from typing import Any

from ..errors import XRayViewerError
from ..provenance import DEFAULT_FORMATS, OUTPUT_FORMATS
from .worker import BackgroundTasks, Post

log = logging.getLogger(__name__)

COLUMNS = (("file", 260), ("status", 70), ("class", 120), ("covid", 70), ("involvement", 85), ("severity", 80),
           ("reason", 240))


def _run_batch(analyzer: Any, folder: Path, out: Path, recursive: bool, formats: tuple[str, ...], cancel: Any,
               post: Post) -> Any:
    """The job (on a worker thread: no Tk objects referenced here): posts ("discovered",
    Discovery), ("progress", BatchProgress) and ("row", record); returns the BatchSummary."""
    from ..batch import BatchOptions, BatchRunner, discover

    found = discover([folder], recursive=recursive, out_dir=out)
    post(("discovered", found))
    runner = BatchRunner(analyzer, BatchOptions(out, formats), progress=lambda p: post(("progress", p)),
                         on_row=lambda r: post(("row", r)), cancel=cancel)
    return runner.run(found.items)


class BatchDialog(tk.Toplevel):
    def __init__(self, master: tk.Misc, analyzer_factory: Callable[[], Any], settings: Any,
                 on_open: Callable[[Path], None], on_row: Callable[[dict], None] | None = None,
                 folder: Path | None = None) -> None:
        super().__init__(master)
        self.title("Batch analysis")
        self.geometry("980x600")
        self.analyzer_factory = analyzer_factory
        self.settings = settings
        self.on_open = on_open
        self.on_row_cb = on_row
        self.tasks = BackgroundTasks(self, poll_ms=100)
        self.rows: list[dict] = []
        self.summary: Any = None
        self.error: str | None = None
        self.own_outputs = 0  # files of ours that discovery left out in the last run
        self.out_dir: Path | None = None  # of the last run
        self._cancel: Any = None
        self._sort: tuple[str, bool] = ("file", False)

        form = ttk.Frame(self, padding=8)
        form.pack(fill="x")
        self.folder_var = tk.StringVar(value=str(folder) if folder else "")
        self.out_var = tk.StringVar(value=settings.output_dir or "")
        ttk.Label(form, text="Folder:").grid(row=0, column=0, sticky="w")
        ttk.Entry(form, textvariable=self.folder_var).grid(row=0, column=1, sticky="ew", padx=4)
        ttk.Button(form, text="Browse...", command=self._browse_in).grid(row=0, column=2)
        ttk.Label(form, text="Output folder:").grid(row=1, column=0, sticky="w")
        ttk.Entry(form, textvariable=self.out_var).grid(row=1, column=1, sticky="ew", padx=4)
        ttk.Button(form, text="Browse...", command=self._browse_out).grid(row=1, column=2)
        form.columnconfigure(1, weight=1)
        opts = ttk.Frame(form)
        opts.grid(row=2, column=0, columnspan=3, sticky="w", pady=(4, 0))
        self.recursive = tk.BooleanVar(value=True)
        ttk.Checkbutton(opts, text="Include sub-folders", variable=self.recursive).pack(side="left")
        ttk.Label(opts, text="   Outputs:").pack(side="left")
        self.format_vars = {f: tk.BooleanVar(value=f in DEFAULT_FORMATS) for f in OUTPUT_FORMATS}
        for f, var in self.format_vars.items():
            ttk.Checkbutton(opts, text=f.upper(), variable=var).pack(side="left", padx=2)

        ctrl = ttk.Frame(self, padding=(8, 0))
        ctrl.pack(fill="x")
        self.start_button = ttk.Button(ctrl, text="Start", command=self.start)
        self.start_button.pack(side="left")
        self.cancel_button = ttk.Button(ctrl, text="Cancel", command=self.cancel, state="disabled")
        self.cancel_button.pack(side="left", padx=4)
        self.progress = ttk.Progressbar(ctrl, mode="determinate", length=300)
        self.progress.pack(side="left", padx=8)
        self.status = tk.StringVar(value="Choose a folder and press Start. Re-running on the same output folder "
                                         "resumes where it stopped.")
        # Its own row, wrapped: the summary (counts, skipped outputs, output folder) is long.
        status = ttk.Label(self, textvariable=self.status, padding=(8, 4, 8, 0), wraplength=940, justify="left")
        status.pack(fill="x")
        status.bind("<Configure>", lambda e: status.configure(wraplength=max(200, e.width - 16)))

        # Packed before the table so that a small window shrinks the table, not these buttons.
        footer = ttk.Frame(self, padding=(8, 0, 8, 8))
        footer.pack(side="bottom", fill="x")
        self.open_out_button = ttk.Button(footer, text="Open output folder", state="disabled",
                                          command=lambda: self.open_output("folder"))
        self.open_out_button.pack(side="right")
        self.open_csv_button = ttk.Button(footer, text="Open results.csv", state="disabled",
                                          command=lambda: self.open_output("csv"))
        self.open_csv_button.pack(side="right", padx=4)

        self.tree = ttk.Treeview(self, columns=[c for c, _ in COLUMNS], show="headings")
        for c, w in COLUMNS:
            self.tree.heading(c, text=c.capitalize(), command=lambda c=c: self.sort_by(c))
            self.tree.column(c, width=w, stretch=c in ("file", "reason"))
        self.tree.pack(fill="both", expand=True, padx=8, pady=8)
        self.tree.bind("<Double-1>", self._open_selected)
        self.tree.bind("<Return>", self._open_selected)
        self.protocol("WM_DELETE_WINDOW", self.close)

    # ------------------------------------------------------------------ actions
    def _browse_in(self) -> None:
        d = filedialog.askdirectory(parent=self, title="Folder of images", mustexist=True)
        if d:
            self.folder_var.set(d)
            if not self.out_var.get():
                self.out_var.set(str(Path(d) / "xrayviewer-results"))

    def _browse_out(self) -> None:
        d = filedialog.askdirectory(parent=self, title="Output folder")
        if d:
            self.out_var.set(d)

    def formats(self) -> tuple[str, ...]:
        return tuple(f for f, v in self.format_vars.items() if v.get())

    def start(self) -> None:
        from ..inference.control import CancelToken

        folder = Path(self.folder_var.get().strip() or ".")
        if not folder.is_dir():
            self.status.set(f"Not a folder: {folder}")
            return
        out = Path(self.out_var.get().strip() or folder / "xrayviewer-results")
        self.out_var.set(str(out))
        formats = self.formats() or ("csv",)
        try:
            analyzer = self.analyzer_factory()
        except XRayViewerError as exc:
            self.status.set(f"Analysis unavailable: {exc.message}")
            return
        self.rows.clear()
        self.tree.delete(*self.tree.get_children())
        self.summary, self.error, self.own_outputs, self.out_dir = None, None, 0, out
        self._update_open_buttons(finished=False)
        self._cancel = CancelToken()
        self.start_button.configure(state="disabled")
        self.cancel_button.configure(state="normal")
        self.status.set("Starting (loading models if needed)...")
        recursive, cancel = self.recursive.get(), self._cancel
        self.tasks.submit("batch", lambda post: _run_batch(analyzer, folder, out, recursive, formats, cancel, post),
                          self._finished, self._failed, on_message=self._on_message)

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.cancel()
            self.status.set("Cancelling after the current batch of images...")

    def close(self) -> None:
        self.cancel()
        self.destroy()

    def destroy(self) -> None:
        self.tasks.close()  # what is still in flight is dropped
        super().destroy()

    @property
    def running(self) -> bool:
        return self.tasks.busy("batch")

    # ------------------------------------------------------------------ updates
    def _on_message(self, message: tuple[str, Any]) -> None:
        kind, value = message
        if kind == "discovered":
            self.own_outputs = len(value.own_outputs)
            self.progress.configure(maximum=max(1, len(value.items)), value=0)
        elif kind == "progress":
            self._show_progress(value)
        elif kind == "row":
            self._add_row(value)

    def _show_progress(self, p: Any) -> None:
        self.progress.configure(maximum=max(1, p.total), value=p.done)
        eta = p.eta
        eta_s = f"{int(eta // 60)}:{int(eta % 60):02d}" if eta is not None else "--:--"
        self.status.set(f"{p.done}/{p.total} done ({p.skipped} already done, {p.errors} errors) - "
                        f"{p.rate:.1f} images/s - ETA {eta_s}")

    def _add_row(self, row: dict) -> None:
        self.rows.append(row)
        if self.on_row_cb is not None:
            self.on_row_cb(row)
        self._insert(len(self.rows) - 1, row)

    def _insert(self, index: int, row: dict) -> None:
        covid = row.get("prob_covid19")
        inv = row.get("involvement_total_pct")
        self.tree.insert("", "end", iid=str(index), values=(
            row.get("path", ""), row.get("status", ""), row.get("predicted_class") or "",
            f"{covid * 100:.0f}%" if isinstance(covid, (int, float)) else "",
            f"{inv:.1f}%" if isinstance(inv, (int, float)) else "", row.get("severity") or "",
            row.get("reason") or ""))

    def sort_by(self, column: str) -> None:
        key_name = {"file": "path", "class": "predicted_class", "covid": "prob_covid19",
                    "involvement": "involvement_total_pct"}.get(column, column)
        descending = self._sort == (column, False)
        self._sort = (column, descending)

        def key(i: int) -> tuple:
            v = self.rows[i].get(key_name)
            return (v is None or v == "", v if isinstance(v, (int, float)) else str(v or ""))

        order = sorted(range(len(self.rows)), key=key, reverse=descending)
        for pos, i in enumerate(order):
            self.tree.move(str(i), "", pos)

    def _finished(self, summary: Any) -> None:
        self.summary = summary
        self.start_button.configure(state="normal")
        self.cancel_button.configure(state="disabled")
        # Rows resumed from an earlier run were not streamed: show the complete table.
        if len(self.rows) < len(summary.rows):
            self.rows = list(summary.rows)
            self.tree.delete(*self.tree.get_children())
            for i, r in enumerate(self.rows):
                self._insert(i, r)
        own = (f", {self.own_outputs} file{'s' if self.own_outputs != 1 else ''} skipped as xrayviewer's own "
               f"outputs" if self.own_outputs else "")
        self.status.set(f"{'Cancelled' if summary.cancelled else 'Finished'}: {summary.ok} analysed, "
                        f"{summary.refused} not scored, {summary.errors} failed, {summary.skipped} already done{own} "
                        f"- results in {self.out_var.get()}")
        self._update_open_buttons()

    def _failed(self, exc: BaseException) -> None:
        self.start_button.configure(state="normal")
        self.cancel_button.configure(state="disabled")
        self.error = exc.message if isinstance(exc, XRayViewerError) else f"{type(exc).__name__}: {exc}"
        if not isinstance(exc, XRayViewerError):
            log.error("batch failed", exc_info=exc)
        self.status.set(f"Batch stopped: {self.error}")
        self._update_open_buttons()

    # ------------------------------------------------------------------ outputs
    def output_target(self, what: str) -> Path | None:
        """The last run's output folder ("folder") or results.csv ("csv"), if it exists."""
        if self.out_dir is None:
            return None
        path = self.out_dir if what == "folder" else self.out_dir / "results.csv"
        return path if path.exists() else None

    def _update_open_buttons(self, finished: bool = True) -> None:
        """Enabled after a run (finished, cancelled or stopped) for what it left on disk."""
        for button, what in ((self.open_out_button, "folder"), (self.open_csv_button, "csv")):
            ok = finished and self.output_target(what) is not None
            button.configure(state="normal" if ok else "disabled")

    def open_output(self, what: str) -> None:
        """Open the output folder or results.csv with the platform's program (opener module)."""
        from .opener import OpenerError, open_with_system

        path = self.output_target(what)
        if path is None:
            self.status.set("Nothing to open yet: run the batch first")
            return
        try:
            open_with_system(path)
            self.status.set(f"Opened {path}")
        except OpenerError as exc:
            self.status.set(f"Could not open {path}")
            messagebox.showerror("Open", str(exc), parent=self)

    def _open_selected(self, _event: Any = None) -> None:
        sel = self.tree.selection()
        if sel:
            path = self.rows[int(sel[0])].get("path")
            if path and Path(path).exists():
                self.on_open(Path(path))
