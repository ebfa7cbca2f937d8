"""The viewer's export commands (overlay PNG, PDF report, clipboard): a mixin of
:class:`~xrayviewer.gui.app.ViewerApp`. The session names and builds the jobs; they run on
the background-task worker, so a full-resolution overlay never freezes the window."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from tkinter import filedialog, messagebox
from typing import Any

from ..errors import XRayViewerError
from .session import error_text


class ExportActions:
    root: Any
    session: Any
    tasks: Any
    set_status: Callable[[str], None]  # provided by the layout

    def ask_export_pdf(self) -> None:
        if self.session.analysis is None:
            self.set_status("Analyse the image first (A): a report needs an analysis")
            return
        self._ask_export("Export PDF report", ".report.pdf", ("PDF", "*.pdf"), self.session.pdf_export,
                         "Report written")

    def ask_export_png(self) -> None:
        if self.session.image is None:
            self.set_status("Nothing to export: open an image first")
            return
        self._ask_export("Export overlay PNG", ".overlay.png", ("PNG", "*.png"), self.session.png_export, "Exported")

    def _ask_export(self, title: str, suffix: str, filetype: tuple[str, str],
                    make_job: Callable[[Path], Callable[[], Path]], done: str) -> None:
        """Save dialog (suggesting the session's de-identified name), then the export on a worker."""
        path = filedialog.asksaveasfilename(parent=self.root, title=title, defaultextension=suffix[-4:],
                                            initialfile=self.session.export_name(suffix), filetypes=[filetype])
        if path:
            self._export(Path(path), make_job, lambda out: self.set_status(f"{done}: {path}"))

    def _export(self, path: Path, make_job: Callable[[Path], Callable[[], Path]],
                on_done: Callable[[Path], None]) -> None:
        try:
            job = make_job(path)  # takes what it needs from the session, here on the Tk thread
        except XRayViewerError as exc:
            self._on_export_error(path, exc)
            return
        self.set_status("Exporting...")
        self.tasks.submit("export", lambda post: job(), on_done, lambda exc: self._on_export_error(path, exc))

    def _on_export_error(self, path: Path, exc: BaseException) -> None:
        msg = str(exc) if isinstance(exc, (OSError, XRayViewerError)) else error_text(exc, "export")
        self.set_status(f"Export failed: {msg}")
        messagebox.showerror("Export failed", f"{path}: {msg}", parent=self.root)

    def copy_to_clipboard(self) -> None:
        """Tk's clipboard holds text only, portably: save the overlay PNG to a temp file and put
        its path on the clipboard (paste it into a file dialog or a message)."""
        if self.session.image is None:
            return
        import tempfile

        def copied(path: Path) -> None:
            self.root.clipboard_clear()
            self.root.clipboard_append(str(path))
            self.set_status(f"Overlay saved to {path}; its path is on the clipboard")

        self._export(Path(tempfile.gettempdir()) / "xrayviewer-clipboard.png", self.session.png_export, copied)
